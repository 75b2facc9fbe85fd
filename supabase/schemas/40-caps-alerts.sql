-- Spend caps: a limit on what an account may spend per day, week or month (in a time zone),
-- overall or for one model. Checked inside the posting transaction, under the account's row
-- lock like the balance, so parallel requests can never exceed a cap: usage and debits count
-- when they post, holds when they are placed (a job's reserve included), and what a hold does
-- not spend (released, expired, captured for less, given up to a dispute) is returned to the
-- period it was placed in. A hold's capture does not count again: it spends what the hold
-- already counted. What a job or an AI call costs beyond its hold is charged only within the
-- caps' room and counts against them (billing.charge_hold_at).
-- An account without caps pays nothing for this: accounts.caps = 0 skips every step.
--
-- The table (billing.spend_caps) is in 10-ledger.sql beside the accounts it limits, and the room
-- a posting takes and gives back (take_cap_room, return_cap_room, …) and the
-- low-balance alert in 11-ledger-writer.sql, on the writer's road; billing.cap_room, what a
-- hold's overrun may still cost, in 12-holds.sql; a member's cap, which an organisation's admins
-- set (billing.set_member_cap), in 70-orgs.sql. Here: setting and reading caps and alerts.

-- ============================================================ functions

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
comment on function billing.get_spend_caps(p_user uuid) is 'A user''s caps, each with what its current period has spent, what is left and when it resets.';
revoke execute on function billing.get_spend_caps(p_user uuid) from public;
grant execute on function billing.get_spend_caps(p_user uuid) to service_role;

-- p_threshold null turns the low-balance alert off. Takes the account lock; evaluates at once,
-- so turning it on when already below fires it.
create or replace function billing.set_low_balance_alert(p_user uuid, p_threshold numeric) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
begin
  if p_threshold is not null then
    perform billing.check_amount(p_threshold);
  end if;
  -- Settled (locked, holds past their TTL ended): the alert fires on what is available now. What
  -- postings left available since the tick looked re-arms first, on the old threshold (and
  -- auto-recharge's: its crossing is not lost with this change).
  perform billing.rearm_watched(billing.settled(a)) from billing.accounts a where a.id = v_account_id for update;
  -- A new threshold is a new alert (below it already: it fires now); the same one saved again
  -- keeps its crossing's state, so it never fires twice for one crossing.
  update billing.accounts a set low_balance_threshold = p_threshold,
    low_balance_fired = a.low_balance_fired and a.low_balance_threshold is not distinct from p_threshold
  where a.id = v_account_id;
  perform billing.check_low_balance(a) from billing.accounts a where a.id = v_account_id;
  return billing.get_alerts(p_user);
end;
$$;
comment on function billing.set_low_balance_alert(p_user uuid, p_threshold numeric) is 'Sets (or, null, clears) the user''s low-balance alert; fires at once if already below.';
revoke execute on function billing.set_low_balance_alert(p_user uuid, p_threshold numeric) from public;
grant execute on function billing.set_low_balance_alert(p_user uuid, p_threshold numeric) to service_role;

create or replace function billing.set_cap_alerts(p_user uuid, p_period text, p_model text, p_percents integer[]) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
  v_model text := billing.card_model(p_model);  -- a cap on an alias is its card's
begin
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  begin
    update billing.spend_caps c set alert_percents = coalesce(array(select distinct x from unnest(p_percents) x order by x), '{}'),
      alerts_fired = '{}', alerts_period = null
    where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from v_model;
  exception when check_violation then
    perform billing.raise_error('INVALID_ALERT', jsonb_build_object('field', 'percents',
      'rule', '1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95 or 100'));
  end;
  if not found then
    perform billing.raise_error('CAP_NOT_FOUND', jsonb_build_object('period', p_period)); -- not the model: the caller's text
  end if;
  perform billing.cap_alerts_after(c) from billing.spend_caps c
  where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from v_model;
  return billing.get_alerts(p_user);
end;
$$;
comment on function billing.set_cap_alerts(p_user uuid, p_period text, p_model text, p_percents integer[]) is 'Sets the percent alerts of one of the user''s caps; fires at once what is already reached.';
revoke execute on function billing.set_cap_alerts(p_user uuid, p_period text, p_model text, p_percents integer[]) from public;
grant execute on function billing.set_cap_alerts(p_user uuid, p_period text, p_model text, p_percents integer[]) to service_role;

create or replace function billing.get_alerts(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'low_balance', (select case when a.low_balance_threshold is not null then jsonb_build_object(
        'threshold', trim_scale(a.low_balance_threshold)::text, 'fired', a.low_balance_fired) end
      from billing.accounts a where a.user_id = p_user),
    'caps', coalesce((select jsonb_agg(jsonb_build_object('period', c.period, 'model', c.model, 'percents', to_jsonb(c.alert_percents),
        'fired', to_jsonb(case when c.alerts_period = p.starts then c.alerts_fired else '{}' end)) order by c.period, c.model nulls first)
      from billing.accounts a join billing.spend_caps c on c.account_id = a.id
      cross join lateral billing.cap_period(c.period, c.time_zone, now()) p
      where a.user_id = p_user and c.alert_percents <> '{}'), '[]'::jsonb))
$$;
comment on function billing.get_alerts(p_user uuid) is 'A user''s alerts: the low-balance threshold and each cap''s percents, with what has fired.';
revoke execute on function billing.get_alerts(p_user uuid) from public;
grant execute on function billing.get_alerts(p_user uuid) to service_role;

create or replace function billing.member_caps(p_org uuid, p_member uuid) returns jsonb
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
comment on function billing.member_caps(p_org uuid, p_member uuid) is 'Internal: a member''s caps on an organisation''s pooled wallet, each with what was spent in its current period and when it resets.';
revoke execute on function billing.member_caps(p_org uuid, p_member uuid) from public;

create or replace function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric,
                                      p_actor uuid, p_owner text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_refusal jsonb;
  v_model text := billing.card_model(p_model);  -- a cap on an alias is its card's
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
      and c.model is not distinct from v_model and c.owner = p_owner;
  else
    -- What was spent this period stays spent: under a new time zone it counts in the period
    -- that zone is in now, so a change can make a cap stricter, never looser.
    insert into billing.spend_caps as c (account_id, period, time_zone, model, amount, set_by, owner, period_start)
    values (v_account_id, p_period, p_time_zone, v_model, p_amount, p_actor, p_owner,
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
comment on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) is 'Sets (amount null: removes) one of a user''s caps of one owner: self (the student''s own) or admin (an admin now). Room spent this period is kept.';
revoke execute on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) from public;
grant execute on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) to service_role;
