-- Revenue reporting. Credit purchases post their money (cents) to the money ledger as they
-- happen (paid, refunded, dispute lost, Stripe's fee), beside provider payments, so every
-- revenue number is a sum over one ledger. One definition of each metric lives in
-- billing.revenue_metrics(from, to) (documented in docs/metrics.md); billing.daily_revenue
-- keeps each UTC day's numbers, refreshed by pg_cron after midnight and mailed to admins.

-- ============================================================ B2C money postings

-- Follows billing.sync_purchase's changes to a purchase: one posting per fact, once by key.
-- Dated by the Stripe event being processed (billing.event_time), else now.
create function billing.post_purchase_money() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_lost integer;
begin
  if new.status = 'paid' and old.status <> 'paid' then
    perform billing.post_money('credit_purchase', 'credit-purchase:' || new.id, new.currency, null, null,
      new.stripe_charge_id, jsonb_build_array(billing.money_entry('payers', -new.price_cents),
        billing.money_entry('b2c_revenue', new.price_cents)));
  end if;
  if new.stripe_fee_cents is not null and old.stripe_fee_cents is null and new.stripe_fee_cents > 0 then
    perform billing.post_money('stripe_fee', 'stripe-fee:' || new.id, new.currency, null, null, new.stripe_charge_id,
      jsonb_build_array(billing.money_entry('b2c_revenue', -new.stripe_fee_cents),
        billing.money_entry('stripe_fees', new.stripe_fee_cents)));
  end if;
  if new.amount_refunded_cents > old.amount_refunded_cents then
    perform billing.post_money('credit_refund', 'credit-refund:' || new.id || ':' || new.amount_refunded_cents,
      new.currency, null, null, new.stripe_charge_id, jsonb_build_array(
        billing.money_entry('b2c_revenue', -(new.amount_refunded_cents - old.amount_refunded_cents)),
        billing.money_entry('payers', new.amount_refunded_cents - old.amount_refunded_cents)));
  end if;
  -- A lost dispute takes back what had not been refunded.
  v_lost := new.price_cents - new.amount_refunded_cents;
  if new.dispute_status = 'lost' and old.dispute_status is distinct from 'lost' and v_lost > 0 then
    perform billing.post_money('credit_dispute_lost', 'credit-dispute:' || new.id, new.currency, null, null,
      new.dispute_id, jsonb_build_array(billing.money_entry('b2c_revenue', -v_lost), billing.money_entry('payers', v_lost)));
  end if;
  return null;
end;
$$;
comment on function billing.post_purchase_money() is 'Trigger: posts a credit purchase''s money (paid, Stripe fee, refunds, lost dispute) to the money ledger.';

create trigger purchases_post_money after update on billing.purchases
  for each row execute function billing.post_purchase_money();

-- ============================================================ the metrics, defined once

-- Every number for [p_from, p_to): see docs/metrics.md for each definition.
create function billing.revenue_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
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
      coalesce(sum(t.amount) filter (where t.kind in ('usage', 'debit', 'hold_capture')), 0) as spent,
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
comment on function billing.revenue_metrics(timestamptz, timestamptz)
  is 'Every revenue, user, conversion, credit and webhook metric for [from, to). One definition each: docs/metrics.md.';

-- Periods of a day, ISO week or month, clipped to [p_from, p_to), each with its metrics.
create function billing.metrics_series(p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.revenue_metrics(
      greatest(s, p_from::timestamp) at time zone 'UTC',
      least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC') order by s), '[]'::jsonb)
  from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
    ('1 ' || p_granularity)::interval) s
$$;
comment on function billing.metrics_series(date, date, text) is 'revenue_metrics per day, week or month over [from, to).';

-- What the people on call look at: reconciliation per provider, open alerts, webhook health.
create function billing.ops_overview() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'reconciliation', coalesce((
      select jsonb_agg(jsonb_build_object('provider_id', p.id, 'name', p.name, 'last_day', r.last_day,
          'mismatches', coalesce(m.n, 0), 'kinds', coalesce(m.kinds, '[]'::jsonb)) order by coalesce(m.n, 0) desc, p.name)
      from billing.providers p
      cross join (select max(day) as last_day from billing.reconciliation_runs) r
      left join lateral (select count(*) as n, jsonb_agg(distinct x.kind) as kinds from billing.reconciliation_mismatches x
                         where x.provider_id = p.id and x.day = r.last_day) m on true
      where p.stripe_account_id is not null), '[]'::jsonb),
    'alerts', coalesce((select jsonb_agg(jsonb_build_object('condition', a.condition, 'summary', a.summary,
        'opened_at', a.opened_at, 'last_seen_at', a.last_seen_at) order by a.opened_at)
      from billing.alerts a where a.status = 'open'), '[]'::jsonb),
    'webhooks_24h', (select jsonb_build_object('received', count(*), 'processed', count(*) filter (where e.status = 'processed'),
        'ignored', count(*) filter (where e.status = 'ignored'), 'failed', count(*) filter (where e.status = 'failed'),
        'success_rate', case when count(*) > 0 then round(count(*) filter (where e.status <> 'failed')::numeric / count(*), 6) end)
      from billing.stripe_events e where e.received_at > now() - interval '24 hours'))
$$;
comment on function billing.ops_overview() is 'Reconciliation status per provider (latest run), open alerts and the last 24 hours of webhooks.';

-- ============================================================ the daily table

create table billing.daily_revenue (
  day date primary key,
  metrics jsonb not null,                         -- billing.revenue_metrics for the UTC day
  computed_at timestamptz not null default now()
);
comment on table billing.daily_revenue is 'Each UTC day''s metrics, replaced whenever the day is recomputed (late events are picked up then).';
revoke all on billing.daily_revenue from public, anon, authenticated, service_role;
alter table billing.daily_revenue enable row level security;
grant select on billing.daily_revenue to service_role;

create function billing.refresh_daily_revenue(p_day date) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_metrics jsonb := billing.revenue_metrics(p_day::timestamp at time zone 'UTC', (p_day + 1)::timestamp at time zone 'UTC');
begin
  insert into billing.daily_revenue as d (day, metrics) values (p_day, v_metrics)
  on conflict (day) do update set metrics = excluded.metrics, computed_at = now();
  return v_metrics;
end;
$$;
comment on function billing.refresh_daily_revenue(date) is 'Computes (or recomputes) a day''s row in daily_revenue.';

-- After midnight UTC: yesterday's numbers (and the day before, for late events), then the report.
create function billing.run_daily_revenue() returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_day date := (now() at time zone 'UTC')::date - 1;
  v_metrics jsonb;
begin
  perform billing.refresh_daily_revenue(v_day - 1);
  v_metrics := billing.refresh_daily_revenue(v_day);
  insert into billing.notification_outbox (template, dedupe_key, payload)
  values ('daily_report', 'daily-report:' || v_day, jsonb_build_object('day', v_day, 'metrics', v_metrics))
  on conflict (dedupe_key) do nothing;
end;
$$;
comment on function billing.run_daily_revenue() is 'pg_cron: refreshes the last two days of daily_revenue and queues the daily report to admins.';

select cron.schedule('billing-daily-revenue', '15 0 * * *', $$select billing.run_daily_revenue()$$);

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function
  billing.revenue_metrics(timestamptz, timestamptz),
  billing.metrics_series(date, date, text),
  billing.ops_overview(),
  billing.refresh_daily_revenue(date),
  billing.run_daily_revenue()
to service_role;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
