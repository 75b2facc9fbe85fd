-- Auto-recharge: turned on only with a saved card; below its threshold an armed account queues
-- one recharge of its package, never two in flight; the worker claims it with its pending
-- purchase; a declined charge turns auto-recharge off (audited, emailed) and fails the purchase;
-- the monthly count limit skips a recharge, once; a dispute forgets the card; students read
-- only their own recharges.
begin;
select plan(17);
\ir helpers.psql

insert into auth.users (id) values ('55555555-0000-4000-8000-000000000001'), ('55555555-0000-4000-8000-000000000002');
create temp table u as select '55555555-0000-4000-8000-000000000001'::uuid as a, '55555555-0000-4000-8000-000000000002'::uuid as b;

-- ============================================================ turning it on

select is(pg_temp.err($$select billing.set_auto_recharge((select a from u), true, 'mini', 100, null, null)$$), 'NO_SAVED_CARD',
  'auto-recharge needs a saved card');
insert into billing.saved_cards (user_id, customer_id, payment_method_id)
select x, 'cus_pgtap', 'pm_pgtap' from u, unnest(array[u.a, u.b]) x;
select is(billing.set_auto_recharge((select a from u), true, 'mini', 100, null, null) ->> 'enabled', 'true',
  'with a saved card it turns on');
select is((select array_agg(array[r.status, r.package_id, r.price_cents::text]) from billing.recharges r where r.user_id = (select a from u)),
  array[array['queued', 'mini', '500']], 'an empty account below its threshold queues one recharge of its package at its price');
select billing.set_auto_recharge((select a from u), true, 'mini', 200, null, null);
select is((select count(*)::int from billing.recharges r where r.user_id = (select a from u)), 1,
  'crossing again while one is in flight queues no second');
select is((select count(*)::int from billing.auto_recharge_audit x where x.user_id = (select a from u) and x.actor = (select a from u)), 2,
  'each change the student made is audited');

-- ============================================================ the worker

create temp table claimed as select c.* from billing.claim_recharges(1000) c where c.user_id = (select a from u);
select is((select array[c.amount_cents::text, c.customer_id, c.payment_method_id] from claimed c), array['500', 'cus_pgtap', 'pm_pgtap'],
  'the worker claims it with the amount and the saved card');
select is((select array[p.status, p.origin, p.price_cents::text] from billing.purchases p where p.id = (select purchase_id from claimed)),
  array['pending', 'auto_recharge', '500'], 'with a pending purchase of the package');
select is((select count(*)::int from billing.claim_recharges(1000) c where c.user_id = (select a from u)), 0,
  'a claimed recharge is not claimed again');
select is(billing.record_recharge((select recharge_id from claimed), 'pi_pgtap', null), 'submitted',
  'the charge submitted to Stripe is recorded');
select is(billing.record_recharge((select recharge_id from claimed), 'pi_pgtap', 'card_declined'), 'failed',
  'a declined charge fails the recharge');
select is((select array[s.enabled::text, s.disabled_reason] from billing.auto_recharge s where s.user_id = (select a from u)),
  array['false', 'card_declined'], 'and turns auto-recharge off, saying why');
select is((select status from billing.purchases p where p.id = (select purchase_id from claimed)), 'failed',
  'its purchase fails, crediting nothing');
select is((select count(*)::int from billing.notification_outbox o
           where o.dedupe_key = 'recharge-failed:' || (select recharge_id from claimed)), 1, 'and the student is told');

-- ============================================================ the monthly limit

select billing.set_auto_recharge((select b from u), true, 'mini', 100, 1, null);
update billing.recharges r set status = 'succeeded' where r.user_id = (select b from u);
update billing.accounts a set auto_recharge_armed = true where a.user_id = (select b from u);
select billing.check_auto_recharge(a) from billing.accounts a where a.user_id = (select b from u);
select is((select count(*)::int from billing.recharges r where r.user_id = (select b from u)), 1,
  'a recharge past the monthly count is not queued');
select is((select count(*)::int from billing.notification_outbox o where o.user_id = (select b from u) and o.dedupe_key like 'recharge-limit:%'), 1,
  'the student is told once that the monthly limit was reached');

-- ============================================================ a dispute

select billing.stop_off_session_charges((select b from u), 'dp_pgtap');
select is(pg_temp.err($$select billing.set_auto_recharge((select b from u), true, 'mini', 100, null, null)$$), 'NO_SAVED_CARD',
  'a dispute forgets the card: auto-recharge stays off until the student saves one again');

-- ============================================================ as authenticated

set local request.jwt.claims = '{"sub": "55555555-0000-4000-8000-000000000002", "role": "authenticated"}';
set local role authenticated;
select is((select array_agg(distinct r.user_id) from billing.recharges r), array['55555555-0000-4000-8000-000000000002'::uuid],
  'a student reads their own recharges only');
reset role;

select * from finish();
rollback;
