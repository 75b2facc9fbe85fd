-- School wallets: an organisation (a school, a course, a scholarship programme) buys or is
-- granted credits once and funds its students with them.
--
-- An organisation has one wallet: an account with org_id set, tracked like a user's (balance,
-- held, version, lots, debt). It funds its members one of two ways, chosen per organisation:
--   allowance: transfers from the wallet to each member's allowance account (org_id and
--              member_id set), which only that member spends from; at the term's end what is
--              left sweeps back to the wallet (pg_cron, idempotent, in the ledger).
--   pool:      members spend from the wallet itself, each within caps per day, week, month or
--              term: spend_caps rows on the wallet with member_id set (the same mechanism and the
--              same lock as a user's caps).
-- A member's spending picks one wallet per charge, in order: organisations that pay first (by
-- when the member joined), the member's own account, then organisations that pay after it. A
-- charge is never split across wallets: each transfer, hold and job has exactly one account,
-- as before. Every org-funded transfer and hold records the member (member_id), which is what
-- the organisation's usage report reads.
--
-- Locks, so no two transactions wait on each other in a cycle: a user's own account is locked
-- first (as everywhere); organisation accounts are locked after it, always in ascending id order.

alter type billing.transfer_kind add value if not exists 'allowance';        -- wallet → a member's allowance
alter type billing.transfer_kind add value if not exists 'allowance_sweep';  -- an allowance's rest → the wallet

-- ============================================================ organisations and members

create table billing.orgs (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  funding text not null default 'allowance',
  org_pays_first boolean not null default true,      -- members spend org credits before their own
  term_started_at timestamptz not null default now(),
  term_ends_at timestamptz,                          -- allowances sweep back then; 'term' caps end then
  term_swept_at timestamptz,                         -- the sweep of the term that ended then ran
  created_by uuid not null references auth.users (id),
  created_at timestamptz not null default now(),
  constraint orgs_name_length check (length(name) between 1 and 200),
  constraint orgs_funding check (funding in ('allowance', 'pool')),
  constraint orgs_term_order check (term_ends_at is null or term_ends_at > term_started_at)
);
comment on table billing.orgs is 'An organisation that funds its members'' spending from one wallet: allowances or a capped shared pool.';
create index orgs_term_due on billing.orgs (term_ends_at) where term_ends_at is not null and term_swept_at is null;

create table billing.org_members (
  org_id uuid not null references billing.orgs (id),
  user_id uuid not null references auth.users (id),
  role text not null,                                -- owner and admin manage; member is funded
  active boolean not null default true,
  joined_at timestamptz not null default now(),
  removed_at timestamptz,
  primary key (org_id, user_id),
  constraint org_members_role check (role in ('owner', 'admin', 'member')),
  constraint org_members_removed check (active = (removed_at is null))
);
comment on table billing.org_members is 'Who belongs to an organisation and as what. A removed member keeps the row (inactive) for the record.';
create index org_members_user on billing.org_members (user_id) where active;

create table billing.org_invitations (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references billing.orgs (id),
  email text not null,
  role text not null,
  token_hash text not null unique,                   -- SHA-256 of the emailed token; the token is never stored
  status text not null default 'pending',
  invited_by uuid not null references auth.users (id),
  answered_by uuid references auth.users (id),
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  answered_at timestamptz,
  constraint org_invitations_role check (role in ('admin', 'member')),
  constraint org_invitations_status check (status in ('pending', 'accepted', 'declined', 'expired', 'revoked'))
);
comment on table billing.org_invitations is 'An invitation by email to join an organisation; answered once with its token.';
create unique index org_invitations_one_pending on billing.org_invitations (org_id, lower(email)) where status = 'pending';

-- ============================================================ accounts, transfers, holds, caps

alter table billing.accounts
  add column org_id uuid references billing.orgs (id),
  add column member_id uuid references auth.users (id),
  -- On a user's own account: how many organisations fund their spending (0: the plain path).
  add column orgs integer not null default 0;
alter table billing.accounts drop constraint accounts_user_xor_platform;
alter table billing.accounts
  add constraint accounts_one_owner check (num_nonnulls(user_id, code, org_id) = 1),
  add constraint accounts_member_of_org check (member_id is null or org_id is not null);
create unique index accounts_org_member on billing.accounts (org_id, member_id) nulls not distinct where org_id is not null;
comment on column billing.accounts.org_id is 'An organisation''s wallet (member_id null) or a member''s allowance account (member_id set).';

-- The member who spent org-funded credits (a transfer from a wallet or an allowance, a hold on one).
alter table billing.transfers add column member_id uuid;
alter table billing.holds add column member_id uuid;
create index transfers_org_member on billing.transfers (member_id, created_at) where member_id is not null;

alter table billing.spend_caps add column member_id uuid references auth.users (id);
alter table billing.spend_caps drop constraint spend_caps_one_per_scope;
alter table billing.spend_caps drop constraint spend_caps_period;
alter table billing.spend_caps
  add constraint spend_caps_one_per_scope unique nulls not distinct (account_id, member_id, period, model),
  add constraint spend_caps_period check (period in ('day', 'week', 'month', 'term')),
  add constraint spend_caps_term_for_members check (period <> 'term' or member_id is not null);

-- ============================================================ row level security
-- A member sees their own membership and their organisations; an org admin sees the
-- organisation's members and invitations; nobody else sees anything. Writes go through the
-- functions below only.

-- Who administers what, kept beside org_members by the functions below: a policy on
-- org_members that read org_members would recurse, and a definer-rights helper would be a
-- function the API roles could call (both refused here, as Supabase's advisor refuses them).
create table billing.org_admins (
  org_id uuid not null references billing.orgs (id),
  user_id uuid not null references auth.users (id),
  primary key (org_id, user_id)
);
comment on table billing.org_admins is 'The active owners and admins of each organisation (for RLS); maintained with org_members.';
create index org_admins_user on billing.org_admins (user_id);

revoke all on billing.orgs, billing.org_members, billing.org_invitations, billing.org_admins
  from public, anon, authenticated, service_role;
alter table billing.orgs enable row level security;
alter table billing.org_members enable row level security;
alter table billing.org_invitations enable row level security;
alter table billing.org_admins enable row level security;
grant select on billing.orgs, billing.org_members, billing.org_invitations, billing.org_admins to authenticated, service_role;
create policy "Members can read their organisations" on billing.orgs
  for select to authenticated using (id in (select m.org_id from billing.org_members m where m.user_id = (select auth.uid()) and m.active));
create policy "Members read their own membership, admins their organisation's" on billing.org_members
  for select to authenticated
  using (user_id = (select auth.uid()) or org_id in (select a.org_id from billing.org_admins a where a.user_id = (select auth.uid())));
create policy "Admins read their organisation's invitations" on billing.org_invitations
  for select to authenticated using (org_id in (select a.org_id from billing.org_admins a where a.user_id = (select auth.uid())));
create policy "Admins read their own admin rows" on billing.org_admins
  for select to authenticated using (user_id = (select auth.uid()));

create or replace view billing_api.org_memberships with (security_invoker = true) as
  select m.org_id, o.name as org_name, m.user_id, m.role, m.active, m.joined_at, m.removed_at
  from billing.org_members m join billing.orgs o on o.id = m.org_id;
comment on view billing_api.org_memberships is 'Memberships the caller may see (RLS): their own, and every member of an organisation they administer.';
grant select on billing_api.org_memberships to authenticated;

-- ============================================================ who may act

-- The caller's role in the organisation, refusing when they have none that suffices: a
-- non-member gets ORG_NOT_FOUND (the organisation's existence is not revealed), a member
-- asking for an admin's action ORG_FORBIDDEN.
create function billing.require_org_role(p_org uuid, p_user uuid, p_admin boolean) returns billing.orgs
language plpgsql
set search_path = ''
as $$
declare
  v_org billing.orgs;
  v_role text;
begin
  select m.role into v_role from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active;
  select * into v_org from billing.orgs o where o.id = p_org;
  if v_role is null or v_org.id is null then
    perform billing.raise_error('ORG_NOT_FOUND', jsonb_build_object('org_id', p_org));
  end if;
  if p_admin and v_role not in ('owner', 'admin') then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('org_id', p_org, 'role', v_role));
  end if;
  return v_org;
end;
$$;
comment on function billing.require_org_role(uuid, uuid, boolean) is 'Internal: the organisation, when p_user is an active member (an owner or admin if p_admin).';

create function billing.org_wallet_id(p_org uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id is null;
  if v_id is null then
    insert into billing.accounts (org_id) values (p_org) on conflict do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id is null;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.org_wallet_id(uuid) is 'Internal: the organisation''s wallet account, created on first use.';

create function billing.allowance_account_id(p_org uuid, p_member uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id = p_member;
  if v_id is null then
    insert into billing.accounts (org_id, member_id) values (p_org, p_member) on conflict do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id = p_member;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.allowance_account_id(uuid, uuid) is 'Internal: a member''s allowance account in the organisation, created on first use.';

-- ============================================================ moving credits between tracked accounts

-- Moves p_amount from one tracked account to another (the wallet ↔ an allowance), both locked
-- here in ascending id order. The receiving side gets one lot per lot drawn, with the same
-- category, cost basis, priority and expiry: a credit keeps where it came from and when it
-- expires wherever it moves. Idempotent on (p_key, p_kind).
create function billing.move_credits(
  p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid,
  p_metadata jsonb default null
) returns billing.transfers
language plpgsql
set search_path = ''
as $$
declare
  v_from billing.accounts;
  v_to billing.accounts;
  v_transfer billing.transfers;
  d record;
begin
  perform billing.check_amount(p_amount);
  perform 1 from billing.accounts a where a.id in (p_from, p_to) order by a.id for update;
  select * into v_transfer from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
  if found then
    if v_transfer.amount <> p_amount or v_transfer.from_account_id <> p_from or v_transfer.to_account_id <> p_to then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    return v_transfer;
  end if;
  select * into v_from from billing.accounts a where a.id = p_from;
  if v_from.held > 0 then
    perform billing.expire_overdue_holds(p_from);
    select * into v_from from billing.accounts a where a.id = p_from;
  end if;
  if v_from.balance - v_from.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(v_from.balance - v_from.held, 0))::text, 'debt', v_from.balance < 0,
      'wallet', 'organisation'));
  end if;

  insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, member_id, metadata)
  values (p_kind, p_from, p_to, p_amount, p_key, p_member, p_metadata)
  returning * into v_transfer;
  update billing.accounts a set balance = a.balance - p_amount, version = a.version + 1 where a.id = p_from
  returning * into v_from;
  update billing.accounts a set balance = a.balance + p_amount, version = a.version + 1 where a.id = p_to
  returning * into v_to;
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version) values
    (v_transfer.id, p_from, -p_amount, v_from.balance, v_from.version),
    (v_transfer.id, p_to, p_amount, v_to.balance, v_to.version);

  perform billing.draw_lots(p_kind, array[v_transfer.id], array[p_from], array[p_amount]);
  -- One lot on the receiving side (a lot is one grant): its cost basis is exactly what the
  -- credits drawn cost; it is paid if any of them was; it expires when the first of them would
  -- (never later than a credit it came from; one already overdue expires at the next run).
  select coalesce(bool_or(l.category = 'paid'), false) as paid, sum(l.cost_cents * x.amount / l.amount) as cost,
    min(l.priority) as priority, min(l.expires_at) as expires_at, min(l.currency) as currency
  into d
  from billing.lot_allocations x join billing.lots l on l.id = x.lot_id where x.transfer_id = v_transfer.id;
  perform billing.create_lot(p_to, v_transfer.id, p_kind, p_amount, v_to.balance, jsonb_strip_nulls(jsonb_build_object(
    'category', case when d.paid then 'paid' else 'promotional' end,
    'cost_cents', case when d.paid then coalesce(d.cost, 0) else 0 end,
    'priority', d.priority, 'currency', d.currency,
    'expires_at', greatest(d.expires_at, now() + interval '1 second'))));
  return v_transfer;
end;
$$;
comment on function billing.move_credits(bigint, bigint, numeric, billing.transfer_kind, text, uuid, jsonb)
  is 'Internal: a transfer between two tracked accounts (wallet ↔ allowance), the lots drawn mirrored on the receiving side.';

-- ============================================================ a member's spending: which wallet pays

-- Locks and returns the account that pays p_amount for p_user (whose own account p_own is
-- locked): the first, in spending order, with the credits available and, on a pooled wallet,
-- room under the member's caps (counted here, under the wallet's lock). A retry of a charge
-- already made returns the account it was made from. Refuses with INSUFFICIENT_CREDITS listing
-- every wallet and what it lacked when none can pay.
create function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text,
  p_key text, p_kind billing.transfer_kind) returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_existing billing.transfers;
  v_sources record;
  v_account billing.accounts;
  v_available numeric(38, 18);
  v_cap jsonb;
  v_wallets jsonb := '[]';
  v_best numeric(38, 18) := 0;
  i integer;
begin
  if p_kind is not null then
    select * into v_existing from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
    if found and v_existing.member_id = p_user then
      select * into v_account from billing.accounts a where a.id = v_existing.from_account_id for update;
      return v_account;
    elsif found then
      return p_own;
    end if;
  end if;

  -- Organisations that pay first (0), the member's own account (1), those that pay after (2);
  -- by when the member joined. A member without an allowance account yet has nothing there.
  select array_agg(s.account_id order by s.rank, s.joined_at) as accounts, array_agg(s.org_id order by s.rank, s.joined_at) as orgs
  into v_sources
  from (
    select o.id as org_id, case when o.org_pays_first then 0 else 2 end as rank, m.joined_at,
      (select a.id from billing.accounts a where a.org_id = o.id
         and a.member_id is not distinct from case when o.funding = 'allowance' then p_user end) as account_id
    from billing.org_members m join billing.orgs o on o.id = m.org_id
    where m.user_id = p_user and m.active and m.role = 'member'
    union all
    select null, 1, null, p_own.id
  ) s where s.account_id is not null;
  perform 1 from billing.accounts a where a.id = any(v_sources.accounts) and a.id <> p_own.id order by a.id for update;

  for i in 1 .. array_length(v_sources.accounts, 1) loop
    select * into v_account from billing.accounts a where a.id = v_sources.accounts[i];
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account.id);
      select * into v_account from billing.accounts a where a.id = v_account.id;
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_available >= p_amount then
      if v_account.org_id is null then
        return v_account;                                 -- the member's own caps: the caller's, as for anyone
      end if;
      v_cap := case when v_account.caps > 0 then billing.take_cap_room(v_account.id, p_amount, p_model, p_user) end;
      if v_cap is null then
        return v_account;
      end if;
    end if;
    v_best := greatest(v_best, case when v_cap is null then v_available else 0 end);
    v_wallets := v_wallets || jsonb_strip_nulls(jsonb_build_object(
      'wallet', case when v_account.org_id is null then 'personal' else 'organisation' end,
      'org_id', v_sources.orgs[i], 'available', trim_scale(v_available)::text,
      'short_by', trim_scale(greatest(p_amount - v_available, 0))::text, 'cap', v_cap));
    v_cap := null;
  end loop;
  perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
    'available', trim_scale(v_best)::text, 'debt', p_own.balance < 0, 'wallets', v_wallets));
end;
$$;
comment on function billing.lock_spending_source(billing.accounts, uuid, numeric, text, text, billing.transfer_kind)
  is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';

-- ============================================================ caps per member, and terms
drop function billing.charge_caps(bigint, numeric, text);
drop function billing.take_cap_room(bigint, numeric, text);
drop function billing.return_cap_room(bigint, numeric, text, timestamptz);
create or replace function billing.cap_period(p_period text, p_time_zone text, p_at timestamptz, out starts timestamptz, out resets timestamptz)
language sql stable
set search_path = ''
as $$
  -- A term has no calendar: its start is on the cap row, its end on the organisation.
  select case when p_period <> 'term' then date_trunc(p_period, p_at at time zone p_time_zone) at time zone p_time_zone end,
         case when p_period <> 'term'
              then (date_trunc(p_period, p_at at time zone p_time_zone) + ('1 ' || p_period)::interval) at time zone p_time_zone end
$$;

create function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  c billing.spend_caps;
  v_counted boolean := false;
begin
  for c in
    with x as (
      select x.id, x.amount,
        case when x.period = 'term' or x.period_start = date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone
             then x.spent else 0 end + p_amount as spent_now,
        case when x.period = 'term' then x.period_start
             else date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone end as starts
      from billing.spend_caps x
      where x.account_id = p_account_id and (x.model is null or x.model = p_model)
        and (x.member_id is null or x.member_id = p_member)
    ), fits as (
      select x.*, bool_and(x.spent_now <= x.amount) over () as all_fit from x
    )
    update billing.spend_caps s set period_start = f.starts, spent = f.spent_now
    from fits f where s.id = f.id and f.all_fit
    returning s.*
  loop
    v_counted := true;
    if c.alert_percents <> '{}' then
      perform billing.cap_alerts_after(c);
    end if;
  end loop;
  if v_counted then
    return null;
  end if;
  return (select jsonb_build_object('cap_id', x.id::text, 'period', x.period, 'time_zone', x.time_zone, 'model', x.model,
      'cap', trim_scale(x.amount)::text, 'spent', trim_scale(case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end)::text,
      'required', trim_scale(p_amount)::text, 'resets_at', billing.json_time(coalesce(p.resets,
        (select o.term_ends_at from billing.accounts a join billing.orgs o on o.id = a.org_id where a.id = x.account_id))))
    from billing.spend_caps x cross join lateral billing.cap_period(x.period, x.time_zone, now()) p
    where x.account_id = p_account_id and (x.model is null or x.model = p_model)
      and (x.member_id is null or x.member_id = p_member)
      and case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end + p_amount > x.amount
    order by x.amount - case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end, x.id
    limit 1);
end;
$$;

comment on function billing.take_cap_room(bigint, numeric, text, uuid)
  is 'Internal: counts an amount against the applicable caps (the account''s, and the member''s on a pooled wallet) if all have room; else returns the cap it would exceed.';

create function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_over jsonb := billing.take_cap_room(p_account_id, p_amount, p_model, p_member);
begin
  if v_over is not null then
    perform billing.raise_error('SPEND_CAP_REACHED', v_over);
  end if;
end;
$$;

comment on function billing.charge_caps(bigint, numeric, text, uuid) is 'Internal: take_cap_room, refusing with SPEND_CAP_REACHED when a cap has no room.';

create function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamptz,
  p_member uuid default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  c billing.spend_caps;
begin
  for c in
    update billing.spend_caps x set spent = greatest(x.spent - p_amount, 0)
    where p_amount > 0 and x.account_id = p_account_id and (x.model is null or x.model = p_model)
      and (x.member_id is null or x.member_id = p_member) and x.created_at <= p_placed_at
      and case when x.period = 'term' then x.period_start <= p_placed_at
               else x.period_start = date_trunc(x.period, p_placed_at at time zone x.time_zone) at time zone x.time_zone end
    returning x.*
  loop
    if c.alert_percents <> '{}' then
      perform billing.cap_alerts_after(c);
    end if;
  end loop;
end;
$$;

comment on function billing.return_cap_room(bigint, numeric, text, timestamptz, uuid)
  is 'Internal: gives back what a hold counted against caps and did not spend, in the period it was placed.';

create or replace function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_hold.purpose <> 'dispute' and p_unspent > 0
     and (select a.caps from billing.accounts a where a.id = p_hold.account_id) > 0 then
    perform billing.return_cap_room(p_hold.account_id, p_unspent, p_hold.metadata ->> 'model', p_hold.created_at,
      p_hold.member_id);
  end if;
end;
$$;


create or replace function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric,
  p_actor uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
begin
  if p_period is null or p_period not in ('day', 'week', 'month') then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'period', 'rule', 'day, week or month'));
  end if;
  if not exists (select 1 from pg_catalog.pg_timezone_names z where z.name = p_time_zone) then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'time_zone', 'rule', 'an IANA time zone, e.g. Europe/Berlin'));
  end if;
  if p_amount is not null then
    perform billing.check_amount(p_amount);
  end if;
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  if p_amount is null then
    delete from billing.spend_caps c
    where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from p_model;
  else
    insert into billing.spend_caps as c (account_id, period, time_zone, model, amount, set_by)
    values (v_account_id, p_period, p_time_zone, p_model, p_amount, p_actor)
    on conflict (account_id, member_id, period, model) do update
      set amount = excluded.amount, time_zone = excluded.time_zone, set_by = excluded.set_by, updated_at = now();
  end if;
  update billing.accounts a set caps = (select count(*) from billing.spend_caps c where c.account_id = a.id)
  where a.id = v_account_id;
  return billing.get_spend_caps(p_user);
end;
$$;


-- ============================================================ posting: the paying account
drop function billing.post_user_transfer(uuid, integer, text, numeric, billing.transfer_kind, text, text, text, text, jsonb, bigint, uuid, jsonb);
create function billing.post_user_transfer(
  p_user uuid,
  p_direction integer,
  p_mode text,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_platform_code text,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_reference text default null,
  p_metadata jsonb default null,
  p_rate_card_id bigint default null,
  p_hold_id uuid default null,
  p_lot jsonb default null,
  p_account_id bigint default null                -- this account (a hold's, a lot's), not the user's own
) returns billing.transfer_result
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_account_id bigint;
  v_platform_id bigint := billing.platform_account_id(p_platform_code);
  v_existing billing.transfers;
  v_transfer_id bigint;
  v_bal billing.balance;
  v_delta numeric(38, 18);
  v_member uuid;
begin
  perform billing.check_amount(p_amount);
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;

  -- Find and lock the account in one statement; create it first only when it must exist.
  if p_account_id is not null then
    select * into v_account from billing.accounts a where a.id = p_account_id for update;
  else
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  if not found then
    if p_direction < 0 and p_mode <> 'reverse' then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
        'debt', false));
    end if;
    perform billing.ensure_user_account(p_user);
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  -- A member of organisations that fund them: the wallet that pays (orgs = 0 skips it all).
  if v_account.orgs > 0 and p_mode = 'spend' and p_account_id is null then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, p_kind);
  end if;
  v_account_id := v_account.id;
  v_member := case when v_account.org_id is not null then p_user end;

  -- Checked after the lock: a concurrent call with the same key has committed by now.
  select * into v_existing from billing.transfers t where t.idempotency_key = p_idempotency_key and t.kind = p_kind;
  if found then
    if v_existing.amount <> p_amount
      or (p_direction > 0 and v_existing.to_account_id <> v_account_id)
      or (p_direction < 0 and v_existing.from_account_id <> v_account_id) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    v_bal := billing.balance_of(v_account_id);
    return (v_existing.id, v_existing.amount, v_bal.balance, v_bal.held, v_bal.available, true)::billing.transfer_result;
  end if;

  if p_mode = 'spend' then
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account_id);
      select * into v_account from billing.accounts a where a.id = v_account_id;
    end if;
    if v_account.balance - v_account.held < p_amount then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
        'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
        'debt', v_account.balance < 0));
    end if;
    if v_account.caps > 0 and v_account.org_id is null then  -- a pooled wallet's were counted choosing it
      perform billing.charge_caps(v_account_id, p_amount, p_metadata ->> 'model');
    end if;
  elsif p_mode = 'capture' and v_account.balance < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance, 0))::text, 'debt', v_account.balance < 0));
  end if;

  begin
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id, member_id)
    values (p_kind,
            case when p_direction > 0 then v_platform_id else v_account_id end,
            case when p_direction > 0 then v_account_id else v_platform_id end,
            p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, p_hold_id, v_member)
    returning id into v_transfer_id;
  exception when unique_violation then
    -- The same key and kind was used for another account.
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
  end;

  v_delta := p_direction * p_amount;
  update billing.accounts a set balance = a.balance + v_delta, version = a.version + 1
  where a.id = v_account_id
  returning * into v_account;

  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version) values
    (v_transfer_id, v_account_id, v_delta, v_account.balance, v_account.version),
    (v_transfer_id, v_platform_id, -v_delta, null, null);

  if p_direction > 0 then
    perform billing.create_lot(v_account_id, v_transfer_id, p_kind, p_amount, v_account.balance, p_lot);
  elsif p_lot is null then
    -- The common debit, in one statement: the first lot in spending order covers it (the order
    -- is draw_lots'). Otherwise draw_lots spreads it over several lots.
    with drawn as (
      update billing.lots l set remaining = l.remaining - p_amount
      where l.id = (select x.id from billing.lots x where x.account_id = v_account_id and x.open
                    order by coalesce(x.expires_at <= now(), false) desc, x.frozen, x.priority, x.expires_at nulls last,
                      x.granted_at, x.id
                    limit 1)
        and l.remaining >= p_amount
      returning l.id
    )
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
    select v_transfer_id, drawn.id, p_kind, p_amount from drawn;
    if not found then
      perform billing.draw_lots(p_kind, array[v_transfer_id], array[v_account_id], array[p_amount]);
    end if;
  else
    perform billing.draw_lots(p_kind, array[v_transfer_id], array[v_account_id], array[p_amount],
      array(select jsonb_array_elements_text(p_lot -> 'first')::bigint));
  end if;
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;

  -- Overdue holds were expired above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$$;

comment on function billing.post_user_transfer(uuid, integer, text, numeric, billing.transfer_kind, text, text, text, text, jsonb, bigint, uuid, jsonb, bigint)
  is 'Internal: moves credits between a user''s account (or, for a member, the organisation wallet that pays; or p_account_id) and a platform account, under the account lock.';

-- ============================================================ holds: placed on the paying account, kept by the member
drop function billing.place_hold(bigint, numeric, text, timestamptz, text, text, jsonb);
create function billing.place_hold(
  p_account_id bigint,
  p_amount numeric,
  p_idempotency_key text,
  p_expires_at timestamptz,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_member uuid default null
) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
begin
  -- The caller holds the account lock and has checked what may be held.
  insert into billing.holds (account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose, member_id)
  values (p_account_id, p_amount, p_idempotency_key, p_correlation_id, p_metadata, p_expires_at, p_purpose, p_member)
  returning * into v_hold;
  update billing.accounts a set held = a.held + p_amount where a.id = p_account_id;
  perform billing.on_available_change(a) from billing.accounts a
  where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return v_hold;
end;
$$;

create or replace function billing.reserve_hold(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_ttl_seconds integer,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.hold_result
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_hold billing.holds;
begin
  perform billing.check_amount(p_amount);
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and 86400 then
    perform billing.raise_error('INVALID_TTL', jsonb_build_object('rule', '1 to 86400 seconds'));
  end if;
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
      'debt', false));
  end if;

  select * into v_hold from billing.holds h where h.idempotency_key = p_idempotency_key;
  if found then
    if (v_hold.account_id <> v_account.id and v_hold.member_id is distinct from p_user) or v_hold.amount <> p_amount
       or v_hold.purpose <> p_purpose then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'hold'));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;

  if v_account.orgs > 0 then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, null);
  end if;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(v_account.id);
    select * into v_account from billing.accounts a where a.id = v_account.id;
  end if;
  if v_account.balance - v_account.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
      'debt', v_account.balance < 0));
  end if;

  if v_account.caps > 0 and v_account.org_id is null then
    perform billing.charge_caps(v_account.id, p_amount, p_metadata ->> 'model');
  end if;
  v_hold := billing.place_hold(v_account.id, p_amount, p_idempotency_key, now() + make_interval(secs => p_ttl_seconds),
    p_purpose, p_correlation_id, p_metadata, case when v_account.org_id is not null then p_user end);
  return billing.hold_result_of(v_hold, false);
end;
$$;

create or replace function billing.lock_hold(p_user uuid, p_hold_id uuid) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_hold billing.holds;
begin
  select h.account_id into v_account_id from billing.holds h
  join billing.accounts a on a.id = h.account_id
  where h.id = p_hold_id and (p_user is null or a.user_id = p_user
    or (h.member_id = p_user and exists (select 1 from billing.org_members m
                                         where m.org_id = a.org_id and m.user_id = p_user and m.active)));
  if v_account_id is null then
    perform billing.raise_error('HOLD_NOT_FOUND', jsonb_build_object('hold_id', p_hold_id));
  end if;
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  select * into v_hold from billing.holds h where h.id = p_hold_id for update;
  if p_user is not null and v_hold.purpose <> 'user' then
    perform billing.raise_error('HOLD_NOT_USER_MANAGED', jsonb_build_object('hold_id', p_hold_id, 'purpose', v_hold.purpose));
  end if;
  return v_hold;
end;
$$;

create or replace function billing.capture_hold(
  p_user uuid,
  p_hold_id uuid,
  p_amount numeric default null,
  p_correlation_id text default null
) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
  v_capture numeric(38, 18) := coalesce(p_amount, v_hold.amount);
  v_transfer billing.transfer_result;
  v_user uuid;
  v_unfrozen numeric(38, 18);
begin
  if v_hold.status = 'captured' then
    if p_amount is not null and p_amount <> v_hold.captured_amount then
      perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id,
        'captured', trim_scale(v_hold.captured_amount)::text));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;
  if v_hold.status <> 'active' or v_hold.expires_at <= now() then
    perform billing.raise_error(case when v_hold.status = 'released' then 'HOLD_RELEASED' else 'HOLD_EXPIRED' end,
      jsonb_build_object('hold_id', p_hold_id, 'expires_at', v_hold.expires_at));
  end if;
  perform billing.check_amount(v_capture);
  if v_capture > v_hold.amount then
    perform billing.raise_error('CAPTURE_EXCEEDS_HOLD', jsonb_build_object('held', trim_scale(v_hold.amount)::text,
      'requested', trim_scale(v_capture)::text));
  end if;

  -- A user's own capture never spends credits a dispute has frozen (a reversal of another
  -- purchase can take the balance below what is held). A job's capture is work already done.
  if p_user is not null then
    select a.balance - coalesce(sum(h.amount), 0) into v_unfrozen
    from billing.accounts a
    left join billing.holds h on h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute'
    where a.id = v_hold.account_id group by a.balance;
    if v_unfrozen < v_capture then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(v_capture)::text,
        'available', trim_scale(greatest(v_unfrozen, 0))::text, 'frozen_by_dispute', true));
    end if;
  end if;

  -- The hold stops counting first, so the capture spends the reserved credits.
  update billing.accounts a set held = a.held - v_hold.amount where a.id = v_hold.account_id returning a.user_id into v_user;
  v_transfer := billing.post_user_transfer(coalesce(v_user, v_hold.member_id), -1, 'capture', v_capture, 'hold_capture',
    'usage_revenue', 'hold:' || p_hold_id::text, coalesce(p_correlation_id, v_hold.correlation_id), null, null, null, p_hold_id,
    p_account_id => v_hold.account_id);
  update billing.holds h set status = 'captured', captured_amount = v_capture, capture_transfer_id = v_transfer.transfer_id,
    finished_at = now()
  where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - v_capture);
  return billing.hold_result_of(v_hold, false);
end;
$$;

create or replace function billing.expire_lots(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_lot billing.lots;
  v_account billing.accounts;
  v_take numeric(38, 18);
  v_count integer := 0;
begin
  for v_lot in
    select l.* from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.open and l.expires_at <= now() and a.balance > a.held
    order by l.expires_at, l.id limit p_limit
  loop
    -- The account first, as everywhere; then the lot as it is now.
    select * into v_account from billing.accounts a where a.id = v_lot.account_id for update;
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account.id);
      select * into v_account from billing.accounts a where a.id = v_account.id;
    end if;
    select * into v_lot from billing.lots l where l.id = v_lot.id;
    v_take := least(v_lot.remaining, greatest(v_account.balance - v_account.held, 0));
    continue when v_take <= 0;
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.post_user_transfer(v_account.user_id, -1, 'reverse', v_take, 'expiry', 'expired',
      'expiry:' || v_lot.id || ':' || trim_scale(v_lot.remaining), null, null,
      jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null, null,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)), v_account.id);
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;

create or replace function billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb default null)
returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker);
  v_price record;
  v_hold billing.holds;
  v_capture numeric(38, 18);
  v_after billing.hold_result;
  v_overage numeric(38, 18);
begin
  if v_job.hold_id is not null then
    select * into v_hold from billing.holds h where h.id = v_job.hold_id;
    v_capture := 0;
    if p_usage is not null then
      select * into v_price from billing.price_usage(p_usage ->> 'model', (p_usage ->> 'input_tokens')::bigint,
                                                     (p_usage ->> 'output_tokens')::bigint);
      v_capture := least(v_price.amount, v_hold.amount);
    end if;
    if v_capture > 0 then
      v_after := billing.capture_hold(null, v_job.hold_id, v_capture, 'job:' || p_job);
      -- The reserve is the worst case the provider can bill; should it ever bill more, the rest
      -- is charged from what is available, never into debt (what cannot be charged is recorded).
      v_overage := least(v_price.amount - v_capture, greatest(v_after.available, 0));
      if v_overage > 0 then
        -- Billed like a capture: work already done, counted against caps when its hold was placed.
        perform billing.post_user_transfer(v_job.user_id, -1, 'capture', v_overage, 'usage', 'usage_revenue',
          'job-overage:' || p_job, 'job:' || p_job, null,
          jsonb_build_object('job_id', p_job, 'model', p_usage ->> 'model', 'reserved', trim_scale(v_hold.amount)::text,
            'priced', trim_scale(v_price.amount)::text, 'unbilled', trim_scale(v_price.amount - v_capture - v_overage)::text),
          v_price.rate_card_id, p_account_id => v_hold.account_id);
      end if;
    else
      perform billing.release_hold(null, v_job.hold_id);
    end if;
  end if;
  update billing.jobs j
  set status = 'completed', progress = 100, result = p_result, completed_at = now(), locked_by = null, locked_until = null,
      error = null
  where j.id = p_job returning * into v_job;
  return v_job;
end;
$$;

create or replace function billing.check_lots() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  with drawn as (
    select la.lot_id, sum(la.amount) as total from billing.lot_allocations la group by la.lot_id
  ), bad_lots as (
    select l.id from billing.lots l left join drawn d on d.lot_id = l.id
    where l.remaining + l.debt_settled + coalesce(d.total, 0) <> l.amount
  ), bad_accounts as (
    select a.id from billing.accounts a left join billing.lots l on l.account_id = a.id
    where a.code is null group by a.id, a.balance
    having coalesce(sum(l.remaining), 0) <> greatest(a.balance, 0)
  ), bad_transfers as (
    select la.transfer_id from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    group by la.transfer_id, t.amount having sum(la.amount) > t.amount
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
    'transfers', coalesce((select jsonb_agg(transfer_id) from bad_transfers), '[]'),
    'deferred_revenue_cents', coalesce((select jsonb_object_agg(currency, jsonb_build_object(
      'from_lots', from_lots, 'from_flows', from_flows)) from deferred), '{}'))
$$;


-- ============================================================ organisations: the functions the API calls
-- Each takes the caller's user id (from their verified token) and checks their role itself.

create function billing.org_json(p_org billing.orgs) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p_org.id, 'name', p_org.name, 'funding', p_org.funding,
    'org_pays_first', p_org.org_pays_first, 'term_started_at', billing.json_time(p_org.term_started_at),
    'term_ends_at', billing.json_time(p_org.term_ends_at), 'created_at', billing.json_time(p_org.created_at))
$$;

create function billing.wallet_json(p_account_id bigint) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('balance', trim_scale(b.balance)::text, 'held', trim_scale(b.held)::text,
    'available', trim_scale(b.available)::text)
  from billing.balance_of(p_account_id) b
$$;

create function billing.create_org(p_user uuid, p_name text, p_funding text, p_org_pays_first boolean) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs;
begin
  insert into billing.orgs (name, funding, org_pays_first, created_by)
  values (p_name, coalesce(p_funding, 'allowance'), coalesce(p_org_pays_first, true), p_user)
  returning * into v_org;
  insert into billing.org_members (org_id, user_id, role) values (v_org.id, p_user, 'owner');
  insert into billing.org_admins (org_id, user_id) values (v_org.id, p_user);
  perform billing.org_wallet_id(v_org.id);
  return billing.get_org(p_user, v_org.id);
end;
$$;

create function billing.get_org(p_user uuid, p_org uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, false);
  v_role text := (select m.role from billing.org_members m where m.org_id = p_org and m.user_id = p_user);
  v_allowance bigint := (select a.id from billing.accounts a where a.org_id = p_org and a.member_id = p_user);
begin
  return billing.org_json(v_org) || jsonb_build_object('role', v_role,
    'wallet', case when v_role in ('owner', 'admin') then billing.wallet_json(billing.org_wallet_id(p_org)) end,
    'allowance', case when v_allowance is not null then billing.wallet_json(v_allowance) end);
end;
$$;

create function billing.list_orgs(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.org_json(o) || jsonb_build_object('role', m.role) order by m.joined_at), '[]')
  from billing.org_members m join billing.orgs o on o.id = m.org_id where m.user_id = p_user and m.active
$$;

create function billing.update_org(p_user uuid, p_org uuid, p_changes jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_wallet bigint := billing.org_wallet_id(p_org);
  v_ends timestamptz := (p_changes ->> 'term_ends_at')::timestamptz;
  a record;
begin
  perform 1 from billing.orgs o where o.id = p_org for update;
  select * into v_org from billing.orgs o where o.id = p_org;
  if p_changes ? 'term_ends_at' and v_ends is not null and v_ends <= now() then
    perform billing.raise_error('INVALID_ORG', jsonb_build_object('field', 'term_ends_at', 'rule', 'in the future'));
  end if;
  if p_changes ? 'term_ends_at' and (v_org.term_swept_at is not null or v_org.term_ends_at is null) then
    -- A new term: 'term' caps start again from nothing.
    update billing.orgs o set term_started_at = now(), term_ends_at = v_ends, term_swept_at = null where o.id = p_org;
    update billing.spend_caps c set spent = 0, period_start = now() where c.account_id = v_wallet and c.period = 'term';
  elsif p_changes ? 'term_ends_at' then
    update billing.orgs o set term_ends_at = v_ends where o.id = p_org;
  end if;
  update billing.orgs o set name = coalesce(p_changes ->> 'name', o.name),
    funding = coalesce(p_changes ->> 'funding', o.funding),
    org_pays_first = coalesce((p_changes ->> 'org_pays_first')::boolean, o.org_pays_first)
  where o.id = p_org returning * into v_org;
  if v_org.funding = 'pool' then
    -- Switching to a pool: allowances would be stranded (members now spend from the wallet).
    for a in select x.member_id from billing.accounts x where x.org_id = p_org and x.member_id is not null loop
      perform billing.sweep_allowance(p_org, a.member_id, 'funding-pool');
    end loop;
  end if;
  return billing.get_org(p_user, p_org);
end;
$$;

-- ============================================================ invitations

create function billing.invite_member(p_user uuid, p_org uuid, p_email text, p_role text, p_token_hash text,
  p_ttl_seconds integer, p_accept_url text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_invitation billing.org_invitations;
begin
  if p_ttl_seconds not between 3600 and 30 * 86400 then
    perform billing.raise_error('INVALID_ORG', jsonb_build_object('field', 'ttl_seconds', 'rule', '1 hour to 30 days'));
  end if;
  update billing.org_invitations i set status = 'expired', answered_at = now()
  where i.org_id = p_org and lower(i.email) = lower(p_email) and i.status = 'pending' and i.expires_at <= now();
  insert into billing.org_invitations (org_id, email, role, token_hash, invited_by, expires_at)
  values (p_org, p_email, p_role, p_token_hash, p_user, now() + make_interval(secs => p_ttl_seconds))
  on conflict (org_id, lower(email)) where status = 'pending' do nothing
  returning * into v_invitation;
  if v_invitation.id is null then
    perform billing.raise_error('INVITATION_PENDING', jsonb_build_object('email', p_email));
  end if;
  -- The email carries the token (the only place it exists besides the admin's answer).
  perform billing.enqueue_notification('org_invitation', null, 'org-invitation:' || v_invitation.id,
    jsonb_build_object('to', p_email, 'org_name', v_org.name, 'role', p_role, 'accept_url', p_accept_url,
      'expires_at', billing.json_time(v_invitation.expires_at)));
  return jsonb_build_object('id', v_invitation.id, 'org_id', p_org, 'email', v_invitation.email, 'role', v_invitation.role,
    'status', v_invitation.status, 'expires_at', billing.json_time(v_invitation.expires_at));
end;
$$;

-- Accepts or declines with the token. Only the user the invitation was sent to (their verified
-- email) may answer it; anyone else, or an unknown token, gets INVITATION_NOT_FOUND.
create function billing.answer_invitation(p_user uuid, p_email text, p_token_hash text, p_accept boolean) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation billing.org_invitations;
  v_was_member boolean;
  v_answer text := case when p_accept then 'accepted' else 'declined' end;
begin
  select * into v_invitation from billing.org_invitations i where i.token_hash = p_token_hash for update;
  if not found or lower(v_invitation.email) <> lower(coalesce(p_email, '')) then
    perform billing.raise_error('INVITATION_NOT_FOUND', '{}');
  end if;
  if v_invitation.status = 'pending' and v_invitation.expires_at <= now() then
    update billing.org_invitations i set status = 'expired', answered_at = now() where i.id = v_invitation.id;
    v_invitation.status := 'expired';
  end if;
  if v_invitation.status <> 'pending' then
    -- The same answer again is a retry; anything else is too late.
    if v_invitation.answered_by = p_user and v_invitation.status = v_answer then
      return jsonb_build_object('org_id', v_invitation.org_id, 'status', v_invitation.status);
    end if;
    perform billing.raise_error('INVITATION_CLOSED', jsonb_build_object('status', v_invitation.status));
  end if;
  update billing.org_invitations i set status = v_answer,
    answered_by = p_user, answered_at = now()
  where i.id = v_invitation.id returning * into v_invitation;
  if p_accept then
    perform billing.ensure_user_account(p_user);
    perform 1 from billing.accounts a where a.user_id = p_user for update;
    select m.active and m.role = 'member' into v_was_member from billing.org_members m
    where m.org_id = v_invitation.org_id and m.user_id = p_user;
    insert into billing.org_members (org_id, user_id, role) values (v_invitation.org_id, p_user, v_invitation.role)
    on conflict (org_id, user_id) do update set role = excluded.role, active = true, removed_at = null,
      joined_at = case when billing.org_members.active then billing.org_members.joined_at else now() end;
    delete from billing.org_admins x where x.org_id = v_invitation.org_id and x.user_id = p_user;
    insert into billing.org_admins (org_id, user_id)
    select v_invitation.org_id, p_user where v_invitation.role = 'admin';
    update billing.accounts a
    set orgs = a.orgs + (v_invitation.role = 'member')::integer - coalesce(v_was_member, false)::integer
    where a.user_id = p_user;
  end if;
  return jsonb_build_object('org_id', v_invitation.org_id, 'status', v_invitation.status);
end;
$$;

-- ============================================================ members

create function billing.list_org_members(p_user uuid, p_org uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return coalesce((
    select jsonb_agg(jsonb_build_object('user_id', m.user_id, 'email', u.email, 'role', m.role, 'active', m.active,
      'joined_at', billing.json_time(m.joined_at), 'removed_at', billing.json_time(m.removed_at),
      'allowance', case when a.id is not null then billing.wallet_json(a.id) end) order by m.joined_at, m.user_id)
    from billing.org_members m join auth.users u on u.id = m.user_id
    left join billing.accounts a on a.org_id = m.org_id and a.member_id = m.user_id
    where m.org_id = p_org), '[]');
end;
$$;

-- Removal takes effect at once: the member no longer spends the organisation's credits, their
-- own holds on its accounts are released and their unspent allowance sweeps back.
create function billing.remove_member(p_user uuid, p_org uuid, p_member uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_member billing.org_members;
  h record;
begin
  perform billing.require_org_role(p_org, p_user, true);
  perform 1 from billing.accounts a where a.user_id = p_member for update;
  select * into v_member from billing.org_members m where m.org_id = p_org and m.user_id = p_member for update;
  if not found or not v_member.active then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  if v_member.role = 'owner' then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'the owner cannot be removed'));
  end if;
  update billing.org_members m set active = false, removed_at = now() where m.org_id = p_org and m.user_id = p_member;
  delete from billing.org_admins x where x.org_id = p_org and x.user_id = p_member;
  if v_member.role = 'member' then
    update billing.accounts a set orgs = a.orgs - 1 where a.user_id = p_member;
  end if;
  for h in
    select x.id from billing.holds x join billing.accounts a on a.id = x.account_id
    where a.org_id = p_org and x.member_id = p_member and x.status = 'active' and x.purpose = 'user'
  loop
    perform billing.release_hold(null, h.id);
  end loop;
  perform billing.sweep_allowance(p_org, p_member, 'removed');
  return jsonb_build_object('org_id', p_org, 'user_id', p_member, 'active', false);
end;
$$;

-- ============================================================ allowances

-- p_amount to one member (p_member) or to every active member (null), all or nothing: when the
-- wallet cannot fund every one, nobody is funded. Idempotent per member on p_key.
create function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_wallet bigint := billing.org_wallet_id(p_org);
  v_members uuid[];
  v_new integer;
  v_account billing.accounts;
  m uuid;
  v_results jsonb := '[]';
  v_transfer billing.transfers;
begin
  perform billing.check_amount(p_amount);
  if v_org.funding <> 'allowance' then
    perform billing.raise_error('ORG_FUNDING_MODE', jsonb_build_object('funding', v_org.funding, 'needs', 'allowance'));
  end if;
  select array_agg(x.user_id order by x.user_id) into v_members from billing.org_members x
  where x.org_id = p_org and x.active and x.role = 'member' and (p_member is null or x.user_id = p_member);
  if v_members is null then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  perform billing.allowance_account_id(p_org, x) from unnest(v_members) x;
  perform 1 from billing.accounts a where a.id = v_wallet or (a.org_id = p_org and a.member_id = any(v_members))
  order by a.id for update;
  -- Only members not yet funded under this key count (a retry after a partial network failure).
  select count(*) into v_new from unnest(v_members) x
  where not exists (select 1 from billing.transfers t where t.idempotency_key = 'allowance:' || p_key || ':' || x
                    and t.kind = 'allowance');
  select * into v_account from billing.accounts a where a.id = v_wallet;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(v_wallet);
    select * into v_account from billing.accounts a where a.id = v_wallet;
  end if;
  if v_account.balance - v_account.held < p_amount * v_new then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount * v_new)::text,
      'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text, 'debt', v_account.balance < 0,
      'wallet', 'organisation', 'org_id', p_org));
  end if;
  foreach m in array v_members loop
    v_transfer := billing.move_credits(v_wallet, billing.allowance_account_id(p_org, m), p_amount, 'allowance',
      'allowance:' || p_key || ':' || m, m, jsonb_build_object('org_id', p_org, 'funded_by', p_user));
    v_results := v_results || jsonb_build_object('user_id', m, 'transfer_id', v_transfer.id::text,
      'amount', trim_scale(v_transfer.amount)::text);
  end loop;
  return jsonb_build_object('org_id', p_org, 'funded', v_results,
    'wallet', billing.wallet_json(v_wallet));
end;
$$;

-- What is left of a member's allowance (balance − active holds) back to the wallet. Keyed by the
-- account's version: a rerun finds the same transfer or nothing left.
create function billing.sweep_allowance(p_org uuid, p_member uuid, p_reason text) returns numeric
language plpgsql
set search_path = ''
as $$
declare
  v_wallet bigint := billing.org_wallet_id(p_org);
  v_account billing.accounts;
  v_take numeric(38, 18);
begin
  select * into v_account from billing.accounts a where a.org_id = p_org and a.member_id = p_member;
  if not found then
    return 0;
  end if;
  perform 1 from billing.accounts a where a.id in (v_wallet, v_account.id) order by a.id for update;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(v_account.id);
  end if;
  select * into v_account from billing.accounts a where a.id = v_account.id;
  v_take := v_account.balance - v_account.held;
  if v_take <= 0 then
    return 0;
  end if;
  perform billing.move_credits(v_account.id, v_wallet, v_take, 'allowance_sweep',
    'allowance-sweep:' || v_account.id || ':' || v_account.version, p_member,
    jsonb_build_object('org_id', p_org, 'reason', p_reason));
  return v_take;
end;
$$;

-- pg_cron: organisations whose term has ended get their members' unspent allowances back.
create function billing.sweep_ended_terms(p_limit integer default 100) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  o record;
  a record;
  v_count integer := 0;
begin
  for o in
    select x.id, x.term_ends_at from billing.orgs x
    where x.term_ends_at <= now() and x.term_swept_at is null order by x.term_ends_at limit p_limit
    for update skip locked
  loop
    for a in select x.member_id from billing.accounts x where x.org_id = o.id and x.member_id is not null order by x.id loop
      perform billing.sweep_allowance(o.id, a.member_id, 'term-ended');
    end loop;
    update billing.orgs x set term_swept_at = now() where x.id = o.id;
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
comment on function billing.sweep_ended_terms(integer) is 'pg_cron: sweeps unspent allowances back to the wallet of each organisation whose term ended. Idempotent.';

-- ============================================================ pooled caps

create function billing.set_member_cap(p_user uuid, p_org uuid, p_member uuid, p_period text, p_amount numeric) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_wallet bigint := billing.org_wallet_id(p_org);
begin
  if not exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_member and m.active) then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  if p_period is null or p_period not in ('day', 'week', 'month', 'term') then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'period', 'rule', 'day, week, month or term'));
  end if;
  perform 1 from billing.accounts a where a.id = v_wallet for update;
  if p_amount is null then
    delete from billing.spend_caps c where c.account_id = v_wallet and c.member_id = p_member and c.period = p_period;
  else
    perform billing.check_amount(p_amount);
    insert into billing.spend_caps (account_id, member_id, period, amount, set_by, period_start)
    values (v_wallet, p_member, p_period, p_amount, p_user, case when p_period = 'term' then v_org.term_started_at end)
    on conflict (account_id, member_id, period, model) do update set amount = excluded.amount, set_by = excluded.set_by,
      updated_at = now();
  end if;
  update billing.accounts a set caps = (select count(*) from billing.spend_caps c where c.account_id = v_wallet)
  where a.id = v_wallet;
  return billing.member_caps(p_org, p_member);
end;
$$;

create function billing.member_caps(p_org uuid, p_member uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('period', c.period, 'cap', trim_scale(c.amount)::text,
      'spent', trim_scale(case when c.period = 'term' or c.period_start = p.starts then c.spent else 0 end)::text,
      'resets_at', billing.json_time(coalesce(p.resets, o.term_ends_at))) order by c.period), '[]')
  from billing.spend_caps c join billing.accounts a on a.id = c.account_id join billing.orgs o on o.id = a.org_id
  cross join lateral billing.cap_period(c.period, c.time_zone, now()) p
  where a.org_id = p_org and a.member_id is null and c.member_id = p_member
$$;

-- ============================================================ reporting

-- Org-funded spending in [p_from, p_to), per member, model and period (day, week or month): every
-- member's for an admin, the caller's own for a member.
create function billing.org_usage(p_user uuid, p_org uuid, p_from timestamptz, p_to timestamptz, p_period text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_admin boolean;
begin
  perform billing.require_org_role(p_org, p_user, false);
  v_admin := exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active
                     and m.role in ('owner', 'admin'));
  if p_period not in ('day', 'week', 'month') then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'period', 'rule', 'day, week or month'));
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object('member_id', r.member_id, 'model', r.model, 'period_start', billing.json_time(r.starts),
      'credits', trim_scale(r.credits)::text, 'charges', r.charges) order by r.starts, r.member_id, r.model)
    from (
      select t.member_id, coalesce(t.metadata ->> 'model', h.metadata ->> 'model') as model,
        date_trunc(p_period, e.created_at, 'UTC') as starts, -sum(e.amount) as credits, count(*) as charges
      from billing.accounts a
      join billing.entries e on e.account_id = a.id and e.balance_after is not null and e.amount < 0
      join billing.transfers t on t.id = e.transfer_id
      left join billing.holds h on h.id = t.hold_id
      where a.org_id = p_org and e.created_at >= p_from and e.created_at < p_to
        and t.kind in ('usage', 'debit', 'hold_capture') and t.member_id is not null
        and (v_admin or t.member_id = p_user)
      group by 1, 2, 3
    ) r), '[]');
end;
$$;

-- The wallet's entries, newest first (admins only).
create function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return coalesce((
    select jsonb_agg(jsonb_build_object('id', x.id::text, 'kind', x.kind, 'amount', trim_scale(x.amount)::text,
      'balance_after', trim_scale(x.balance_after)::text, 'member_id', x.member_id, 'created_at', billing.json_time(x.created_at))
      order by x.id desc)
    from (
      select e.id, t.kind, e.amount, e.balance_after, t.member_id, e.created_at
      from billing.entries e join billing.transfers t on t.id = e.transfer_id
      where e.account_id = billing.org_wallet_id(p_org) and e.balance_after is not null
        and (p_before_id is null or e.id < p_before_id)
      order by e.id desc limit least(greatest(p_limit, 1), 200)
    ) x), '[]');
end;
$$;

-- A platform admin's grant to an organisation's wallet (support, a pilot, a contract paid offline).
create function billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text,
  p_reason text, p_admin uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result billing.transfer_result;
begin
  if not exists (select 1 from billing.orgs o where o.id = p_org) then
    perform billing.raise_error('ORG_NOT_FOUND', jsonb_build_object('org_id', p_org));
  end if;
  if p_kind not in ('promo_grant', 'adjustment') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind));
  end if;
  v_result := billing.post_user_transfer(null, 1, 'credit', p_amount, p_kind,
    case p_kind when 'promo_grant' then 'promotions' else 'adjustments' end, p_key, null, null,
    jsonb_build_object('reason', p_reason, 'admin', p_admin, 'org_id', p_org), p_account_id => billing.org_wallet_id(p_org));
  return jsonb_build_object('transfer_id', v_result.transfer_id::text, 'amount', trim_scale(v_result.amount)::text,
    'wallet', billing.wallet_json(billing.org_wallet_id(p_org)), 'replayed', v_result.replayed);
end;
$$;

-- ============================================================ grants and schedule

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function
  billing.create_org(uuid, text, text, boolean),
  billing.get_org(uuid, uuid),
  billing.list_orgs(uuid),
  billing.update_org(uuid, uuid, jsonb),
  billing.invite_member(uuid, uuid, text, text, text, integer, text),
  billing.answer_invitation(uuid, text, text, boolean),
  billing.list_org_members(uuid, uuid),
  billing.remove_member(uuid, uuid, uuid),
  billing.fund_allowances(uuid, uuid, uuid, numeric, text),
  billing.set_member_cap(uuid, uuid, uuid, text, numeric),
  billing.org_usage(uuid, uuid, timestamptz, timestamptz, text),
  billing.org_ledger(uuid, uuid, bigint, integer),
  billing.grant_org_credits(uuid, numeric, billing.transfer_kind, text, text, uuid),
  billing.sweep_ended_terms(integer)
to service_role;

select cron.schedule('billing-sweep-ended-terms', '* * * * *', $$select billing.sweep_ended_terms()$$);
