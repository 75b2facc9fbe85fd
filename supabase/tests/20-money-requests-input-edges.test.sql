-- Values the API takes never make a SQL function fail: the ledger keys a request's
-- Idempotency-Key (1–255 characters) derives always fit the ledger's 300 (the key itself where
-- it fits), under every scope, and never two request keys to one; and turning auto-recharge off
-- with a package that does not exist is a refusal, not a foreign-key error.
begin;
select plan(12);
\ir helpers.psql

-- as the ledger
select is(billing.scoped_key('http:u:credits.usage:', 'k-1'), 'http:u:credits.usage:k-1',
  'a derived key that fits is the scope and the key');
select is(length(billing.scoped_key(repeat('s', 64), repeat('k', 255))), 64 + 7 + 64,
  'one that would not fit carries the key''s SHA-256');
select is(billing.scoped_key('s:', repeat('k', 299)), 's:sha256:' || encode(sha256(convert_to(repeat('k', 299), 'UTF8')), 'hex'),
  'the digest is the SHA-256 of the key alone');
select isnt(billing.scoped_key(repeat('s', 64), repeat('k', 254) || 'a'), billing.scoped_key(repeat('s', 64), repeat('k', 254) || 'b'),
  'keys that differ only in their last character stay apart');

insert into auth.users (id) values ('dddddddd-0000-4000-8000-000000000066');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000066', 10, 'promo_grant', 'input-edges-grant');
create temp table r as select * from billing.run_usage_report('dddddddd-0000-4000-8000-000000000066', 'credits.usage',
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

-- ============================================================ derived keys

-- Every scope the API derives keys under (usage, holds, batch events, allowances), keys of every
-- length up to 255 around each boundary, with and without a sha256: look-alike prefix.
create temp table keys as
  select s.scope, k.key, billing.scoped_key(s.scope, k.key) as derived
  from (values ('http:a2a2a2a2-0000-4000-8000-00000000000a:credits.usage:'),
               ('http:a2a2a2a2-0000-4000-8000-00000000000a:credits.holds:'),
               ('usage-event:a2a2a2a2-0000-4000-8000-00000000000a:'),
               ('allowance:a2a2a2a2-0000-4000-8000-00000000000a:')) s(scope)
  cross join lateral (
    select repeat('k', n) as key from generate_series(1, 255) n
    union all select 'sha256:' || encode(sha256(convert_to(repeat('k', n), 'UTF8')), 'hex') from generate_series(1, 255) n
    union all select 'SHA256:' || encode(sha256(convert_to(repeat('k', n), 'UTF8')), 'hex') from generate_series(1, 255) n
    union all select 'sha256:' || repeat('k', n) from generate_series(1, 248) n) k;
select is((select count(*)::integer from keys where length(derived) > 300), 0, 'every derived key fits in 300 characters');
select is((select count(*)::integer from (select scope, derived from keys group by scope, derived having count(*) > 1) d), 0,
  'no two request keys derive the same ledger key under one scope');

select * from finish();
rollback;
