-- Spend caps: a limit on what an account may spend per day, week or month (in a time zone),
-- overall or for one model. Checked inside the posting transaction, under the account's row
-- lock like the balance, so parallel requests can never exceed a cap: usage and debits count
-- when they post, holds when they are placed (a job's reserve included), and what a hold does
-- not spend (released, expired, captured for less, given up to a dispute) is returned to the
-- period it was placed in. A hold's capture does not count again: it spends what the hold
-- already counted. What a job or an AI call costs beyond its hold is charged only within the
-- caps' room and counts against them (billing.charge_hold_at).
-- An account without caps pays nothing for this: accounts.caps = 0 skips every step.

-- ============================================================ tables

create table billing.spend_caps (
  id bigint generated always as identity not null,
  account_id bigint not null,
  period text not null,
  time_zone text default 'UTC'::text not null,
  model text,
  amount numeric(38,18) not null,
  period_start timestamp with time zone,
  spent numeric(38,18) default 0 not null,
  set_by uuid,
  created_at timestamp with time zone default now() not null,
  updated_at timestamp with time zone default now() not null,
  alert_percents integer[] default '{}'::integer[] not null,
  alerts_fired integer[] default '{}'::integer[] not null,
  alerts_period timestamp with time zone,
  member_id uuid,
  owner text default 'self'::text not null,
  constraint spend_caps_alert_percents check ((alert_percents <@ array[1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 100])),
  constraint spend_caps_amount_positive check ((amount > (0)::numeric)),
  constraint spend_caps_owner check ((owner = any (array['self'::text, 'admin'::text, 'organisation'::text]))),
  constraint spend_caps_period check ((period = any (array['day'::text, 'week'::text, 'month'::text, 'term'::text]))),
  constraint spend_caps_spent_not_negative check ((spent >= (0)::numeric)),
  constraint spend_caps_term_for_members check (((period <> 'term'::text) or (member_id is not null))),
  constraint spend_caps_one_per_scope unique nulls not distinct (account_id, member_id, period, model, owner),
  constraint spend_caps_pkey primary key (id),
  constraint spend_caps_account_id_fkey foreign key (account_id) references billing.accounts(id),
  constraint spend_caps_member_id_fkey foreign key (member_id) references auth.users(id)
);
comment on table billing.spend_caps is 'Per-account spending limits per period (day, week, month; in a time zone), overall or per model, with the current period''s spending.';
comment on column billing.spend_caps.owner is 'Who may change the cap: self (the student), admin (a platform admin), organisation (its admins, for a member).';
alter table billing.spend_caps enable row level security;
grant select on table billing.spend_caps to authenticated;
grant select on table billing.spend_caps to service_role;

-- ============================================================ functions

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
comment on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) is 'Internal: returns a finished hold''s unspent amount to its caps.';
revoke execute on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) from public;

create or replace function billing.cap_period(p_period text, p_time_zone text, p_at timestamptz, out starts timestamptz, out resets timestamptz)
language plpgsql stable
set search_path = ''
as $$
begin
  -- A term has no calendar: its start is on the cap row, its end on the organisation.
  if p_period <> 'term' then
    starts := date_trunc(p_period, p_at at time zone p_time_zone) at time zone p_time_zone;
    resets := (date_trunc(p_period, p_at at time zone p_time_zone) + ('1 ' || p_period)::interval) at time zone p_time_zone;
  end if;
end
$$;
comment on function billing.cap_period(p_period text, p_time_zone text, p_at timestamp with time zone, out starts timestamp with time zone, out resets timestamp with time zone) is 'Internal: the cap period containing p_at (local midnight, ISO week from Monday, month), and when the next starts.';
revoke execute on function billing.cap_period(p_period text, p_time_zone text, p_at timestamp with time zone, out starts timestamp with time zone, out resets timestamp with time zone) from public;

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

-- The low-balance alert of a locked account, after its balance or held amount moved: fires on
-- the way down through the threshold, re-arms on the way back up.
create or replace function billing.check_low_balance(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_available numeric(38, 18) := a.balance - a.held;
begin
  if a.low_balance_threshold is null then
    return;
  end if;
  if v_available < a.low_balance_threshold and not a.low_balance_fired then
    update billing.accounts x set low_balance_fired = true where x.id = a.id;
    -- The runway (days left at the last 7 days' pace) is read only when the alert fires.
    perform billing.queue_user_alert(a.user_id, 'low-balance:' || a.id || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'balance_below', 'threshold', trim_scale(a.low_balance_threshold)::text,
        'available', trim_scale(v_available)::text, 'runway_days', (billing.runway(a.id) ->> 'days')::bigint));
  elsif v_available >= a.low_balance_threshold and a.low_balance_fired then
    update billing.accounts x set low_balance_fired = false where x.id = a.id;
  end if;
end;
$$;
comment on function billing.check_low_balance(a billing.accounts) is 'Internal: fires (once per crossing) or re-arms the low-balance alert of a locked account.';
revoke execute on function billing.check_low_balance(a billing.accounts) from public;

-- A cap's percent alerts, after its period's spending moved (p_cap is the row as updated): each
-- percent fires once per period when reached, and re-arms when spending falls back below it
-- (a hold released) or a new period starts. No statement runs unless something changes.
create or replace function billing.cap_alerts_after(p_cap billing.spend_caps) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_starts timestamptz := date_trunc(p_cap.period, now() at time zone p_cap.time_zone) at time zone p_cap.time_zone;
  v_spent numeric(38, 18) := case when p_cap.period_start = v_starts then p_cap.spent else 0 end;
  v_fired integer[] := case when p_cap.alerts_period = v_starts then p_cap.alerts_fired else '{}' end;
  v_reached integer[] := '{}'::integer[];
  v_pct integer;
  v_user uuid;
begin
  -- Plain expressions, no query: this runs on every capped debit of an account with cap alerts.
  foreach v_pct in array p_cap.alert_percents loop
    if v_spent * 100 >= p_cap.amount * v_pct then
      v_reached := v_reached || v_pct;
    end if;
  end loop;
  if v_reached = v_fired and p_cap.alerts_period = v_starts then
    return;
  end if;
  update billing.spend_caps x set alerts_fired = v_reached, alerts_period = v_starts where x.id = p_cap.id;
  if exists (select 1 from unnest(v_reached) pct where not pct = any (v_fired)) then
    select a.user_id into v_user from billing.accounts a where a.id = p_cap.account_id;
    -- Keyed by the transaction's time too: a percent re-armed and reached again fires again.
    perform billing.queue_user_alert(v_user, 'cap:' || p_cap.id || ':' || pct || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'cap_used', 'percent', pct, 'period', p_cap.period, 'model', p_cap.model,
        'cap', trim_scale(p_cap.amount)::text, 'spent', trim_scale(v_spent)::text))
    from unnest(v_reached) pct where not pct = any (v_fired);
  end if;
end;
$$;
comment on function billing.cap_alerts_after(p_cap billing.spend_caps) is 'Internal: fires (once per period and crossing) or re-arms the percent alerts of a cap whose spending moved.';
revoke execute on function billing.cap_alerts_after(p_cap billing.spend_caps) from public;

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
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  update billing.accounts a set low_balance_threshold = p_threshold, low_balance_fired = false where a.id = v_account_id;
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
begin
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  begin
    update billing.spend_caps c set alert_percents = coalesce(array(select distinct x from unnest(p_percents) x order by x), '{}'),
      alerts_fired = '{}', alerts_period = null
    where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from p_model;
  exception when check_violation then
    perform billing.raise_error('INVALID_ALERT', jsonb_build_object('field', 'percents',
      'rule', '1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95 or 100'));
  end;
  if not found then
    perform billing.raise_error('CAP_NOT_FOUND', jsonb_build_object('period', p_period)); -- not the model: the caller's text
  end if;
  perform billing.cap_alerts_after(c) from billing.spend_caps c
  where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from p_model;
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

create or replace function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null)
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
comment on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid) is 'Internal: counts an amount against the applicable caps (the account''s, and the member''s on a pooled wallet) if all have room; else returns the cap it would exceed.';
revoke execute on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid) from public;

-- The most `p_account_id` may still spend now on `p_model` (for `p_member` on an organisation's
-- wallet) before a cap refuses: the least room of the caps that apply; null when none does.
create or replace function billing.cap_room(p_account_id bigint, p_model text, p_member uuid default null) returns numeric
language sql stable
set search_path = ''
as $$
  select greatest(min(x.amount - case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end), 0)
  from billing.spend_caps x cross join lateral billing.cap_period(x.period, x.time_zone, now()) p
  where x.account_id = p_account_id and (x.model is null or x.model = p_model)
    and (x.member_id is null or x.member_id = p_member)
$$;
comment on function billing.cap_room(p_account_id bigint, p_model text, p_member uuid) is 'Internal: the least room left under the caps that apply to a charge (null: no cap applies).';
revoke execute on function billing.cap_room(p_account_id bigint, p_model text, p_member uuid) from public;

create or replace function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null)
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
comment on function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text, p_member uuid) is 'Internal: take_cap_room, refusing with SPEND_CAP_REACHED when a cap has no room.';
revoke execute on function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text, p_member uuid) from public;

create or replace function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamptz,
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
comment on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid) is 'Internal: gives back what a hold counted against caps and did not spend, in the period it was placed.';
revoke execute on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid) from public;

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
comment on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) is 'Sets (amount null: removes) one of a user''s caps of one owner: self (the student''s own) or admin (an admin now). Room spent this period is kept.';
revoke execute on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) from public;
grant execute on function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric, p_actor uuid, p_owner text) to service_role;

-- ============================================================ policies

create policy "Users can read their own caps" on billing.spend_caps
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));
