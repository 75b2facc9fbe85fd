-- The one debt's claims (billing.owe, billing.hold_ended): what a provider billed past a hold,
-- when the account's credits are reserved by its other live holds, is claimed on those holds and
-- taken as each ends; a claim owed again hops to the next hold, never past the writer's key rule;
-- a refund's take-back pending on the same hold is served before any claim; a claim owed again at
-- an expiry is never paid with a lot due with it; a capture answers the balance the claim left;
-- a correction run leaves a charge that is partly debt instead of stalling on it.
begin;
select plan(13);
\ir helpers.psql

create function pg_temp.acct(p uuid) returns bigint language sql as $$
  select id from billing.accounts where user_id = p $$;
-- A gateway call for gpt-4o held at 10 tokens in and 10 out (0.8 credits), and its finish at
-- `inp` input tokens (0.02 credits each).
create function pg_temp.call(p uuid, k text) returns uuid language sql as $$
  select (billing.begin_ai_call(p, 'gpt-4o', 10, 10, k, 'h', 600) ->> 'call_id')::uuid $$;
create function pg_temp.fin(c uuid, inp bigint, failed boolean default false) returns jsonb language sql as $$
  select billing.finish_ai_call(c, jsonb_build_object('input_tokens', inp, 'output_tokens', 0), 'provider', null, failed) $$;
create function pg_temp.claimed_hold(a bigint) returns uuid language sql as $$
  select t.hold_id from billing.lot_take_backs t join billing.holds h on h.id = t.hold_id where h.account_id = a $$;
create function pg_temp.lots_agree(a bigint[]) returns boolean language sql as $$
  select not exists (select 1 from jsonb_array_elements_text(billing.check_lots() -> 'accounts') x where x::bigint = any(a)) $$;

-- ============================================================ a claim hops from hold to hold

-- 600.8 credits: a call holds 0.8, six own holds 100 each; the call costs 10.8, so 10 is claimed
-- on an own hold. Each capture in full of the claimed hold owes it again on the next: five hops.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000001');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000001', 600.8, 'promo_grant', 'oc-g1');
create temp table c1 as select pg_temp.call('c1a10000-0000-4000-8000-000000000001', 'oc-c1') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000001', 100, 'oc-h' || n, 600) from generate_series(1, 6) n;
select pg_temp.fin((select id from c1), 540);
select is((select sum(t.amount) from billing.lot_take_backs t
           where t.hold_id = pg_temp.claimed_hold(pg_temp.acct('c1a10000-0000-4000-8000-000000000001'))), 10::numeric,
  'an excess beside no free credits is claimed on a live hold');
do $$
begin
  for i in 1 .. 5 loop
    perform billing.capture_hold('c1a10000-0000-4000-8000-000000000001',
      pg_temp.claimed_hold(pg_temp.acct('c1a10000-0000-4000-8000-000000000001')));
  end loop;
end $$;
select ok((select max(length(t.take_key)) from billing.lot_take_backs t
           where t.hold_id = pg_temp.claimed_hold(pg_temp.acct('c1a10000-0000-4000-8000-000000000001'))) <= 100,
  'after five hops the claim''s key is as short as after one');
select is(pg_temp.err($$select billing.release_hold('c1a10000-0000-4000-8000-000000000001',
    pg_temp.claimed_hold(pg_temp.acct('c1a10000-0000-4000-8000-000000000001')))$$), 'no error',
  'the hold carrying it still ends');
select is((select balance from billing.accounts where user_id = 'c1a10000-0000-4000-8000-000000000001'), 90::numeric,
  'and the claim took its 10 of what it returned: 600.8 − 10.8 − 500 captured');

-- ============================================================ a refund's take-back before a claim

-- A school's pool: lot A (a grant, spent first) and lot B (the admin's purchase: an unverified
-- school's admin answers for it). A member's call holds 0.8 of A, a second one the rest of A
-- and B but 0.02. The first costs 50: its excess takes B's free 0.02, the other 49.18 is
-- claimed on the second's hold (lot A). The purchase is refunded: B's take-back waits on that
-- hold. The second costs 90 (from A): it returns 9.2 of A and all it held of B. The refund takes
-- that part of B back whole before the claim; the claim gets A's 9.2, the rest is the pool's
-- debt; the admin owes the 0.02 of B the overrun spent.
insert into auth.users (id, email) values ('c1a10000-0000-4000-8000-0000000000a1', 'oc-admin@test.test'),
  ('c1a10000-0000-4000-8000-0000000000a2', 'oc-member@test.test');
create temp table org as select (billing.create_org('c1a10000-0000-4000-8000-0000000000a1', 'Owe School', 'pool', true)
  ->> 'id')::uuid as id;
select billing.invite_member('c1a10000-0000-4000-8000-0000000000a1', (select id from org), 'oc-member@test.test', 'member',
  'hash-oc-member', 86400);
select billing.answer_invitation('c1a10000-0000-4000-8000-0000000000a2', 'oc-member@test.test', 'hash-oc-member', true);
select billing.grant_credits('c1a10000-0000-4000-8000-0000000000a1', 100, 'promo_grant', 'oc-gA', null, null, null,
  '{"priority": 5}', billing.org_wallet_id((select id from org)));
create temp table buy as select (billing.begin_checkout('c1a10000-0000-4000-8000-0000000000a1', 'mini', 'oc-rk', null, false,
  (select id from org))).purchase_id as id;
select billing.attach_checkout_session((select id from buy), 'cs_oc', 'https://checkout.example/cs_oc', now() + interval '1 hour');
create function pg_temp.state(refunded int) returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_oc', 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', p.price_cents, 'currency', 'usd', 'payment_intent', 'pi_cs_oc', 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_cs_oc', 'amount_refunded', refunded)
  from billing.purchases p where p.id = (select id from buy) $$;
select billing.sync_purchase(pg_temp.state(0));
create temp table c2 as select pg_temp.call('c1a10000-0000-4000-8000-0000000000a2', 'oc-c2') as id;
create temp table c3 as select (billing.begin_ai_call('c1a10000-0000-4000-8000-0000000000a2', 'gpt-4o', 10, 1000000, 'oc-c3',
  'h', 3600, p_min_output_tokens => 1) ->> 'call_id')::uuid as id;
select pg_temp.fin((select id from c2), 2500);
select billing.sync_purchase(pg_temp.state((select price_cents from billing.purchases where id = (select id from buy))));
select pg_temp.fin((select id from c3), 4500);
select is((select sum(t.amount) from billing.transfers t where t.from_account_id = pg_temp.acct('c1a10000-0000-4000-8000-0000000000a1')),
  0.02, 'the refund took back all the hold returned of its lot: the admin owes only the 0.02 of B the overrun spent before it');
select is((select balance from billing.accounts where id = billing.org_wallet_id((select id from org))),
  100.02 - 0.8 - 49.2 - 90::numeric, 'the pool owes the rest of its member''s overrun: what A had left, then debt');

-- ============================================================ an expiry owes a claim again

-- Lot L1 (100) and, granted after the claim, L2 (50): both pass their expiry before the account
-- is touched. The claim on L1's reservation is owed again once both expired: L2 never pays it.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000003');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000003', 100, 'promo_grant', 'oc-l1', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 day'));
create temp table c4 as select pg_temp.call('c1a10000-0000-4000-8000-000000000003', 'oc-c4') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000003', 99.2, 'oc-h-exp', 86400);
select pg_temp.fin((select id from c4), 5000);
select billing.grant_credits('c1a10000-0000-4000-8000-000000000003', 50, 'promo_grant', 'oc-l2', null, null, null,
  jsonb_build_object('expires_at', now() + interval '2 days'));
update billing.lots set expires_at = now() - interval '2 seconds'
where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003') and amount = 100;
update billing.lots set expires_at = now() - interval '1 second'
where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003') and amount = 50;
update billing.accounts set next_expiry = now() - interval '2 seconds' where id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003');
create temp table predicted as select (billing.balance_of(pg_temp.acct('c1a10000-0000-4000-8000-000000000003'))).balance;
select billing.expire_due_lots(pg_temp.acct('c1a10000-0000-4000-8000-000000000003'));
select is((select balance from billing.accounts where id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003')), -99.2::numeric,
  'both lots expire whole; the claim owed again is debt');
select is((select balance from predicted), -99.2::numeric, 'as the balance read before the sweep said');

-- A hold's TTL falls between two due lots: it lapses while the later one is still open; the
-- claim owed again is never paid with that lot either (it is the expiry's).
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000006');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000006', 100, 'promo_grant', 'oc-t1', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 day'));
select billing.grant_credits('c1a10000-0000-4000-8000-000000000006', 20, 'promo_grant', 'oc-t0', null, null, null,
  jsonb_build_object('expires_at', now() + interval '10 days'));
create temp table c7 as select pg_temp.call('c1a10000-0000-4000-8000-000000000006', 'oc-c7') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000006', 109.2, 'oc-h-ttl', 86400);
select pg_temp.fin((select id from c7), 5000);
select billing.grant_credits('c1a10000-0000-4000-8000-000000000006', 50, 'promo_grant', 'oc-t2', null, null, null,
  jsonb_build_object('expires_at', now() + interval '2 days'));
update billing.lots set expires_at = now() - interval '3 seconds'
where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000006') and amount = 100;
-- The TTL passes (and the account's next_hold_expiry with it, as placing it so would set it).
with h as (update billing.holds set expires_at = now() - interval '2 seconds' where idempotency_key = 'oc-h-ttl'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, h.expires_at) from h where a.id = h.account_id;
update billing.lots set expires_at = now() - interval '1 second'
where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000006') and amount = 50;
update billing.accounts set next_expiry = now() - interval '3 seconds' where id = pg_temp.acct('c1a10000-0000-4000-8000-000000000006');
select billing.expire_due_lots(pg_temp.acct('c1a10000-0000-4000-8000-000000000006'));
select is((select balance from billing.accounts where id = pg_temp.acct('c1a10000-0000-4000-8000-000000000006')), -79.2::numeric,
  'a claim owed again as its hold lapses between two due lots: the later lot expires whole, the rest is debt');

-- A plan renewal whose ending period holds a claim: the first lot's rollover owes it again and
-- draws the second; the renewal reads the second again and goes through.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000007');
create function pg_temp.pstate(u uuid, inv text, reason text, s int, e int) returns jsonb language sql as $$
  select jsonb_build_object('kind', 'subscription',
    'subscription', jsonb_build_object('id', 'sub_oc', 'status', 'active', 'customer', 'cus_oc', 'cancel_at_period_end', false,
      'current_period_start', extract(epoch from now() + make_interval(days => s))::bigint,
      'current_period_end', extract(epoch from now() + make_interval(days => e))::bigint,
      'metadata', jsonb_build_object('subscription_id', (select x.id from billing.subscriptions x where x.user_id = u),
        'user_id', u, 'plan_id', 'basic_monthly')),
    'invoice', jsonb_build_object('id', inv, 'status', 'paid', 'billing_reason', reason, 'amount_paid', 999,
      'amount_due', 999, 'currency', 'usd', 'attempted', true,
      'period_start', extract(epoch from now() + make_interval(days => s))::bigint,
      'period_end', extract(epoch from now() + make_interval(days => e))::bigint, 'plan_id', 'basic_monthly')) $$;
select billing.begin_subscription('c1a10000-0000-4000-8000-000000000007', 'basic_monthly', 'oc-sub');
select billing.sync_subscription(pg_temp.pstate('c1a10000-0000-4000-8000-000000000007', 'in_oc_1', 'subscription_create', 0, 30));
select billing.sync_subscription(pg_temp.pstate('c1a10000-0000-4000-8000-000000000007', 'in_oc_2', 'subscription_cycle', 30, 60));
create temp table c8 as select pg_temp.call('c1a10000-0000-4000-8000-000000000007', 'oc-c8') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000007', (select remaining from billing.lots
  where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000007') and open order by spending_order limit 1) - 0.8,
  'oc-plan-h1', 86400);
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000007', (select remaining from billing.lots
  where account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000007') and open and reserved = 0
  order by spending_order limit 1), 'oc-plan-h2', 86400);
select pg_temp.fin((select id from c8), 5000);
select billing.release_hold('c1a10000-0000-4000-8000-000000000007', (select id from billing.holds where idempotency_key = 'oc-plan-h2'));
select is(pg_temp.err($$select billing.sync_subscription(pg_temp.pstate('c1a10000-0000-4000-8000-000000000007', 'in_oc_3',
    'subscription_cycle', 60, 90))$$), 'no error', 'the renewal goes through');

-- ============================================================ a capture answers what the claim left

insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000004');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000004', 100, 'promo_grant', 'oc-g4');
create temp table c5 as select pg_temp.call('c1a10000-0000-4000-8000-000000000004', 'oc-c5') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000004', 99.2, 'oc-cap-hold', 600);
select pg_temp.fin((select id from c5), 5000);
create temp table captured as select (billing.capture_hold('c1a10000-0000-4000-8000-000000000004',
  (select id from billing.holds where idempotency_key = 'oc-cap-hold'), 30)).balance;
select is((select balance from captured),
  (select balance from billing.accounts where user_id = 'c1a10000-0000-4000-8000-000000000004'),
  'a capture of a claimed hold answers the balance the ledger has after the claim');

-- ============================================================ a correction run and a debt

insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000005');
insert into auth.users (id, raw_app_meta_data) values ('c1a10000-0000-4000-8000-0000000005ad', '{"role": "admin"}');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000005', 1, 'promo_grant', 'oc-g5');
create temp table c6 as select pg_temp.call('c1a10000-0000-4000-8000-000000000005', 'oc-c6') as id;
select pg_temp.fin((select id from c6), 5000, true);
create temp table run as select billing.start_correction_run('c1a10000-0000-4000-8000-0000000005ad', 'oc-run', 'gpt-4o',
  now(), now() + interval '1 millisecond', true, 'outage') ->> 'id' as id;
select is(pg_temp.err($$select billing.process_correction_run((select id::uuid from run))$$), 'no error',
  'a run over a failed call whose excess is partly debt goes on (the debt is given back by an adjustment)');
select ok(pg_temp.lots_agree(array[pg_temp.acct('c1a10000-0000-4000-8000-000000000001'),
    pg_temp.acct('c1a10000-0000-4000-8000-000000000003'), billing.org_wallet_id((select id from org)),
    pg_temp.acct('c1a10000-0000-4000-8000-000000000006'), pg_temp.acct('c1a10000-0000-4000-8000-000000000007')]),
  'lots, balances and allocations agree for every account above');

select * from finish();
rollback;
