-- What a provider billed past a hold (billing.charge_excess): from the account's free credits,
-- then what its live holds reserved (the newest hold gives up its reservation first, one a refund
-- claimed last), then debt, all at once; never a claim waiting on a hold. A refund's take-back
-- pending on a hold that a server's finish ends waits for the minute's tick
-- (billing.take_back_claims): what the hold returned of it stays reserved until then.
begin;
select plan(16);
\ir helpers.psql

create function pg_temp.acct(p uuid) returns bigint language sql as $$
  select id from billing.accounts where user_id = p $$;
-- A gateway call for gpt-4o held at 10 tokens in and 10 out (0.8 credits), and its finish at
-- `inp` input tokens (0.02 credits each).
create function pg_temp.call(p uuid, k text) returns uuid language sql as $$
  select (billing.begin_ai_call(p, 'gpt-4o', 10, 10, k, 'h', 600) ->> 'call_id')::uuid $$;
create function pg_temp.fin(c uuid, inp bigint, failed boolean default false) returns jsonb language sql as $$
  select billing.finish_ai_call(c, jsonb_build_object('input_tokens', inp, 'output_tokens', 0), 'provider', null, failed) $$;
create function pg_temp.lots_agree(a bigint[]) returns boolean language sql as $$
  select not exists (select 1 from jsonb_array_elements_text(billing.check_lots() -> 'accounts') x where x::bigint = any(a)) $$;

-- ============================================================ the newest live hold gives way

-- 600.8 credits: a call holds 0.8, six own holds 100 each; the call costs 10.8, so its excess of
-- 10 finds no free credits and the newest hold gives 10 of its reservation.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000001');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000001', 600.8, 'promo_grant', 'oc-g1');
create temp table c1 as select pg_temp.call('c1a10000-0000-4000-8000-000000000001', 'oc-c1') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000001', 100, 'oc-h' || n, 600) from generate_series(1, 6) n;
select pg_temp.fin((select id from c1), 540);
-- (The newest first: placed in one transaction here, they are all as new.)
select results_eq($$select amount, status, metadata ->> 'given_to_excess' from billing.holds
    where idempotency_key like 'oc-h%' and amount <> 100$$,
  $$values (90::numeric, 'active'::text, '10'::text)$$,
  'an excess beside no free credits takes it from one live hold, which shrinks');
select results_eq($$select balance, held from billing.accounts where user_id = 'c1a10000-0000-4000-8000-000000000001'$$,
  $$values (590::numeric, 590::numeric)$$, 'charged at once, in full, no debt: 600.8 − 10.8, all of it held');
select is(pg_temp.err($$select billing.capture_hold('c1a10000-0000-4000-8000-000000000001',
    (select id from billing.holds where idempotency_key like 'oc-h%' and amount = 90), 100)$$), 'CAPTURE_EXCEEDS_HOLD',
  'the shrunk hold captures no more than it still holds');

-- With nothing reserved left to give, the rest is debt: 10 credits, a hold of 9.2 and a call of
-- 0.8 that costs 20.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000002');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000002', 10, 'promo_grant', 'oc-g2');
create temp table c2 as select pg_temp.call('c1a10000-0000-4000-8000-000000000002', 'oc-c2') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000002', 9.2, 'oc-d1', 600);
select pg_temp.fin((select id from c2), 1000);
select results_eq($$select a.balance, a.held, h.status from billing.accounts a join billing.holds h on h.account_id = a.id
    and h.idempotency_key = 'oc-d1' where a.user_id = 'c1a10000-0000-4000-8000-000000000002'$$,
  $$values (-10::numeric, 0::numeric, 'released'::text)$$,
  'a hold that gives all it reserved ends released; what nothing pays is debt');
select ok(billing.in_debt(a), 'and the account owes') from billing.accounts a where a.user_id = 'c1a10000-0000-4000-8000-000000000002';

-- Frozen credits come after the holds: 10.8 credits (a call holds 0.8, an own hold the 10 left)
-- and 10 more frozen by a dispute; the call costs 10.8, so its excess of 10 takes the hold's 10,
-- never the frozen ones.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000009');
select billing.grant_credits('c1a10000-0000-4000-8000-000000000009', 10.8, 'promo_grant', 'oc-g9');
create temp table c9 as select pg_temp.call('c1a10000-0000-4000-8000-000000000009', 'oc-c9') as id;
select billing.reserve_credits('c1a10000-0000-4000-8000-000000000009', 10, 'oc-f1', 600);
select billing.grant_credits('c1a10000-0000-4000-8000-000000000009', 10, 'promo_grant', 'oc-g9f');
update billing.lots l set frozen = true where l.account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000009')
  and l.amount = 10;
update billing.accounts a set frozen_lots = true where a.user_id = 'c1a10000-0000-4000-8000-000000000009';
select pg_temp.fin((select id from c9), 540);
select results_eq($$select h.status, h.metadata ->> 'given_to_excess',
      (select l.remaining from billing.lots l where l.account_id = h.account_id and l.frozen)
    from billing.holds h where h.idempotency_key = 'oc-f1'$$,
  $$values ('released'::text, '10'::text, 10::numeric)$$, 'the live hold gives way before frozen credits pay');

-- ============================================================ a refund's take-back waits for the tick

-- A student's purchase (mini) is held in full by a call; refunded while it runs, the hold's
-- reservation is claimed. The call ends cheaper than its hold: what it returned stays reserved
-- in a claims hold, nothing can spend it, and the tick takes it back.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000003');
create temp table buy as select (billing.begin_checkout('c1a10000-0000-4000-8000-000000000003', 'mini', 'oc-rk', null, false,
  null)).purchase_id as id;
select billing.attach_checkout_session((select id from buy), 'cs_oc', 'https://checkout.example/cs_oc', now() + interval '1 hour');
create function pg_temp.state(refunded int) returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_oc', 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', p.price_cents, 'currency', 'usd', 'payment_intent', 'pi_cs_oc', 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_cs_oc', 'amount_refunded', refunded)
  from billing.purchases p where p.id = (select id from buy) $$;
select billing.sync_purchase(pg_temp.state(0));
create temp table bought as select balance from billing.accounts where user_id = 'c1a10000-0000-4000-8000-000000000003';
create temp table c3 as select (billing.begin_ai_call('c1a10000-0000-4000-8000-000000000003', 'gpt-4o', 10, 1000000, 'oc-c3',
  'h', 3600, p_min_output_tokens => 1) ->> 'call_id')::uuid as id;
select billing.sync_purchase(pg_temp.state((select price_cents from billing.purchases where id = (select id from buy))));
select pg_temp.fin((select id from c3), 100);
select results_eq($$select a.balance, a.held, coalesce(a.next_hold_expiry <= now(), false) from billing.accounts a
    where a.user_id = 'c1a10000-0000-4000-8000-000000000003'$$,
  $$select b.balance - 2, b.balance - 2, false from bought b$$,
  'the finish charged the call and took nothing back: what it returned stays reserved; nothing falls due');
select results_eq($$select h.purpose, h.status, h.amount from billing.holds h
    where h.account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003') and h.purpose = 'claims'$$,
  $$select 'claims'::text, 'active'::text, b.balance - 2 from bought b$$, 'in a claims hold, the take-back moved onto it');
select is(pg_temp.err($$select billing.reserve_credits('c1a10000-0000-4000-8000-000000000003', 1, 'oc-after', 600)$$),
  'INSUFFICIENT_CREDITS', 'a hold after it finds nothing free: what the call returned is still claimed');
select billing.settle_spender('c1a10000-0000-4000-8000-000000000003');  -- a settle takes nothing back
select is((select h.status from billing.holds h where h.account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003')
           and h.purpose = 'claims'), 'active', 'a settle leaves the claims hold to the tick');
select billing.take_back_claims(pg_temp.acct('c1a10000-0000-4000-8000-000000000003'));  -- the minute's tick, for this account
select results_eq($$select a.balance, a.next_hold_expiry from billing.accounts a
    where a.user_id = 'c1a10000-0000-4000-8000-000000000003'$$,
  $$values (-2::numeric, null::timestamptz)$$, 'the tick: the purchase is gone; the 2 the call spent of it is owed; nothing falls due');
select is((select count(*) from billing.lot_take_backs t join billing.holds h on h.id = t.hold_id
           where h.account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000003')), 0::bigint, 'no take-back waits');

-- ============================================================ two claims holds in one tick

-- Three calls hold 120.2 each of a purchase (mini), refunded while they run: their reservations
-- are claimed. Two finish (2 and 3 credits) within the minute, so one tick ends both claims
-- holds: each takes back all its hold returned, and what each call spent is owed, never drawn
-- from what the other returned.
insert into auth.users (id) values ('c1a10000-0000-4000-8000-000000000008');
create temp table buy8 as select (billing.begin_checkout('c1a10000-0000-4000-8000-000000000008', 'mini', 'oc-rk8', null,
  false, null)).purchase_id as id;
select billing.attach_checkout_session((select id from buy8), 'cs_oc8', 'https://checkout.example/cs_oc8', now() + interval '1 hour');
create function pg_temp.state8(refunded int) returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_oc8', 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', p.price_cents, 'currency', 'usd', 'payment_intent', 'pi_cs_oc8', 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_cs_oc8', 'amount_refunded', refunded)
  from billing.purchases p where p.id = (select id from buy8) $$;
select billing.sync_purchase(pg_temp.state8(0));
create temp table c8 as select n, (billing.begin_ai_call('c1a10000-0000-4000-8000-000000000008', 'gpt-4o', 10, 2000,
  'oc-c8-' || n, 'h', 3600) ->> 'call_id')::uuid as id from generate_series(1, 3) n;
select billing.sync_purchase(pg_temp.state8((select price_cents from billing.purchases where id = (select id from buy8))));
select pg_temp.fin((select id from c8 where n = 1), 100);
select pg_temp.fin((select id from c8 where n = 2), 150);
select is((select count(*) from billing.holds h where h.account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000008')
           and h.purpose = 'claims' and h.status = 'active'), 2::bigint, 'two claims holds wait');
select billing.take_back_claims(pg_temp.acct('c1a10000-0000-4000-8000-000000000008'));  -- the minute's tick, for this account
select results_eq($$select trim_scale(sum(t.amount) filter (where t.idempotency_key like '%:held:%' and t.idempotency_key not like '%:owed')),
      trim_scale(sum(t.amount) filter (where t.idempotency_key like '%:owed'))
    from billing.transfers t where t.from_account_id = pg_temp.acct('c1a10000-0000-4000-8000-000000000008')
      and t.kind = 'refund_reversal'$$,
  $$values (235.4::numeric, 5::numeric)$$,
  'one tick ends both: each takes back all its hold returned (118.2 + 117.2); only what the calls spent is owed');

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
    pg_temp.acct('c1a10000-0000-4000-8000-000000000002'), pg_temp.acct('c1a10000-0000-4000-8000-000000000005'),
    pg_temp.acct('c1a10000-0000-4000-8000-000000000008'), pg_temp.acct('c1a10000-0000-4000-8000-000000000009')]),
  'lots, balances and allocations agree for every account above');

select * from finish();
rollback;
