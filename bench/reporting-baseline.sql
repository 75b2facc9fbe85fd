-- The pre-#18 billing.revenue_metrics and billing.metrics_series, verbatim but for their schema:
-- bench/reporting.ts creates them as bench_old.* in its private cluster, as the old way to compare
-- against (every period recomputed from the raw rows, the liability from every entry).

create schema bench_old;

-- Every number for [p_from, p_to): see docs/metrics.md for each definition.
create function bench_old.revenue_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  with money as (
    select t.kind, e.account, e.currency, sum(e.amount_cents) as cents
    from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
    where t.occurred_at >= p_from and t.occurred_at < p_to
    group by t.kind, e.account, e.currency
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
  users as (
    select
      (select count(distinct a.user_id) from billing.entries e join billing.accounts a on a.id = e.account_id
       where e.balance_after is not null and e.created_at >= p_from and e.created_at < p_to) as active,
      (select count(distinct p.user_id) from billing.purchases p where p.paid_at >= p_from and p.paid_at < p_to) as paying,
      (select count(*) from (select p.user_id from billing.purchases p where p.status = 'paid'
         group by p.user_id having min(p.paid_at) >= p_from and min(p.paid_at) < p_to) f) as first_time
  ),
  checkouts as (
    select count(*) as created, count(*) filter (where p.status = 'paid') as paid
    from billing.purchases p where p.created_at >= p_from and p.created_at < p_to and p.stripe_session_id is not null
  ),
  credits as (
    select
      coalesce(sum(t.amount) filter (where t.kind = 'purchase'), 0) as purchased,
      coalesce(sum(t.amount) filter (where t.kind = 'promo_grant'), 0) as bonus,
      coalesce(sum(t.amount) filter (where t.kind in ('usage', 'hold_capture')), 0) as spent,
      coalesce(sum(t.amount) filter (where t.kind in ('refund_reversal', 'dispute_reversal')), 0) as reversed
    from billing.transfers t where t.created_at >= p_from and t.created_at < p_to
  ),
  usage as (
    select r.model, sum(t.amount) as credits, count(*) as events
    from billing.transfers t join billing.rate_cards r on r.id = t.rate_card_id
    where t.kind = 'usage' and t.created_at >= p_from and t.created_at < p_to
    group by r.model
  ),
  webhooks as (
    select count(*) as received, count(*) filter (where e.status in ('processed', 'ignored')) as ok
    from billing.stripe_events e where e.received_at >= p_from and e.received_at < p_to
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
        -- The unspent liability at the end of the period: every user balance then.
        'outstanding', (select trim_scale(coalesce(sum(e.amount), 0))::text from billing.entries e
                        where e.balance_after is not null and e.created_at < p_to),
        'usage_by_model', coalesce((select jsonb_agg(jsonb_build_object('model', x.model, 'credits', trim_scale(x.credits)::text,
          'events', x.events) order by x.model) from usage x), '[]'::jsonb))
      from credits c),
    'webhooks', (select jsonb_build_object('received', w.received, 'processed', w.ok,
        'success_rate', case when w.received > 0 then round(w.ok::numeric / w.received, 6) end) from webhooks w)
  )
$$;
comment on function bench_old.revenue_metrics(timestamptz, timestamptz)
  is 'Every revenue, user, conversion, credit and webhook metric for [from, to). One definition each: docs/metrics.md.';

-- Periods of a day, ISO week or month, clipped to [p_from, p_to), each with its metrics.
create function bench_old.metrics_series(p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(bench_old.revenue_metrics(
      greatest(s, p_from::timestamp) at time zone 'UTC',
      least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC') order by s), '[]'::jsonb)
  from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
    ('1 ' || p_granularity)::interval) s
$$;
comment on function bench_old.metrics_series(date, date, text) is 'revenue_metrics per day, week or month over [from, to).';

