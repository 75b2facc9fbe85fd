-- Reporting that stays on the roll-up for today (#18). Today's roll-up row was discarded whenever
-- a checkout opened in its span was paid after it was computed, and checkouts are paid minutes
-- after they open: with steady traffic, today's row almost never counted and every
-- GET /admin/metrics read all of today from the raw rows, twice (the range total and the
-- series' last day). Now today's row stays current through such payments, and its checkouts
-- paid are counted at read time over its span (today's purchases, by purchases_created): the
-- only part of the row a later payment changes (a user's payment itself is dated by paid_at,
-- which the live minutes read). Closed days keep the old rule: a late payment makes the day
-- stale and the ten-minute job recomputes it.

create or replace function billing.revenue_rollup_is_current(
  p_day date, p_covered_until timestamptz, p_computed_at timestamptz, p_sessionless bigint
) returns boolean
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
  v_end timestamptz := (p_day + 1)::timestamp at time zone 'UTC';
  v_since timestamptz := p_computed_at - interval '5 minutes';
begin
  return p_covered_until > v_from
    and not exists (select 1 from billing.money_transfers t
      where t.created_at > v_since and t.created_at < v_end and t.occurred_at >= v_from and t.occurred_at < p_covered_until)
    and not exists (select 1 from billing.money_transfers t
      where (t.created_at at time zone 'UTC')::date > (t.occurred_at at time zone 'UTC')::date
        and t.occurred_at >= v_from and t.occurred_at < p_covered_until and t.created_at > v_since)
    -- Today's row (covering part of its day) counts its checkouts paid at read time instead.
    and (p_covered_until < v_end or (
      not exists (select 1 from billing.purchases p
        where p.paid_at > v_since and p.paid_at < v_end and p.created_at >= v_from and p.created_at < p_covered_until)
      and not exists (select 1 from billing.purchases p
        where (p.paid_at at time zone 'UTC')::date > (p.created_at at time zone 'UTC')::date
          and p.created_at >= v_from and p.created_at < p_covered_until and p.paid_at > v_since)))
    and (select count(*) from billing.purchases p
         where p.stripe_session_id is null and p.created_at >= v_from and p.created_at < p_covered_until) = p_sessionless
    and not exists (select 1 from billing.stripe_events e
      where e.processed_at > v_since and e.processed_at < v_end and e.received_at >= v_from and e.received_at < p_covered_until)
    and not exists (select 1 from billing.stripe_events e
      where (e.processed_at at time zone 'UTC')::date > (e.received_at at time zone 'UTC')::date
        and e.received_at >= v_from and e.received_at < p_covered_until and e.processed_at > v_since);
end;
$$;
comment on function billing.revenue_rollup_is_current(date, timestamptz, timestamptz, bigint)
  is 'Internal: whether a revenue_rollup row still equals its span''s raw rows (no late event since it was computed).';


create or replace function billing.compute_revenue_metrics(p_from timestamptz, p_to timestamptz, p_use_rollup boolean) returns jsonb
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
set jit = off
set max_parallel_workers_per_gather = 0
as $$
begin
  return (
  with stored as (
    select r.* from billing.revenue_rollup r
    where p_use_rollup and r.day >= (p_from at time zone 'UTC')::date and r.day <= (p_to at time zone 'UTC')::date
      and r.day::timestamp at time zone 'UTC' >= p_from and r.covered_until <= p_to
      and billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
  ),
  -- The rest, at most one piece per UTC day, from the rows.
  live as (
    select g.lo, p.* from (
      select greatest(p_from, coalesce(s.covered_until, x::timestamp at time zone 'UTC')) as lo,
             least(p_to, (x + interval '1 day')::timestamp at time zone 'UTC') as hi
      from generate_series(date_trunc('day', p_from at time zone 'UTC'), p_to at time zone 'UTC', interval '1 day') x
      left join stored s on s.day = x::date
    ) g
    cross join lateral billing.revenue_parts(g.lo, g.hi) p
    where g.lo < g.hi
  ),
  parts as (
    select s.money, s.credits, s.lots, s.first_time_purchasers, s.checkouts_created,
           -- Today's row: its checkouts paid counted now (they are paid minutes after they open).
           case when s.covered_until < (s.day + 1)::timestamp at time zone 'UTC'
                then (select count(*) from billing.purchases p
                      where p.created_at >= s.day::timestamp at time zone 'UTC' and p.created_at < s.covered_until
                        and p.stripe_session_id is not null and p.status = 'paid')
                else s.checkouts_paid end,
           s.webhooks_received, s.webhooks_ok from stored s
    union all
    select l.money, l.credits, l.lots, l.first_time_purchasers, l.checkouts_created, l.checkouts_paid, l.webhooks_received,
           l.webhooks_ok from live l
  ),
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
      billing.count_accounts(array(select s.active_accounts from stored s),
        array(select x from live l cross join lateral unnest(l.active_accounts) x)) as active,
      billing.count_accounts(array(select s.paying_accounts from stored s),
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
      select s.covered_until, s.outstanding_credits from stored s
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
        'success_rate', case when w.received > 0 then round(w.ok::numeric / w.received, 6) end) from webhooks w)
  ));
end;
$$;
comment on function billing.compute_revenue_metrics(timestamptz, timestamptz, boolean)
  is 'Internal: every metric for [from, to), one definition each (docs/metrics.md); rolled-up spans from revenue_rollup when asked.';
