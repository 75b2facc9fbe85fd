-- Promo, gift and sponsor codes: redemption limits under the code's lock, one per account, the
-- same answer again, the failed-guess limits per user and per address, the audit, a sponsor
-- code's escrow and who may redeem it, and what the API roles may read or call.
begin;
select plan(34);
\ir helpers.psql
create temp table codes_before as select billing.codes_activity(now() - interval '1 day', now() + interval '1 day') as v;

insert into auth.users (id, email, email_confirmed_at) values
  ('cccccccc-0000-4000-8000-000000000001', 'admin@codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000002', 'ada@codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000003', 'bo@codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000004', 'owner@codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000005', 'cy@codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000006', 'Owner@Codes.test', now()),
  ('cccccccc-0000-4000-8000-000000000007', 'dee@codes.test', now());

create function pg_temp.h(p text) returns text language sql as $$ select encode(sha256(convert_to(p, 'UTF8')), 'hex') $$;
create function pg_temp.redeem(p_user uuid, p_code text, p_address text default null) returns jsonb language sql as $$
  select billing.redeem_code(p_user, pg_temp.h(p_code), p_address)
$$;

-- ============================================================ promo codes

select billing.create_promo_code('cccccccc-0000-4000-8000-000000000001', pg_temp.h('promo-a'),
  '{"credits": "10", "budget": "15", "lot_expires_after_days": 30}', 'k-a');
select is(billing.create_promo_code('cccccccc-0000-4000-8000-000000000001', pg_temp.h('promo-again'),
  '{"credits": "10", "budget": "15", "lot_expires_after_days": 30}', 'k-a') ->> 'id',
  (select id::text from billing.codes where code_hash = pg_temp.h('promo-a')), 'the same creation key answers the code it made');
select is(pg_temp.err($$select billing.create_promo_code('cccccccc-0000-4000-8000-000000000001', pg_temp.h('promo-other'),
  '{"credits": "99", "max_redemptions": 1}', 'k-a')$$), 'IDEMPOTENCY_KEY_REUSED', 'and refuses it for another code');

select is(pg_temp.redeem('cccccccc-0000-4000-8000-000000000002', 'promo-a') ->> 'credits', '10',
  'a redemption grants the code''s credits');
select ok((select l.expires_at between now() + interval '29 days' and now() + interval '31 days' and l.category = 'promotional'
           from billing.lots l join billing.accounts a on a.id = l.account_id
           where a.user_id = 'cccccccc-0000-4000-8000-000000000002'),
  'as a promotional lot expiring 30 days after the redemption');
select is(pg_temp.redeem('cccccccc-0000-4000-8000-000000000002', 'promo-a'),
  (select r.answer from billing.code_redemptions r where r.user_id = 'cccccccc-0000-4000-8000-000000000002'),
  'redeeming again answers the first redemption');
select is((select redeemed_count from billing.codes where code_hash = pg_temp.h('promo-a')), 1, 'and counts once');
select is(pg_temp.err($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000003', 'promo-a')$$), 'CODE_EXHAUSTED',
  'a second account would go over the budget (10 + 10 > 15)');
select throws_ok($$update billing.codes set redeemed_credits = 20 where code_hash = pg_temp.h('promo-a')$$, '23514', null,
  'the budget is a constraint too');

select is(pg_temp.err($$select billing.create_promo_code('cccccccc-0000-4000-8000-000000000001', pg_temp.h('promo-late'),
  jsonb_build_object('credits', '5', 'budget', '50', 'valid_until', now() + interval '10 days',
                     'lot_expires_at', now() + interval '5 days'), 'k-late')$$), 'INVALID_CODE',
  'a promo code whose credits would expire before it can be redeemed is refused');
select billing.create_promo_code('cccccccc-0000-4000-8000-000000000001', pg_temp.h('promo-other'),
  '{"credits": "99", "max_redemptions": 1}', 'k-other');
select billing.disable_promo_code((select id from billing.codes where code_hash = pg_temp.h('promo-other')));
select is(pg_temp.detail($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000003', 'promo-other')$$) ->> 'reason',
  'disabled', 'a disabled code redeems nothing');
select is(pg_temp.err($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000003', 'no-such-code')$$), 'CODE_NOT_FOUND',
  'an unknown code is not found');

-- ============================================================ failed guesses

-- Refusals roll back inside redeem_code; run_code_request records them (as here).
insert into billing.code_attempts (user_id, hash_prefix, address_hash, outcome)
select 'cccccccc-0000-4000-8000-000000000003', 'aaaaaaaaaaaa', 'addr-1', 'CODE_NOT_FOUND' from generate_series(1, 10);
select is(pg_temp.detail($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000003', 'promo-a')$$) ->> 'scope', 'user',
  'ten unknown codes within the hour stop the user''s attempts');
insert into billing.code_attempts (user_id, hash_prefix, address_hash, outcome)
select gen_random_uuid(), 'aaaaaaaaaaaa', 'addr-2', 'CODE_NOT_FOUND' from generate_series(1, 30);
select is(pg_temp.detail($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000002', 'promo-a', 'addr-2')$$) ->> 'scope',
  'address', 'thirty from one address stop every account behind it');
select is(pg_temp.redeem('cccccccc-0000-4000-8000-000000000002', 'promo-a', 'addr-3') ->> 'credits', '10',
  'another address is not limited');

select is((billing.run_code_request('cccccccc-0000-4000-8000-000000000002', 'credits.codes.redeem', 'guess-1', 'h', 'r',
  jsonb_build_object('code_hash', pg_temp.h('nope'), 'address_hash', 'addr-9'), 200)).refusal_token, 'CODE_NOT_FOUND',
  'a money request answers a refused redemption');
select is((select outcome || ':' || hash_prefix from billing.code_attempts where address_hash = 'addr-9'),
  'CODE_NOT_FOUND:' || left(pg_temp.h('nope'), 12), 'and audits it with a hash prefix, after the rollback');

insert into billing.code_attempts (user_id, hash_prefix, outcome, created_at)
values ('cccccccc-0000-4000-8000-000000000003', 'bbbbbbbbbbbb', 'CODE_NOT_FOUND', now() - interval '181 days');
select billing.delete_old_code_attempts(100000);
select is((select count(*)::int from billing.code_attempts where hash_prefix = 'bbbbbbbbbbbb'), 0,
  'the audit is kept 180 days');

-- ============================================================ sponsor codes

create temp table o as select (billing.create_org('cccccccc-0000-4000-8000-000000000004', 'Codes School', 'allowance', true)
  ->> 'id')::uuid as id;
select billing.grant_org_credits((select id from o), 100, 'promo_grant', 'codes-org-grant', 'test', null);
select billing.set_member_role((select id from o), 'cccccccc-0000-4000-8000-000000000002', 'member');
select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o), pg_temp.h('sponsor-ada'),
  '{"credits": "40", "email": "ADA@codes.test"}', 'sp-1');
select is((billing.balance_of(billing.org_wallet_id((select id from o)))).balance, 60::numeric,
  'issuing a sponsor code moves its credits out of the wallet');
select is(pg_temp.err($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000005', 'sponsor-ada')$$), 'CODE_NOT_FOUND',
  'another student finds no such code');
select is(pg_temp.redeem('cccccccc-0000-4000-8000-000000000002', 'sponsor-ada') ->> 'credits', '40',
  'the named student (by email) redeems it');
select is((select count(*)::int from billing.lots l join billing.accounts a on a.id = l.account_id
           where a.user_id = 'cccccccc-0000-4000-8000-000000000002' and l.moved_from is not null), 1,
  'the credits arrive as a moved lot, keeping their provenance');
select is(pg_temp.err($$select billing.revoke_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o),
  (select id from billing.codes where code_hash = pg_temp.h('sponsor-ada')))$$), 'CODE_NOT_REDEEMABLE',
  'a redeemed sponsor code cannot be revoked');

-- Organisation credits go to its members only, never to the issuer's own second account.
select is(pg_temp.err($$select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o),
  pg_temp.h('sponsor-cy'), '{"credits": "5", "user_id": "cccccccc-0000-4000-8000-000000000005"}', 'sp-2')$$),
  'MEMBER_NOT_FOUND', 'a sponsor code cannot name someone who is not a member');
select is(pg_temp.err($$select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o),
  pg_temp.h('sponsor-cy-mail'), '{"credits": "5", "email": "cy@codes.test"}', 'sp-3')$$),
  'MEMBER_NOT_FOUND', 'nor an address neither a member''s nor invited');
select billing.set_member_role((select id from o), 'cccccccc-0000-4000-8000-000000000006', 'member');
select is(pg_temp.err($$select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o),
  pg_temp.h('sponsor-self'), '{"credits": "5", "user_id": "cccccccc-0000-4000-8000-000000000006"}', 'sp-4')$$),
  'ORG_FORBIDDEN', 'nor the issuer under a second account with their address (case aside)');
select billing.invite_member('cccccccc-0000-4000-8000-000000000004', (select id from o), 'dee@codes.test', 'member',
  'hash-dee', 86400);
select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o), pg_temp.h('sponsor-dee'),
  '{"credits": "5", "email": "dee@codes.test"}', 'sp-5');
select is(pg_temp.err($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000007', 'sponsor-dee')$$),
  'CODE_NOT_REDEEMABLE', 'an invitee may be named, but redeems only once a member');
select billing.answer_invitation('cccccccc-0000-4000-8000-000000000007', 'dee@codes.test', 'hash-dee', true);
select billing.issue_sponsor_code('cccccccc-0000-4000-8000-000000000004', (select id from o), pg_temp.h('sponsor-dee-2'),
  '{"credits": "7", "user_id": "cccccccc-0000-4000-8000-000000000007"}', 'sp-6');
select is((billing.balance_of(billing.org_wallet_id((select id from o)))).balance, 48::numeric, 'two codes set aside');
select billing.remove_member('cccccccc-0000-4000-8000-000000000004', (select id from o), 'cccccccc-0000-4000-8000-000000000007');
select is((billing.balance_of(billing.org_wallet_id((select id from o)))).balance, 60::numeric,
  'removing a member gives back the unredeemed codes naming them');
select is(pg_temp.err($$select pg_temp.redeem('cccccccc-0000-4000-8000-000000000007', 'sponsor-dee-2')$$),
  'CODE_NOT_REDEEMABLE', 'and a removed member redeems nothing');
select is(billing.check_lots() -> 'accounts', '[]'::jsonb, 'lots and balances agree, escrow accounts included');

-- ============================================================ as authenticated

set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "cccccccc-0000-4000-8000-000000000002", "role": "authenticated"}', true);
select throws_ok($$select * from billing.codes$$, '42501', null, 'a student cannot read codes (not even hashes)');
select throws_ok($$select billing.create_promo_code('cccccccc-0000-4000-8000-000000000002', repeat('a', 64), '{"credits": "1", "budget": "1"}', 'x')$$,
  '42501', null, 'nor create a promo code');
reset role;

-- ============================================================ reports

-- What this file's promo redemptions add to today's codes activity (other tests' rows stay as they were).
select is(
  (select jsonb_build_array((n.v ->> 'promo_redemptions')::int - (b.v ->> 'promo_redemptions')::int,
     (n.v ->> 'promo_credits_granted')::numeric - (b.v ->> 'promo_credits_granted')::numeric)
   from codes_before b, (select billing.codes_activity(now() - interval '1 day', now() + interval '1 day') as v) n),
  (select jsonb_build_array(count(*), sum(r.credits)) from billing.code_redemptions r join billing.codes c on c.id = r.code_id
   where c.kind = 'promo' and r.user_id::text like 'cccccccc-%'),
  'codes activity counts the promo redemptions made and the credits they granted');
-- A series reads the codes once for all its periods: each day counts as it would alone.
select ok((select bool_and(x -> 'codes' = billing.revenue_metrics((x ->> 'from')::timestamptz, (x ->> 'to')::timestamptz) -> 'codes')
                  and count(*) = 10
           from jsonb_array_elements(billing.metrics_series((now() - interval '8 days')::date, (now() + interval '2 days')::date,
             'day')) x),
  'each day of a daily series counts codes as that day alone does');

select * from finish();
rollback;
