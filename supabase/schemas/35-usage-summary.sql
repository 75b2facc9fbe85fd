-- What a student's credits went on: usage per model over a range of days, in day or week
-- buckets, and how long the credits left will last at the recent pace. Read-only over the
-- ledger: nothing here moves money.
--
-- A charge is a debiting transfer of kind usage or hold_capture, from the user's own
-- account or, for a member, from a school's wallet or allowance (the transfer names the member).
-- Its model is the transfer's (usage) or its hold's (a job's capture); `other` when neither
-- names one. Tokens count only the counts the ledger wrote itself (billing.charge_counts_tokens:
-- usage, whose token keys it writes over the caller's metadata, and a gateway call's capture),
-- so a job's capture's caller-supplied metadata never reaches them.
--
-- A void (53-corrections.sql) nets against its charge: the same model, the charge's day, its
-- credits, tokens and request negative. It is read by when it was made (a void of an old charge
-- made today is live today; rolled up with the day it was made, into its charge's day's row).
--
-- Closed days are rolled up once into usage_daily (pg_cron, every 10 minutes): the ledger is
-- append-only and dated by insertion, so a day an hour past its end never changes again (a
-- transaction's timestamp is its start; none runs for an hour). A summary reads the rolled days
-- and computes only the days after them live, so 90 days of a heavy student cost ~90 rows per
-- model, not their 30,000 charges. The live reads every summary starts from, an account's charges
-- (billing.usage_charges) and its runway (billing.runway, which the low-balance alert reads
-- too), are in 10-ledger.sql, beside the ledger they read.

-- ============================================================ tables

create table billing.usage_daily (
  user_id uuid not null,
  org_id uuid,
  day date not null,
  model text not null,
  credits numeric(38, 18) not null,
  requests bigint not null,
  input_tokens bigint not null,
  output_tokens bigint not null,
  cached_input_tokens bigint not null default 0,
  reasoning_tokens bigint not null default 0,
  images bigint not null default 0,
  audio_seconds bigint not null default 0,
  cost_usd numeric(38, 18) not null default 0,    -- provider cost (billing.charge_cost) of the charges that have one
  uncosted_credits numeric(38, 18) not null default 0, -- credits of charges whose model had no provider price then
  constraint usage_daily_key unique nulls not distinct (user_id, day, model, org_id)
);
comment on table billing.usage_daily is 'Each user''s charges per UTC day and model (org_id: the organisation that paid; null: their own account), for days the roll-up has closed.';
alter table billing.usage_daily enable row level security;

-- A day across every user (the margins report, the usage alerts each minute: 80-observability.sql)
-- and an organisation's days (the cost_spike alert's history of a school).
create index usage_daily_day on billing.usage_daily (day);
create index usage_daily_org_day on billing.usage_daily (org_id, day) where org_id is not null;

create table billing.usage_rollup (
  singleton boolean primary key default true,
  rolled_through date not null,
  constraint usage_rollup_singleton check (singleton)
);
comment on table billing.usage_rollup is 'The last UTC day usage_daily holds (days after it are summarised live).';
alter table billing.usage_rollup enable row level security;

-- ============================================================ functions

-- What a charge cost the platform, in USD: its counts (the ledger's own metadata keys, as
-- charge_usage and a void write them) times the provider price of `p_model` in effect at
-- `p_at` at the upstream that served it (a fallback's, named in the metadata as `upstream`;
-- else the upstream of the model's card in effect then), rounded to 18 places per charge like
-- its credits; 0 without counts; null (unknown) without a provider price then
-- (docs/pricing.md § Provider cost and margins).
create or replace function billing.provider_cost(p_model text, p_at timestamptz, p_metadata jsonb) returns numeric
language plpgsql stable
set search_path = ''
as $$
begin
  -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call, and the
  -- margins report and the roll-up call this once per charge (15 s over 117,000 charges).
  return (
    select round((coalesce((p_metadata ->> 'input_tokens')::numeric, 0) * p.usd_per_million_input
        + coalesce((p_metadata ->> 'cached_input_tokens')::numeric, 0)
          * coalesce(p.usd_per_million_cached_input, p.usd_per_million_input)
        + coalesce((p_metadata ->> 'output_tokens')::numeric, 0) * p.usd_per_million_output
        + coalesce((p_metadata ->> 'reasoning_tokens')::numeric, 0)
          * coalesce(p.usd_per_million_reasoning, p.usd_per_million_output)
        + coalesce((p_metadata ->> 'cache_write_tokens')::numeric, 0)
          * coalesce(p.usd_per_million_cache_write, p.usd_per_million_input)
        + coalesce((p_metadata ->> 'cache_write_1h_tokens')::numeric, 0)
          * coalesce(p.usd_per_million_cache_write_1h, p.usd_per_million_input)) / 1000000
      + coalesce((p_metadata ->> 'images')::numeric, 0) * coalesce(p.usd_per_image, 0)
      + coalesce((p_metadata ->> 'audio_seconds')::numeric, 0) * coalesce(p.usd_per_audio_second, 0), 18)
    -- The card first, then its upstream's price: each one index probe (a correlated filter on
    -- the upstream cost half again as much per charge).
    from (select r.upstream from billing.rate_cards r where r.model = p_model and r.effective_from <= p_at
          order by r.effective_from desc, r.version desc limit 1) r
    cross join lateral (select p.* from billing.provider_prices p
      where p.model = p_model and p.upstream = coalesce(p_metadata ->> 'upstream', r.upstream) and p.effective_from <= p_at
      order by p.effective_from desc, p.version desc limit 1) p);
end
$$;
comment on function billing.provider_cost(p_model text, p_at timestamp with time zone, p_metadata jsonb) is 'Internal: the provider cost in USD of a charge''s counts at the provider price in effect at p_at, at the upstream that served it (a fallback''s, or the model''s card''s then; null without one: unknown).';
revoke execute on function billing.provider_cost(p_model text, p_at timestamp with time zone, p_metadata jsonb) from public;

-- A charge's provider cost (null: unknown, its model had no provider price then). Usage and an
-- AI call's capture carry the ledger's own counts; any other capture's metadata is its caller's,
-- so it counts none (0 when its model is priced). An excess charged beyond a hold costs nothing when
-- the hold captured part of the price: that capture carries the call's counts (the excess has
-- the same ones, and would count them twice).
create or replace function billing.charge_cost(p_kind billing.transfer_kind, p_model text, p_at timestamptz, p_amount numeric,
  p_metadata jsonb) returns numeric
language plpgsql stable
set search_path = ''
as $$
begin
  -- PL/pgSQL for the same reason as provider_cost: called once per charge.
  return billing.provider_cost(p_model, p_at,
    case when p_kind <> 'void' and billing.charge_counts_tokens(p_kind, p_amount, p_metadata) then p_metadata else '{}' end);
end
$$;
comment on function billing.charge_cost(p_kind billing.transfer_kind, p_model text, p_at timestamp with time zone, p_amount numeric, p_metadata jsonb) is 'Internal: a charge''s provider cost in USD from the ledger''s own counts (null: its model had no provider price then).';
revoke execute on function billing.charge_cost(p_kind billing.transfer_kind, p_model text, p_at timestamp with time zone, p_amount numeric, p_metadata jsonb) from public;

-- pg_cron, every 10 minutes: rolls up to `p_days` closed days after the last one rolled (the
-- first run starts at the ledger's first day), each in one statement, under the watermark's
-- lock so two runs never roll a day twice. Answers the days rolled.
create or replace function billing.roll_up_usage(p_days integer) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_last date := ((now() - interval '1 hour') at time zone 'UTC')::date - 1; -- closed for an hour
  v_day date;
  v_rolled integer := 0;
begin
  insert into billing.usage_rollup (rolled_through)
    select coalesce((select (t.created_at at time zone 'UTC')::date from billing.transfers t order by t.id limit 1),
      v_last + 1) - 1
  on conflict do nothing;
  select u.rolled_through + 1 into v_day from billing.usage_rollup u for update;
  while v_day <= v_last and v_rolled < p_days loop
    insert into billing.usage_daily (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens,
      cached_input_tokens, reasoning_tokens, images, audio_seconds, cost_usd, uncosted_credits)
    select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end, v_day, m.model,
      sum(t.amount), count(*),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'input_tokens') = 'number'
        then (t.metadata ->> 'input_tokens')::bigint end), 0),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'output_tokens') = 'number'
        then (t.metadata ->> 'output_tokens')::bigint end), 0),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'cached_input_tokens') = 'number'
        then (t.metadata ->> 'cached_input_tokens')::bigint end), 0),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'reasoning_tokens') = 'number'
        then (t.metadata ->> 'reasoning_tokens')::bigint end), 0),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'images') = 'number'
        then (t.metadata ->> 'images')::bigint end), 0),
      coalesce(sum(case when n.counted and jsonb_typeof(t.metadata -> 'audio_seconds') = 'number'
        then (t.metadata ->> 'audio_seconds')::bigint end), 0),
      coalesce(sum(c.cost), 0), coalesce(sum(t.amount) filter (where c.cost is null), 0)
    from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    cross join lateral (select coalesce(t.metadata ->> 'model',
      (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id), 'other') as model) m
    cross join lateral (select billing.charge_cost(t.kind, m.model, t.created_at, t.amount, t.metadata) as cost) c
    cross join lateral (select billing.charge_counts_tokens(t.kind, t.amount, t.metadata) as counted) n
    where t.created_at >= v_day::timestamp at time zone 'UTC' and t.created_at < (v_day + 1)::timestamp at time zone 'UTC'
      and t.kind in ('usage', 'hold_capture') and (t.member_id is not null or a.user_id is not null)
    group by 1, 2, 4;
    -- The voids made that day, netted into their charges' days (earlier days' rows, or this one's).
    insert into billing.usage_daily as d (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens,
      cached_input_tokens, reasoning_tokens, images, audio_seconds, cost_usd, uncosted_credits)
    select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
      ((t.metadata ->> 'charged_at')::timestamptz at time zone 'UTC')::date, coalesce(t.metadata ->> 'model', 'other'),
      -sum(t.amount), -count(*), -coalesce(sum((t.metadata ->> 'input_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'output_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'cached_input_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'reasoning_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'images')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'audio_seconds')::bigint), 0),
      -coalesce(sum(c.cost), 0), -coalesce(sum(t.amount) filter (where c.cost is null), 0)
    from billing.transfers t
    join billing.accounts a on a.id = t.to_account_id
    cross join lateral (select billing.provider_cost(coalesce(t.metadata ->> 'model', 'other'),
      (t.metadata ->> 'charged_at')::timestamptz, t.metadata) as cost) c
    where t.created_at >= v_day::timestamp at time zone 'UTC' and t.created_at < (v_day + 1)::timestamp at time zone 'UTC'
      and t.kind = 'void' and (t.member_id is not null or a.user_id is not null)
    group by 1, 2, 3, 4
    on conflict on constraint usage_daily_key do update
      set credits = d.credits + excluded.credits, requests = d.requests + excluded.requests,
          input_tokens = d.input_tokens + excluded.input_tokens, output_tokens = d.output_tokens + excluded.output_tokens,
          cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
          reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens, images = d.images + excluded.images,
          audio_seconds = d.audio_seconds + excluded.audio_seconds, cost_usd = d.cost_usd + excluded.cost_usd,
          uncosted_credits = d.uncosted_credits + excluded.uncosted_credits;
    update billing.usage_rollup set rolled_through = v_day;
    v_day := v_day + 1;
    v_rolled := v_rolled + 1;
  end loop;
  return v_rolled;
end;
$$;
comment on function billing.roll_up_usage(p_days integer) is 'pg_cron: rolls up to p_days closed UTC days of charges into usage_daily; answers how many.';
revoke execute on function billing.roll_up_usage(p_days integer) from public;

-- The summary of a user's charges over the days [from, to): their own account's (p_account)
-- and those schools paid for them (of p_org only, when given); totals, per model, one bucket per
-- day or week (empty ones too, so a chart draws them), and the runway of `p_runway_account`.
-- Rolled days come from usage_daily, the days after them from the ledger.
create or replace function billing.summarize_usage(p_user uuid, p_account bigint, p_org uuid, p_from date,
  p_to date, p_granularity text, p_runway_account bigint)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_live_from date;
begin
  if p_granularity is null or p_granularity not in ('day', 'week') then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'granularity', 'rule', 'day or week'));
  end if;
  if p_from is null or p_to is null or p_from >= p_to or p_to - p_from > 366 then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'before to, at most 366 days'));
  end if;
  v_live_from := greatest(p_from, least(p_to, coalesce((select u.rolled_through + 1 from billing.usage_rollup u), p_from)));
  return (
    with cells as ( -- one row per bucket and model
      select date_trunc(p_granularity, d.day::timestamp)::date as starts, d.model, sum(d.credits) as credits,
        sum(d.requests) as requests, coalesce(sum(d.credits) filter (where d.school), 0) as school,
        sum(d.input_tokens) as input_tokens, sum(d.output_tokens) as output_tokens,
        sum(d.cached_input_tokens) as cached_input_tokens, sum(d.reasoning_tokens) as reasoning_tokens,
        sum(d.images) as images, sum(d.audio_seconds) as audio_seconds
      from (
        select r.day, r.model, r.credits, r.requests, r.org_id is not null as school, r.input_tokens, r.output_tokens,
          r.cached_input_tokens, r.reasoning_tokens, r.images, r.audio_seconds
        from billing.usage_daily r
        where r.user_id = p_user and r.day >= p_from and r.day < v_live_from
          and (p_org is null or r.org_id = p_org) and (p_account is not null or r.org_id is not null)
        union all
        select (c.created_at at time zone 'UTC')::date, coalesce(c.model, 'other'), c.credits, c.requests, c.school,
          coalesce(c.input_tokens, 0), coalesce(c.output_tokens, 0), coalesce(c.cached_input_tokens, 0),
          coalesce(c.reasoning_tokens, 0), coalesce(c.images, 0), coalesce(c.audio_seconds, 0)
        from billing.usage_charges(p_account, p_user, p_org, v_live_from::timestamp at time zone 'UTC',
          p_to::timestamp at time zone 'UTC') c
        where v_live_from < p_to and c.created_at >= p_from::timestamp at time zone 'UTC' -- a void of an earlier charge
      ) d
      group by 1, 2
    ),
    models as (
      select c.model, sum(c.credits) as credits, sum(c.requests) as requests,
        sum(c.input_tokens) as input_tokens, sum(c.output_tokens) as output_tokens,
        sum(c.cached_input_tokens) as cached_input_tokens, sum(c.reasoning_tokens) as reasoning_tokens,
        sum(c.images) as images, sum(c.audio_seconds) as audio_seconds
      from cells c group by c.model
    ),
    buckets as (
      select s.starts::date as starts, coalesce(sum(c.credits), 0) as credits, coalesce(sum(c.requests), 0) as requests,
        coalesce(jsonb_agg(jsonb_build_object('model', c.model, 'credits', trim_scale(c.credits)::text,
          'requests', c.requests) order by c.credits desc, c.model) filter (where c.model is not null), '[]') as models
      from generate_series(date_trunc(p_granularity, p_from::timestamp), (p_to - 1)::timestamp,
        ('1 ' || p_granularity)::interval) s(starts)
      left join cells c on c.starts = s.starts::date
      group by s.starts
    )
    select jsonb_build_object(
      'from', p_from,
      'to', p_to,
      'granularity', p_granularity,
      'totals', (select jsonb_build_object(
          'credits', trim_scale(coalesce(sum(c.credits), 0))::text,
          'school_funded', trim_scale(coalesce(sum(c.school), 0))::text,
          'requests', coalesce(sum(c.requests), 0),
          'tokens', jsonb_build_object('input', coalesce(sum(c.input_tokens), 0),
            'output', coalesce(sum(c.output_tokens), 0), 'cached_input', coalesce(sum(c.cached_input_tokens), 0),
            'reasoning', coalesce(sum(c.reasoning_tokens), 0), 'images', coalesce(sum(c.images), 0),
            'audio_seconds', coalesce(sum(c.audio_seconds), 0)))
        from cells c),
      'models', coalesce((select jsonb_agg(jsonb_build_object('model', m.model, 'credits', trim_scale(m.credits)::text,
          'requests', m.requests, 'tokens', jsonb_build_object('input', m.input_tokens, 'output', m.output_tokens,
            'cached_input', m.cached_input_tokens, 'reasoning', m.reasoning_tokens, 'images', m.images,
            'audio_seconds', m.audio_seconds))
          order by m.credits desc, m.model) from models m), '[]'),
      'buckets', (select jsonb_agg(jsonb_build_object('start', b.starts, 'credits', trim_scale(b.credits)::text,
          'requests', b.requests, 'models', b.models) order by b.starts) from buckets b),
      'runway', billing.runway(p_runway_account)));
end;
$$;
comment on function billing.summarize_usage(p_user uuid, p_account bigint, p_org uuid, p_from date, p_to date, p_granularity text, p_runway_account bigint) is 'Internal: the usage summary of a user''s own account and of what schools paid for them.';
revoke execute on function billing.summarize_usage(p_user uuid, p_account bigint, p_org uuid, p_from date, p_to date, p_granularity text, p_runway_account bigint) from public;

-- GET /credits/usage/summary: the caller's own charges and those their schools paid for; the
-- runway is their own account's (a school's wallet is shared, so its pace is not theirs).
create or replace function billing.usage_summary(p_user uuid, p_from date, p_to date, p_granularity text)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_account bigint := (select a.id from billing.accounts a where a.user_id = p_user);
begin
  return billing.summarize_usage(p_user, v_account, null, p_from, p_to, p_granularity, v_account);
end;
$$;
comment on function billing.usage_summary(p_user uuid, p_from date, p_to date, p_granularity text) is 'A user''s usage per model over the UTC days [from, to) in day or week buckets, with their runway.';
revoke execute on function billing.usage_summary(p_user uuid, p_from date, p_to date, p_granularity text) from public;
grant execute on function billing.usage_summary(p_user uuid, p_from date, p_to date, p_granularity text) to service_role;

-- ============================================================ margins

-- Every user's charges made in [from, to) with their provider cost (null: unknown), one row a
-- charge, and the voids made then (negative, dated and costed by their charge): what
-- roll_up_usage writes to usage_daily, before it is grouped. The live part of the margins report.
create or replace function billing.margin_charges(p_from timestamptz, p_to timestamptz)
returns table (user_id uuid, org_id uuid, day date, model text, credits numeric, cost_usd numeric)
language sql stable
set search_path = ''
as $$
  select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
    (t.created_at at time zone 'UTC')::date, m.model, t.amount,
    billing.charge_cost(t.kind, m.model, t.created_at, t.amount, t.metadata)
  from billing.transfers t
  join billing.accounts a on a.id = t.from_account_id
  cross join lateral (select coalesce(t.metadata ->> 'model',
    (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id), 'other') as model) m
  where t.created_at >= p_from and t.created_at < p_to
    and t.kind in ('usage', 'hold_capture') and (t.member_id is not null or a.user_id is not null)
  union all
  select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
    ((t.metadata ->> 'charged_at')::timestamptz at time zone 'UTC')::date, coalesce(t.metadata ->> 'model', 'other'),
    -t.amount, -billing.provider_cost(coalesce(t.metadata ->> 'model', 'other'), (t.metadata ->> 'charged_at')::timestamptz,
      t.metadata)
  from billing.transfers t
  join billing.accounts a on a.id = t.to_account_id
  where t.created_at >= p_from and t.created_at < p_to
    and t.kind = 'void' and (t.member_id is not null or a.user_id is not null);
$$;
comment on function billing.margin_charges(p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: each charge (and void) made in [from, to) with its user, paying organisation, day, model, credits and provider cost (null: unknown).';
revoke execute on function billing.margin_charges(p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- GET /admin/margins: revenue (credits and USD, 1 USD = 1,000 credits), provider cost and
-- margin over the UTC days [from, to), per model, paying organisation (`org`: school-paid
-- charges only) or student, with totals and one row a day. Rolled days from usage_daily, the
-- days after them live (as summarize_usage). margin_percent: margin ÷ revenue × 100, 2 places;
-- null without revenue. A row with revenue whose provider cost is unknown (its model had no
-- provider price then: uncosted_credits) has no cost, margin or percentage: unknown, never 100%.
create or replace function billing.margins_report(p_from date, p_to date, p_by text) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_live_from date;
begin
  if p_by is null or p_by not in ('model', 'org', 'student') then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'by', 'rule', 'model, org or student'));
  end if;
  if p_from is null or p_to is null or p_from >= p_to or p_to - p_from > 366 then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'before to, at most 366 days'));
  end if;
  v_live_from := greatest(p_from, least(p_to, coalesce((select u.rolled_through + 1 from billing.usage_rollup u), p_from)));
  return (
    with charges as (
      select r.day, case p_by when 'model' then r.model when 'org' then r.org_id::text else r.user_id::text end as key,
        r.credits, r.cost_usd, r.uncosted_credits
      from billing.usage_daily r
      where r.day >= p_from and r.day < v_live_from and (p_by <> 'org' or r.org_id is not null)
      union all
      select m.day, case p_by when 'model' then m.model when 'org' then m.org_id::text else m.user_id::text end,
        m.credits, coalesce(m.cost_usd, 0), case when m.cost_usd is null then m.credits else 0 end
      from billing.margin_charges(v_live_from::timestamp at time zone 'UTC', p_to::timestamp at time zone 'UTC') m
      where v_live_from < p_to and m.day >= p_from and (p_by <> 'org' or m.org_id is not null)
    ),
    groups as (
      select c.key, sum(c.credits) as credits, sum(c.cost_usd) as cost, sum(c.uncosted_credits) as uncosted
      from charges c group by c.key
    ),
    days as (
      select s.day::date as day, coalesce(sum(c.credits), 0) as credits, coalesce(sum(c.cost_usd), 0) as cost,
        coalesce(sum(c.uncosted_credits), 0) as uncosted
      from generate_series(p_from::timestamp, (p_to - 1)::timestamp, interval '1 day') s(day)
      left join charges c on c.day = s.day::date
      group by s.day
    )
    select jsonb_build_object(
      'from', p_from, 'to', p_to, 'by', p_by,
      -- The margin_low alert's threshold, so a reader can mark the models under it.
      'alert_below_percent', (select trim_scale(s.margin_min_percent)::text from billing.alert_settings s),
      'totals', (select billing.margin_json(coalesce(sum(g.credits), 0), coalesce(sum(g.cost), 0), coalesce(sum(g.uncosted), 0))
          from groups g),
      'groups', coalesce((select jsonb_agg(jsonb_build_object('key', g.key) || billing.margin_json(g.credits, g.cost, g.uncosted)
          order by g.credits desc, g.key) from groups g), '[]'),
      'days', (select jsonb_agg(jsonb_build_object('day', d.day) || billing.margin_json(d.credits, d.cost, d.uncosted)
          order by d.day) from days d)));
end;
$$;
comment on function billing.margins_report(p_from date, p_to date, p_by text) is 'Revenue, provider cost and margin over the UTC days [from, to) per model, organisation or student, with totals and days.';
revoke execute on function billing.margins_report(p_from date, p_to date, p_by text) from public;
grant execute on function billing.margins_report(p_from date, p_to date, p_by text) to service_role;

-- Revenue in credits and USD (exact: × 0.001), provider cost, margin and its percentage, as
-- strings; cost, margin and percentage null (unknown) when some of the revenue (p_uncosted
-- credits, also given) had no provider price.
create or replace function billing.margin_json(p_credits numeric, p_cost numeric, p_uncosted numeric) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'revenue_credits', trim_scale(p_credits)::text,
    'revenue_usd', trim_scale(p_credits * 0.001)::text,
    'cost_usd', case when p_uncosted = 0 then trim_scale(p_cost)::text end,
    'margin_usd', case when p_uncosted = 0 then trim_scale(p_credits * 0.001 - p_cost)::text end,
    'margin_percent', case when p_credits <> 0 and p_uncosted = 0
      then trim_scale(round((p_credits * 0.001 - p_cost) * 100 / (p_credits * 0.001), 2))::text end,
    'uncosted_credits', trim_scale(p_uncosted)::text);
$$;
comment on function billing.margin_json(p_credits numeric, p_cost numeric, p_uncosted numeric) is 'Internal: a margins row''s revenue, cost and margin as JSON strings (cost and margin null when some revenue had no provider price).';
revoke execute on function billing.margin_json(p_credits numeric, p_cost numeric, p_uncosted numeric) from public;
