-- The credit ledger: constraints, immutability, RLS, every function's happy and error paths,
-- holds and expiry, debt, and the invariants.
begin;
select plan(65);
\ir helpers.psql

-- Two students.
insert into auth.users (id) values
  ('aaaaaaaa-0000-4000-8000-000000000001'), ('bbbbbbbb-0000-4000-8000-000000000002');

-- ============================================================ pricing and grants

select is((select amount from billing.price_usage('gpt-4o', 1000, 500)), 50.0::numeric,
  'gpt-4o: 1,000 input + 500 output tokens cost exactly 50 credits');
select is((select amount from billing.price_usage('gpt-4o-mini', 1000000, 0)), 600.0::numeric,
  'gpt-4o-mini: a million input tokens at $0.15 × 4 cost 600 credits');
select is(pg_temp.err($$select billing.price_usage('no-such-model', 1, 1)$$), 'UNKNOWN_MODEL',
  'an unknown model is refused with UNKNOWN_MODEL');
select is(pg_temp.err($$select billing.price_usage('gpt-4o', -1, 1)$$), 'INVALID_TOKENS',
  'negative token counts are refused');

select is((billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 100, 'purchase', 'p-1')).balance, 100.0::numeric,
  'a purchase grant credits the user');
select ok((billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 100, 'purchase', 'p-1')).replayed,
  'the same grant key replays instead of granting again');
select is((select count(*) from billing.transfers where idempotency_key = 'p-1')::int, 1,
  'a replayed grant leaves exactly one transfer');
select is(pg_temp.err($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 101, 'purchase', 'p-1')$$),
  'IDEMPOTENCY_KEY_REUSED', 'the same key with another amount is refused');
select is(pg_temp.err($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 5, 'usage', 'p-x')$$),
  'INVALID_KIND', 'grant_credits refuses spending kinds');
select is(pg_temp.err($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 0, 'purchase', 'p-0')$$),
  'INVALID_AMOUNT', 'a zero amount is refused');
select is(pg_temp.err($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', -5, 'purchase', 'p-n')$$),
  'INVALID_AMOUNT', 'a negative amount is refused');
select is(pg_temp.err($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 0.0000000000000000001, 'purchase', 'p-f')$$),
  'INVALID_AMOUNT', 'an amount with 19 fractional digits is refused');
select is((billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 0.000000000000000001, 'promo_grant', 'p-tiny')).amount,
  0.000000000000000001::numeric, 'an amount with exactly 18 fractional digits is kept exactly');

-- ============================================================ debits and usage

select is((billing.charge_usage('aaaaaaaa-0000-4000-8000-000000000001', 'gpt-4o', 1000, 500, 'u-1')).charged, 50.0::numeric,
  'charge_usage debits the priced amount');
select is((select r.version from billing.transfers t join billing.rate_cards r on r.id = t.rate_card_id
           where t.idempotency_key = 'u-1'),
  (select c.version from billing.rate_cards c where c.model = 'gpt-4o' order by c.effective_from desc, c.version desc limit 1),
  'a usage transfer records the rate-card version it used');
select is((pg_temp.spend('aaaaaaaa-0000-4000-8000-000000000001', 10, 'd-1')).balance, 40.000000000000000001::numeric,
  'a usage charge spends exactly its priced amount');
select is(pg_temp.err($$select pg_temp.spend('aaaaaaaa-0000-4000-8000-000000000001', 41, 'd-2')$$),
  'INSUFFICIENT_CREDITS', 'a charge larger than the balance is refused');
select is(pg_temp.err($$select pg_temp.spend('bbbbbbbb-0000-4000-8000-000000000002', 1, 'd-3')$$),
  'INSUFFICIENT_CREDITS', 'a user with no account cannot spend');

-- ============================================================ holds

select is((billing.reserve_credits('aaaaaaaa-0000-4000-8000-000000000001', 30, 'h-1')).available, 10.000000000000000001::numeric,
  'a hold reduces available but not the balance');
select is(pg_temp.err($$select pg_temp.spend('aaaaaaaa-0000-4000-8000-000000000001', 11, 'd-4')$$),
  'INSUFFICIENT_CREDITS', 'held credits cannot be spent elsewhere');
select is(pg_temp.err($$select billing.reserve_credits('aaaaaaaa-0000-4000-8000-000000000001', 5, 'h-bad', 0)$$),
  'INVALID_TTL', 'a hold needs a positive TTL');

select is(
  (select (billing.capture_hold('aaaaaaaa-0000-4000-8000-000000000001', h.id, 12)).captured from billing.holds h where h.idempotency_key = 'h-1'),
  12.0::numeric, 'capture takes part of a hold');
select results_eq(
  $$select status, captured_amount, (select held from billing.accounts where user_id = 'aaaaaaaa-0000-4000-8000-000000000001')
    from billing.holds where idempotency_key = 'h-1'$$,
  $$values ('captured'::text, 12.0::numeric(38,18), 0.0::numeric(38,18))$$,
  'the rest of a captured hold is released');
select ok((select (billing.capture_hold('aaaaaaaa-0000-4000-8000-000000000001', h.id)).replayed from billing.holds h where h.idempotency_key = 'h-1'),
  'capturing a captured hold again replays the result');
select is((select count(*) from billing.transfers t join billing.holds h on h.id = t.hold_id where h.idempotency_key = 'h-1')::int, 1, 'a hold is captured once');
select is(pg_temp.err($$select billing.capture_hold('bbbbbbbb-0000-4000-8000-000000000002', h.id) from billing.holds h where h.idempotency_key = 'h-1'$$),
  'HOLD_NOT_FOUND', 'another user''s hold is not found');

do $$ begin perform billing.reserve_credits('aaaaaaaa-0000-4000-8000-000000000001', 5, 'h-2'); end $$;
select is((select (billing.release_hold('aaaaaaaa-0000-4000-8000-000000000001', h.id)).status from billing.holds h where h.idempotency_key = 'h-2'),
  'released', 'release frees a hold');
select is(pg_temp.err($$select billing.capture_hold(null, h.id) from billing.holds h where h.idempotency_key = 'h-2'$$),
  'HOLD_RELEASED', 'a released hold cannot be captured');
select is(pg_temp.err($$select billing.capture_hold(null, h.id, 50) from billing.holds h where h.idempotency_key = 'h-1'$$),
  'HOLD_ALREADY_CAPTURED', 'a captured hold cannot be captured again with another amount');

do $$ begin perform billing.reserve_credits('aaaaaaaa-0000-4000-8000-000000000001', 7, 'h-3', 60); end $$;
-- The TTL passes (and the account's next_hold_expiry with it, as placing it so would set it).
with h as (update billing.holds set expires_at = now() - interval '1 second' where idempotency_key = 'h-3'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, h.expires_at) from h where a.id = h.account_id;
select is((billing.get_balance('aaaaaaaa-0000-4000-8000-000000000001')).held, 0.0::numeric,
  'a hold past its TTL no longer counts, even before the sweep');
select is(pg_temp.err($$select billing.capture_hold(null, h.id) from billing.holds h where h.idempotency_key = 'h-3'$$),
  'HOLD_EXPIRED', 'an expired hold cannot be captured');
select ok(billing.release_expired_holds(1000000) >= 1, 'the pg_cron sweep releases the expired hold (and any other overdue one)');
select is(billing.release_expired_holds(1000000), 0, 'running the sweep again changes nothing');
select results_eq(
  $$select h.status, a.held from billing.holds h join billing.accounts a on a.id = h.account_id where h.idempotency_key = 'h-3'$$,
  $$values ('expired'::text, 0.0::numeric(38,18))$$, 'the swept hold is expired and the account holds nothing');

-- ============================================================ debt

select is((billing.reverse_credits('aaaaaaaa-0000-4000-8000-000000000001', 100, 'refund_reversal', 'r-1', 'ch_1')).balance,
  -71.999999999999999999::numeric, 'a refund reversal of spent credits creates debt');
select is(pg_temp.err($$select pg_temp.spend('aaaaaaaa-0000-4000-8000-000000000001', 1, 'd-5')$$),
  'INSUFFICIENT_CREDITS', 'every charge is refused while in debt');
select is(pg_temp.err($$select billing.reserve_credits('aaaaaaaa-0000-4000-8000-000000000001', 1, 'h-4')$$),
  'INSUFFICIENT_CREDITS', 'no hold is granted while in debt');
select is((billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 100, 'purchase', 'p-2')).balance,
  28.000000000000000001::numeric, 'the next purchase pays the debt first');
select is(pg_temp.err($$select billing.reverse_credits('aaaaaaaa-0000-4000-8000-000000000001', 1, 'purchase', 'r-2')$$),
  'INVALID_KIND', 'reverse_credits refuses crediting kinds');

-- ============================================================ invariants

select is((select sum(balance) from billing.accounts where code is null) + (select sum(balance) from billing.platform_balances),
  0.0::numeric, 'tracked balances and the platform balances derived from the transfers sum to zero');
select is((select count(*) from billing.entries e join billing.accounts a on a.id = e.account_id where a.code is not null)::int,
  0, 'platform accounts get no entries');
select is((select count(*) from billing.accounts a
           left join (select account_id, sum(amount) as total from billing.entries group by account_id) s on s.account_id = a.id
           where a.user_id is not null and a.balance <> coalesce(s.total, 0))::int,
  0, 'every user balance equals the sum of its entries');
select is((select count(*) from billing.accounts a
           join (select distinct on (account_id) account_id, balance_after from billing.entries
                 where balance_after is not null order by account_id, id desc) l on l.account_id = a.id
           where a.balance <> l.balance_after)::int,
  0, 'every user balance equals its last entry''s balance_after');
select is((select count(*) from billing.transfers t
           cross join lateral (values (t.from_account_id, -t.amount), (t.to_account_id, t.amount)) x(account_id, amount)
           join billing.accounts a on a.id = x.account_id and a.code is null
           where (select array_agg(e.amount) from billing.entries e where e.transfer_id = t.id and e.account_id = x.account_id)
                 is distinct from array[x.amount])::int,
  0, 'every tracked side of every transfer has exactly one entry, of the transfer''s amount');
select is(pg_temp.err($$delete from billing.accounts where code = 'usage_revenue'$$), 'LEDGER_IMMUTABLE',
  'an account is never deleted (transfers name accounts without foreign keys)');

-- ============================================================ immutability, for every role

select is(pg_temp.err($$update billing.entries set amount = amount * 2$$), 'LEDGER_IMMUTABLE', 'the owner cannot update entries');
select is(pg_temp.err($$delete from billing.entries$$), 'LEDGER_IMMUTABLE', 'the owner cannot delete entries');
select is(pg_temp.err($$truncate billing.entries cascade$$), 'LEDGER_IMMUTABLE', 'the owner cannot truncate entries');
select is(pg_temp.err($$update billing.transfers set amount = 1$$), 'LEDGER_IMMUTABLE', 'the owner cannot update transfers');
select is(pg_temp.err($$delete from billing.rate_cards$$), 'LEDGER_IMMUTABLE', 'rate cards are never edited, only versioned');

-- as service_role
set local role service_role;
select throws_ok($$update billing.entries set amount = 0$$, '42501', null, 'service_role cannot update entries');
select throws_ok($$insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key) values ('usage', 1, 2, 1, 'x')$$,
  '42501', null, 'service_role cannot insert transfers directly');
select throws_ok($$update billing.accounts set balance = 1e9$$, '42501', null, 'service_role cannot set a balance directly');
select lives_ok($$select billing.get_balance('aaaaaaaa-0000-4000-8000-000000000001')$$, 'service_role may call the ledger functions');
reset role;

-- What the owner sees of student A, to compare with what A sees through RLS.
create temp table expected_a as
  select (select count(*) from billing.entries e join billing.accounts a on a.id = e.account_id
          where a.user_id = 'aaaaaaaa-0000-4000-8000-000000000001')::int as entries,
         (select count(*) from billing.holds h join billing.accounts a on a.id = h.account_id
          where a.user_id = 'aaaaaaaa-0000-4000-8000-000000000001')::int as holds;
grant select on expected_a to authenticated;

-- as authenticated (student A)
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-4000-8000-000000000001", "role": "authenticated"}';
set local role authenticated;
select is((select count(*) from billing_api.balance)::int, 1, 'a student sees exactly one balance: their own');
select is((select balance from billing_api.balance), 28.000000000000000001::numeric(38,18), 'the balance view shows their balance');
select is((select count(*) from billing_api.ledger_entries)::int, (select entries from expected_a), 'a student sees all of their own ledger entries');
select is((select count(*) from billing_api.holds)::int, (select holds from expected_a), 'a student sees their own holds');
select throws_ok($$insert into billing.entries (transfer_id, account_id, amount) values (1, 1, 1)$$, '42501', null,
  'a student cannot insert ledger entries');
select throws_ok($$delete from billing.holds$$, '42501', null, 'a student cannot delete holds');
select throws_ok($$select billing.grant_credits(auth.uid(), 1000, 'adjustment', 'self-grant')$$, '42501', null,
  'a student cannot call grant_credits');
reset role;

-- as authenticated (student B, who has no account)
set local request.jwt.claims = '{"sub": "bbbbbbbb-0000-4000-8000-000000000002", "role": "authenticated"}';
set local role authenticated;
select is((select count(*) from billing_api.ledger_entries)::int, 0, 'another student sees none of A''s entries');
select is((select count(*) from billing.accounts)::int, 0, 'another student sees no account rows, not even platform ones');
reset role;

-- as anon
set local role anon;
select throws_ok($$select * from billing_api.balance$$, '42501', null, 'anon cannot read balances');
select throws_ok($$select billing.charge_usage('aaaaaaaa-0000-4000-8000-000000000001', 'gpt-4o', 1, 1, 'anon')$$, '42501', null,
  'anon cannot call charge_usage');
reset role;

select * from finish();
rollback;
