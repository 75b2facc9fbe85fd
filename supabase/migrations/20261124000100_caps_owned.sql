-- Spend caps have an owner. A cap an admin set (or, for a member, their organisation) can be
-- changed or removed only by an admin; the student's own caps sit beside it, and every cap that
-- applies is checked, so the strictest wins. Changing a cap never gives back room spent in the
-- current period. Jobs name their model to the cap check, like every other way of spending.

-- ============================================================ caps: who set them
alter table billing.spend_caps add column owner text not null default 'self'
  constraint spend_caps_owner check (owner in ('self', 'admin', 'organisation'));
comment on column billing.spend_caps.owner is
  'Who may change the cap: self (the student), admin (a platform admin), organisation (its admins, for a member).';
update billing.spend_caps c set owner = 'organisation' where c.member_id is not null;
update billing.spend_caps c set owner = 'admin'
from billing.accounts a where a.id = c.account_id and c.member_id is null and c.set_by is distinct from a.user_id;
alter table billing.spend_caps drop constraint spend_caps_one_per_scope;
alter table billing.spend_caps add constraint spend_caps_one_per_scope
  unique nulls not distinct (account_id, member_id, period, model, owner);

drop function billing.set_spend_cap(uuid, text, text, text, numeric, uuid);

create function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric,
                                      p_actor uuid, p_owner text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_refusal jsonb;
begin
  if p_owner is null or p_owner not in ('self', 'admin') then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'owner', 'rule', 'self or admin'));
  end if;
  -- An admin's cap binds the student: the actor must be an admin now, not only in their token.
  if p_owner = 'admin' then
    v_refusal := billing.standing_refusal(p_actor, true);
    if v_refusal is not null then
      perform billing.raise_error(v_refusal ->> 'token', v_refusal -> 'detail');
    end if;
  elsif p_actor is distinct from p_user then
    perform billing.raise_error('ADMIN_REQUIRED', jsonb_build_object('rule', 'only the student sets their own caps'));
  end if;
  if p_period is null or p_period not in ('day', 'week', 'month') then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'period', 'rule', 'day, week or month'));
  end if;
  if not exists (select 1 from pg_catalog.pg_timezone_names z where z.name = p_time_zone) then
    perform billing.raise_error('INVALID_CAP', jsonb_build_object('field', 'time_zone', 'rule', 'an IANA time zone, e.g. Europe/Berlin'));
  end if;
  if p_amount is not null then
    perform billing.check_amount(p_amount);
  end if;
  v_account_id := billing.ensure_user_account(p_user);
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  if p_amount is null then
    delete from billing.spend_caps c
    where c.account_id = v_account_id and c.member_id is null and c.period = p_period
      and c.model is not distinct from p_model and c.owner = p_owner;
  else
    -- What was spent this period stays spent: under a new time zone it counts in the period
    -- that zone is in now, so a change can make a cap stricter, never looser.
    insert into billing.spend_caps as c (account_id, period, time_zone, model, amount, set_by, owner, period_start)
    values (v_account_id, p_period, p_time_zone, p_model, p_amount, p_actor, p_owner,
            (billing.cap_period(p_period, p_time_zone, now())).starts)
    on conflict (account_id, member_id, period, model, owner) do update
      set amount = excluded.amount, time_zone = excluded.time_zone, set_by = excluded.set_by, updated_at = now(),
          spent = case when c.period_start = (billing.cap_period(c.period, c.time_zone, now())).starts then c.spent else 0 end,
          period_start = excluded.period_start;
  end if;
  update billing.accounts a set caps = (select count(*) from billing.spend_caps c where c.account_id = a.id)
  where a.id = v_account_id;
  return billing.get_spend_caps(p_user);
end;
$$;
comment on function billing.set_spend_cap(uuid, text, text, text, numeric, uuid, text) is
  'Sets (amount null: removes) one of a user''s caps of one owner: self (the student''s own) or admin (an admin now). Room spent this period is kept.';
revoke execute on function billing.set_spend_cap(uuid, text, text, text, numeric, uuid, text) from public, anon, authenticated;
grant execute on function billing.set_spend_cap(uuid, text, text, text, numeric, uuid, text) to service_role;

create or replace function billing.get_spend_caps(p_user uuid)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('period', c.period, 'time_zone', c.time_zone, 'model', c.model,
      'set_by', c.owner, 'cap', trim_scale(c.amount)::text, 'spent', trim_scale(x.spent)::text,
      'remaining', trim_scale(greatest(c.amount - x.spent, 0))::text,
      'period_started_at', billing.json_time(p.starts), 'resets_at', billing.json_time(p.resets))
    order by c.period, c.model nulls first, c.owner), '[]'::jsonb)
  from billing.accounts a
  join billing.spend_caps c on c.account_id = a.id
  cross join lateral billing.cap_period(c.period, c.time_zone, now()) p
  cross join lateral (select case when c.period_start = p.starts then c.spent else 0 end as spent) x
  where a.user_id = p_user
$$;

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

-- ============================================================ jobs name their model
create or replace function billing.enqueue_job(p_user uuid, p_type text, p_input jsonb, p_request_key text,
  p_client_temp_id text default null, p_reserve numeric default null, p_hold_ttl_seconds integer default 3600)
returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs;
  v_hold billing.hold_result;
begin
  select * into v_job from billing.jobs j where j.user_id = p_user and j.request_key = p_request_key;
  if found then
    return v_job;
  end if;
  insert into billing.jobs (user_id, type, input, request_key, client_temp_id)
  values (p_user, p_type, p_input, p_request_key, p_client_temp_id)
  on conflict (user_id, client_temp_id) where client_temp_id is not null do nothing
  returning * into v_job;
  if not found then -- the same optimistic operation, sent again under another key
    select * into v_job from billing.jobs j where j.user_id = p_user and j.client_temp_id = p_client_temp_id;
    return v_job;
  end if;
  if p_reserve is not null and p_reserve > 0 then
    -- Short → INSUFFICIENT_CREDITS, and the job above rolls back with it. The hold names the
    -- job's model, so per-model caps count it (and get back what the capture does not use).
    v_hold := billing.reserve_hold(p_user, p_reserve, 'job:' || v_job.id, p_hold_ttl_seconds, 'job', 'job:' || v_job.id,
      jsonb_strip_nulls(jsonb_build_object('model', p_input ->> 'model')));
    update billing.jobs j set hold_id = v_hold.hold_id where j.id = v_job.id returning * into v_job;
  end if;
  return v_job;
end;
$$;
