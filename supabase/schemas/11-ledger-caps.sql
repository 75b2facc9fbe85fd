-- What every posting checks under the account lock, and what it sets off after: the spend caps'
-- room a charge or hold takes and gives back; the watch queue the tick drains for the low-balance
-- alert, auto-recharge and cap alerts. The core's (the writer counts caps); the features that own
-- them (40-caps-alerts, 55-auto-recharge) keep their tables and the rest.

-- ============================================================ spend caps: the room a posting takes and gives back

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

-- A cap's percent alerts, after its period's spending moved (p_cap is the row as it is): each
-- percent fires once per period when reached, and re-arms when spending falls back below it
-- (a hold released) or a new period starts. Read in p_period (the tick names the period the
-- spending was counted in, so a percent reached just before that period ended still fires when
-- it looks after; null: the current one). No statement runs unless something changes.
create or replace function billing.cap_alerts_after(p_cap billing.spend_caps, p_period timestamptz default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_starts timestamptz := case when p_cap.period = 'term' then p_cap.period_start
    else coalesce(p_period, date_trunc(p_cap.period, now() at time zone p_cap.time_zone) at time zone p_cap.time_zone) end;
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
comment on function billing.cap_alerts_after(p_cap billing.spend_caps, p_period timestamp with time zone) is 'Internal: fires (once per period and crossing) or re-arms the percent alerts of a cap whose spending moved.';
revoke execute on function billing.cap_alerts_after(p_cap billing.spend_caps, p_period timestamp with time zone) from public;

create or replace function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null,
  p_count boolean default true, p_past boolean default false, p_also text[] default null)
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
      where x.account_id = p_account_id and (x.model is null or x.model = p_model or x.model = any (p_also))
        and (x.member_id is null or x.member_id = p_member)
    ), fits as (
      select x.*, bool_and(x.spent_now <= x.amount) over () as all_fit from x
    )
    update billing.spend_caps s set period_start = f.starts, spent = f.spent_now
    from fits f where s.id = f.id and (f.all_fit or p_past) and p_count
    returning s.*
  loop
    v_counted := true;
    if c.alert_percents <> '{}' then
      perform billing.watch_account(c.account_id, null, null);
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
    where x.account_id = p_account_id and (x.model is null or x.model = p_model or x.model = any (p_also))
      and (x.member_id is null or x.member_id = p_member)
      and case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end + p_amount > x.amount
    order by x.amount - case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end, x.id
    limit 1);
end;
$$;
comment on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid, p_count boolean, p_past boolean, p_also text[]) is 'Internal: counts an amount against the applicable caps (the account''s, and the member''s on a pooled wallet; p_model''s, and p_also''s: a hold''s fallback models) if all have room (p_count false: only asks; p_past: counted past them, a debt''s); else returns the cap it would exceed.';
revoke execute on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid, p_count boolean, p_past boolean, p_also text[]) from public;

create or replace function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamptz,
  p_member uuid default null, p_also text[] default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  c billing.spend_caps;
begin
  for c in
    update billing.spend_caps x set spent = greatest(x.spent - p_amount, 0)
    where p_amount > 0 and x.account_id = p_account_id and (x.model is null or x.model = p_model or x.model = any (p_also))
      and (x.member_id is null or x.member_id = p_member) and x.created_at <= p_placed_at
      and case when x.period = 'term' then x.period_start <= p_placed_at
               else x.period_start = date_trunc(x.period, p_placed_at at time zone x.time_zone) at time zone x.time_zone end
    returning x.*
  loop
    if c.alert_percents <> '{}' then
      perform billing.watch_account(c.account_id, null, null);
    end if;
  end loop;
end;
$$;
comment on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid, p_also text[]) is 'Internal: gives back what a hold counted against caps and did not spend, in the period it was placed.';
revoke execute on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid, p_also text[]) from public;

create or replace function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_unspent > 0
     and (select a.caps from billing.accounts a where a.id = p_hold.account_id) > 0 then
    perform billing.return_cap_room(p_hold.account_id, p_unspent, p_hold.metadata ->> 'model',
      coalesce((p_hold.metadata ->> 'cap_counted_at')::timestamptz, p_hold.created_at),
      p_hold.member_id, case when p_hold.purpose in ('ai', 'claims') then array(select jsonb_array_elements_text(p_hold.metadata -> 'fallbacks')) end);
  end if;
end;
$$;
comment on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) is 'Internal: returns a finished hold''s unspent amount to its caps.';
revoke execute on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) from public;

-- ============================================================ what a posting sets off: the low-balance alert and auto-recharge

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

-- After a locked account's available amount moved: below the threshold and armed → one
-- recharge (disarmed until available is back at or above it); the monthly limits apply.
create or replace function billing.check_auto_recharge(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
declare
  s billing.auto_recharge;
  v_month timestamptz := date_trunc('month', now());
  v_count integer;
  v_cents bigint;
  v_price integer;
begin
  if a.auto_recharge_below is null then
    return;
  elsif a.balance - a.held >= a.auto_recharge_below then
    if not a.auto_recharge_armed then
      update billing.accounts x set auto_recharge_armed = true where x.id = a.id;
    end if;
    return;
  elsif not a.auto_recharge_armed then
    return; -- this crossing has its recharge already
  end if;
  update billing.accounts x set auto_recharge_armed = false where x.id = a.id;
  select * into s from billing.auto_recharge r where r.user_id = a.user_id;
  select k.price_cents into v_price from billing.credit_packages k where k.id = s.package_id and k.active;
  if not found then
    -- A retired package sells to no one, this student's recharges included.
    insert into billing.auto_recharge_audit (user_id, actor, change)
    values (a.user_id, null, jsonb_build_object('skipped', 'package_retired', 'package_id', s.package_id));
    return;
  end if;
  select count(*), coalesce(sum(r.price_cents), 0) into v_count, v_cents from billing.recharges r
  where r.user_id = a.user_id and r.created_at >= v_month and r.status <> 'failed';
  if v_count + 1 > s.monthly_max_count or v_cents + v_price > s.monthly_max_cents then
    insert into billing.auto_recharge_audit (user_id, actor, change)
    values (a.user_id, null, jsonb_build_object('skipped', 'monthly_limit', 'count', v_count, 'cents', v_cents));
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('auto_recharge', a.user_id, 'recharge-limit:' || a.user_id || ':' || billing.json_time(v_month),
      jsonb_build_object('event', 'monthly_limit', 'count', v_count, 'cents', v_cents))
    on conflict (dedupe_key) do nothing;
    return;
  end if;
  insert into billing.recharges (user_id, package_id, package_version, price_cents, currency)
  select a.user_id, k.id, k.version, k.price_cents, k.currency from billing.credit_packages k where k.id = s.package_id
  on conflict do nothing; -- one in flight already
end;
$$;
comment on function billing.check_auto_recharge(a billing.accounts) is 'Internal: queues one recharge when a locked account''s available amount crosses below its threshold.';
revoke execute on function billing.check_auto_recharge(a billing.accounts) from public;

-- ============================================================ the watch queue: what a posting sets off, after it

-- Alerts and auto-recharge decide nothing about whether or from where credits move, so they
-- run after the posting's transaction: a posting queues its account (one row per account, its
-- lock already held), and the tick (billing.run_account_watch) checks it against the account
-- as it is then. The armed/fired flags keep each alert and recharge once per crossing.
create table billing.account_watch (
  account_id bigint primary key references billing.accounts (id) on delete cascade,
  may_recharge boolean not null,           -- a posting other than a refund left it below the recharge threshold
  peak numeric(38, 18),                    -- the most available any posting left since the tick looked: a crossing back up re-arms
  queued_at timestamptz default now() not null
);
comment on table billing.account_watch is 'Accounts whose available amount or capped spending moved since the tick last looked: the low-balance alert, auto-recharge and cap alerts run from here (billing.run_account_watch).';
alter table billing.account_watch enable row level security;

-- p_available: what the posting left available (null: a cap's spending moved); p_recharge_below:
-- the auto-recharge threshold, for a posting that may set it off (null for a refund or a lost
-- dispute: they never charge the card by themselves).
create or replace function billing.watch_account(p_account_id bigint, p_available numeric, p_recharge_below numeric)
returns void
language sql
set search_path = ''
as $$
  insert into billing.account_watch as w (account_id, may_recharge, peak)
  values (p_account_id, coalesce(p_available < p_recharge_below, false), p_available)
  on conflict (account_id) do update set may_recharge = w.may_recharge or excluded.may_recharge,
    peak = greatest(w.peak, excluded.peak)
  where (excluded.may_recharge and not w.may_recharge) or excluded.peak > w.peak or (w.peak is null and excluded.peak is not null)
$$;
comment on function billing.watch_account(p_account_id bigint, p_available numeric, p_recharge_below numeric) is 'Internal: queues a locked account, with what its posting left available, for the tick''s alerts and auto-recharge (billing.run_account_watch).';
revoke execute on function billing.watch_account(p_account_id bigint, p_available numeric, p_recharge_below numeric) from public;

-- What postings left available since the tick last looked, against the thresholds as they are
-- now: a posting that left the account at or above one re-arms it (the low-balance alert fires
-- again, auto-recharge may charge again), as if the tick had looked then; the peak is then used.
-- The tick runs it, and so does a change of either setting before it applies, so the other
-- feature's crossing is never lost with it. Under the account lock; the account as re-armed.
create or replace function billing.rearm_watched(a billing.accounts) returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_peak numeric(38, 18);
begin
  update billing.account_watch w set peak = null from billing.account_watch old
  where w.account_id = a.id and old.account_id = w.account_id and old.peak is not null
  returning old.peak into v_peak;
  if v_peak >= a.low_balance_threshold and a.low_balance_fired then
    update billing.accounts x set low_balance_fired = false where x.id = a.id returning * into a;
  end if;
  if v_peak >= a.auto_recharge_below and not a.auto_recharge_armed then
    update billing.accounts x set auto_recharge_armed = true where x.id = a.id returning * into a;
  end if;
  return a;
end;
$$;
comment on function billing.rearm_watched(a billing.accounts) is 'Internal: re-arms a locked account''s low-balance alert and auto-recharge from what postings left available since the tick looked (account_watch.peak), then clears it.';
revoke execute on function billing.rearm_watched(a billing.accounts) from public;

create or replace function billing.run_account_watch(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  a billing.accounts;
  v_id bigint;
  v_may_recharge boolean;
  v_state text;
  v_done integer := 0;
begin
  for v_id in select w.account_id from billing.account_watch w order by w.queued_at limit p_limit loop
    -- The account's lock first, as a posting takes it before it queues: an account busy now
    -- is left for the next tick (its posting queues it again anyway).
    select * into a from billing.accounts x where x.id = v_id for update skip locked;
    continue when not found;
    begin
      -- As the student reads it (billing.balance_of): a hold past its TTL reserves nothing and a
      -- due lot is gone, though the sweep may not have ended or expired them yet. What the settle
      -- left available is queued like any posting's, before the re-arm reads it.
      a := billing.settled(a);
      -- A posting left it at or above a threshold since the last look: that crossing re-arms, and
      -- the account as it is now may fire again.
      a := billing.rearm_watched(a);
      delete from billing.account_watch w where w.account_id = v_id returning w.may_recharge into v_may_recharge;
      if found then                          -- else another tick took it
        perform billing.check_low_balance(a);
        if v_may_recharge then
          perform billing.check_auto_recharge(a);
        end if;
        perform billing.cap_alerts_after(c, c.period_start) from billing.spend_caps c
        where c.account_id = v_id and c.alert_percents <> '{}';
      end if;
    exception when others then
      -- One account's failure is that account's: it leaves the queue, the others go on, and
      -- someone is told.
      get stacked diagnostics v_state = returned_sqlstate;
      delete from billing.account_watch w where w.account_id = v_id;
      perform billing.set_alert('account_watch_failed', true, 'An account''s alerts or auto-recharge failed at the tick',
        jsonb_build_object('account_id', v_id, 'sqlstate', v_state));
    end;
    v_done := v_done + 1;
  end loop;
  return v_done;
end;
$$;
comment on function billing.run_account_watch(p_limit integer) is 'Tick: the low-balance alert, auto-recharge and cap alerts of up to p_limit queued accounts, each under its lock (SKIP LOCKED); returns how many it looked at.';
revoke execute on function billing.run_account_watch(p_limit integer) from public;
grant execute on function billing.run_account_watch(p_limit integer) to service_role;
