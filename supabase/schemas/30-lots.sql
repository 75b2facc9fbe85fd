-- Every credit that enters a user account arrives as a lot (one per granting transfer) that
-- knows its category, what it cost, its priority and its expiry. Debits draw from lots in
-- spending order and record what they drew in lot_allocations (billing.post_transfers, the
-- ledger's one writer), so any credit spent can be traced to the grant that paid for it. Invariant (per account):
-- Σ remaining = the balance when it is not negative, 0 in debt; an account that holds credits for
-- some models keeps them beside a debt (they never pay it), so in general Σ remaining for any
-- model = greatest(balance − Σ remaining for some models, 0).
--
-- A lot past its expiry expires when its account is next settled, on the writer's road
-- (billing.expire_due_lots, 11-ledger-writer.sql); here, the tables, the sweep and the checks.

-- ============================================================ tables

-- The spending order (docs/credit-lots.md § Spending order 1): priority, the soonest expiry (a
-- lot that never expires last), the oldest grant, the id. Compared as a record, a null expiry
-- sorts after every date. Every drawer, reserver and owe step orders lots by it.
create type billing.spending_key as (priority integer, expires_at timestamptz, granted_at timestamptz, id bigint);
comment on type billing.spending_key is 'A lot''s place in the spending order (billing.lots.spending_order).';

create table billing.lots (
  id bigint generated always as identity not null,
  account_id bigint not null,
  grant_transfer_id bigint not null,
  purchase_id uuid,
  category text not null,
  priority integer not null,
  cost_cents numeric(38,18) default 0 not null,
  currency text default 'usd'::text not null,
  amount numeric(38,18) not null,
  debt_settled numeric(38,18) default 0 not null,
  remaining numeric(38,18) not null,
  open boolean generated always as ((remaining > (0)::numeric)) stored,
  frozen boolean default false not null,
  -- Of remaining, what active holds reserved (billing.hold_lots).
  reserved numeric(38,18) default 0 not null,
  -- What may be drawn, reserved or moved: the one place a frozen lot's credits are none.
  free numeric(38,18) generated always as ((case when frozen then (0)::numeric else (remaining - reserved) end)) stored,
  granted_at timestamp with time zone default now() not null,
  expires_at timestamp with time zone,
  warned_days integer[] default '{}'::integer[] not null,
  moved_from bigint,
  applies_to text[],
  -- What reports break credits down by (90-reporting.sql): 'plan', a plan's period or what rolled
  -- into the next; 'promo_code', a promo code redeemed; set by the writer from the granting
  -- call's lot options, a rollover's from the lot it left.
  origin text,
  -- The one statement of the spending order.
  spending_order billing.spending_key generated always as (row(priority, expires_at, granted_at, id)::billing.spending_key) stored,
  constraint lots_origin check ((origin = any (array['plan'::text, 'promo_code'::text]))),
  constraint lots_amount_positive check ((amount > (0)::numeric)),
  constraint lots_category check ((category = any (array['paid'::text, 'promotional'::text]))),
  constraint lots_cost_not_negative check ((cost_cents >= (0)::numeric)),
  constraint lots_debt_settled_within check ((debt_settled >= (0)::numeric)),
  constraint lots_promotional_free check (((category = 'paid'::text) or (cost_cents = (0)::numeric))),
  constraint lots_remaining_within check (((remaining >= (0)::numeric) and ((remaining + debt_settled) <= amount))),
  constraint lots_reserved_within check (((reserved >= (0)::numeric) and (reserved <= remaining))),
  constraint lots_one_per_grant unique nulls not distinct (grant_transfer_id, moved_from),
  constraint lots_pkey primary key (id),
  constraint lots_account_id_fkey foreign key (account_id) references billing.accounts(id),
  constraint lots_grant_transfer_id_fkey foreign key (grant_transfer_id) references billing.transfers(id),
  constraint lots_moved_from_fkey foreign key (moved_from) references billing.lots(id)
) with (fillfactor = 50);
comment on table billing.lots is 'Where each credit came from: one lot per grant, drawn down in spending order. remaining is maintained under the account lock.';
comment on column billing.lots.debt_settled is 'Of the credits this lot brought, the part that paid a debt on arrival; fixed at the grant (what credits given back to it later pay is their allocation''s debt_settled).';
comment on column billing.lots.reserved is 'Of remaining, what active holds reserved (billing.hold_lots): not drawable, reservable or movable by anything else (see free).';
comment on column billing.lots.free is 'What may be drawn, reserved or moved: remaining − reserved, none while frozen (docs/credit-lots.md § Spending order 3).';
comment on column billing.lots.moved_from is 'The lot these credits were moved out of (allowance, sweep): its provenance is this lot''s; null for a grant.';
comment on column billing.lots.spending_order is 'Where the lot comes in the spending order: (priority, expires_at, granted_at, id), a null expiry last.';
comment on column billing.lots.applies_to is 'The models (names, or families ending in *) these credits may pay for; null: any (31-lot-applicability.sql). Kept through moves.';
alter table billing.lots enable row level security;
grant select on table billing.lots to authenticated;
grant select on table billing.lots to service_role;

create index lots_open on billing.lots (account_id) where open;

create index lots_expiring on billing.lots (expires_at) where open and expires_at is not null;

create index lots_purchase on billing.lots (purchase_id) where purchase_id is not null;

create index lots_granted_brin on billing.lots using brin (granted_at);

-- Credit lots over time (how debits draw from them is billing.post_transfers', 11-ledger-writer.sql):
-- expiry into the breakage account, warnings before it, the caller's lots, and the daily proof
-- that lots and allocations agree (and so deferred revenue, to the cent).
create index lots_account on billing.lots (account_id, id desc);

create index lots_moved_from on billing.lots (moved_from) where moved_from is not null;

create table billing.lot_allocations (
  -- No foreign keys: only the ledger's writer inserts allocations, for transfers it has just
  -- written and lots it has just drawn or opened under the account lock; a key check on every
  -- debit (a share lock on both rows) would only repeat that (checked by billing.check_lots).
  transfer_id bigint not null,
  lot_id bigint not null,
  kind billing.transfer_kind not null,                -- the transfer's, so reporting needs no join
  amount numeric(38, 18) not null,
  created_at timestamptz not null default now(),
  -- Of a row giving back (negative), the part that paid a debt the account was in when it was
  -- given back: it does not return to the lot's remaining, and is booked on this row's day.
  debt_settled numeric(38, 18) not null default 0,
  -- The row's part of its lot's cost basis, cost_cents × amount / the lot's amount, worked out when
  -- written so a report sums it without reading the lot (90-reporting.sql); null on rows written
  -- before it was kept, which a report works out from the lot.
  cents numeric,
  primary key (transfer_id, lot_id),
  -- Negative allocations give back to a lot: a void what its charge drew, a plan rollover what
  -- the sweep expired of a period's credits before its renewal was paid (roll_over_plan_credits).
  constraint lot_allocations_amount_positive check (amount > 0 or (kind in ('void', 'expiry') and amount < 0)),
  constraint lot_allocations_debt_settled_within check (debt_settled >= 0 and (debt_settled = 0 or debt_settled <= -amount))
);
comment on table billing.lot_allocations is 'Immutable. What each debiting transfer drew from each lot; Σ per transfer ≤ its amount (the rest, if any, became debt). A void''s rows are negative: what it gave back to each lot its charge drew; so is a plan rollover''s expiry row bringing a period''s expired credits back from breakage. Of a negative row, debt_settled is what paid a debt then. Per lot: remaining + debt_settled + Σ (amount + debt_settled) = amount.';
alter table billing.lot_allocations enable row level security;
grant select on table billing.lot_allocations to authenticated;
grant select on table billing.lot_allocations to service_role;

-- As the ledger's own (10-ledger.sql): autosummarize keeps the unsummarised tail, which every
-- report's live piece reads whole, to the last few pages instead of everything since a vacuum.
create index lot_allocations_created_brin on billing.lot_allocations using brin (created_at) with (autosummarize = on);

-- What expired of a purchase's lots, for its refunds and disputes (billing.purchase_expiry_unforgiven):
-- expiries are a small share of allocations.
create index lot_allocations_expiry on billing.lot_allocations (lot_id) where kind = 'expiry';

-- How long a new lot lives, per category (null: no expiry). Paid credits do not expire by
-- default: some jurisdictions restrict expiring paid value (see docs/api.md, Credit lots).
create table billing.credit_expiry_policy (
  category text primary key,
  expires_after interval,
  priority integer not null,
  constraint credit_expiry_policy_category check (category in ('paid', 'promotional')),
  constraint credit_expiry_policy_positive check (expires_after is null or expires_after > interval '0')
);
comment on table billing.credit_expiry_policy is 'Defaults for new lots: lifetime and spending priority per category. An admin grant may override both.';
alter table billing.credit_expiry_policy enable row level security;
grant select on table billing.credit_expiry_policy to service_role;

-- ============================================================ functions

-- A lot and every lot its credits were moved into since (a plan's rollovers, period after period;
-- an allowance's moves), for a refund or dispute of what granted it to reach them all.
create or replace function billing.lot_lineage(p_lot_id bigint) returns bigint[]
language sql stable
set search_path = ''
as $$
  with recursive x as (
    select l.id from billing.lots l where l.id = p_lot_id
    union all
    select l.id from billing.lots l join x on l.moved_from = x.id
  )
  select coalesce(array_agg(x.id order by x.id), '{}') from x
$$;
comment on function billing.lot_lineage(p_lot_id bigint) is 'Internal: a lot and every lot its credits were moved into since (rollovers, moves), in id order.';
revoke execute on function billing.lot_lineage(p_lot_id bigint) from public;

-- A dispute opened (p_frozen) or closed: these lots, and every lot their credits were moved into
-- since (any depth), freeze or thaw wherever they are (docs/credit-lots.md § Refunds, disputes and
-- debt 3). What holds reserved of them stays theirs; what is free cannot be spent, reserved or
-- moved while frozen. An account holding a frozen lot is flagged (accounts.frozen_lots) so that
-- what it may spend is read from its lots; the flag goes when none of its lots is frozen. Called
-- by 51-refunds-disputes.sql (a plan invoice's lots: its grant's); the caller locks the accounts.
create or replace function billing.set_lots_frozen(p_lots bigint[], p_frozen boolean) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_accounts bigint[];
begin
  with recursive reach as (
    select l.id from billing.lots l where l.id = any(p_lots)
    union
    select l.id from billing.lots l join reach r on l.moved_from = r.id
  ), changed as (
    update billing.lots l set frozen = p_frozen
    from reach where l.id = reach.id and l.frozen <> p_frozen
    returning l.account_id
  )
  select array_agg(distinct changed.account_id) into v_accounts from changed;
  update billing.accounts a
  set frozen_lots = exists (select 1 from billing.lots l where l.account_id = a.id and l.frozen)
  where a.id = any(v_accounts);
end;
$$;
comment on function billing.set_lots_frozen(p_lots bigint[], p_frozen boolean) is 'Internal: freezes (a dispute opened) or thaws these lots and every lot moved from them, wherever they are, and keeps accounts.frozen_lots right.';
revoke execute on function billing.set_lots_frozen(p_lots bigint[], p_frozen boolean) from public;

-- A purchase's lots (as granted; set_lots_frozen above follows their moves).
create or replace function billing.set_lots_frozen(p_purchase_id uuid, p_frozen boolean) returns void
language sql
set search_path = ''
as $$
  select billing.set_lots_frozen(array(select l.id from billing.lots l
                                       where l.purchase_id = p_purchase_id and l.moved_from is null), p_frozen)
$$;
comment on function billing.set_lots_frozen(p_purchase_id uuid, p_frozen boolean) is 'Internal: freezes (a dispute opened) or thaws a purchase''s lots and every lot moved from them, wherever they are, and keeps accounts.frozen_lots right.';
revoke execute on function billing.set_lots_frozen(p_purchase_id uuid, p_frozen boolean) from public;

create or replace function billing.lots_expired(p_lots bigint[]) returns numeric
language sql stable
set search_path = ''
as $$
  select coalesce(sum(a.amount), 0) from billing.lot_allocations a where a.lot_id = any(p_lots) and a.kind = 'expiry'
$$;
comment on function billing.lots_expired(p_lots bigint[]) is 'Internal: how many credits of these lots expired (net of what came back).';
revoke execute on function billing.lots_expired(p_lots bigint[]) from public;

create or replace function billing.expire_lots(p_limit integer default 500)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_count integer := 0;
begin
  -- Accounts nobody spends from still see their credits expire on time.
  for v_account_id in
    select l.account_id from billing.lots l
    where l.open and l.expires_at <= now()
    group by l.account_id order by min(l.expires_at) limit p_limit
  loop
    v_count := v_count + billing.expire_due_lots(v_account_id); -- overdue holds end too, in order
  end loop;
  return v_count;
end;
$$;
comment on function billing.expire_lots(p_limit integer) is 'Expires due lots (held credits too) in up to p_limit accounts; returns how many lots. Scheduled every minute; spending expires an account''s due lots itself.';
revoke execute on function billing.expire_lots(p_limit integer) from public;
grant execute on function billing.expire_lots(p_limit integer) to service_role;

-- One warning per lot and threshold (30 days, then 7), through the outbox. A lot granted with
-- less than 7 days to live gets only the 7-day warning.
create or replace function billing.queue_expiry_warnings(p_limit integer default 1000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with due as (
    select l.id, a.user_id, l.remaining, l.expires_at,
      case when l.expires_at <= now() + interval '7 days' then 7 else 30 end as days
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.open and l.expires_at > now() and l.expires_at <= now() + interval '30 days'
      and not (case when l.expires_at <= now() + interval '7 days' then 7 else 30 end) = any (l.warned_days)
    order by l.expires_at, l.id limit p_limit
  ), marked as (
    update billing.lots l set warned_days = case when due.days = 7 then '{30,7}'::integer[] else '{30}'::integer[] end
    from due where l.id = due.id
  )
  insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
  select 'credits_expiring', due.user_id, 'expiry-warning:' || due.id || ':' || due.days,
    jsonb_build_object('lot_id', due.id::text, 'amount', trim_scale(due.remaining)::text,
      'expires_at', billing.json_time(due.expires_at), 'days', due.days)
  from due
  on conflict (dedupe_key) do nothing;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.queue_expiry_warnings(p_limit integer) is 'pg_cron: queues a credits_expiring email 30 and 7 days before a lot expires, once each.';
revoke execute on function billing.queue_expiry_warnings(p_limit integer) from public;
grant execute on function billing.queue_expiry_warnings(p_limit integer) to service_role;

create or replace function billing.get_lots(p_user uuid, p_before_id bigint default null, p_limit integer default 50)
returns table (id bigint, source billing.transfer_kind, category text, priority integer, amount numeric(38, 18),
               remaining numeric(38, 18), granted_at timestamptz, expires_at timestamptz, frozen boolean, purchase_id uuid,
               applies_to text[])
language sql stable
security definer
set search_path = ''
as $$
  select l.id, t.kind, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen, l.purchase_id,
    l.applies_to
  from billing.accounts a
  join billing.lots l on l.account_id = a.id
  join billing.transfers t on t.id = l.grant_transfer_id
  where a.user_id = p_user and (p_before_id is null or l.id < p_before_id)
  order by l.id desc
  limit least(greatest(p_limit, 1), 1000)
$$;
comment on function billing.get_lots(p_user uuid, p_before_id bigint, p_limit integer) is 'A user''s lots, newest first, keyset-paginated by lot id.';
revoke execute on function billing.get_lots(p_user uuid, p_before_id bigint, p_limit integer) from public;
grant execute on function billing.get_lots(p_user uuid, p_before_id bigint, p_limit integer) to service_role;

create or replace function billing.check_lots()
returns jsonb
language sql
stable security definer
set search_path = ''
as $$
  with drawn as (
    -- What left each lot: drawn, less what was given back to it beyond the debt that part paid.
    select la.lot_id, sum(la.amount + la.debt_settled) as total from billing.lot_allocations la group by la.lot_id
  ), bad_lots as (
    select l.id from billing.lots l left join drawn d on d.lot_id = l.id
    where l.remaining + l.debt_settled + coalesce(d.total, 0) <> l.amount
    union
    -- A lot's reserved is what active holds reserved of it (billing.hold_lots).
    select l.id from billing.lots l
    left join (select hl.lot_id, sum(hl.amount) as total from billing.hold_lots hl
               join billing.holds h on h.id = hl.hold_id and h.status = 'active' group by hl.lot_id) r on r.lot_id = l.id
    where l.reserved <> coalesce(r.total, 0)
  ), bad_accounts as (
    -- Credits for some models stay beside a debt (it is owed in money for anything), and so do
    -- what live holds reserved (theirs until they end): the free credits of the lots for any
    -- model are what the balance has beyond both, 0 in debt.
    select a.id from billing.accounts a left join billing.lots l on l.account_id = a.id
    where a.code is null group by a.id, a.balance
    having coalesce(sum(l.remaining - l.reserved) filter (where l.applies_to is null), 0)
      <> greatest(a.balance - coalesce(sum(l.remaining) filter (where l.applies_to is not null), 0)
                  - coalesce(sum(l.reserved) filter (where l.applies_to is null), 0), 0)
  ), bad_sub_accounts as (
    -- A sub-account holds what its account's lots under its list hold, and a list held has one.
    select coalesce(s.account_id, l.account_id) as id
    from billing.sub_accounts s
    full join (select x.account_id, x.applies_to, sum(x.remaining) as remaining from billing.lots x
               where x.applies_to is not null and x.open group by 1, 2) l
      on l.account_id = s.account_id and l.applies_to = s.applies_to
    where coalesce(s.balance, 0) <> coalesce(l.remaining, 0)
  ), bad_transfers as (
    select la.transfer_id from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    group by la.transfer_id, t.amount having sum(la.amount) > t.amount
    union
    -- Allocations name their transfer and lot without foreign keys: both must exist.
    select la.transfer_id from billing.lot_allocations la
    where not exists (select 1 from billing.transfers t where t.id = la.transfer_id)
       or not exists (select 1 from billing.lots l where l.id = la.lot_id)
    union
    -- A kept cost basis is the one a report would work out from the lot, digit for digit.
    select la.transfer_id from billing.lot_allocations la join billing.lots l on l.id = la.lot_id
    where la.cents is not null and la.cents::text <> (l.cost_cents * la.amount / l.amount)::text
  ), bad_expiry as (
    -- next_expiry is a lower bound of every open lot's expiry, but a lot past it that holds only
    -- what claims holds keep (the tick's: billing.expire_due_lots leaves it).
    select a.id from billing.accounts a join billing.lots l on l.account_id = a.id
    where l.open and l.expires_at is not null and (a.next_expiry is null or l.expires_at < a.next_expiry)
      and not (l.expires_at <= now() and l.remaining = l.reserved and not exists (
        select 1 from billing.hold_lots hl join billing.holds h on h.id = hl.hold_id and h.status = 'active'
        where hl.lot_id = l.id and h.purpose <> 'claims'))
    group by a.id
  ), deferred as (
    select l.currency,
      round(sum(l.cost_cents * l.remaining / l.amount)) as from_lots,
      round(sum(l.cost_cents * (l.amount - l.debt_settled - coalesce(d.total, 0)) / l.amount)) as from_flows
    from billing.lots l left join drawn d on d.lot_id = l.id
    where l.category = 'paid' group by l.currency
  )
  select jsonb_build_object(
    'lots', coalesce((select jsonb_agg(id) from bad_lots), '[]'),
    'accounts', coalesce((select jsonb_agg(id) from bad_accounts), '[]'),
    'sub_accounts', coalesce((select jsonb_agg(id) from bad_sub_accounts), '[]'),
    'transfers', coalesce((select jsonb_agg(transfer_id) from bad_transfers), '[]'),
    'expiry', coalesce((select jsonb_agg(id) from bad_expiry), '[]'),
    'deferred_revenue_cents', coalesce((select jsonb_object_agg(currency, jsonb_build_object(
      'from_lots', from_lots, 'from_flows', from_flows)) from deferred), '{}'))
$$;
comment on function billing.check_lots() is 'Proves lots, allocations and balances agree (each lot''s reserved is what active holds reserved of it; the lots for any model hold what the balance has beyond the credits for some models, 0 in debt; each sub-account what its list''s lots hold), and deferred revenue two ways. Empty lists when all is well.';
revoke execute on function billing.check_lots() from public;
grant execute on function billing.check_lots() to service_role;

create or replace function billing.reconcile_lots() returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_check jsonb := billing.check_lots();
  v_bad boolean := jsonb_array_length(v_check -> 'lots') + jsonb_array_length(v_check -> 'accounts')
    + jsonb_array_length(v_check -> 'sub_accounts') + jsonb_array_length(v_check -> 'transfers') > 0
    or exists (select 1 from jsonb_each(v_check -> 'deferred_revenue_cents') c
               where c.value -> 'from_lots' <> c.value -> 'from_flows');
begin
  perform billing.set_alert('lots_disagree', v_bad, 'Credit lots disagree with the ledger: run billing.check_lots()',
    v_check);
  return v_check;
end;
$$;
comment on function billing.reconcile_lots() is 'pg_cron, daily: runs check_lots and opens (or resolves) the lots_disagree alert.';
revoke execute on function billing.reconcile_lots() from public;
grant execute on function billing.reconcile_lots() to service_role;

-- ============================================================ triggers

create trigger lot_allocations_immutable before update or delete on billing.lot_allocations
  for each row execute function billing.refuse_ledger_change();

create trigger lot_allocations_no_truncate before truncate on billing.lot_allocations
  for each statement execute function billing.refuse_ledger_change();

-- ============================================================ policies

create policy "Users can read their own lots" on billing.lots
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));

create policy "Users can read allocations of their own lots" on billing.lot_allocations
  for select to authenticated using (lot_id in (select l.id from billing.lots l where l.account_id in
    (select a.id from billing.accounts a where a.user_id = (select auth.uid()))));

-- ============================================================ reference rows

insert into billing.credit_expiry_policy (category, expires_after, priority) values
  ('promotional', interval '365 days', 10), ('paid', null, 20);
