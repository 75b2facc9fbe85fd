-- Jobs: the status machine, leases, metered holds across complete/fail/cancel.
begin;
select plan(26);
\ir helpers.psql

insert into auth.users (id) values ('cccccccc-0000-4000-8000-000000000003');
select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 10, 'promo_grant', 'jobs-test-grant');

create temp table j as select * from billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'jobs-test-1', null, 4);
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).held, 4.0::numeric, 'enqueue reserves the estimate as a hold');
select is((select purpose from billing.holds where id = (select hold_id from j)), 'job', 'a job''s hold is marked as the job''s');
select is(pg_temp.err($$select billing.release_hold('cccccccc-0000-4000-8000-000000000003', (select hold_id from j))$$),
  'HOLD_NOT_USER_MANAGED', 'its user cannot release a job''s hold (only the job, its cancel or its expiry can)');
select is(pg_temp.err($$select billing.capture_hold('cccccccc-0000-4000-8000-000000000003', (select hold_id from j))$$),
  'HOLD_NOT_USER_MANAGED', 'nor capture it');
select is((select id from billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'jobs-test-1', null, 4)),
  (select id from j), 'the same request under its key returns the same job');
select is(pg_temp.err($$select billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion', '{}', 'jobs-test-1')$$),
  'IDEMPOTENCY_KEY_REUSED', 'another job under the same key is refused, not answered with the first');
select is(pg_temp.err($$update billing.jobs set status = 'completed', completed_at = now() where id = (select id from j)$$),
  'INVALID_JOB_TRANSITION', 'queued → completed is not a transition');

-- Claim it (by lease), as worker w1.
update billing.jobs set run_after = now() - interval '1 hour' where id = (select id from j);
select is((select count(*)::int from billing.jobs x where x.id = (select id from j) and x.status = 'queued'), 1, 'the job waits, queued');
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds', attempts = 1
  where id = (select id from j);
select is(pg_temp.err($$select billing.checkpoint_job((select id from j), 'w2', 50, '{}')$$), 'LEASE_LOST',
  'a worker without the lease cannot checkpoint');
select is((billing.checkpoint_job((select id from j), 'w1', 50, '{"cursor": 1}', 'half')).progress, 50, 'the lease holder checkpoints');
select is((billing.complete_job((select id from j), 'w1', '{"ok": true}',
  '{"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}')).status, 'completed', 'complete_job finishes the job');
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).balance, -40.0::numeric,
  'completion captures the hold and charges the excess (50 priced, 4 held): 6 free, 40 as debt');
select is((select t.amount from billing.transfers t where t.idempotency_key = 'job-overage:' || (select id from j)),
  46::numeric, 'one usage charge for all the hold did not pay');
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).held, 0.0::numeric, 'and leaves no hold behind');
select is(pg_temp.err($$select billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'jobs-test-owing', null, 1)$$), 'INSUFFICIENT_CREDITS',
  'the next metered job is refused while the debt stands');
select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 40, 'promo_grant', 'jobs-test-debt-paid');
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).balance, 0.0::numeric, 'a grant pays the debt');
select is(pg_temp.err($$update billing.jobs set status = 'processing' where id = (select id from j)$$),
  'INVALID_JOB_TRANSITION', 'a finished job never runs again');

select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 10, 'promo_grant', 'jobs-test-grant-2');
create temp table k as select * from billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion', '{}', 'jobs-test-2', null, 2);
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds', attempts = 3
  where id = (select id from k);
select is((billing.fail_job((select id from k), 'w1', '{"code": "X"}', true)).status, 'failed',
  'a failure after the last attempt fails the job');
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).held, 0.0::numeric, 'a failed job releases its hold');

-- A job whose hold shrank to nothing (the lot it reserved expired under it): all it cost is debt.
select billing.reverse_credits('cccccccc-0000-4000-8000-000000000003', 10, 'refund_reversal', 'jobs-test-take-back');
select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 5, 'promo_grant', 'jobs-test-grant-3', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
create temp table m as select * from billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion', '{}', 'jobs-test-3', null, 5);
update billing.lots l set expires_at = now() - interval '1 second'
where l.grant_transfer_id = (select t.id from billing.transfers t where t.idempotency_key = 'jobs-test-grant-3');
update billing.accounts a set next_expiry = now() - interval '1 second' where a.user_id = 'cccccccc-0000-4000-8000-000000000003';
select billing.expire_lots(500);
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds', attempts = 1
  where id = (select id from m);
select is((select h.status from billing.holds h where h.id = (select hold_id from m)), 'released',
  'the job''s hold shrank to nothing when the lot it reserved expired, and ended released');
select billing.complete_job((select id from m), 'w1', '{"ok": true}', '{"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}');
select is((billing.get_balance('cccccccc-0000-4000-8000-000000000003')).balance, -50.0::numeric,
  'completed with nothing held or free, all it cost (50) is owed on the balance');
select is((select t.amount from billing.transfers t where t.idempotency_key = 'job-overage:' || (select id from m)),
  50::numeric, 'as one usage charge');
select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 50, 'promo_grant', 'jobs-test-debt-paid-2');

-- Cancelled while a worker runs it: the hold waits for the worker's report; a worker that never
-- reports frees it when its lease has ended (the five-minute sweep).
select billing.grant_credits('cccccccc-0000-4000-8000-000000000003', 10, 'promo_grant', 'jobs-test-grant-4');
create temp table c as select * from billing.enqueue_job('cccccccc-0000-4000-8000-000000000003', 'ai_completion', '{}', 'jobs-test-4', null, 3);
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds', attempts = 1
  where id = (select id from c);
select is((billing.cancel_job('cccccccc-0000-4000-8000-000000000003', (select id from c))).status, 'cancelled', 'cancelled while it runs');
select is((select h.status from billing.holds h where h.id = (select hold_id from c)), 'active',
  'its hold waits for what the worker reports (the provider may be answering)');
select billing.expire_jobs(500);
select is((select h.status from billing.holds h where h.id = (select hold_id from c)), 'active', 'the sweep leaves it while the lease runs');
update billing.jobs set locked_until = now() - interval '1 second' where id = (select id from c);
select billing.expire_jobs(500);
select is((select h.status from billing.holds h where h.id = (select hold_id from c)), 'released',
  'a worker that never reported: the hold is freed once its lease ended');

select * from finish();
rollback;
