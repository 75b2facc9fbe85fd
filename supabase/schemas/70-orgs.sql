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
-- charge is never split across wallets: each transfer, hold and job has exactly one account.
-- Every org-funded transfer and hold records the member (member_id), which is what
-- the organisation's usage report reads.
--
-- The organisations' tables (orgs, org_members, org_admins) and the role check every action
-- here starts with (billing.require_org_role): 16-org-roles.sql. Invitations, joining, removal
-- and ownership: 79-org-members.sql.
--
-- Locks, so no two transactions wait on each other in a cycle: a user's own account is locked
-- first (as everywhere); organisation accounts are locked after it, always in ascending id order.

-- ============================================================ functions

create or replace function billing.allowance_account_id(p_org uuid, p_member uuid) returns bigint
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
comment on function billing.allowance_account_id(p_org uuid, p_member uuid) is 'Internal: a member''s allowance account in the organisation, created on first use.';
revoke execute on function billing.allowance_account_id(p_org uuid, p_member uuid) from public;

-- Each takes the caller's user id (from their verified token) and checks their role itself.
create or replace function billing.org_json(p_org billing.orgs) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p_org.id, 'name', p_org.name, 'funding', p_org.funding,
    'org_pays_first', p_org.org_pays_first, 'term_started_at', billing.json_time(p_org.term_started_at),
    'term_ends_at', billing.json_time(p_org.term_ends_at), 'created_at', billing.json_time(p_org.created_at),
    'ai_content_consent', p_org.ai_content_consent)
$$;
comment on function billing.org_json(p_org billing.orgs) is 'Internal: an organisation as the API shows it.';
revoke execute on function billing.org_json(p_org billing.orgs) from public;

create or replace function billing.wallet_json(p_account_id bigint) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('balance', trim_scale(b.balance)::text, 'held', trim_scale(b.held)::text,
    'available', trim_scale(b.available)::text)
  from billing.balance_of(p_account_id) b
$$;
comment on function billing.wallet_json(p_account_id bigint) is 'Internal: an organisation account''s balance, held and available, as the API shows them.';
revoke execute on function billing.wallet_json(p_account_id bigint) from public;

create or replace function billing.create_org(p_user uuid, p_name text, p_funding text, p_org_pays_first boolean) returns jsonb
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
comment on function billing.create_org(p_user uuid, p_name text, p_funding text, p_org_pays_first boolean) is 'Creates an organisation, its wallet and the caller as its owner.';
revoke execute on function billing.create_org(p_user uuid, p_name text, p_funding text, p_org_pays_first boolean) from public;
grant execute on function billing.create_org(p_user uuid, p_name text, p_funding text, p_org_pays_first boolean) to service_role;

create or replace function billing.get_org(p_user uuid, p_org uuid) returns jsonb
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
comment on function billing.get_org(p_user uuid, p_org uuid) is 'An organisation for one of its members: its role, the wallet for an owner or admin, the member''s allowance.';
revoke execute on function billing.get_org(p_user uuid, p_org uuid) from public;
grant execute on function billing.get_org(p_user uuid, p_org uuid) to service_role;

create or replace function billing.list_orgs(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.org_json(o) || jsonb_build_object('role', m.role) order by m.joined_at), '[]')
  from billing.org_members m join billing.orgs o on o.id = m.org_id where m.user_id = p_user and m.active
$$;
comment on function billing.list_orgs(p_user uuid) is 'The organisations the caller is an active member of, with their role, oldest membership first.';
revoke execute on function billing.list_orgs(p_user uuid) from public;
grant execute on function billing.list_orgs(p_user uuid) to service_role;

create or replace function billing.update_org(p_user uuid, p_org uuid, p_changes jsonb) returns jsonb
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
    org_pays_first = coalesce((p_changes ->> 'org_pays_first')::boolean, o.org_pays_first),
    ai_content_consent = coalesce((p_changes ->> 'ai_content_consent')::boolean, o.ai_content_consent)
  where o.id = p_org returning * into v_org;
  if not v_org.ai_content_consent then
    -- Withdrawn (or never given): what it kept goes at once, unless the student keeps it themselves.
    perform billing.forget_unconsented_content(null, p_org);
  end if;
  if v_org.funding = 'pool' then
    -- Switching to a pool: allowances would be stranded (members now spend from the wallet).
    for a in select x.member_id from billing.accounts x where x.org_id = p_org and x.member_id is not null loop
      perform billing.sweep_allowance(p_org, a.member_id, 'funding-pool');
    end loop;
  end if;
  return billing.get_org(p_user, p_org);
end;
$$;
comment on function billing.update_org(p_user uuid, p_org uuid, p_changes jsonb) is 'An owner''s or admin''s change of an organisation (name, funding, who pays first, term end, keeping AI content of the calls it pays); a new term restarts its term caps, and a switch to pool funding sweeps the allowances back.';
revoke execute on function billing.update_org(p_user uuid, p_org uuid, p_changes jsonb) from public;
grant execute on function billing.update_org(p_user uuid, p_org uuid, p_changes jsonb) to service_role;

create or replace function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text,
  p_applies_to text[] default null)
returns jsonb
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
  v_results jsonb := '[]'::jsonb;
  v_transfer billing.transfers;
begin
  perform billing.check_amount(p_amount);
  if v_org.funding <> 'allowance' then
    perform billing.raise_error('ORG_FUNDING_MODE', jsonb_build_object('funding', v_org.funding, 'needs', 'allowance'));
  end if;
  -- Active members only (and never the funder under a second account: the same address).
  select array_agg(x.user_id order by x.user_id) into v_members from billing.org_members x
  where x.org_id = p_org and x.active and x.role = 'member' and (p_member is null or x.user_id = p_member)
    and not billing.same_person(p_user, x.user_id);
  if v_members is null then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  perform billing.allowance_account_id(p_org, x) from unnest(v_members) x;
  perform 1 from billing.accounts a where a.id = v_wallet or (a.org_id = p_org and a.member_id = any(v_members))
  order by a.id for update;
  -- Only members not yet funded under this key count (a retry after a partial network failure).
  select count(*) into v_new from unnest(v_members) x
  where not exists (select 1 from billing.transfers t where t.idempotency_key = billing.scoped_key('allowance:' || p_org || ':', p_key || ':' || x)
                    and t.kind = 'allowance');
  select * into v_account from billing.accounts a where a.id = v_wallet;
  v_account := billing.settled(v_account);
  if v_account.balance - v_account.held < p_amount * v_new then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount * v_new)::text,
      'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text, 'debt', billing.in_debt(v_account),
      'wallet', 'organisation', 'org_id', p_org));
  end if;
  foreach m in array v_members loop
    v_transfer := billing.move_credits(v_wallet, billing.allowance_account_id(p_org, m), p_amount, 'allowance',
      billing.scoped_key('allowance:' || p_org || ':', p_key || ':' || m), m, jsonb_build_object('org_id', p_org, 'funded_by', p_user),
      p_applies_to);
    v_results := v_results || jsonb_build_object('user_id', m, 'transfer_id', v_transfer.id::text,
      'amount', trim_scale(v_transfer.amount)::text);
  end loop;
  return jsonb_build_object('org_id', p_org, 'funded', v_results,
    'wallet', billing.wallet_json(v_wallet));
end;
$$;
comment on function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text, p_applies_to text[]) is 'An owner or admin moves p_amount from the wallet to one member''s allowance, or to each active member''s (allowance funding only), for the models p_applies_to names (narrowing what the wallet''s credits may pay for); idempotent by key per member.';
revoke execute on function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text, p_applies_to text[]) from public;
grant execute on function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text, p_applies_to text[]) to service_role;

-- Whether a member's allowance is one they spend from: the organisation funds allowances and
-- they are one of its active members. sweep_ended_terms sweeps the others, and sweep_allowance
-- asks again under the account lock (funding needs both the membership and that lock).
create or replace function billing.allowance_spendable(p_org uuid, p_member uuid) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  return exists (select 1 from billing.orgs g join billing.org_members m on m.org_id = g.id
                 where g.id = p_org and g.funding = 'allowance' and m.user_id = p_member and m.active
                   and m.role = 'member');
end;
$$;
comment on function billing.allowance_spendable(p_org uuid, p_member uuid) is 'Internal: whether a member''s allowance is spent from (the organisation funds allowances, the member is an active member).';
revoke execute on function billing.allowance_spendable(p_org uuid, p_member uuid) from public;

create or replace function billing.sweep_allowance(p_org uuid, p_member uuid, p_reason text)
returns numeric
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
  -- 'closed': sweep_ended_terms chose this allowance in a query of its own, as one nobody spends
  -- from. Asked again under the lock: the school may have made it spendable again (allowance
  -- funding, its member back) and funded it while the sweep waited, and that stays.
  if p_reason = 'closed' and billing.allowance_spendable(p_org, p_member) then
    return 0;
  end if;
  select * into v_account from billing.accounts a where a.id = v_account.id;
  v_account := billing.settled(v_account);
  v_take := v_account.balance - v_account.held;
  -- Only free credits move (what holds reserved stays theirs, a frozen lot stays where it is).
  if v_take > 0 and v_account.reads_lots then
    v_take := least(v_take, billing.free_credits(v_account.id, null, true));
  end if;
  if v_take <= 0 then
    return 0;
  end if;
  perform billing.move_credits(v_account.id, v_wallet, v_take, 'allowance_sweep',
    'allowance-sweep:' || v_account.id || ':' || v_account.version, p_member,
    jsonb_build_object('org_id', p_org, 'reason', p_reason));
  return v_take;
end;
$$;
comment on function billing.sweep_allowance(p_org uuid, p_member uuid, p_reason text) is 'Internal: moves what is left of a member''s allowance back to the wallet; returns what it moved. For ''closed'' (the sweep of allowances nobody spends from), nothing when the allowance is spendable again under the lock.';
revoke execute on function billing.sweep_allowance(p_org uuid, p_member uuid, p_reason text) from public;

create or replace function billing.sweep_ended_terms(p_limit integer default 100) returns integer
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
    begin
      for a in select x.member_id from billing.accounts x where x.org_id = o.id and x.member_id is not null order by x.id loop
        perform billing.sweep_allowance(o.id, a.member_id, 'term-ended');
      end loop;
      update billing.orgs x set term_swept_at = now() where x.id = o.id;
      v_count := v_count + 1;
    exception when others then
      -- One school's sweep never stops the others': it is tried again next run, and said.
      perform billing.set_alert('term_sweep_failed', true, 'A school''s term-end sweep failed',
        jsonb_build_object('org_id', o.id, 'error', sqlerrm));
    end;
  end loop;
  -- A sweep leaves what is held (a job under way, a hold its member may still capture). Once
  -- such a hold ends in an allowance nobody spends from any more (its member removed or no
  -- longer a member, the organisation now a pool), what it gave back goes to the wallet too.
  for a in
    select x.org_id, x.member_id from billing.accounts x
    where x.member_id is not null and x.balance > 0
      and (x.balance > x.held or exists (select 1 from billing.holds h where h.account_id = x.id and h.status = 'active'
                                         and h.expires_at <= now() and h.purpose <> 'claims'))
      and not billing.allowance_spendable(x.org_id, x.member_id)
    order by x.id limit p_limit
  loop
    if billing.sweep_allowance(a.org_id, a.member_id, 'closed') > 0 then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end;
$$;
comment on function billing.sweep_ended_terms(p_limit integer) is 'pg_cron: sweeps unspent allowances back to the wallet of each organisation whose term ended, and what holds gave back in allowances nobody spends from any more (member removed or promoted, organisation a pool). Idempotent.';
revoke execute on function billing.sweep_ended_terms(p_limit integer) from public;
grant execute on function billing.sweep_ended_terms(p_limit integer) to service_role;

-- Org-funded spending in [p_from, p_to), per member, model and period (day, week or month): every
-- member's for an admin, the caller's own for a member.
create or replace function billing.org_usage(p_user uuid, p_org uuid, p_from timestamptz, p_to timestamptz, p_period text)
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
    select jsonb_agg(jsonb_build_object('member_id', r.member_id, 'member_email', u.email, 'model', r.model,
      'period_start', billing.json_time(r.starts), 'credits', trim_scale(r.credits)::text, 'charges', r.charges)
      order by r.starts, r.member_id, r.model)
    from (
      -- A void (53-corrections.sql) nets against its charge's model and period.
      select t.member_id, coalesce(t.metadata ->> 'model', h.metadata ->> 'model') as model,
        date_trunc(p_period, case when t.kind = 'void' then (t.metadata ->> 'charged_at')::timestamptz else e.created_at end,
          'UTC') as starts,
        -sum(e.amount) as credits, sum(case when t.kind = 'void' then -1 else 1 end) as charges
      from billing.accounts a
      join billing.entries e on e.account_id = a.id and e.balance_after is not null
      join billing.transfers t on t.id = e.transfer_id
      left join billing.holds h on h.id = t.hold_id
      where a.org_id = p_org and e.created_at >= p_from and e.created_at < p_to
        and ((e.amount < 0 and t.kind in ('usage', 'hold_capture')) or (e.amount > 0 and t.kind = 'void'))
        and t.member_id is not null
        and (v_admin or t.member_id = p_user)
      group by 1, 2, 3
    ) r
    left join auth.users u on u.id = r.member_id), '[]');
end;
$$;
comment on function billing.org_usage(p_user uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_period text) is 'Org-funded spending in a range, per member, model and period: every member''s for an admin, the caller''s own for a member.';
revoke execute on function billing.org_usage(p_user uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_period text) from public;
grant execute on function billing.org_usage(p_user uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_period text) to service_role;

-- GET /orgs/:id/usage/summary: one member's charges the organisation paid for, as a student
-- sees their own (admins: any member; a member: themselves). The runway is the member's
-- allowance's, when the organisation gives allowances; a shared wallet's pace is no one member's.
create or replace function billing.org_member_usage_summary(p_user uuid, p_org uuid, p_member uuid, p_from date,
  p_to date, p_granularity text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, p_member is distinct from p_user);
  return billing.summarize_usage(p_member, null, p_org, p_from, p_to, p_granularity,
    (select a.id from billing.accounts a where a.org_id = p_org and a.member_id = p_member));
end;
$$;
comment on function billing.org_member_usage_summary(p_user uuid, p_org uuid, p_member uuid, p_from date, p_to date, p_granularity text) is 'A member''s usage the organisation paid for, per model and day or week, with their allowance''s runway.';
revoke execute on function billing.org_member_usage_summary(p_user uuid, p_org uuid, p_member uuid, p_from date, p_to date, p_granularity text) from public;
grant execute on function billing.org_member_usage_summary(p_user uuid, p_org uuid, p_member uuid, p_from date, p_to date, p_granularity text) to service_role;

-- The wallet's entries, newest first (admins only).
create or replace function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer)
returns jsonb
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
      order by e.id desc limit least(greatest(p_limit, 1), 1000)
    ) x), '[]');
end;
$$;
comment on function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer) is 'The organisation wallet''s entries, newest first, before an entry id (owners and admins only).';
revoke execute on function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer) from public;
grant execute on function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer) to service_role;

-- A platform admin's grant to an organisation's wallet (support, a pilot, a contract paid offline).
create or replace function billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text,
  p_reason text, p_admin uuid, p_applies_to text[] default null) returns jsonb
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
    jsonb_build_object('reason', p_reason, 'admin', p_admin, 'org_id', p_org),
    p_lot => jsonb_strip_nulls(jsonb_build_object('applies_to', p_applies_to)), p_account_id => billing.org_wallet_id(p_org));
  return jsonb_build_object('transfer_id', v_result.transfer_id::text, 'amount', trim_scale(v_result.amount)::text,
    'wallet', billing.wallet_json(billing.org_wallet_id(p_org)), 'replayed', v_result.replayed);
end;
$$;
comment on function billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reason text, p_admin uuid, p_applies_to text[]) is 'A platform admin''s grant (or adjustment) of credits to an organisation''s wallet, for the models p_applies_to names (null: any); idempotent by key.';
revoke execute on function billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reason text, p_admin uuid, p_applies_to text[]) from public;
grant execute on function billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reason text, p_admin uuid, p_applies_to text[]) to service_role;

-- One mailbox, however its address is written: case aside (A-Z), a "+tag" dropped, and for Gmail
-- the dots in its name and googlemail.com (Gmail delivers all of them to the same inbox).
create or replace function billing.mailbox(p_email text) returns text
language sql immutable strict
set search_path = ''
as $$
  select case when x.domain in ('gmail.com', 'googlemail.com') then replace(x.local, '.', '') || '@gmail.com'
              else x.local || '@' || x.domain end
  from (select split_part(split_part(e, '@', 1), '+', 1) as local, split_part(e, '@', 2) as domain
        from (select billing.ascii_lower(p_email) as e) y) x
$$;
comment on function billing.mailbox(p_email text) is 'Internal: the mailbox an address reaches (case aside, +tags dropped, Gmail''s dots and googlemail.com folded), to tell one person under two accounts.';
revoke execute on function billing.mailbox(p_email text) from public;

-- Two accounts of one person, as far as can be told: the same account, or the same email address
-- (ASCII case folded, as billing.ascii_lower compares addresses).
create or replace function billing.same_person(p_a uuid, p_b uuid) returns boolean
language sql stable
set search_path = ''
as $$
  select p_a = p_b or exists (select 1 from auth.users a join auth.users b on b.id = p_b
                              where a.id = p_a and billing.mailbox(a.email) = billing.mailbox(b.email))
$$;
comment on function billing.same_person(p_a uuid, p_b uuid) is 'Internal: whether two accounts are one person as far as can be told (the same id, or addresses reaching one mailbox: billing.mailbox); null ids are no one.';
revoke execute on function billing.same_person(p_a uuid, p_b uuid) from public;

-- What GET /orgs/:id shows of money, at p_at, to whom it shows it: the wallet to its owners and
-- admins, the caller's own allowance to the caller.
create or replace function billing.org_balance_as_of(p_user uuid, p_org uuid, p_at timestamptz) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, false);
  v_role text := (select m.role from billing.org_members m where m.org_id = v_org.id and m.user_id = p_user);
  v_wallet bigint := (select a.id from billing.accounts a where a.org_id = p_org and a.member_id is null);
  v_allowance bigint := (select a.id from billing.accounts a where a.org_id = p_org and a.member_id = p_user);
begin
  return jsonb_build_object('as_of', billing.json_time(p_at),
    'wallet', case when v_role in ('owner', 'admin') then billing.balance_as_of(v_wallet, p_at) - 'as_of' end,
    'allowance', case when v_allowance is not null then billing.balance_as_of(v_allowance, p_at) - 'as_of' end);
end;
$$;
comment on function billing.org_balance_as_of(p_user uuid, p_org uuid, p_at timestamp with time zone) is 'An organisation''s wallet (to its owners and admins) and the caller''s allowance as they stood at an instant.';
revoke execute on function billing.org_balance_as_of(p_user uuid, p_org uuid, p_at timestamp with time zone) from public;
grant execute on function billing.org_balance_as_of(p_user uuid, p_org uuid, p_at timestamp with time zone) to service_role;

-- The wallet's lots (owners and admins), or the caller's allowance's (p_allowance).
create or replace function billing.org_lots_as_of(p_user uuid, p_org uuid, p_allowance boolean, p_at timestamptz,
  p_before_id bigint, p_limit integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, not p_allowance);
begin
  return billing.lots_as_of_json((select a.id from billing.accounts a where a.org_id = v_org.id
    and a.member_id is not distinct from case when p_allowance then p_user end), p_at, p_before_id, p_limit);
end;
$$;
comment on function billing.org_lots_as_of(p_user uuid, p_org uuid, p_allowance boolean, p_at timestamp with time zone, p_before_id bigint, p_limit integer) is 'An organisation''s wallet lots (owners and admins) or the caller''s allowance lots as they stood at an instant, newest first.';
revoke execute on function billing.org_lots_as_of(p_user uuid, p_org uuid, p_allowance boolean, p_at timestamp with time zone, p_before_id bigint, p_limit integer) from public;
grant execute on function billing.org_lots_as_of(p_user uuid, p_org uuid, p_allowance boolean, p_at timestamp with time zone, p_before_id bigint, p_limit integer) to service_role;

-- A member's cap belongs to the organisation: only its admins change it (set_member_cap).
create or replace function billing.set_member_cap(p_user uuid, p_org uuid, p_member uuid, p_period text, p_amount numeric)
returns jsonb
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
    insert into billing.spend_caps (account_id, member_id, period, amount, set_by, owner, period_start)
    values (v_wallet, p_member, p_period, p_amount, p_user, 'organisation', case when p_period = 'term' then v_org.term_started_at end)
    on conflict (account_id, member_id, period, model, owner) do update set amount = excluded.amount, set_by = excluded.set_by,
      updated_at = now();
  end if;
  update billing.accounts a set caps = (select count(*) from billing.spend_caps c where c.account_id = v_wallet)
  where a.id = v_wallet;
  return billing.member_caps(p_org, p_member);
end;
$$;
comment on function billing.set_member_cap(p_user uuid, p_org uuid, p_member uuid, p_period text, p_amount numeric) is 'A member''s cap per day, week, month or term on an organisation''s pooled wallet, set or removed by its owner or admin.';
revoke execute on function billing.set_member_cap(p_user uuid, p_org uuid, p_member uuid, p_period text, p_amount numeric) from public;
grant execute on function billing.set_member_cap(p_user uuid, p_org uuid, p_member uuid, p_period text, p_amount numeric) to service_role;
