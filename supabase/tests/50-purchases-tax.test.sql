-- Stripe Tax: a purchase or plan invoice is paid when its subtotal is the price and the total is
-- that plus Stripe's tax; anything else is refused. The credits and their cost are the price's;
-- the tax is kept beside the purchase, posted as owed (tax_payable), never as revenue; refunds
-- take back credits in proportion to the total and return tax in the same proportion. One
-- transaction, so the metrics window [now(), now() + 1 µs) holds exactly what is planted here.
begin;
set transaction isolation level repeatable read;
lock table billing.revenue_rollup, billing.daily_revenue in exclusive mode;
select plan(25);
\ir helpers.psql

insert into auth.users (id) select ('7a707a70-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 6) n;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('7a707a70-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.bal(n int) returns numeric language sql as $$ select balance from billing.get_balance(pg_temp.u(n)) $$;

-- Stripe's state of user n's Checkout of starter (999¢, 9,990 credits): subtotal, tax, total.
create function pg_temp.state(n int, subtotal int, tax int, total int, refunded int default 0, dispute text default null)
returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_tax_' || n, 'session_status', 'complete', 'payment_status', 'paid',
    'amount_subtotal', subtotal, 'amount_tax', tax, 'amount_total', total, 'currency', 'usd',
    'payment_intent', 'pi_tax_' || n, 'payment_intent_status', 'succeeded', 'charge_id', 'ch_tax_' || n,
    'amount_refunded', refunded, 'dispute_id', case when dispute is not null then 'dp_tax_' || n end, 'dispute_status', dispute)
$$;
create function pg_temp.checkout(n int) returns uuid language plpgsql as $$
declare
  v_id uuid := (billing.begin_checkout(pg_temp.u(n), 'starter', 'tax-' || n)).purchase_id;
begin
  perform billing.attach_checkout_session(v_id, 'cs_tax_' || n, 'https://checkout.example/' || n, now() + interval '1 hour');
  return v_id;
end;
$$;
-- The money a purchase posted, per account.
create function pg_temp.money(p_purchase uuid, p_account text) returns bigint language sql as $$
  select coalesce(sum(e.amount_cents), 0) from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
  where e.account = p_account and (t.idempotency_key = 'credit-purchase:' || p_purchase
    or t.stripe_id in (select x from billing.purchases p, unnest(array[p.stripe_charge_id, p.dispute_id]) x where p.id = p_purchase))
$$;
create temp table p (n int primary key, id uuid);
insert into p select n, pg_temp.checkout(n) from generate_series(1, 5) n;

-- ============================================================ the amount check

select is(pg_temp.err($$select billing.sync_purchase(pg_temp.state(1, 999, 100, 1000))$$), 'PAYMENT_AMOUNT_MISMATCH',
  'a total that is not subtotal + tax is refused');
select is(pg_temp.err($$select billing.sync_purchase(pg_temp.state(1, 899, 100, 999))$$), 'PAYMENT_AMOUNT_MISMATCH',
  'a subtotal below the price is refused, even when tax makes up the total');
select is(pg_temp.err($$select billing.sync_purchase(pg_temp.state(1, 1099, -100, 999))$$), 'PAYMENT_AMOUNT_MISMATCH',
  'a negative tax is refused');
select is(pg_temp.err($$select billing.sync_purchase(pg_temp.state(1, 999, 0, 1099))$$), 'PAYMENT_AMOUNT_MISMATCH',
  'a total above the price with no tax to explain it is refused');
select is(pg_temp.bal(1), 0::numeric, 'nothing refused credited anything');
select is(billing.sync_purchase(pg_temp.state(1, 999, 100, 1099)), 'paid', 'subtotal = price with tax on top is paid');
select is(pg_temp.bal(1), 9990::numeric, 'the package''s credits arrive, no more for the tax');
select results_eq($$select price_cents, tax_cents from billing.purchases where id = (select id from p where n = 1)$$,
  $$values (999, 100)$$, 'the tax is kept beside the purchase');
select is((select l.cost_cents from billing.lots l where l.purchase_id = (select id from p where n = 1)), 999::numeric,
  'the lot''s cost basis is the price without tax');
select results_eq($$select pg_temp.money(id, 'payers'), pg_temp.money(id, 'b2c_revenue'), pg_temp.money(id, 'tax_payable')
                    from p where n = 1$$,
  $$values (-1099::bigint, 999::bigint, 100::bigint)$$, 'the payer paid 1,099: 999 revenue, 100 tax owed');
select is(billing.sync_purchase(pg_temp.state(2, 999, 0, 999)), 'paid', 'with tax off (none) the price alone is paid');

-- ============================================================ refunds with tax

-- Half-ish: 500 of 1,099 back takes floor(9,990 × 500 / 1,099) = 4,545 credits and returns
-- floor(100 × 500 / 1,099) = 45 of tax; the rest (1,099) takes them all and all the tax.
select billing.sync_purchase(pg_temp.state(3, 999, 100, 1099));
select billing.sync_purchase(pg_temp.state(3, 999, 100, 1099, 500));
select is(pg_temp.bal(3), (9990 - 4545)::numeric, 'a partial refund takes back its share of the total: 4,545 credits');
select results_eq($$select pg_temp.money(id, 'b2c_revenue'), pg_temp.money(id, 'tax_payable') from p where n = 3$$,
  $$values (999::bigint - 455, 100::bigint - 45)$$, 'of the 500 refunded, 455 was revenue and 45 tax');
select billing.sync_purchase(pg_temp.state(3, 999, 100, 1099, 1099));
select is(pg_temp.bal(3), 0::numeric, 'refunding the whole charge (tax included) takes back every credit, no more');
select results_eq($$select pg_temp.money(id, 'payers'), pg_temp.money(id, 'b2c_revenue'), pg_temp.money(id, 'tax_payable')
                    from p where n = 3$$,
  $$values (0::bigint, 0::bigint, 0::bigint)$$, 'after a full refund nothing is left as revenue or as tax owed');
-- A lost dispute after a partial refund returns the rest, tax in proportion.
select billing.sync_purchase(pg_temp.state(4, 999, 100, 1099));
select billing.sync_purchase(pg_temp.state(4, 999, 100, 1099, 500));
select billing.sync_purchase(pg_temp.state(4, 999, 100, 1099, 500, 'lost'));
select results_eq($$select pg_temp.money(id, 'b2c_revenue'), pg_temp.money(id, 'tax_payable') from p where n = 4$$,
  $$values (0::bigint, 0::bigint)$$, 'a lost dispute after a partial refund leaves no revenue and no tax owed');
select is(pg_temp.bal(4), 0::numeric, 'and every credit is taken back');

-- ============================================================ plan invoices with tax

create function pg_temp.plan(n int, inv text, paid int, tax int, subtotal int) returns jsonb language sql as $$
  select jsonb_build_object('kind', 'subscription',
    'subscription', jsonb_build_object('id', 'sub_tax' || n, 'status', 'active', 'customer', 'cus_tax' || n,
      'cancel_at_period_end', false, 'current_period_start', extract(epoch from now())::bigint,
      'current_period_end', extract(epoch from now() + interval '30 days')::bigint,
      'metadata', jsonb_build_object('subscription_id', (select x.id from billing.subscriptions x where x.user_id = pg_temp.u(n)),
        'user_id', pg_temp.u(n), 'plan_id', 'basic_monthly')),
    'invoice', jsonb_build_object('id', inv, 'status', 'paid', 'billing_reason', 'subscription_create', 'amount_paid', paid,
      'amount_due', paid, 'subtotal', subtotal, 'tax', tax, 'currency', 'usd', 'attempted', true,
      'period_start', extract(epoch from now())::bigint, 'period_end', extract(epoch from now() + interval '30 days')::bigint,
      'plan_id', 'basic_monthly'))
$$;
select billing.begin_subscription(pg_temp.u(6), 'basic_monthly', 'tax-plan');
select is(pg_temp.err($$select billing.sync_subscription(pg_temp.plan(6, 'in_tax1', 1099, 50, 999))$$),
  'PAYMENT_AMOUNT_MISMATCH', 'a plan invoice paid beyond its subtotal + tax is refused');
select is(pg_temp.err($$select billing.sync_subscription(pg_temp.plan(6, 'in_tax1', 1099, 50, 1049))$$),
  'PAYMENT_AMOUNT_MISMATCH', 'a plan invoice whose subtotal is not the plan''s price is refused');
select is(billing.sync_subscription(pg_temp.plan(6, 'in_tax1', 1099, 100, 999)), 'plan_credits_granted',
  'a plan invoice of the price with tax on top grants the plan');
select results_eq($$select amount_cents, tax_cents, trim_scale(credits) from billing.plan_grants where invoice_id = 'in_tax1'$$,
  $$values (999, 100, 10000::numeric)$$, 'the grant keeps the price and the tax apart; the credits are the plan''s');
select billing.sync_plan_charge(jsonb_build_object('invoice_id', 'in_tax1', 'charge_id', 'ch_tax_plan', 'amount_refunded', 1099));
select is(pg_temp.bal(6), 0::numeric, 'refunding the whole invoice (tax included) takes back every plan credit');

-- ============================================================ reports: tax is never revenue

-- Paid here: u1, u3, u4 with 100 of tax each, u2 without, u6's plan with 100: 400 collected.
-- Returned: u3 all 100, u4 45 + 55, u6 100: 300. Revenue counts 999 per payment, never the tax.
create temp table usd as select x as v from jsonb_array_elements(billing.revenue_metrics(now(), now() + interval '1 microsecond')
  -> 'by_currency') x where x ->> 'currency' = 'usd';
select is((select (v -> 'b2c_credits' ->> 'tax_collected_cents')::int from usd), 400, 'tax collected, apart');
select is((select (v -> 'b2c_credits' ->> 'tax_returned_cents')::int from usd), 300, 'tax given back by refunds and disputes');
select is((select (v -> 'b2c_credits' ->> 'gmv_cents')::int from usd), 5 * 999, 'gmv is the prices, without tax');

select * from finish();
rollback;
