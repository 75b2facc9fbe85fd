-- A money route's statement (here POST /credits/usage's, billing.run_usage_report; every money
-- route's shares its frame, 78-money-actions.sql): it raises no refusal but answers each
-- as a row (its statement carries the request's values, one round trip, _shared/adapters/sql-literal.ts inline, and
-- Postgres logs the text of a statement that fails): a refusal before the key is claimed stores
-- nothing; a reused key leaves the first answer as it was. A route that calls Stripe claims its
-- key, then stores its answer in the same format (claim_idempotency_key, complete_idempotency_key).
begin;
select plan(22);
\ir helpers.psql

create function pg_temp.usage(p_user uuid, p_key text, p_tokens integer, p_admin boolean default false)
returns billing.request_answer language sql as $$
  select * from billing.run_usage_report(p_user, 'credits.usage', p_key, 'hash-' || p_tokens, 'req-' || p_key,
    jsonb_build_object('model', 'gpt-4o', 'input_tokens', p_tokens, 'output_tokens', 0), 201, p_admin)
$$;

insert into auth.users (id) values ('dddddddd-0000-4000-8000-000000000066'), ('dddddddd-0000-4000-8000-000000000067');
update auth.users set banned_until = now() + interval '1 day' where id = 'dddddddd-0000-4000-8000-000000000067';
select billing.grant_credits('dddddddd-0000-4000-8000-000000000066', 10, 'promo_grant', 'refusals-grant');

select is(pg_temp.err($$select pg_temp.usage('dddddddd-0000-4000-8000-000000000067', 'k-banned', 100)$$), 'no error',
  'a banned user''s request raises nothing');
select is((select refusal_token || ' ' || coalesce(status::text, 'no status') || ' ' || request_id
           from pg_temp.usage('dddddddd-0000-4000-8000-000000000067', 'k-banned', 100)),
  'USER_NOT_ACTIVE no status req-k-banned', 'it is answered USER_NOT_ACTIVE, with this request''s id');
select is((select count(*)::int from billing.idempotency_keys where user_id = 'dddddddd-0000-4000-8000-000000000067'), 0,
  'and nothing is stored');
select is((select refusal_token from pg_temp.usage('dddddddd-0000-4000-8000-000000000066', 'k-admin', 100, true)),
  'ADMIN_REQUIRED', 'a route for admins answers ADMIN_REQUIRED to a user who is not one');

select is((select status from pg_temp.usage('dddddddd-0000-4000-8000-000000000066', 'k-1', 100)), 201,
  'a usage request is charged');
select is(pg_temp.err($$select pg_temp.usage('dddddddd-0000-4000-8000-000000000066', 'k-1', 999)$$), 'no error',
  'the same key for another request raises nothing');
select is((select refusal_token || ' ' || replayed::text from pg_temp.usage('dddddddd-0000-4000-8000-000000000066', 'k-1', 999)),
  'IDEMPOTENCY_KEY_REUSED false', 'it is answered IDEMPOTENCY_KEY_REUSED');
select is((select status || ' ' || replayed::text from pg_temp.usage('dddddddd-0000-4000-8000-000000000066', 'k-1', 100)),
  '201 true', 'and the first answer is still the one replayed');

-- Each route group has its own door, which runs only its own actions (a caller's mistake, not a refusal).
select is(pg_temp.err($$select billing.run_money_request('dddddddd-0000-4000-8000-000000000066', 'credits.usage', 'k-door',
  'h', 'req-door', '{"model": "gpt-4o", "input_tokens": 1, "output_tokens": 0}', 201)$$),
  'billing.run_money_request does not run credits.usage', 'the holds door does not charge usage');
select is(pg_temp.err($$select billing.run_usage_report('dddddddd-0000-4000-8000-000000000066', 'credits.holds', 'k-door',
  'h', 'req-door', '{"amount": "1"}', 201)$$),
  'billing.run_usage_report does not run credits.holds', 'nor the usage door place a hold');

-- A route with an external call: claimed, in flight, answered, replayed.
create function pg_temp.claim(p_hash text) returns billing.request_answer language sql as $$
  select * from billing.claim_idempotency_key('dddddddd-0000-4000-8000-000000000066', 'checkout.refunds', 'k-ext',
    p_hash, 'req-ext-' || p_hash)
$$;
select is((select row(c.*)::text from pg_temp.claim('h1') c), row(null, null, null, null, null, null, null)::text,
  'a first claim answers null: the key is this request''s');
select is(pg_temp.err($$select pg_temp.claim('h1')$$), 'IDEMPOTENCY_KEY_IN_USE', 'the same request meanwhile is told to retry');
select is(pg_temp.err($$select pg_temp.claim('h2')$$), 'IDEMPOTENCY_KEY_REUSED', 'another request under the key is refused');
select is((select refusal_token || ' ' || (refusal_fields ->> 'message') || ' ' || request_id || ' ' || replayed::text
           from billing.complete_idempotency_key('dddddddd-0000-4000-8000-000000000066', 'checkout.refunds', 'k-ext',
             'req-ext-h1', null, null, 'PURCHASE_NOT_REFUNDABLE', '{"message": "The purchase is pending."}')),
  'PURCHASE_NOT_REFUNDABLE The purchase is pending. req-ext-h1 false', 'its refusal is stored with the first request''s id');
select is((select refusal_token || ' ' || (refusal_fields ->> 'message') || ' ' || request_id || ' ' || replayed::text
           from pg_temp.claim('h1')),
  'PURCHASE_NOT_REFUNDABLE The purchase is pending. req-ext-h1 true', 'the same request again gets the stored refusal');
select is(pg_temp.err($$select pg_temp.claim('h2')$$), 'IDEMPOTENCY_KEY_REUSED', 'another request still is refused');
select is((select responded_at from pg_temp.claim('h1')),
  (select responded_at from billing.idempotency_keys where key = 'k-ext'), 'a replay carries the first answer''s time');

-- A claim stalled past 60 s (its instance crashed, or is still waiting on Stripe): only the same
-- request may take it over, and then the first can no longer store or forget the key.
create function pg_temp.stale(p_hash text, p_request text) returns billing.request_answer language sql as $$
  select * from billing.claim_idempotency_key('dddddddd-0000-4000-8000-000000000066', 'checkout.refunds', 'k-stale',
    p_hash, p_request)
$$;
select pg_temp.stale('h3', 'req-a');
update billing.idempotency_keys set locked_at = now() - interval '61 seconds' where key = 'k-stale';
select is(pg_temp.err($$select pg_temp.stale('h4', 'req-b')$$), 'IDEMPOTENCY_KEY_REUSED',
  'another request never takes over a stalled claim');
select is((select request_id from pg_temp.stale('h3', 'req-c')), null, 'the same request takes it over');
select is((select count(*)::int from billing.complete_idempotency_key('dddddddd-0000-4000-8000-000000000066',
  'checkout.refunds', 'k-stale', 'req-a', 201, '{"id": "a"}', null, null)), 0,
  'the stalled first request cannot store its answer over the retry''s claim');
select billing.abandon_idempotency_key('dddddddd-0000-4000-8000-000000000066', 'checkout.refunds', 'k-stale', 'req-a');
select is((select request_id from billing.idempotency_keys where key = 'k-stale'), 'req-c', 'nor forget the key');
select is((select status::text || ' ' || request_id from billing.complete_idempotency_key('dddddddd-0000-4000-8000-000000000066',
  'checkout.refunds', 'k-stale', 'req-c', 201, '{"id": "c"}', null, null)), '201 req-c', 'the retry stores its answer');

select * from finish();
rollback;
