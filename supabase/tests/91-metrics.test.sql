-- Revenue metrics on a planted dataset, each answer worked out by hand below. Everything is
-- planted in this transaction, so its rows all carry this transaction's now(): the window
-- [now(), now() + 1 µs) holds exactly them, whatever else the database contains. One snapshot
-- for the whole file, so what other sessions commit meanwhile cannot land between two sides of
-- a comparison; the roll-up tables are held so the 10-minute pg_cron job waits for this file.
begin;
set transaction isolation level repeatable read;
lock table billing.revenue_rollup, billing.daily_revenue in exclusive mode;
select plan(27);

insert into auth.users (id) values
  ('eeeeeeee-0000-4000-8000-000000000001'), ('eeeeeeee-0000-4000-8000-000000000002'),
  ('eeeeeeee-0000-4000-8000-000000000003'), ('eeeeeeee-0000-4000-8000-000000000004'),
  ('eeeeeeee-0000-4000-8000-000000000005'), ('eeeeeeee-0000-4000-8000-000000000006');

-- A paid checkout state for session cs_rev_<n>.
create function pg_temp.paid(n int, cents int, fee int, refunded int default 0, dispute text default null) returns jsonb
language sql as $$
  select jsonb_build_object('kind', 'checkout', 'session_id', 'cs_rev_' || n, 'session_status', 'complete',
    'payment_status', 'paid', 'amount_total', cents, 'currency', 'usd', 'payment_intent', 'pi_rev_' || n,
    'payment_intent_status', 'succeeded', 'charge_id', 'ch_rev_' || n, 'amount_refunded', refunded,
    'dispute_id', case when dispute is not null then 'dp_rev_' || n end, 'dispute_status', dispute, 'stripe_fee', fee)
$$;
create function pg_temp.checkout(u text, pkg text, n int) returns void language sql as $$
  select billing.attach_checkout_session((billing.begin_checkout(u::uuid, pkg, 'rev-' || n)).purchase_id,
    'cs_rev_' || n, 'https://checkout.example/' || n, now() + interval '1 hour')
$$;

-- u1 buys plus ($24.99, 24,990 credits + 1,249.5 bonus); Stripe keeps 102¢. Through the event pipeline.
select pg_temp.checkout('eeeeeeee-0000-4000-8000-000000000001', 'plus', 1);
select billing.process_stripe_event('evt_rev_1', 'checkout.session.completed', now(), false, 'cs_rev_1', pg_temp.paid(1, 2499, 102));
-- u2 buys starter ($9.99, 9,990 credits; fee 59¢), then $5.00 is refunded: 5,000 credits reversed.
select pg_temp.checkout('eeeeeeee-0000-4000-8000-000000000002', 'starter', 2);
select billing.sync_purchase(pg_temp.paid(2, 999, 59));
select billing.sync_purchase(pg_temp.paid(2, 999, 59, 500));
-- u3 buys mini ($5.00, 5,000 credits; fee 45¢) and loses a dispute: 500¢ and 5,000 credits go back.
select pg_temp.checkout('eeeeeeee-0000-4000-8000-000000000003', 'mini', 3);
select billing.sync_purchase(pg_temp.paid(3, 500, 45));
select billing.sync_purchase(pg_temp.paid(3, 500, 45, 0, 'lost'));
-- u4 opens a checkout and never pays.
select pg_temp.checkout('eeeeeeee-0000-4000-8000-000000000004', 'mini', 4);
-- u5 gets a 100-credit adjustment, spends 7.5 through a hold it captures (no model), and uses gpt-4o-mini for 10,000 in + 1,000 out tokens:
-- (10,000 × 0.15 + 1,000 × 0.60) × 4 / 1,000 = 8.4 credits.
select billing.grant_credits('eeeeeeee-0000-4000-8000-000000000005', 100, 'adjustment', 'rev-grant-5');
select billing.capture_hold('eeeeeeee-0000-4000-8000-000000000005',
  (billing.reserve_credits('eeeeeeee-0000-4000-8000-000000000005', 7.5, 'rev-hold-5')).hold_id);
select billing.charge_usage('eeeeeeee-0000-4000-8000-000000000005', 'gpt-4o-mini', 10000, 1000, 'rev-usage-5');
-- A provider (owned by u6, who has no credit activity) is paid $100.00 (fee 300¢); $40.00 is
-- refunded with 120¢ of the fee.
create temp table pv as select * from billing.begin_provider('eeeeeeee-0000-4000-8000-000000000006', 'rev-pv', 'Fund', 'f@example.org', 'US');
select billing.attach_provider_account((select id from pv), 'acct_rev');
select billing.sync_provider_account('{"account_id": "acct_rev", "charges_enabled": true, "payouts_enabled": true, "details_submitted": true}');
select billing.attach_provider_payment_session((billing.begin_provider_payment((select id from pv),
  'eeeeeeee-0000-4000-8000-000000000006', 'rev-pay', 10000, 'usd', 'award', null, 300)).id, 'cs_rev_pp', 'https://x', now() + interval '1 hour');
create function pg_temp.pp(refunded int, fee_refunded int) returns jsonb language sql as $$
  select jsonb_build_object('kind', 'checkout', 'session_id', 'cs_rev_pp', 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', 10000, 'currency', 'usd', 'charge_id', 'ch_rev_pp', 'charge_created', extract(epoch from now())::bigint,
    'amount_refunded', refunded, 'destination', 'acct_rev', 'application_fee_id', 'fee_rev', 'application_fee_amount', 300,
    'application_fee_refunded', fee_refunded)
$$;
select billing.sync_provider_payment(pg_temp.pp(0, 0));
select billing.sync_provider_payment(pg_temp.pp(4000, 120));
-- One webhook failed for good (recorded, never processed).
insert into billing.stripe_events (id, type, api_created, livemode, status) values ('evt_rev_bad', 'charge.refunded', now(), false, 'failed');

create temp table m as select billing.revenue_metrics(now(), now() + interval '1 microsecond') as v;
create temp table usd as select x as v from m, jsonb_array_elements(m.v -> 'by_currency') x where x ->> 'currency' = 'usd';

-- B2C: GMV 2,499 + 999 + 500 = 3,998; refunds 500; lost disputes 500; Stripe fees 102 + 59 + 45 = 206.
select is((select (v -> 'b2c_credits' ->> 'gmv_cents')::int from usd), 3998, 'B2C GMV: three paid purchases');
select is((select (v -> 'b2c_credits' ->> 'refunds_cents')::int from usd), 500, 'B2C refunds');
select is((select (v -> 'b2c_credits' ->> 'disputes_lost_cents')::int from usd), 500, 'B2C lost disputes');
select is((select (v -> 'b2c_credits' ->> 'stripe_fees_cents')::int from usd), 206, 'B2C Stripe fees');
select is((select (v -> 'b2c_credits' ->> 'net_revenue_cents')::int from usd), 2792, 'B2C net revenue: 3,998 − 500 − 500 − 206');
-- B2B: GMV 10,000; fees 300; fee refunds 120; net 180; take rate 3%.
select is((select (v -> 'b2b_provider_fees' ->> 'gmv_cents')::int from usd), 10000, 'B2B GMV');
select is((select (v -> 'b2b_provider_fees' ->> 'platform_fees_cents')::int from usd), 300, 'B2B platform fees');
select is((select (v -> 'b2b_provider_fees' ->> 'fee_refunds_cents')::int from usd), 120, 'B2B fee refunds');
select is((select (v -> 'b2b_provider_fees' ->> 'net_revenue_cents')::int from usd), 180, 'B2B net revenue');
select is((select (v -> 'b2b_provider_fees' ->> 'take_rate')::numeric from usd), 0.03, 'B2B take rate: 300 / 10,000');
-- Overall: GMV 13,998; net 2,972; take rate 2,972 / 13,998 = 0.212316.
select is((select (v ->> 'gmv_cents')::int from usd), 13998, 'GMV overall');
select is((select (v ->> 'net_revenue_cents')::int from usd), 2972, 'net revenue overall');
select is((select (v ->> 'take_rate')::numeric from usd), 0.212316, 'net revenue ÷ GMV');
-- Users: active u1, u2, u3, u5 (credit activity) = 4; paying u1–u3 = 3, all first-time.
select is((select v -> 'users' from m), '{"active": 4, "paying": 3, "first_time_purchasers": 3}'::jsonb, 'active, paying and first-time users');
select is((select (v ->> 'arpu_cents')::numeric from usd), 743.00, 'ARPU: 2,972 ÷ 4 active users');
select is((select (v ->> 'arpu_paying_cents')::numeric from usd), 930.67, 'ARPU per paying user: 2,792 ÷ 3');
-- Conversion: 4 sessions created, 3 paid; 3 first-time purchasers of 4 active users.
select is((select v -> 'conversion' from m),
  '{"checkouts_created": 4, "checkouts_paid": 3, "checkout_rate": 0.75, "first_purchase_rate": 0.75}'::jsonb, 'conversion');
-- Credits: purchased 24,990 + 9,990 + 5,000; bonus 1,249.5; spent 7.5 + 8.4; reversed 5,000 + 5,000.
select is((select v -> 'credits' ->> 'purchased' from m), '39980', 'credits purchased');
select is((select v -> 'credits' ->> 'bonus' from m), '1249.5', 'bonus credits');
select is((select v -> 'credits' ->> 'spent' from m), '15.9', 'credits spent');
select is((select v -> 'credits' ->> 'reversed' from m), '10000', 'credits reversed');
select is((select v -> 'credits' -> 'usage_by_model' from m), '[{"model": "gpt-4o-mini", "credits": "8.4", "events": 1}]'::jsonb,
  'usage by model');
-- Outstanding grows by what the planted users still hold: 26,239.5 + 4,990 + 0 + 84.1.
select is((select (m.v -> 'credits' ->> 'outstanding')::numeric from m)
  - (billing.revenue_metrics(now() - interval '1 day', now()) -> 'credits' ->> 'outstanding')::numeric, 31313.6::numeric,
  'outstanding liability: the planted balances');
select is((select v -> 'webhooks' from m), '{"received": 2, "processed": 1, "success_rate": 0.5}'::jsonb, 'webhook success rate');

-- daily_revenue: re-running a day replaces its row; the nightly run queues one report.
select billing.refresh_daily_revenue(current_date);
select billing.refresh_daily_revenue(current_date);
select is((select count(*)::int from billing.daily_revenue where day = current_date), 1, 're-running a day replaces it');
select is((select metrics from billing.daily_revenue where day = current_date),
  billing.revenue_metrics(current_date::timestamp at time zone 'UTC', (current_date + 1)::timestamp at time zone 'UTC'),
  'the stored day is revenue_metrics of that UTC day');
select billing.run_daily_revenue();
select billing.run_daily_revenue();
select is((select count(*)::int from billing.notification_outbox where template = 'daily_report'
           and dedupe_key = 'daily-report:' || ((now() at time zone 'UTC')::date - 1)), 1, 'one daily report per day, however often it runs');

select * from finish();
rollback;
