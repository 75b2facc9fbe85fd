-- Credits for some models only are no cover for money owed in any: a refund or a lost dispute of a
-- student's own purchase takes back the purchase's lots, then only credits for any model, and
-- what they lack is debt, never a school's credits for one model; while a dispute is open its lots
-- are frozen and nothing else pays for their model; credits for some models arriving on an account in
-- debt keep their list and do not pay the debt (docs/credit-lots.md § Refunds, disputes and debt).
begin;
select plan(20);
\ir helpers.psql

insert into auth.users (id) select ('c6c6c6c6-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 5) n;

create function pg_temp.u(n int) returns uuid language sql as $$ select ('c6c6c6c6-0000-4000-8000-00000000000' || n)::uuid $$;
-- Stripe's state of user n's purchase (session cs_rc_<n>, charge ch_rc_<n>, dispute dp_rc_<n>).
create function pg_temp.state(n int, cents int, refunded int default 0, dispute text default null) returns jsonb
language sql as $$
  select jsonb_build_object('session_id', 'cs_rc_' || n, 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', cents, 'currency', 'usd', 'payment_intent', 'pi_rc_' || n, 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_rc_' || n, 'amount_refunded', refunded,
    'dispute_id', case when dispute is not null then 'dp_rc_' || n end, 'dispute_status', dispute)
$$;
-- User n buys starter (9,990 credits for 999¢) with their own card.
create function pg_temp.buy(n int) returns uuid language plpgsql as $$
declare
  v_id uuid := (billing.begin_checkout(pg_temp.u(n), 'starter', 'rc-' || n)).purchase_id;
begin
  perform billing.attach_checkout_session(v_id, 'cs_rc_' || n, 'https://checkout.example/' || n, now() + interval '1 hour');
  perform billing.sync_purchase(pg_temp.state(n, 999));
  return v_id;
end;
$$;
-- A school's credits for claude-haiku-4-5 only (as a sponsor code for that model gives them).
create function pg_temp.school_credits(n int, amount numeric) returns void language sql as $$
  select billing.grant_credits(pg_temp.u(n), amount, 'promo_grant', 'rc-school-' || n, null, null, null,
    '{"applies_to": ["claude-haiku-4-5"]}')
$$;
create function pg_temp.school_left(n int) returns numeric language sql as $$
  select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
  where t.idempotency_key = 'rc-school-' || n
$$;
create function pg_temp.bal(n int) returns numeric language sql as $$ select balance from billing.get_balance(pg_temp.u(n)) $$;

-- ============================================================ a refund

-- u1: 5,000 of the school's credits for haiku, then buys starter and spends 1,230 of it on gpt-4o
-- (20,000 tokens are 400 credits; 61,500 are 1,230). Stripe refunds the whole charge.
select pg_temp.school_credits(1, 5000);
select pg_temp.buy(1);
select billing.charge_usage(pg_temp.u(1), 'gpt-4o', 61500, 0, 'rc-spend-1');
select is(pg_temp.school_left(1), 5000::numeric, 'u1: spending on gpt-4o took none of the school''s credits for haiku');
select billing.sync_purchase(pg_temp.state(1, 999, 999));
select is(pg_temp.school_left(1), 5000::numeric,
  'u1: a refund takes none of the school''s credits for haiku to cover what was spent on gpt-4o');
select is(pg_temp.bal(1), 3770::numeric, 'u1: what was spent is owed: the balance nets the 1,230 of debt');
select is(pg_temp.err($$select pg_temp.spend(pg_temp.u(1), 1, 'rc-any-1')$$), 'INSUFFICIENT_CREDITS',
  'u1: nothing is left for any model');
select is(pg_temp.err($$select billing.charge_usage(pg_temp.u(1), 'gpt-4o', 50, 0, 'rc-4o-1')$$), 'INSUFFICIENT_CREDITS',
  'u1: nor for gpt-4o');

-- ============================================================ a dispute: open, then lost

-- u2: the same, but the charge is disputed. While it is open, the purchase's lot is frozen: nothing
-- else pays for gpt-4o (the school's credits for haiku are no cover).
select pg_temp.school_credits(2, 5000);
select pg_temp.buy(2);
select billing.charge_usage(pg_temp.u(2), 'gpt-4o', 61500, 0, 'rc-spend-2');
select billing.sync_purchase(pg_temp.state(2, 999, 0, 'needs_response'));
select is(pg_temp.err($$select billing.charge_usage(pg_temp.u(2), 'gpt-4o', 20000, 0, 'rc-4o-2')$$), 'INSUFFICIENT_CREDITS',
  'u2: while the dispute is open, the disputed purchase''s credits cannot be spent on gpt-4o');
select is(pg_temp.err($$select pg_temp.spend(pg_temp.u(2), 1, 'rc-any-2')$$), 'INSUFFICIENT_CREDITS',
  'u2: nor on anything');
select is((select bool_and(l.frozen) from billing.lots l join billing.accounts a on a.id = l.account_id
           where a.user_id = pg_temp.u(2) and l.purchase_id is not null and l.open), true, 'u2: the dispute freezes the purchase''s lot');
-- The school's credits still pay for haiku (100,000 tokens are 400 credits).
select is(pg_temp.err($$select billing.charge_usage(pg_temp.u(2), 'claude-haiku-4-5', 100000, 0, 'rc-haiku-2')$$), 'no error',
  'u2: the school''s credits still pay for haiku during the dispute');
select billing.sync_purchase(pg_temp.state(2, 999, 0, 'lost'));
select is(pg_temp.school_left(2), 4600::numeric,
  'u2: the lost dispute takes none of the school''s credits for haiku (only the 400 spent on haiku left them)');
select is(pg_temp.bal(2), 3370::numeric, 'u2: the 1,230 spent on gpt-4o is owed: the balance nets it');
select is(pg_temp.err($$select billing.charge_usage(pg_temp.u(2), 'claude-haiku-4-5', 100000, 0, 'rc-haiku-2b')$$), 'no error',
  'u2: and the school''s credits still pay for haiku');

-- ============================================================ credits for some models arriving in debt

-- u3: buys starter, spends it all, and it is refunded: 9,990 in debt. Then 3,000 of the school's
-- credits for haiku arrive: they keep their list and pay none of the debt.
select pg_temp.buy(3);
select billing.charge_usage(pg_temp.u(3), 'gpt-4o', 499500, 0, 'rc-spend-3');
select billing.sync_purchase(pg_temp.state(3, 999, 999));
select is(pg_temp.bal(3), -9990::numeric, 'u3: the refund left 9,990 of debt');
select pg_temp.school_credits(3, 3000);
select results_eq($$select l.remaining, l.debt_settled from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
                    where t.idempotency_key = 'rc-school-3'$$, $$values (3000::numeric, 0::numeric)$$,
  'u3: the school''s credits for haiku pay none of the debt');
-- The student pays the debt with credits for any model: all of them go to it.
select billing.grant_credits(pg_temp.u(3), 9990, 'adjustment', 'rc-pay-3', null, null, null,
  '{"category": "paid", "cost_cents": 999}');
select results_eq($$select l.remaining, l.debt_settled from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
                    where t.idempotency_key = 'rc-pay-3'$$, $$values (0::numeric, 9990::numeric)$$,
  'u3: credits for any model pay the debt in full');
select is(pg_temp.err($$select pg_temp.spend(pg_temp.u(3), 1, 'rc-any-3')$$), 'INSUFFICIENT_CREDITS',
  'u3: no credit for any model came out of the school''s');
select is(pg_temp.err($$select billing.charge_usage(pg_temp.u(3), 'claude-haiku-4-5', 100000, 0, 'rc-haiku-3')$$), 'no error',
  'u3: the school''s 3,000 pay for haiku once the debt is paid');

-- ============================================================ work under way when a dispute opens

-- u4: the same account; a gateway call for gpt-4o holds 400 before the dispute opens. The call was
-- made: it is charged from the disputed credits (as on any account: a capture is work done), and
-- the loss makes it debt like the rest.
select pg_temp.school_credits(4, 5000);
select pg_temp.buy(4);
select billing.charge_usage(pg_temp.u(4), 'gpt-4o', 61500, 0, 'rc-spend-4');
select billing.reserve_hold(pg_temp.u(4), 400, 'rc-call-4', 600, 'ai', null, '{"model": "gpt-4o"}');
select billing.sync_purchase(pg_temp.state(4, 999, 0, 'needs_response'));
select is((select trim_scale(c.captured + c.overage) from billing.charge_hold_at(
    (select h.id from billing.holds h where h.idempotency_key = 'rc-call-4'), 400,
    (select r.id from billing.rate_cards r where r.model = 'gpt-4o' order by r.version desc limit 1), 'rc-call-4-ov', 'rc-c4',
    '{}', '{}') c), 400::numeric, 'u4: a gateway call under way when the dispute opened is charged in full');
select billing.sync_purchase(pg_temp.state(4, 999, 0, 'lost'));
select is(pg_temp.school_left(4), 5000::numeric, 'u4: the lost dispute takes none of the school''s credits: 1,630 is debt');

select is(billing.check_lots() - 'deferred_revenue_cents', '{"lots": [], "accounts": [], "sub_accounts": [], "transfers": [], "expiry": []}'::jsonb,
  'lots, balances and allocations agree');

select * from finish();
rollback;
