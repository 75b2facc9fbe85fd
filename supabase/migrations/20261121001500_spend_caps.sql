-- Spend caps: a limit on what an account may spend per day, week or month (in a time zone),
-- overall or for one model. Checked inside the posting transaction, under the account's row
-- lock like the balance, so parallel requests can never exceed a cap: usage and debits count
-- when they post, holds when they are placed (a job's reserve included), and what a hold does
-- not spend (released, expired, captured for less, given up to a dispute) is returned to the
-- period it was placed in. A hold's capture and a job's overage beyond its reserve do not count
-- again: they spend what the hold already counted (the overage is work already done).
-- An account without caps pays nothing for this: accounts.caps = 0 skips every step.

create table billing.spend_caps (
  id bigint generated always as identity primary key,
  account_id bigint not null references billing.accounts (id),
  period text not null,
  time_zone text not null default 'UTC',
  model text,                                     -- null: all spending
  amount numeric(38, 18) not null,
  -- What counted in the current period (the row rolls over to a new period when it starts).
  period_start timestamptz,
  spent numeric(38, 18) not null default 0,
  set_by uuid,                                    -- the student themself or an admin
  created_at timestamptz not null default now(),  -- holds placed before it never counted against it
  updated_at timestamptz not null default now(),
  constraint spend_caps_period check (period in ('day', 'week', 'month')),
  constraint spend_caps_amount_positive check (amount > 0),
  constraint spend_caps_spent_not_negative check (spent >= 0),
  constraint spend_caps_one_per_scope unique nulls not distinct (account_id, period, model)
);
comment on table billing.spend_caps is 'Per-account spending limits per period (day, week, month; in a time zone), overall or per model, with the current period''s spending.';

revoke all on billing.spend_caps from public, anon, authenticated, service_role;
alter table billing.spend_caps enable row level security;
grant select on billing.spend_caps to authenticated, service_role;
create policy "Users can read their own caps" on billing.spend_caps
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));

-- ============================================================ periods

create function billing.cap_period(p_period text, p_time_zone text, p_at timestamptz, out starts timestamptz, out resets timestamptz)
language sql stable
set search_path = ''
as $$
  select date_trunc(p_period, p_at at time zone p_time_zone) at time zone p_time_zone,
         (date_trunc(p_period, p_at at time zone p_time_zone) + ('1 ' || p_period)::interval) at time zone p_time_zone
$$;
comment on function billing.cap_period(text, text, timestamptz) is 'Internal: the cap period containing p_at (local midnight, ISO week from Monday, month), and when the next starts.';

-- ============================================================ counting (under the account lock)

-- Counts p_amount against every cap of the account that applies (overall, and the model's),
-- when all have room; else counts nothing and returns the first cap it would exceed. The
-- common case is one statement: each cap's period rolled over if a new one started, and the
-- amount counted, only if every cap has room (the period expression is written out, not a
-- function call, to keep it so).
create function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text) returns jsonb
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
        case when x.period_start = date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone
             then x.spent else 0 end + p_amount as spent_now,
        date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone as starts
      from billing.spend_caps x
      where x.account_id = p_account_id and (x.model is null or x.model = p_model)
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
      'cap', trim_scale(x.amount)::text, 'spent', trim_scale(case when x.period_start = p.starts then x.spent else 0 end)::text,
      'required', trim_scale(p_amount)::text, 'resets_at', billing.json_time(p.resets))
    from billing.spend_caps x cross join lateral billing.cap_period(x.period, x.time_zone, now()) p
    where x.account_id = p_account_id and (x.model is null or x.model = p_model)
      and case when x.period_start = p.starts then x.spent else 0 end + p_amount > x.amount
    order by x.amount - case when x.period_start = p.starts then x.spent else 0 end, x.id
    limit 1);
end;
$$;
comment on function billing.take_cap_room(bigint, numeric, text)
  is 'Internal: counts an amount against the account''s applicable caps if all have room; else returns the cap it would exceed.';

-- Refuses with SPEND_CAP_REACHED (402) when p_amount does not fit; counts it when it does.
create function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_over jsonb := billing.take_cap_room(p_account_id, p_amount, p_model);
begin
  if v_over is not null then
    perform billing.raise_error('SPEND_CAP_REACHED', v_over);
  end if;
end;
$$;
comment on function billing.charge_caps(bigint, numeric, text) is 'Internal: take_cap_room, refusing with SPEND_CAP_REACHED when a cap has no room.';

-- What a hold counted but will not spend goes back to its caps, when the period it was placed
-- in is still the current one (a period that has ended is closed).
create function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamptz)
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
      and x.created_at <= p_placed_at
      and x.period_start = date_trunc(x.period, p_placed_at at time zone x.time_zone) at time zone x.time_zone
    returning x.*
  loop
    if c.alert_percents <> '{}' then
      perform billing.cap_alerts_after(c);
    end if;
  end loop;
end;
$$;
comment on function billing.return_cap_room(bigint, numeric, text, timestamptz)
  is 'Internal: gives back what a hold counted against caps and did not spend, in the period it was placed.';

-- ============================================================ setting caps

-- p_actor is the student (for themselves) or an admin (p_admin, for anyone); the route checks
-- which. p_amount null removes the cap. Takes the account lock, so a change and a spend never
-- interleave.
create function billing.set_spend_cap(p_user uuid, p_period text, p_time_zone text, p_model text, p_amount numeric,
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
    on conflict (account_id, period, model) do update
      set amount = excluded.amount, time_zone = excluded.time_zone, set_by = excluded.set_by, updated_at = now();
  end if;
  update billing.accounts a set caps = (select count(*) from billing.spend_caps c where c.account_id = a.id)
  where a.id = v_account_id;
  return billing.get_spend_caps(p_user);
end;
$$;
comment on function billing.set_spend_cap(uuid, text, text, text, numeric, uuid)
  is 'Sets (or, with a null amount, removes) a user''s cap for a period and model; returns every cap with its period''s spending.';

create function billing.get_spend_caps(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('period', c.period, 'time_zone', c.time_zone, 'model', c.model,
      'cap', trim_scale(c.amount)::text, 'spent', trim_scale(x.spent)::text,
      'remaining', trim_scale(greatest(c.amount - x.spent, 0))::text,
      'period_started_at', billing.json_time(p.starts), 'resets_at', billing.json_time(p.resets))
    order by c.period, c.model nulls first), '[]'::jsonb)
  from billing.accounts a
  join billing.spend_caps c on c.account_id = a.id
  cross join lateral billing.cap_period(c.period, c.time_zone, now()) p
  cross join lateral (select case when c.period_start = p.starts then c.spent else 0 end as spent) x
  where a.user_id = p_user
$$;
comment on function billing.get_spend_caps(uuid) is 'A user''s caps, each with what its current period has spent, what is left and when it resets.';

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function
  billing.set_spend_cap(uuid, text, text, text, numeric, uuid),
  billing.get_spend_caps(uuid)
to service_role;
