-- An AI call's begin never settles (its road carries no expiry): when something of an account
-- that would pay fell due (a hold past its TTL, a lot past its expiry), it answers
-- {state: 'settle'} and writes nothing; billing.settle_spender ends what fell due, for a member
-- in every wallet that may pay, and the begin asked again holds. Paths that hold outside the
-- gateway (a user's hold, a job) settle inline.
begin;
select plan(19);
\ir helpers.psql

insert into auth.users (id, email) values
  ('b5b5b5b5-0000-4000-8000-000000000001', 'student@settle.test'),
  ('b5b5b5b5-0000-4000-8000-000000000002', 'owner@settle.test'),
  ('b5b5b5b5-0000-4000-8000-000000000003', 'member@settle.test');
create temp table t as select 'b5b5b5b5-0000-4000-8000-000000000001'::uuid as u, 'b5b5b5b5-0000-4000-8000-000000000003'::uuid as m,
  (billing.create_org('b5b5b5b5-0000-4000-8000-000000000002', 'Settle School', 'pool', true) ->> 'id')::uuid as org;
grant select on t to service_role;
select billing.grant_credits((select u from t), 100, 'adjustment', 'settle-first:grant');
select billing.reserve_credits((select u from t), 4, 'settle-first:hold');
create function pg_temp.begin(p_user uuid, p_key text) returns jsonb language sql as $$
  select billing.begin_ai_call(p_user, 'gpt-4o-mini', 10, 100, p_key, 'h', 600, 'chat', array['openai'])
$$;
create function pg_temp.writes() returns bigint language sql as $$
  select (select count(*) from billing.ai_calls) + (select count(*) from billing.holds) + (select count(*) from billing.transfers)
$$;

-- The user's hold's TTL passed; nothing swept it yet.
update billing.holds h set expires_at = now() - interval '1 second' where h.idempotency_key = 'settle-first:hold';
update billing.accounts a set next_hold_expiry = now() - interval '1 second' where a.user_id = (select u from t);
create temp table before as select pg_temp.writes() as n;

set local role service_role;
select is(pg_temp.begin((select u from t), 'settle-first:a'), '{"state": "settle"}'::jsonb,
  'an overdue hold on the paying account: the begin asks to settle first');
reset role;
select is(pg_temp.writes(), (select n from before), 'and writes nothing: no call, no hold, no refusal row');
select is((select h.status from billing.holds h where h.idempotency_key = 'settle-first:hold'), 'active',
  'nor ends the overdue hold itself');
select is(pg_temp.err($$select billing.reserve_hold((select u from t), 1, 'settle-first:road', 600, 'ai')$$),
  'ACCOUNT_FELL_DUE', 'the hold''s road itself refuses an account that fell due, whoever calls it');

set local role service_role;
select billing.settle_spender((select u from t));
reset role;
select is((select h.status from billing.holds h where h.idempotency_key = 'settle-first:hold'), 'expired',
  'settle_spender ends it');
set local role service_role;
select is(pg_temp.begin((select u from t), 'settle-first:a') ->> 'state', 'held', 'and the begin asked again holds');
reset role;

-- A lot past its expiry likewise.
update billing.lots l set expires_at = now() - interval '1 second'
where l.account_id = (select a.id from billing.accounts a where a.user_id = (select u from t));
update billing.accounts a set next_expiry = now() - interval '1 second' where a.user_id = (select u from t);
set local role service_role;
select is(pg_temp.begin((select u from t), 'settle-first:b'), '{"state": "settle"}'::jsonb,
  'a lot past its expiry: settle first');
select billing.settle_spender((select u from t));
select is(pg_temp.begin((select u from t), 'settle-first:b') ->> 'token', 'INSUFFICIENT_CREDITS',
  'settled, the lot expired: the call is refused for want of credits, not paid from them');
reset role;

-- A user's hold outside the gateway settles inline: a lot granted, then past its expiry.
select billing.grant_credits((select u from t), 10, 'adjustment', 'settle-first:grant-2');
update billing.lots l set expires_at = now() - interval '1 second' where l.account_id = (select a.id from billing.accounts a
  where a.user_id = (select u from t)) and l.open;
update billing.accounts a set next_expiry = now() - interval '1 second' where a.user_id = (select u from t);
select is(pg_temp.err($$select billing.reserve_credits((select u from t), 1, 'settle-first:hold-2')$$), 'INSUFFICIENT_CREDITS',
  'a user''s hold settles first, then finds nothing to hold');

-- Nothing held and nothing left to expire, both bounds stale (a spent lot's expiry passed, a
-- captured hold's TTL passed): one settle makes them exact, so the begin asked again holds.
select billing.grant_credits((select u from t), 30, 'adjustment', 'settle-first:grant-3');
select billing.release_hold(null, h.id) from billing.holds h
join billing.accounts a on a.id = h.account_id where a.user_id = (select u from t) and h.status = 'active';
update billing.accounts a set next_expiry = now() - interval '2 seconds', next_hold_expiry = now() - interval '1 second'
where a.user_id = (select u from t);
select is((select a.held from billing.accounts a where a.user_id = (select u from t)), 0::numeric, 'nothing held');
set local role service_role;
select is(pg_temp.begin((select u from t), 'settle-first:e'), '{"state": "settle"}'::jsonb, 'stale bounds: settle first');
select billing.settle_spender((select u from t));
select is(pg_temp.begin((select u from t), 'settle-first:e') ->> 'state', 'held', 'one settle is enough');
reset role;

-- With nothing left held no hold can fall due: the last hold's capture or release makes
-- next_hold_expiry exact (null), so the next begin is not sent to settle for a hold long gone.
create function pg_temp.next_hold_expiry() returns timestamptz language sql as $$
  select a.next_hold_expiry from billing.accounts a where a.user_id = (select u from t)
$$;
select billing.release_hold(null, h.id) from billing.holds h
join billing.accounts a on a.id = h.account_id where a.user_id = (select u from t) and h.status = 'active';
select billing.reserve_credits((select u from t), 1, 'settle-first:h1');
select billing.reserve_credits((select u from t), 1, 'settle-first:h2');
select billing.capture_hold(null, (select h.id from billing.holds h where h.idempotency_key = 'settle-first:h1'), 1);
select isnt(pg_temp.next_hold_expiry(), null, 'one hold captured, one live: its TTL still bounds the account');
select billing.release_hold(null, (select h.id from billing.holds h where h.idempotency_key = 'settle-first:h2'));
select is(pg_temp.next_hold_expiry(), null, 'the last released: nothing can fall due');
select billing.reserve_credits((select u from t), 1, 'settle-first:h3');
select billing.capture_hold(null, (select h.id from billing.holds h where h.idempotency_key = 'settle-first:h3'), 1);
select is(pg_temp.next_hold_expiry(), null, 'the last captured: likewise');

-- A member paid by the school's pool: the pool's overdue hold is the one that fell due.
select billing.grant_org_credits((select org from t), 50, 'adjustment', 'settle-first:org', 'pilot', null);
select billing.invite_member('b5b5b5b5-0000-4000-8000-000000000002', (select org from t), 'member@settle.test', 'member',
  'settle-first-hash', 86400);
select billing.answer_invitation((select m from t), 'member@settle.test', 'settle-first-hash', true);
set local role service_role;
select is(pg_temp.begin((select m from t), 'settle-first:c') ->> 'state', 'held', 'the member''s call holds on the pool');
reset role;
update billing.holds h set expires_at = now() - interval '1 second'
where h.account_id = (select a.id from billing.accounts a where a.org_id = (select org from t) and a.member_id is null);
update billing.accounts a set next_hold_expiry = now() - interval '1 second'
where a.org_id = (select org from t) and a.member_id is null;
set local role service_role;
select is(pg_temp.begin((select m from t), 'settle-first:d'), '{"state": "settle"}'::jsonb,
  'the pool''s overdue hold: settle first, though the member''s own account has nothing due');
select billing.settle_spender((select m from t));
select is(pg_temp.begin((select m from t), 'settle-first:d') ->> 'state', 'held', 'settled with the member: the call holds');
reset role;
select is((select count(*)::int from billing.holds h
           where h.account_id = (select a.id from billing.accounts a where a.org_id = (select org from t) and a.member_id is null)
             and h.status = 'expired'), 1, 'the pool''s overdue hold was ended by the member''s settle');

select * from finish();
rollback;
