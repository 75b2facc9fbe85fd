-- Work priced after it ran never settles in its own statement either: when the account its hold
-- drew on fell due (its own hold past its TTL, a lot past its expiry), an AI call's finish and a
-- job's completion refuse with ACCOUNT_FELL_DUE naming the hold and change nothing;
-- billing.settle_holder ends what fell due, and the finish sent again charges as the rules say
-- (a call that outlived its hold: all of it as the excess).
begin;
select plan(13);
\ir helpers.psql

insert into auth.users (id, email) values ('c6c6c6c6-0000-4000-8000-000000000001', 'student@finish-settle.test');
create temp table t as select 'c6c6c6c6-0000-4000-8000-000000000001'::uuid as u;
grant select on t to service_role;
select billing.grant_credits((select u from t), 100, 'adjustment', 'finish-settle:grant');
create temp table c as select billing.begin_ai_call((select u from t), 'gpt-4o-mini', 10, 100, 'finish-settle:a', 'h', 600,
  'chat', array['openai']) as r;
grant select on c to service_role;
create function pg_temp.finish(p_call uuid) returns jsonb language sql as $$
  select billing.finish_ai_call(p_call, '{"input_tokens": 10, "output_tokens": 20}', 'provider', null)
$$;
create function pg_temp.writes() returns bigint language sql as $$
  select (select count(*) from billing.transfers) + (select count(*) from billing.holds where status <> 'active')
$$;

-- The call outlived its hold's TTL; nothing swept it yet.
update billing.holds h set expires_at = now() - interval '1 second' where h.id = (select (r ->> 'hold_id')::uuid from c);
update billing.accounts a set next_hold_expiry = now() - interval '1 second' where a.user_id = (select u from t);
create temp table before as select pg_temp.writes() as n;
select is(pg_temp.err($$select pg_temp.finish((select (r ->> 'call_id')::uuid from c))$$), 'ACCOUNT_FELL_DUE',
  'a finish on an account whose hold fell due refuses, settling nothing');
select is(pg_temp.detail($$select pg_temp.finish((select (r ->> 'call_id')::uuid from c))$$),
  jsonb_build_object('hold_id', (select r ->> 'hold_id' from c)), 'naming the hold whose account to settle');
select is(pg_temp.writes(), (select n from before), 'and writes nothing');
select is((select status from billing.ai_calls where id = (select (r ->> 'call_id')::uuid from c)), 'held',
  'the call stays held for the finish sent again');

set local role service_role;
select billing.settle_holder((select (r ->> 'hold_id')::uuid from c));
reset role;
select is((select status from billing.holds where id = (select (r ->> 'hold_id')::uuid from c)), 'expired',
  'settle_holder ends the overdue hold');
select is(pg_temp.finish((select (r ->> 'call_id')::uuid from c)) ->> 'status', 'charged', 'the finish sent again charges');
select is((select t.amount from billing.transfers t where t.idempotency_key = 'ai-overage:' || (select r ->> 'call_id' from c)),
  (select charged from billing.ai_calls where id = (select (r ->> 'call_id')::uuid from c)),
  'all of it as the excess: the hold it outlived captures nothing');
select is((select count(*)::int from billing.transfers t where t.idempotency_key = 'hold:' || (select r ->> 'hold_id' from c)), 0,
  'and no capture of the expired hold');

-- A job's completion: a lot past its expiry under its hold.
select billing.grant_credits((select u from t), 20, 'adjustment', 'finish-settle:grant-2');
create temp table j as select * from billing.enqueue_job((select u from t), 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'finish-settle:job', null, 4);
grant select on j to service_role;
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds', attempts = 1
where id = (select id from j);
update billing.lots l set expires_at = now() - interval '1 second'
where l.account_id = (select a.id from billing.accounts a where a.user_id = (select u from t)) and l.open;
update billing.accounts a set next_expiry = now() - interval '1 second' where a.user_id = (select u from t);
select is(pg_temp.err($$select billing.complete_job((select id from j), 'w1', '{}', '{"model": "gpt-4o", "input_tokens": 100, "output_tokens": 10}')$$),
  'ACCOUNT_FELL_DUE', 'a job''s completion on an account with a due lot refuses likewise');
-- As the worker sends it again: the settle in front of the completion, in one statement.
select is((select (billing.complete_job((select id from j), 'w1', '{}',
    '{"model": "gpt-4o", "input_tokens": 100, "output_tokens": 10}')).status from billing.settle_holder((select hold_id from j))),
  'completed', 'the completion sent again behind the settle of its hold''s account completes');
select is((select count(*)::int from billing.lots l where l.account_id = (select a.id from billing.accounts a
  where a.user_id = (select u from t)) and l.open), 0, 'settled first: the due lots expired, the job''s hold shrank to nothing');
select is((select count(*)::int from billing.transfers t where t.idempotency_key = 'job-overage:' || (select id from j)
  and t.amount > 0), 1, 'its price charged once, as the excess of a hold that expired credits emptied');

select is((select count(*)::int from billing.settle_holder(null)), 1,
  'a finish sent first puts a null settle in front: strict, it settles nothing and yields its one row');

select * from finish();
rollback;
