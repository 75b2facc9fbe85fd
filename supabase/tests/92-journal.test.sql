-- The journal: each day's lines from the money ledger and the paid lots, in the chart of
-- accounts, balanced after rounding, and reconciled with revenue_metrics. The money here is in
-- XTS (ISO 4217's code for testing), so no other test's rows reach these lines.
begin;
select plan(13);
\ir helpers.psql

insert into auth.users (id) values ('92929292-0000-4000-8000-000000000001');

-- A sale of 3 paid credits for 10.00 (and 1.00 tax), Stripe's fee of 0.59, one credit spent,
-- one expired, half a credit refunded (2.00 and 0.20 tax back).
select billing.grant_credits('92929292-0000-4000-8000-000000000001', 3, 'purchase', 'journal-buy', null, null, null,
  '{"cost_cents": 1000, "currency": "xts"}');
select billing.post_money('credit_purchase', 'journal-paid', 'xts', null, null, null, jsonb_build_array(
  billing.money_entry('payers', -1100), billing.money_entry('b2c_revenue', 1000), billing.money_entry('tax_payable', 100)));
select billing.post_money('stripe_fee', 'journal-fee', 'xts', null, null, null, jsonb_build_array(
  billing.money_entry('b2c_revenue', -59), billing.money_entry('stripe_fees', 59)));
select pg_temp.spend('92929292-0000-4000-8000-000000000001', 1, 'journal-spend');
select billing.reverse_credits('92929292-0000-4000-8000-000000000001', 1, 'expiry', 'journal-expire');
select billing.reverse_credits('92929292-0000-4000-8000-000000000001', 0.5, 'refund_reversal', 'journal-refund');
select billing.post_money('credit_refund', 'journal-refunded', 'xts', null, null, null, jsonb_build_array(
  billing.money_entry('b2c_revenue', -200), billing.money_entry('tax_payable', -20), billing.money_entry('payers', 220)));

select results_eq(
  $$select l.source, l.account, l.amount from billing.journal_lines((now() at time zone 'UTC')::date, (now() at time zone 'UTC')::date + 1, 'xts') l
    order by l.source collate "C", l.account collate "C"$$,
  $$values ('credit_purchase', 'cash_stripe', 1100::numeric), ('credit_purchase', 'credit_sales_clearing', -1000),
      ('credit_purchase', 'tax_payable', -100),
      ('credit_refund', 'cash_stripe', -220), ('credit_refund', 'refunds', 200), ('credit_refund', 'tax_payable', 20),
      ('credits_expired', 'deferred_revenue', 333), ('credits_expired', 'revenue_breakage', -333),
      ('credits_granted', 'credit_sales_clearing', 1000), ('credits_granted', 'deferred_revenue', -1000),
      ('credits_refunded', 'deferred_revenue', 167), ('credits_refunded', 'refunds', -167),
      ('credits_used', 'deferred_revenue', 333), ('credits_used', 'revenue_usage', -333),
      ('stripe_fee', 'cash_stripe', -59), ('stripe_fee', 'stripe_fees', 59)$$,
  'each line from its source: cash, tax and clearing from the money; deferred revenue and what it became from the paid lots at cost, each pair rounded once (333.33 → 333, 166.67 → 167)');

select results_eq(
  $$select e ->> 'date', e ->> 'debit_total', e ->> 'credit_total', jsonb_array_length(e -> 'lines')
    from jsonb_array_elements(billing.journal((now() at time zone 'UTC')::date, (now() at time zone 'UTC')::date + 1, 'xts') -> 'entries') e$$,
  $$values ((now() at time zone 'UTC')::date::text, '32.12', '32.12', 16)$$,
  'one entry for the day and currency, debits = credits to the cent after rounding');

select is(
  (select jsonb_object_agg(i ->> 'item', i ->> 'difference') from jsonb_array_elements(
     billing.journal((now() at time zone 'UTC')::date, (now() at time zone 'UTC')::date + 1, 'xts') -> 'reconciliation' -> 0 -> 'items') i),
  '{"gmv_cents": "0", "refunds_cents": "0", "disputes_lost_cents": "0", "stripe_fees_cents": "0", "tax_payable_cents": "0",
    "platform_fees_cents": "0", "paid_granted_cents": "0", "recognised_revenue_cents": "0", "breakage_revenue_cents": "0",
    "paid_reversed_cents": "0", "debt_settled_cents": null, "deferred_revenue_change_cents": "0"}'::jsonb,
  'over one day the journal agrees with revenue_metrics on every figure, and with the ledger on deferred revenue');

select is(
  (select jsonb_object_agg(i ->> 'item', i ->> 'journal') filter (where i ->> 'item' in ('gmv_cents', 'recognised_revenue_cents', 'tax_payable_cents'))
   from jsonb_array_elements(billing.journal((now() at time zone 'UTC')::date, (now() at time zone 'UTC')::date + 1, 'xts') -> 'reconciliation' -> 0 -> 'items') i),
  '{"gmv_cents": "1000", "recognised_revenue_cents": "333", "tax_payable_cents": "80"}'::jsonb,
  'the figures reconciled are the journal''s own');

select is(billing.major_units(1234, 'xts'), '12.34', 'minor units to the major unit, every place written');
select is(billing.major_units(1234, 'jpy'), '1234', 'a zero-decimal currency has no places');

-- ============================================================ moved credits that pay a debt

-- In XXX (ISO 4217's "no currency"), apart from the day above. A student spends the 2,000 credits
-- they bought for 2.00, the purchase is refunded: 2,000 in debt. A friend's gift moves 2,000 of
-- the 5,000 credits the friend bought for 5.00: the moved lot pays the debt on arrival, so 2.00
-- leaves deferred revenue in the ledger, recognised (the debt was for credits already used).
insert into auth.users (id) values ('92929292-0000-4000-8000-000000000002'), ('92929292-0000-4000-8000-000000000003');
select billing.grant_credits('92929292-0000-4000-8000-000000000002', 2000, 'purchase', 'journal-debt-buy', null, null, null,
  '{"cost_cents": 200, "currency": "xxx"}');
select pg_temp.spend('92929292-0000-4000-8000-000000000002', 2000, 'journal-debt-spend');
select billing.reverse_credits('92929292-0000-4000-8000-000000000002', 2000, 'refund_reversal', 'journal-debt-refund');
select billing.grant_credits('92929292-0000-4000-8000-000000000003', 5000, 'purchase', 'journal-gift-buy', null, null, null,
  '{"cost_cents": 500, "currency": "xxx"}');
select billing.move_credits((select id from billing.accounts where user_id = '92929292-0000-4000-8000-000000000003'),
  (select id from billing.accounts where user_id = '92929292-0000-4000-8000-000000000002'), 2000, 'code_redemption',
  'journal-gift-redeem', null);

-- The ledger's own deferred revenue movement over the day: every paid lot opened (moved or not), net
-- of the debt it paid, less everything drawn from paid lots (moves out included), at cost.
create function pg_temp.ledger_deferred_change(p_currency text) returns numeric language sql as $$
  select round(coalesce((select sum(l.cost_cents * (l.amount - l.debt_settled) / l.amount) from billing.lots l
                         where l.category = 'paid' and l.currency = p_currency and l.granted_at >= current_date and l.granted_at < current_date + 1), 0)
             - coalesce((select sum(l.cost_cents * a.amount / l.amount) from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
                         where l.category = 'paid' and l.currency = p_currency and a.created_at >= current_date and a.created_at < current_date + 1), 0))
$$;
set local timezone = 'UTC';

select is(pg_temp.ledger_deferred_change('xxx'), 300::numeric, 'the ledger: 2.00 and 5.00 in, 2.00 spent, 2.00 moved to pay a debt');
select is(
  (select -sum(l.amount) from billing.journal_lines(current_date, current_date + 1, 'xxx') l where l.account = 'deferred_revenue'),
  pg_temp.ledger_deferred_change('xxx'),
  'the journal''s deferred revenue moves as the ledger''s when moved credits pay a debt');
select results_eq(
  $$select l.source, l.account, l.amount from billing.journal_lines(current_date, current_date + 1, 'xxx') l
    where l.source = 'credits_used' order by l.account collate "C"$$,
  $$values ('credits_used', 'deferred_revenue', 400::numeric), ('credits_used', 'revenue_usage', -400)$$,
  'moved credits that pay a debt are recognised once, out of deferred revenue, with the credits used (2.00 spent + 2.00 of debt paid)');
select is(
  (select jsonb_object_agg(i ->> 'item', jsonb_build_array(i ->> 'journal', i ->> 'difference'))
     filter (where i ->> 'item' in ('paid_granted_cents', 'recognised_revenue_cents', 'deferred_revenue_change_cents'))
   from jsonb_array_elements(billing.journal(current_date, current_date + 1, 'xxx') -> 'reconciliation' -> 0 -> 'items') i),
  '{"paid_granted_cents": ["700", "0"], "recognised_revenue_cents": ["400", "0"], "deferred_revenue_change_cents": ["300", "0"]}'::jsonb,
  'the reconciliation agrees: the revenue report recognises the debt paid too, and the journal''s deferred revenue moved as the ledger''s');

-- A move out with no lot arriving (a corrupted row, gone at the rollback): the ledger's deferred
-- revenue drops, the journal's does not, and the reconciliation says so.
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
select t.id, l.id, 'code_redemption', 1000 from billing.transfers t, billing.lots l
where t.idempotency_key = 'journal-debt-spend' and l.grant_transfer_id = (select id from billing.transfers where idempotency_key = 'journal-gift-buy')
  and l.moved_from is null;
select is(
  (select i ->> 'difference' from jsonb_array_elements(billing.journal(current_date, current_date + 1, 'xxx') -> 'reconciliation' -> 0 -> 'items') i
   where i ->> 'item' = 'deferred_revenue_change_cents'),
  '100',
  'the reconciliation fails when the journal and the ledger''s deferred revenue disagree (1,000 credits left a lot and arrived nowhere)');

-- ============================================================ the chart

select billing.set_journal_accounts('92929292-0000-4000-8000-000000000001',
  '[{"key": "cash_stripe", "code": "1000"}, {"key": "refunds", "name": "Sales returns", "tax_rate": "No GST"}]');
select results_eq(
  $$select a.key, a.code, a.name, a.tax_rate, a.updated_by from billing.journal_accounts a where a.key in ('cash_stripe', 'refunds') order by a.key$$,
  $$values ('cash_stripe', '1000', 'Cash at Stripe', 'Tax Exempt', '92929292-0000-4000-8000-000000000001'::uuid),
      ('refunds', '4900', 'Sales returns', 'No GST', '92929292-0000-4000-8000-000000000001'::uuid)$$,
  'an admin maps accounts to codes, names and tax rates; what is not named stays');

select ok(has_function_privilege('service_role', 'billing.journal(date, date, text)', 'execute')
  and not has_function_privilege('authenticated', 'billing.journal(date, date, text)', 'execute')
  and not has_function_privilege('authenticated', 'billing.set_journal_accounts(uuid, jsonb)', 'execute')
  and not has_table_privilege('authenticated', 'billing.journal_accounts', 'select'),
  'only the service role reads the books and sets the chart');

select * from finish();
rollback;
