-- A hold past its TTL reserves nothing, even before the sweep ends it: credits taken back never
-- shrink a live hold in its place, and setting a low-balance alert never fires on it. One
-- transaction, so "past its TTL" is now() - 1 s for every statement here.
begin;
select plan(9);
\ir helpers.psql

insert into auth.users (id) select ('c7c7c7c7-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 3) n;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('c7c7c7c7-0000-4000-8000-00000000000' || n)::uuid $$;
-- Stripe's state of user n's purchase (session cs_due_<n>), refunded so far by `refunded` cents.
create function pg_temp.state(n int, cents int, refunded int default 0) returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_due_' || n, 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', cents, 'currency', 'usd', 'payment_intent', 'pi_due_' || n, 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_due_' || n, 'amount_refunded', refunded, 'dispute_id', null, 'dispute_status', null)
$$;
create function pg_temp.buy(n int, pkg text) returns void language plpgsql as $$
declare
  v_id uuid := (billing.begin_checkout(pg_temp.u(n), pkg, 'due-' || n)).purchase_id;
begin
  perform billing.attach_checkout_session(v_id, 'cs_due_' || n, 'https://checkout.example/' || n, now() + interval '1 hour');
  perform billing.sync_purchase(pg_temp.state(n, 500));
end;
$$;
create function pg_temp.hold(k text) returns billing.holds language sql as $$ select * from billing.holds where idempotency_key = k $$;

-- ============================================================ a refund beside a hold past its TTL
-- 5,000 credits; a hold of 3,000 past its TTL and a live one of 1,500. A refund of 100 cents takes
-- 1,000 back: 4,000 left, the live hold fits. Counting the overdue hold (4,500 held) shrank the
-- live one to 1,000 and left the overdue one active.
select pg_temp.buy(1, 'mini');
select billing.reserve_credits(pg_temp.u(1), 3000, 'due-old', 600);
select billing.reserve_credits(pg_temp.u(1), 1500, 'due-live', 600);
-- The TTL passes (and the account's next_hold_expiry with it, as placing it so would set it).
with h as (update billing.holds set expires_at = now() - interval '1 second' where idempotency_key = 'due-old'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, h.expires_at) from h where a.id = h.account_id;
select billing.sync_purchase(pg_temp.state(1, 500, 100));
select is((select balance from billing.get_balance(pg_temp.u(1))), 4000::numeric, 'the refund took 1,000 of 5,000');
select is(((pg_temp.hold('due-live')).status, (pg_temp.hold('due-live')).amount), ('active'::text, 1500::numeric),
  'the live hold keeps all it reserved');
select is((pg_temp.hold('due-old')).status, 'expired', 'the hold past its TTL ended as expired, not given way');
select is((select held from billing.accounts where user_id = pg_temp.u(1)), 1500::numeric,
  'the account holds what its live hold reserves');

-- ============================================================ a low-balance alert beside a hold past its TTL
-- 5,000 credits, a hold of 4,500 past its TTL: 5,000 available. An alert below 1,000 does not fire.
select pg_temp.buy(2, 'mini');
select billing.reserve_credits(pg_temp.u(2), 4500, 'due-alert', 600);
-- The TTL passes (and the account's next_hold_expiry with it, as placing it so would set it).
with h as (update billing.holds set expires_at = now() - interval '1 second' where idempotency_key = 'due-alert'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, h.expires_at) from h where a.id = h.account_id;
select billing.set_low_balance_alert(pg_temp.u(2), 1000);
select is((select low_balance_fired from billing.accounts where user_id = pg_temp.u(2)), false,
  'setting the alert does not fire it on credits only an overdue hold reserved');
select is((pg_temp.hold('due-alert')).status, 'expired', 'the overdue hold ended when the alert was set');
select is((select count(*) from billing.notification_outbox where user_id = pg_temp.u(2) and dedupe_key like 'low-balance:%'), 0::bigint,
  'no low-balance notice is queued');

-- ============================================================ auto-recharge beside a hold past its TTL
-- 5,000 credits, a hold of 4,800 past its TTL: 5,000 available. Turning auto-recharge on below 1,000
-- charges no card.
select pg_temp.buy(3, 'mini');
select billing.reserve_credits(pg_temp.u(3), 4800, 'due-recharge', 600);
-- The TTL passes (and the account's next_hold_expiry with it, as placing it so would set it).
with h as (update billing.holds set expires_at = now() - interval '1 second' where idempotency_key = 'due-recharge'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, h.expires_at) from h where a.id = h.account_id;
insert into billing.saved_cards (user_id, customer_id, payment_method_id) values (pg_temp.u(3), 'cus_due_3', 'pm_due_3');
select billing.set_auto_recharge(pg_temp.u(3), true, 'mini', 1000, null, null);
select is((select count(*) from billing.recharges where user_id = pg_temp.u(3)), 0::bigint,
  'turning auto-recharge on queues no recharge on credits only an overdue hold reserved');
select is((pg_temp.hold('due-recharge')).status, 'expired', 'the overdue hold ended when auto-recharge was set');

select * from finish();
rollback;
