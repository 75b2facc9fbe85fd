-- Values the API takes never make a SQL function fail: the ledger keys a request's
-- Idempotency-Key (1–255 characters) derives always fit the ledger's 300, keeping their old form
-- where it fitted; and turning auto-recharge off with a package that does not exist is a
-- refusal, not a foreign-key error.
begin;
select plan(10);
\ir helpers.psql

-- as the ledger
select is(billing.scoped_key('http:u:credits.usage:', 'k-1'), 'http:u:credits.usage:k-1',
  'a derived key that fits is the scope and the key, as before');
select is(length(billing.scoped_key(repeat('s', 64), repeat('k', 255))), 64 + 7 + 64,
  'one that would not fit carries the key''s SHA-256');
select is(billing.scoped_key('s:', repeat('k', 299)), 's:sha256:' || encode(sha256(convert_to(repeat('k', 299), 'UTF8')), 'hex'),
  'the digest is the SHA-256 of the key alone');
select isnt(billing.scoped_key(repeat('s', 64), repeat('k', 254) || 'a'), billing.scoped_key(repeat('s', 64), repeat('k', 254) || 'b'),
  'keys that differ only in their last character stay apart');

insert into auth.users (id) values ('dddddddd-0000-4000-8000-000000000066');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000066', 10, 'promo_grant', 'input-edges-grant');
create temp table r as select * from billing.run_money_request('dddddddd-0000-4000-8000-000000000066', 'credits.usage',
  repeat('~', 255), 'h', 'req-66', '{"model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1}', 201);
select is((select status from r), 201, 'a usage charge under a 255-character key is made, not refused');
select is((select t.idempotency_key from billing.transfers t where t.id = ((select data from r) ->> 'transfer_id')::bigint),
  billing.scoped_key('http:dddddddd-0000-4000-8000-000000000066:credits.usage:', repeat('~', 255)),
  'its transfer''s key is the derived one');
select ok((select t.metadata ->> 'request_hash' = 'h' and t.metadata ->> 'request_id' = 'req-66'
            and not exists (select 1 from billing.idempotency_keys k where k.key = repeat('~', 255))
           from billing.transfers t where t.id = ((select data from r) ->> 'transfer_id')::bigint),
  'the transfer is the request''s record: its hash and id, nothing stored beside it');

select is(pg_temp.err($$select billing.set_auto_recharge('dddddddd-0000-4000-8000-000000000066', false, 'no-such-package',
    null, null, null)$$), 'PACKAGE_NOT_FOUND', 'turning auto-recharge off with an unknown package is refused');
select is((select count(*)::int from billing.auto_recharge s where s.user_id = 'dddddddd-0000-4000-8000-000000000066'), 0,
  'and stores nothing');
select is(pg_temp.err($$select billing.set_auto_recharge('dddddddd-0000-4000-8000-000000000066', false, 'mini', null, null, null)$$),
  'no error', 'an existing package is taken while it is off');

select * from finish();
rollback;
