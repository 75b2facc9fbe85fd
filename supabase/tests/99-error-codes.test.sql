-- Error codes only SQL can reach: guards behind the HTTP layer's own checks (the request schema
-- refuses a batch over 1,000 first), a worker's stop signal, and invariants a correct caller
-- never breaks; and USER_NOT_FOUND, which an admin's request can also cause. Each is raised,
-- and nothing changes. (The money routes' statements, which answer refusals as rows instead, are
-- tested in 20-money-requests.test.sql.)
begin;
select plan(7);
\ir helpers.psql

insert into auth.users (id) values ('dddddddd-0000-4000-8000-000000000065');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000065', 10, 'promo_grant', 'error-codes-grant');

select is(pg_temp.err($$select billing.charge_usage_batch((select jsonb_agg(jsonb_build_object('event_id', 'e' || i,
    'user_id', 'dddddddd-0000-4000-8000-000000000065', 'model', 'gpt-4o', 'input_tokens', 1, 'output_tokens', 0,
    'occurred_at', now())) from generate_series(1, 1001) i))$$),
  'BATCH_TOO_LARGE', 'a batch of 1,001 events is refused whole');

-- A worker checkpointing a job its user cancelled is told to stop.
create temp table j as select * from billing.enqueue_job('dddddddd-0000-4000-8000-000000000065', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'error-codes-job', null, 4);
select billing.claim_jobs('error-codes-worker', 10, 30, array(select x.id from billing.jobs x where x.id <> (select id from j)));
select billing.cancel_job('dddddddd-0000-4000-8000-000000000065', (select id from j));
select is(pg_temp.err(format($$select billing.checkpoint_job(%L, 'error-codes-worker', 50, null, null, null, null)$$,
  (select id from j))), 'JOB_CANCELLED', 'a checkpoint after a cancel stops the worker');

-- Stripe says more (or less) was paid than the purchase's price: nothing is credited.
create temp table co as select * from billing.begin_checkout('dddddddd-0000-4000-8000-000000000065', 'mini', 'error-codes-checkout');
select billing.attach_checkout_session((select purchase_id from co), 'cs_test_error_codes_mismatch',
  'https://checkout.stripe.test/x', now() + interval '30 minutes');
select is(pg_temp.err($$select billing.sync_purchase('{"session_id": "cs_test_error_codes_mismatch", "payment_status": "paid",
    "amount_total": 1, "currency": "usd"}')$$), 'PAYMENT_AMOUNT_MISMATCH', 'a paid amount that is not the price is refused');
select is((select status from billing.purchases where id = (select purchase_id from co)), 'pending', 'and the purchase stays pending');

select is(pg_temp.err($$select billing.post_money('credit_purchase', 'error-codes-unbalanced', 'usd', null, null, null,
    jsonb_build_array(billing.money_entry('payers', -100), billing.money_entry('b2c_revenue', 99)))$$),
  'MONEY_UNBALANCED', 'a money transfer whose entries do not sum to zero is refused');

select is(pg_temp.err($$select billing.set_auto_recharge('dddddddd-0000-4000-8000-000000000065', false, null, null, 0, null)$$),
  'INVALID_AUTO_RECHARGE', 'a monthly count of 0 breaks the settings'' rule');

select is(pg_temp.err($$select billing.begin_provider('dddddddd-0000-4000-8000-00000000dead', 'error-codes-provider', 'Fund',
    'fund@example.org', 'US')$$), 'USER_NOT_FOUND', 'a provider needs an existing owner (over HTTP: an admin naming one)');

select * from finish();
rollback;
