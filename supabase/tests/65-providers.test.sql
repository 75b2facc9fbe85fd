-- Provider payments: the fee rounding, the money ledger's postings and immutability, the
-- convergence of payments and payouts on Stripe's state, and reconciliation on planted data.
begin;
select plan(24);
\ir helpers.psql

-- Fee: round-half-even(amount × bps / 10,000), in integers.
select is(billing.platform_fee_cents(1, 300), 0::bigint, '1¢ → 0.03¢ → 0');
select is(billing.platform_fee_cents(33, 300), 1::bigint, '33¢ → 0.99¢ → 1');
select is(billing.platform_fee_cents(50, 300), 2::bigint, '50¢ → 1.5¢ → 2 (half to even)');
select is(billing.platform_fee_cents(150, 300), 4::bigint, '150¢ → 4.5¢ → 4 (half to even)');
select is(billing.platform_fee_cents(99999999, 300), 3000000::bigint, '$999,999.99 → 2,999,999.97 → 3,000,000');
select is(billing.platform_fee_cents(1000, 0), 0::bigint, 'a zero rate is no fee');

-- A ready provider and a payment of $100.00.
insert into auth.users (id) values ('dddddddd-0000-4000-8000-000000000004');
create temp table pv as select * from billing.begin_provider('dddddddd-0000-4000-8000-000000000004', 'pv-key', 'Fund', 'f@example.org', 'US');
select is((select id from billing.begin_provider('dddddddd-0000-4000-8000-000000000004', 'pv-key', 'Fund', 'f@example.org', 'US')),
  (select id from pv), 'the same request under its key returns the same provider');
select is(pg_temp.err($$select billing.begin_provider('dddddddd-0000-4000-8000-000000000004', 'pv-key', 'Other', 'o@example.org', 'GB')$$),
  'IDEMPOTENCY_KEY_REUSED', 'another provider under the same key is refused, not answered with the first');
select billing.attach_provider_account((select id from pv), 'acct_pgtap');
select is(pg_temp.err($$select billing.begin_provider_payment((select id from pv), 'dddddddd-0000-4000-8000-000000000004', 'p1', 10000, 'usd', 'x', null, 300)$$),
  'PROVIDER_NOT_READY', 'no payment before the account can take charges');
select is(billing.sync_provider_account('{"kind": "account", "account_id": "acct_pgtap", "charges_enabled": true, "payouts_enabled": true, "details_submitted": true, "requirements_due": []}'),
  'account_updated', 'account.updated state is applied');
create temp table pay as select * from billing.begin_provider_payment((select id from pv), 'dddddddd-0000-4000-8000-000000000004', 'p1', 10000, 'usd', 'x', null, 300);
select is((select platform_fee_cents from pay), 300::bigint, 'the fee is fixed at creation');
select billing.attach_provider_payment_session((select id from pay), 'cs_pgtap', 'https://checkout.example/cs_pgtap', now() + interval '1 day');

create function pg_temp.state(p_refunded integer, p_fee integer, p_fee_refunded integer) returns jsonb language sql as $$
  select jsonb_build_object('kind', 'checkout', 'session_id', 'cs_pgtap', 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', 10000, 'currency', 'usd', 'payment_intent', 'pi_pgtap', 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_pgtap', 'charge_created', 981201600, -- 2001-02-03 12:00 UTC
    'amount_refunded', p_refunded,
    'destination', 'acct_pgtap', 'application_fee_id', 'fee_pgtap', 'application_fee_amount', p_fee,
    'application_fee_refunded', p_fee_refunded)
$$;
select is(billing.process_stripe_event('evt_pg_1', 'checkout.session.completed', now(), false, 'cs_pgtap', pg_temp.state(0, 300, 0)),
  'paid', 'a checkout state for a provider session goes to the provider payment');
select is(billing.process_stripe_event('evt_pg_2', 'application_fee.created', now(), false, 'fee_pgtap', pg_temp.state(0, 300, 0)),
  'paid', 'a second event with the same state changes nothing');
select is(billing.provider_balance_cents((select id from pv), 'usd'), 9700::bigint, 'the provider holds the amount less the fee');
select is((select sum(amount_cents) from billing.money_entries where account = 'platform_fees'
           and transfer_id in (select id from billing.money_transfers where payment_id = (select id from pay))), 300::numeric,
  'the platform''s fee revenue is the fee');
-- A 25% refund with its pro-rata fee, then a stale (older) state: the ledger only moves forward.
select billing.sync_provider_payment(pg_temp.state(2500, 300, 75));
select billing.sync_provider_payment(pg_temp.state(0, 300, 0));
select is(billing.provider_balance_cents((select id from pv), 'usd'), 9700::bigint - 2425, 'the refund less its fee refund leaves the provider');
select is((select count(*)::int from billing.money_transfers where payment_id = (select id from pay)), 2,
  'payment and refund: two postings, whatever the order of states');
select is((select count(*)::int from (select transfer_id from billing.money_entries group by transfer_id having sum(amount_cents) <> 0) t),
  0, 'every money transfer balances');

-- Payouts: out when created or paid, back when failed.
select billing.sync_provider_payout('{"kind": "payout", "payout_id": "po_pgtap", "account_id": "acct_pgtap", "amount": 5000, "currency": "usd", "status": "paid", "failure_code": null, "arrival_date": 1790000000, "created": 1790000000}');
select is(billing.provider_balance_cents((select id from pv), 'usd'), 7275::bigint - 5000, 'a paid payout leaves the balance');
select billing.sync_provider_payout('{"kind": "payout", "payout_id": "po_pgtap", "account_id": "acct_pgtap", "amount": 5000, "currency": "usd", "status": "failed", "failure_code": "account_closed", "arrival_date": 1790000000, "created": 1790000000}');
select is(billing.provider_balance_cents((select id from pv), 'usd'), 7275::bigint, 'a failed payout comes back');

-- The money ledger is append-only, for the owner too.
select is(pg_temp.err($$delete from billing.money_entries$$), 'LEDGER_IMMUTABLE', 'money entries cannot be deleted');
select is(pg_temp.err($$update billing.money_transfers set currency = 'eur'$$), 'LEDGER_IMMUTABLE', 'money transfers cannot be changed');

-- Reconciliation against a planted Stripe day: the fee is wrong at Stripe, and a charge is extra.
select is(pg_temp.reconcile('2001-02-03', jsonb_build_object(
  'charges', jsonb_build_array(
    jsonb_build_object('id', 'ch_pgtap', 'amount', 10000, 'currency', 'usd', 'destination', 'acct_pgtap',
      'payment_id', (select id from pay), 'application_fee_amount', 299),
    jsonb_build_object('id', 'ch_pgtap_2', 'amount', 10000, 'currency', 'usd', 'destination', 'acct_pgtap',
      'payment_id', (select id from pay), 'application_fee_amount', 300)),
  'payouts', '[]'::jsonb,
  'balances', jsonb_build_array(jsonb_build_object('account', 'acct_pgtap', 'currency', 'usd', 'amount', 7275)))), 2,
  'two mismatches found');
select is((select array_agg(kind order by kind) from billing.reconciliation_mismatches where provider_id = (select id from pv)),
  array['duplicate_charge', 'fee_mismatch'], 'a wrong fee and a duplicate charge, each with its kind');

select * from finish();
rollback;
