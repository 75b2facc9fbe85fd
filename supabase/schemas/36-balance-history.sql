-- Balances as of a past instant (GET /credits/balance?at=, /credits/lots?at= and the admin and
-- organisation equivalents): balance, held and each lot as they stood, read from what the ledger
-- keeps, never from a copy. The organisation's, which ask the caller's role first
-- (billing.org_balance_as_of, org_lots_as_of), are in 70-orgs.sql, on these.
--
-- The instant of a ledger row is its transaction's start (created_at, granted_at, finished_at:
-- default now()), so an instant takes in whole transactions: every movement whose transaction
-- started at or before it, none of any other.
--   balance    Σ the account's entries dated at or before it (the statement's running sum; the
--              balance_after of its last entry then)
--   a lot      granted by then; remaining = amount − what it had settled of a debt by then − Σ its
--              allocations dated by then (lots_remaining_within: the three always sum to amount)
--   held       Σ the holds placed by then, not yet finished and not past their TTL (a hold past it
--              reserves nothing, as billing.balance_of counts it), each at its amount then
-- What the ledger changes in place is recorded as it changes: a hold's amount (a dispute's hold
-- grows, holds give way to an expiry or a dispute) in hold_resizes, a lot's frozen flag (a
-- dispute) and expiry (a plan renewal ends a period's lot early) in lot_changes. Both triggers
-- name the columns, so the hot path (a charge, a capture, a release) never fires them.
-- Unlike the live balance, an as-of balance does not treat a lot past its expiry as expired
-- before the minute sweep expires it: it is the ledger as recorded.

-- ============================================================ tables

create table billing.hold_resizes (
  id bigint generated always as identity primary key,
  hold_id uuid not null references billing.holds (id),
  resized_at timestamptz not null default now(),
  amount_before numeric(38, 18) not null,
  amount_after numeric(38, 18) not null
);
comment on table billing.hold_resizes is 'Immutable. Each change of a hold''s amount after it was placed (a dispute''s hold grown, a hold giving way in part), for held amounts as of an instant.';
alter table billing.hold_resizes enable row level security;
grant select on table billing.hold_resizes to service_role;

create index hold_resizes_hold on billing.hold_resizes (hold_id, resized_at);

create table billing.lot_changes (
  id bigint generated always as identity primary key,
  lot_id bigint not null references billing.lots (id),
  changed_at timestamptz not null default now(),
  frozen_before boolean not null,
  expires_at_before timestamptz,                  -- null: it never expired
  reserved_before numeric(38, 18) not null        -- what holds reserved of it (a frozen lot's free credits)
);
comment on table billing.lot_changes is 'Immutable. Each change of a lot''s frozen flag or expiry, and of what holds reserved of it while frozen, with the values before it, for lots as of an instant.';
alter table billing.lot_changes enable row level security;
grant select on table billing.lot_changes to service_role;

create index lot_changes_lot on billing.lot_changes (lot_id, changed_at);

-- Holds that live longer than a day (placed by place_hold directly; reserve_hold's live at most a
-- day), for held as of an instant: any other hold reserving at an instant was placed in the day
-- before it (holds_account).
create index holds_long_lived on billing.holds (account_id, created_at)
  where (expires_at at time zone 'UTC') > (created_at at time zone 'UTC') + interval '1 day';

-- ============================================================ functions

create or replace function billing.record_hold_resize() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  insert into billing.hold_resizes (hold_id, amount_before, amount_after) values (new.id, old.amount, new.amount);
  return null;
end;
$$;
comment on function billing.record_hold_resize() is 'Trigger: records a hold''s amount before and after a change.';
revoke execute on function billing.record_hold_resize() from public;

create or replace function billing.record_lot_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  insert into billing.lot_changes (lot_id, frozen_before, expires_at_before, reserved_before)
  values (new.id, old.frozen, old.expires_at, old.reserved);
  return null;
end;
$$;
comment on function billing.record_lot_change() is 'Trigger: records a lot''s frozen flag, expiry and reserved credits before a change of the flag or expiry, or of what holds reserved of it while frozen.';
revoke execute on function billing.record_lot_change() from public;

-- What each of some lots of an account had left at p_at, from the rows after p_at or those
-- before it, whichever span is shorter (so a read costs the entries of that span, not the whole
-- history). Allocations are found through the account's entries (indexed by account and
-- instant), not by lot: lot_allocations has no index by lot, which every charge would pay for.
--   before   remaining = amount − debt settled on arrival − Σ its allocations dated by then, all
--            from its grant (its oldest lot's) to p_at
--   after    remaining = remaining now + Σ its allocations dated after p_at
-- where an allocation counts amount + debt_settled (a return's part that paid a debt never came
-- back to the lot): remaining + debt_settled + Σ (amount + debt_settled) = amount (check_lots).
create or replace function billing.lots_remaining_as_of(p_account_id bigint, p_at timestamptz, p_lots bigint[])
returns table (lot_id bigint, remaining numeric)
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
declare
  v_oldest timestamptz := (select min(l.granted_at) from billing.lots l where l.id = any (p_lots));
  v_before boolean := p_at - v_oldest <= now() - p_at;
  v_drawn jsonb;
begin
  if v_oldest is null then
    return;
  end if;
  -- Σ allocations per lot over the shorter span: a query of its own each, so each is an index range.
  if v_before then
    select jsonb_object_agg(x.lot_id, x.total) into v_drawn from (
      select a.lot_id, sum(a.amount + a.debt_settled) as total
      from billing.entries e join billing.lot_allocations a on a.transfer_id = e.transfer_id
      where e.account_id = p_account_id and e.balance_after is not null and e.created_at >= v_oldest and e.created_at <= p_at
        and a.lot_id = any (p_lots)
      group by a.lot_id) x;
  else
    select jsonb_object_agg(x.lot_id, x.total) into v_drawn from (
      select a.lot_id, sum(a.amount + a.debt_settled) as total
      from billing.entries e join billing.lot_allocations a on a.transfer_id = e.transfer_id
      where e.account_id = p_account_id and e.balance_after is not null and e.created_at > p_at
        and a.lot_id = any (p_lots)
      group by a.lot_id) x;
  end if;
  return query
  select l.id,
    case when v_before
      then l.amount - l.debt_settled - coalesce((v_drawn ->> l.id::text)::numeric, 0)
      else l.remaining + coalesce((v_drawn ->> l.id::text)::numeric, 0) end
  from billing.lots l
  where l.id = any (p_lots);
end;
$$;
comment on function billing.lots_remaining_as_of(p_account_id bigint, p_at timestamp with time zone, p_lots bigint[]) is 'Internal: what each of some lots of an account had left at an instant, read from the shorter of the spans before and after it.';
revoke execute on function billing.lots_remaining_as_of(p_account_id bigint, p_at timestamp with time zone, p_lots bigint[]) from public;

-- An account's lots as they stood at p_at, newest first from p_before_id (null: the newest),
-- at most p_limit (null: all).
create or replace function billing.lots_as_of(p_account_id bigint, p_at timestamptz, p_before_id bigint, p_limit integer)
returns table (id bigint, source billing.transfer_kind, category text, priority integer, amount numeric,
               remaining numeric, granted_at timestamptz, expires_at timestamptz, frozen boolean, purchase_id uuid,
               applies_to text[])
language plpgsql stable
set search_path = ''
as $$
declare
  v_page bigint[] := array(select l.id from billing.lots l
    where l.account_id = p_account_id and l.granted_at <= p_at and (p_before_id is null or l.id < p_before_id)
    order by l.id desc limit case when p_limit is not null then least(greatest(p_limit, 1), 1000) end);
begin
  return query
  select l.id, t.kind, l.category, l.priority, l.amount, r.remaining,
    l.granted_at, case when c.id is null then l.expires_at else c.expires_at_before end, coalesce(c.frozen_before, l.frozen),
    l.purchase_id, l.applies_to
  from billing.lots l
  join billing.transfers t on t.id = l.grant_transfer_id
  join billing.lots_remaining_as_of(p_account_id, p_at, v_page) r on r.lot_id = l.id
  -- The first change after p_at holds the values the lot had at p_at.
  left join lateral (select x.id, x.expires_at_before, x.frozen_before from billing.lot_changes x
                     where x.lot_id = l.id and x.changed_at > p_at order by x.changed_at, x.id limit 1) c on true
  where l.id = any (v_page)
  order by l.id desc;
end;
$$;
comment on function billing.lots_as_of(p_account_id bigint, p_at timestamp with time zone, p_before_id bigint, p_limit integer) is 'Internal: an account''s lots as they stood at an instant (granted by then; remaining, expiry and frozen then), newest first.';
revoke execute on function billing.lots_as_of(p_account_id bigint, p_at timestamp with time zone, p_before_id bigint, p_limit integer) from public;

-- The balance at p_at is Σ the entries dated by then, read from one entry's balance_after (the
-- running sum in id order) and the few entries around it. Per account entries are written in id
-- order under the account's lock, each within its transaction's life: created_at ≤ inserted_at.
-- P, a newest entry dated by p_at − 10 s written within 10 s of its start, was written by p_at;
-- so was every entry before it (id order), all dated by p_at: Σ = P's balance_after + the entries
-- after P dated by p_at. Those were written after P: within 10 s of their start, they are dated
-- after P's created_at − 10 s (an index range); later than that (entries_user_account_late, a
-- batch job's or a long transaction's), they are looked up apart. Without such a P, the same with
-- nothing before: the range from p_at − 10 s and the late ones.
create or replace function billing.balance_at(p_account_id bigint, p_at timestamptz) returns numeric
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
declare
  v_late constant interval := interval '10 seconds';  -- entries_user_account_late's predicate
  v_pivot record;
  v_from timestamptz;
begin
  select e.id, e.balance_after, e.created_at into v_pivot
  from billing.entries e
  where e.account_id = p_account_id and e.balance_after is not null and e.created_at <= p_at - v_late
    and not (e.inserted_at - e.created_at > v_late)
  order by e.created_at desc limit 1;             -- any such entry will do: the index's order, no sort
  v_from := coalesce(v_pivot.created_at, p_at) - v_late;
  return coalesce(v_pivot.balance_after, 0)
    -- id + 0: the range is by instant (entries_user_account_created), never every entry after P.
    + coalesce((select sum(e.amount) from billing.entries e
                where e.account_id = p_account_id and e.balance_after is not null and e.created_at > v_from
                  and e.created_at <= p_at and e.id + 0 > coalesce(v_pivot.id, 0)), 0)
    -- The account's late entries first (offset 0 keeps the other conditions out of the scan, so
    -- no range of every account's rows is read for them); the literal, not v_late, matches the
    -- partial index's predicate.
    + coalesce((select sum(x.amount) from (
                  select e.id, e.amount, e.created_at from billing.entries e
                  where e.account_id = p_account_id and e.balance_after is not null
                    and e.inserted_at - e.created_at > interval '10 seconds'
                  offset 0) x
                where x.id > coalesce(v_pivot.id, 0) and x.created_at <= v_from), 0);
end;
$$;
comment on function billing.balance_at(p_account_id bigint, p_at timestamp with time zone) is 'Internal: an account''s balance at an instant (Σ its entries dated by then), from one entry''s balance_after and the entries around it.';
revoke execute on function billing.balance_at(p_account_id bigint, p_at timestamp with time zone) from public;

-- As billing.get_balance answers, at p_at: balance, held, available, and the next expiry of the
-- lots open then. Zeros before the account existed (and for no account). Held: the holds placed
-- in the day before p_at (reserve_hold's longest life) by holds_account, and any longer-lived
-- ones by holds_long_lived. The next expiry: only lots that have
-- or had an expiry (lot_changes) are read.
create or replace function billing.balance_as_of(p_account_id bigint, p_at timestamptz) returns jsonb
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
declare
  v_balance numeric := billing.balance_at(p_account_id, p_at);
  v_held numeric := coalesce((select sum(coalesce(r.amount_before, h.amount)) from billing.holds h
    left join lateral (select x.amount_before from billing.hold_resizes x
                       where x.hold_id = h.id and x.resized_at > p_at order by x.resized_at, x.id limit 1) r on true
    where h.account_id = p_account_id and h.created_at <= p_at and (h.finished_at is null or h.finished_at > p_at)
      and (h.expires_at > p_at or h.purpose = 'claims')  -- a claims hold holds until the tick ends it
      and (h.created_at > p_at - interval '1 day'
           or (h.expires_at at time zone 'UTC') > (h.created_at at time zone 'UTC') + interval '1 day')), 0);
  v_next record;
  v_frozen numeric;
begin
  -- A frozen lot's free credits (remaining less what holds reserved of it) cannot be spent: as
  -- balance_of, what lots frozen at p_at had free then (lot_changes keeps both while frozen).
  select coalesce(sum(greatest(r.remaining - coalesce(c.reserved_before, l.reserved), 0)), 0) into v_frozen
  from billing.lots_remaining_as_of(p_account_id, p_at, array(
      select l.id from billing.lots l where l.account_id = p_account_id and l.granted_at <= p_at
        and (l.frozen or exists (select 1 from billing.lot_changes x where x.lot_id = l.id and x.frozen_before)))) r
  join billing.lots l on l.id = r.lot_id
  left join lateral (select x.frozen_before, x.reserved_before, x.expires_at_before from billing.lot_changes x
                     where x.lot_id = l.id and x.changed_at > p_at order by x.changed_at, x.id limit 1) c on true
  where coalesce(c.frozen_before, l.frozen)
    and not coalesce(case when c.frozen_before is null then l.expires_at else c.expires_at_before end <= p_at, false);
  select l.expires_at, sum(l.remaining) as amount into v_next
  from (
    select case when c.id is null then l.expires_at else c.expires_at_before end as expires_at, r.remaining
    from billing.lots_remaining_as_of(p_account_id, p_at, array(
      select l.id from billing.lots l
      where l.account_id = p_account_id and l.granted_at <= p_at
        and (l.expires_at is not null or exists (select 1 from billing.lot_changes x where x.lot_id = l.id and x.expires_at_before is not null)))) r
    join billing.lots l on l.id = r.lot_id
    left join lateral (select x.id, x.expires_at_before from billing.lot_changes x
                       where x.lot_id = l.id and x.changed_at > p_at order by x.changed_at, x.id limit 1) c on true) l
  where l.remaining > 0 and l.expires_at is not null
  group by l.expires_at order by l.expires_at limit 1;
  return jsonb_build_object('as_of', billing.json_time(p_at), 'balance', trim_scale(v_balance)::text,
    'held', trim_scale(v_held)::text, 'available', trim_scale(v_balance - v_held - v_frozen)::text,
    'expiring', case when v_next.expires_at is not null then jsonb_build_object('amount', trim_scale(v_next.amount)::text,
      'at', billing.json_time(v_next.expires_at)) end);
end;
$$;
comment on function billing.balance_as_of(p_account_id bigint, p_at timestamp with time zone) is 'Internal: an account''s balance, held, available and next expiry as they stood at an instant, as JSON.';
revoke execute on function billing.balance_as_of(p_account_id bigint, p_at timestamp with time zone) from public;

-- Lots as the API answers them.
create or replace function billing.lots_as_of_json(p_account_id bigint, p_at timestamptz, p_before_id bigint, p_limit integer)
returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('id', l.id::text, 'source', l.source, 'category', l.category,
      'priority', l.priority, 'amount', trim_scale(l.amount)::text, 'remaining', trim_scale(l.remaining)::text,
      'granted_at', billing.json_time(l.granted_at), 'expires_at', billing.json_time(l.expires_at), 'frozen', l.frozen,
      'applies_to', to_jsonb(l.applies_to))
    order by l.id desc), '[]'::jsonb)
  from billing.lots_as_of(p_account_id, p_at, p_before_id, p_limit) l
$$;
comment on function billing.lots_as_of_json(p_account_id bigint, p_at timestamp with time zone, p_before_id bigint, p_limit integer) is 'Internal: billing.lots_as_of as the API answers it (a JSON array, newest first).';
revoke execute on function billing.lots_as_of_json(p_account_id bigint, p_at timestamp with time zone, p_before_id bigint, p_limit integer) from public;

-- A user's own account (the caller's, or any user's for an admin route: the caller checks).
create or replace function billing.user_balance_as_of(p_user uuid, p_at timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.balance_as_of((select a.id from billing.accounts a where a.user_id = p_user), p_at) $$;
comment on function billing.user_balance_as_of(p_user uuid, p_at timestamp with time zone) is 'A user''s balance, held, available and next expiry as they stood at an instant (zeros before the account existed).';
revoke execute on function billing.user_balance_as_of(p_user uuid, p_at timestamp with time zone) from public;
grant execute on function billing.user_balance_as_of(p_user uuid, p_at timestamp with time zone) to service_role;

create or replace function billing.user_lots_as_of(p_user uuid, p_at timestamptz, p_before_id bigint, p_limit integer)
returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.lots_as_of_json((select a.id from billing.accounts a where a.user_id = p_user), p_at, p_before_id, p_limit) $$;
comment on function billing.user_lots_as_of(p_user uuid, p_at timestamp with time zone, p_before_id bigint, p_limit integer) is 'A user''s lots as they stood at an instant, newest first, keyset-paginated by lot id.';
revoke execute on function billing.user_lots_as_of(p_user uuid, p_at timestamp with time zone, p_before_id bigint, p_limit integer) from public;
grant execute on function billing.user_lots_as_of(p_user uuid, p_at timestamp with time zone, p_before_id bigint, p_limit integer) to service_role;

-- ============================================================ triggers

create trigger holds_record_resize after update of amount on billing.holds
  for each row when (old.amount is distinct from new.amount) execute function billing.record_hold_resize();

create trigger lots_record_change after update of frozen, expires_at, reserved on billing.lots
  for each row when (old.frozen is distinct from new.frozen or old.expires_at is distinct from new.expires_at
                     or (old.frozen and new.frozen and old.reserved is distinct from new.reserved))
  execute function billing.record_lot_change();

create trigger hold_resizes_immutable before update or delete on billing.hold_resizes
  for each row execute function billing.refuse_ledger_change();

create trigger lot_changes_immutable before update or delete on billing.lot_changes
  for each row execute function billing.refuse_ledger_change();
