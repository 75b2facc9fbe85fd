-- GET /admin/metrics at scale (#18): one set of per-day parts per request. The request asked
-- revenue_metrics for the range and metrics_series for its days, weeks or months, and each
-- computed its own parts: every closed day's roll-up row was read and checked twice, and the
-- minutes of today since the last roll-up were read from the raw rows twice (30-40 ms each at
-- 10 million transfers; bench/README.md, reporting). Now the parts of a range (a roll-up row per
-- day where it is current, one live piece per day for the rest) are computed once, by
-- billing.metric_parts, and every metric is built from them (billing.metrics_of, organisations
-- included), for the range and for each period of the series (the periods are whole days, so
-- each takes its own days' parts). billing.metrics_report returns both, for one call per request. Same answers: pgTAP
-- (51-revenue-rollup) checks the report against revenue_metrics and metrics_series, and those
-- against the raw rows.

-- One part of a range: a stored roll-up row (bitmaps of account ids, the liability at its end)
-- or a live piece read from the rows (account ids, the liability's change over the piece).
create type billing.metric_part as (
  lo timestamptz,                   -- the part covers [lo, hi)
  hi timestamptz,
  stored boolean,                   -- a revenue_rollup row; else a live piece
  money jsonb,
  credits jsonb,
  lots jsonb,
  active_bitmap bit varying,        -- stored: accounts with a credit ledger entry
  paying_bitmap bit varying,        -- stored: accounts whose user had a purchase paid
  active_accounts bigint[],         -- live: the same, as ids
  paying_accounts bigint[],
  first_time_purchasers bigint,
  checkouts_created bigint,
  checkouts_paid bigint,
  webhooks_received bigint,
  webhooks_ok bigint,
  user_credit_change numeric,       -- live: Σ user entries over the piece
  outstanding_credits numeric       -- stored: Σ user entries before hi
);
comment on type billing.metric_part is 'Internal: one roll-up row or live piece of a range, as billing.metrics_of combines them.';

-- The parts of [p_from, p_to): each UTC day's rolled-up span where its row still equals the rows
-- (with p_use_rollup), and the rest of each day, at most one piece, from the rows.
create function billing.metric_parts(p_from timestamptz, p_to timestamptz, p_use_rollup boolean)
returns billing.metric_part[]
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
set jit = off
set max_parallel_workers_per_gather = 0
as $$
begin
  return array(
    with stored as (
      select r.* from billing.revenue_rollup r
      where p_use_rollup and r.day >= (p_from at time zone 'UTC')::date and r.day <= (p_to at time zone 'UTC')::date
        and r.day::timestamp at time zone 'UTC' >= p_from and r.covered_until <= p_to
        and billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
    ),
    pieces as (
      select greatest(p_from, coalesce(s.covered_until, x::timestamp at time zone 'UTC')) as lo,
             least(p_to, (x + interval '1 day')::timestamp at time zone 'UTC') as hi
      from generate_series(date_trunc('day', p_from at time zone 'UTC'), p_to at time zone 'UTC', interval '1 day') x
      left join stored s on s.day = x::date
    )
    select u.part from (
      select row(s.day::timestamp at time zone 'UTC', s.covered_until, true, s.money, s.credits, s.lots,
          s.active_accounts, s.paying_accounts, null, null, s.first_time_purchasers, s.checkouts_created,
          -- Today's row: its checkouts paid counted now (they are paid minutes after they open).
          case when s.covered_until < (s.day + 1)::timestamp at time zone 'UTC'
               then (select count(*) from billing.purchases p
                     where p.created_at >= s.day::timestamp at time zone 'UTC' and p.created_at < s.covered_until
                       and p.stripe_session_id is not null and p.status = 'paid')
               else s.checkouts_paid end,
          s.webhooks_received, s.webhooks_ok, null, s.outstanding_credits)::billing.metric_part as part
      from stored s
      union all
      select row(g.lo, g.hi, false, p.money, p.credits, p.lots, null, null, p.active_accounts, p.paying_accounts,
          p.first_time_purchasers, p.checkouts_created, p.checkouts_paid, p.webhooks_received, p.webhooks_ok,
          p.user_credit_change, null)::billing.metric_part
      from pieces g cross join lateral billing.revenue_parts(g.lo, g.hi) p
      where g.lo < g.hi
    ) u
    order by (u.part).lo
  );
end;
$$;
comment on function billing.metric_parts(timestamptz, timestamptz, boolean)
  is 'Internal: the roll-up rows and live pieces [from, to) is made of; rolled-up spans from revenue_rollup when asked.';

-- Every metric for [p_from, p_to) from its parts (docs/metrics.md): the parts of that range, or
-- of a larger one cut at whole days. p_use_rollup as the parts were made (the liability at the
-- end may start from a roll-up row before the range).
create function billing.metrics_of(p_parts billing.metric_part[], p_from timestamptz, p_to timestamptz, p_use_rollup boolean)
returns jsonb
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
set jit = off
set max_parallel_workers_per_gather = 0
as $$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  stored as (select p.* from parts p where p.stored),
  live as (select p.* from parts p where not p.stored),
  lot_flows as (
    select x.currency, x.category, x.kind, sum(x.credits) as credits, sum(x.cents) as cents
    from parts p cross join lateral jsonb_to_recordset(p.lots) x(currency text, category text, kind text, credits numeric, cents numeric)
    group by 1, 2, 3
  ),
  -- Paid credits: granted into deferred revenue, recognised when spent, breakage when they
  -- expire, taken back by refunds and disputes. Promotional credits cost nothing: counted in credits.
  lot_lines as (
    select f.currency,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'granted'), 0)) as deferred_in,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind in ('usage', 'debit', 'hold_capture')), 0)) as recognised,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'expiry'), 0)) as breakage,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind in ('refund_reversal', 'dispute_reversal')), 0)) as reversed,
      coalesce(sum(f.credits) filter (where f.category = 'promotional' and f.kind = 'granted'), 0) as promo_granted,
      coalesce(sum(f.credits) filter (where f.category = 'promotional' and f.kind in ('usage', 'debit', 'hold_capture')), 0) as promo_spent,
      coalesce(sum(f.credits) filter (where f.category = 'promotional' and f.kind = 'expiry'), 0) as promo_expired
    from lot_flows f group by f.currency
  ),
  money as (
    select x.kind, x.account, x.currency, sum(x.cents) as cents
    from parts p cross join lateral jsonb_to_recordset(p.money) x(kind text, account text, currency text, cents bigint)
    group by x.kind, x.account, x.currency
  ),
  lines as (
    select currency,
      coalesce(sum(cents) filter (where kind = 'credit_purchase' and account = 'b2c_revenue'), 0) as b2c_gmv,
      coalesce(-sum(cents) filter (where kind = 'credit_refund' and account = 'b2c_revenue'), 0) as b2c_refunds,
      coalesce(-sum(cents) filter (where kind = 'credit_dispute_lost' and account = 'b2c_revenue'), 0) as b2c_disputes_lost,
      coalesce(sum(cents) filter (where kind = 'stripe_fee' and account = 'stripe_fees'), 0) as b2c_stripe_fees,
      coalesce(-sum(cents) filter (where kind = 'provider_payment' and account = 'payers'), 0) as b2b_gmv,
      coalesce(sum(cents) filter (where kind in ('provider_payment', 'fee_adjustment') and account = 'platform_fees'), 0) as b2b_fees,
      coalesce(-sum(cents) filter (where kind = 'provider_refund' and account = 'platform_fees'), 0) as b2b_fee_refunds
    from money group by currency
  ),
  -- Distinct users: the union of the stored days' bitmaps and the live pieces' ids.
  users as (
    select
      billing.count_accounts(array(select s.active_bitmap from stored s),
        array(select x from live l cross join lateral unnest(l.active_accounts) x)) as active,
      billing.count_accounts(array(select s.paying_bitmap from stored s),
        array(select x from live l cross join lateral unnest(l.paying_accounts) x)) as paying,
      (select coalesce(sum(p.first_time_purchasers), 0) from parts p) as first_time
  ),
  checkouts as (
    select coalesce(sum(p.checkouts_created), 0) as created, coalesce(sum(p.checkouts_paid), 0) as paid from parts p
  ),
  by_kind as (
    select x.kind, x.model, sum(x.amount) as amount, sum(x.events) as events
    from parts p cross join lateral jsonb_to_recordset(p.credits) x(kind text, model text, amount numeric, events bigint)
    group by x.kind, x.model
  ),
  credits as (
    select
      coalesce(sum(k.amount) filter (where k.kind = 'purchase'), 0) as purchased,
      coalesce(sum(k.amount) filter (where k.kind = 'promo_grant'), 0) as bonus,
      coalesce(sum(k.amount) filter (where k.kind in ('usage', 'debit', 'hold_capture')), 0) as spent,
      coalesce(sum(k.amount) filter (where k.kind in ('refund_reversal', 'dispute_reversal')), 0) as reversed
    from by_kind k
  ),
  usage as (select k.model, k.amount as credits, k.events from by_kind k where k.kind = 'usage' and k.model is not null),
  webhooks as (
    select coalesce(sum(p.webhooks_received), 0) as received, coalesce(sum(p.webhooks_ok), 0) as ok from parts p
  ),
  -- The unspent liability at the end of the period (every user balance then): the running total
  -- of the latest roll-up span ending by then (a whole day, or one read above), plus the user
  -- entries after it: the live pieces from there on, and any gap before from.
  carried as (
    select c.covered_until as since, c.outstanding_credits from (
      (select r.covered_until, r.outstanding_credits from billing.revenue_rollup r
       where p_use_rollup and r.day < (p_to at time zone 'UTC')::date
         and r.covered_until = (r.day + 1)::timestamp at time zone 'UTC' and r.covered_until <= p_to
       order by r.day desc limit 1)
      union all
      select s.hi, s.outstanding_credits from stored s
    ) c
    order by c.covered_until desc limit 1
  ),
  outstanding as (
    select coalesce(c.outstanding_credits, 0)
      + coalesce((select sum(l.user_credit_change) from live l where l.lo >= coalesce(c.since, '-infinity')), 0)
      + billing.user_credit_change(coalesce(c.since, '-infinity'), p_from) as credits
    from (select 1) one left join carried c on true
  )
  select jsonb_build_object(
    'from', p_from, 'to', p_to,
    'by_currency', coalesce((select jsonb_agg(jsonb_build_object(
        'currency', l.currency,
        'b2c_credits', jsonb_build_object('gmv_cents', l.b2c_gmv, 'refunds_cents', l.b2c_refunds,
          'disputes_lost_cents', l.b2c_disputes_lost, 'stripe_fees_cents', l.b2c_stripe_fees,
          'net_revenue_cents', l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees),
        'b2b_provider_fees', jsonb_build_object('gmv_cents', l.b2b_gmv, 'platform_fees_cents', l.b2b_fees,
          'fee_refunds_cents', l.b2b_fee_refunds, 'net_revenue_cents', l.b2b_fees - l.b2b_fee_refunds,
          'take_rate', case when l.b2b_gmv > 0 then round(l.b2b_fees::numeric / l.b2b_gmv, 6) end),
        'gmv_cents', l.b2c_gmv + l.b2b_gmv,
        'net_revenue_cents', l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees + l.b2b_fees - l.b2b_fee_refunds,
        'take_rate', case when l.b2c_gmv + l.b2b_gmv > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost
          - l.b2c_stripe_fees + l.b2b_fees - l.b2b_fee_refunds)::numeric / (l.b2c_gmv + l.b2b_gmv), 6) end,
        'arpu_cents', case when u.active > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees
          + l.b2b_fees - l.b2b_fee_refunds)::numeric / u.active, 2) end,
        'arpu_paying_cents', case when u.paying > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost
          - l.b2c_stripe_fees)::numeric / u.paying, 2) end
      ) order by l.currency) from lines l, users u), '[]'::jsonb),
    'users', (select jsonb_build_object('active', u.active, 'paying', u.paying, 'first_time_purchasers', u.first_time) from users u),
    'conversion', (select jsonb_build_object('checkouts_created', c.created, 'checkouts_paid', c.paid,
        'checkout_rate', case when c.created > 0 then round(c.paid::numeric / c.created, 6) end,
        'first_purchase_rate', case when u.active > 0 then round(u.first_time::numeric / u.active, 6) end)
      from checkouts c, users u),
    'credits', (select jsonb_build_object('purchased', trim_scale(c.purchased)::text, 'bonus', trim_scale(c.bonus)::text,
        'spent', trim_scale(c.spent)::text, 'reversed', trim_scale(c.reversed)::text,
        'outstanding', (select trim_scale(o.credits)::text from outstanding o),
        'usage_by_model', coalesce((select jsonb_agg(jsonb_build_object('model', x.model, 'credits', trim_scale(x.credits)::text,
          'events', x.events) order by x.model) from usage x), '[]'::jsonb))
      from credits c),
    'credit_lots', coalesce((select jsonb_agg(jsonb_build_object('currency', x.currency,
        'paid_granted_cents', x.deferred_in, 'recognised_revenue_cents', x.recognised, 'breakage_revenue_cents', x.breakage,
        'paid_reversed_cents', x.reversed,
        'promotional_credits', jsonb_build_object('granted', trim_scale(x.promo_granted)::text,
          'spent', trim_scale(x.promo_spent)::text, 'expired', trim_scale(x.promo_expired)::text))
      order by x.currency) from lot_lines x), '[]'::jsonb),
    'webhooks', (select jsonb_build_object('received', w.received, 'processed', w.ok,
        'success_rate', case when w.received > 0 then round(w.ok::numeric / w.received, 6) end) from webhooks w),
    -- Read from the rows for every period: an organisation's purchases and spending are few.
    'organisations', billing.org_revenue(p_from, p_to)
  ));
end;
$$;
comment on function billing.metrics_of(billing.metric_part[], timestamptz, timestamptz, boolean)
  is 'Internal: every metric for [from, to), one definition each (docs/metrics.md), from the parts billing.metric_parts made.';

-- revenue_metrics and revenue_metrics_live are the two ways to make a range's parts; what
-- compute_revenue_metrics did between them (and the organisations added after it) is metrics_of.
create or replace function billing.revenue_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.metrics_of(billing.metric_parts(p_from, p_to, true), p_from, p_to, true) $$;

create or replace function billing.revenue_metrics_live(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.metrics_of(billing.metric_parts(p_from, p_to, false), p_from, p_to, false) $$;

drop function billing.compute_revenue_metrics(timestamptz, timestamptz, boolean);

-- Periods of a day, ISO week or month, clipped to [p_from, p_to), each with its metrics, from the
-- parts of the whole range (each period takes the parts that start in it: they never straddle a day).
create function billing.series_of(p_parts billing.metric_part[], p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.metrics_of(array(select x from unnest(p_parts) x where x.lo >= b.lo and x.lo < b.hi),
        b.lo, b.hi, true) order by b.lo), '[]'::jsonb)
  from (select greatest(s, p_from::timestamp) at time zone 'UTC' as lo,
               least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC' as hi
        from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
          ('1 ' || p_granularity)::interval) s) b
$$;
comment on function billing.series_of(billing.metric_part[], date, date, text)
  is 'Internal: revenue_metrics per day, week or month over [from, to), from the range''s parts.';

create or replace function billing.metrics_series(p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select billing.series_of(billing.metric_parts(p_from::timestamp at time zone 'UTC', p_to::timestamp at time zone 'UTC', true),
    p_from, p_to, p_granularity)
$$;

-- What GET /admin/metrics answers, in one call: revenue_metrics over [p_from, p_to) as `total`
-- and metrics_series as `series`, both from one set of parts.
create function billing.metrics_report(p_from date, p_to date, p_granularity text) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_from timestamptz := p_from::timestamp at time zone 'UTC';
  v_to timestamptz := p_to::timestamp at time zone 'UTC';
  v_parts billing.metric_part[] := billing.metric_parts(v_from, v_to, true);
begin
  return jsonb_build_object(
    'total', billing.metrics_of(v_parts, v_from, v_to, true),
    'series', billing.series_of(v_parts, p_from, p_to, p_granularity));
end;
$$;
comment on function billing.metrics_report(date, date, text)
  is 'GET /admin/metrics: revenue_metrics over [from, to) (total) and per day, week or month (series), from one set of parts.';

revoke execute on function billing.metric_parts(timestamptz, timestamptz, boolean),
  billing.metrics_of(billing.metric_part[], timestamptz, timestamptz, boolean),
  billing.series_of(billing.metric_part[], date, date, text),
  billing.metrics_report(date, date, text)
from public, anon, authenticated;
grant execute on function billing.metrics_report(date, date, text) to service_role;
