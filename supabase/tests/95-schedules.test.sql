-- The hosted schedules: each pg_cron job that calls an Edge Function queues, through pg_net,
-- one POST to Vault's functions_url + its path, with the cron secret from Vault and an explicit
-- timeout. The jobs' own commands are run here, as pg_cron runs them; the transaction rolls
-- the queued requests back.
begin;
select plan(10);
\ir helpers.psql

-- Runs a cron job's command as pg_cron would and returns what it returned (pg_net's request id);
-- a command that fails returns null, so the assertions below name the job.
create function pg_temp.run_job(p_job text) returns bigint language plpgsql as $$
declare
  v_id bigint;
begin
  execute (select j.command from cron.job j where j.jobname = p_job) into v_id;
  return v_id;
exception when others then
  raise warning '% failed: %', p_job, sqlerrm;
  return null;
end;
$$;

create temp table expected (jobname text, schedule text, path text, timeout_ms integer);
insert into expected values
  ('billing-ai-batches-sync', '* * * * *', '/ai/v1/batches/sync', 30000),
  ('billing-jobs-tick', '* * * * *', '/jobs/worker/tick', 10000),
  ('billing-notify-dispatch', '* * * * *', '/notify/dispatch', 30000),
  ('billing-deep-health', '7 * * * *', '/health/deep', 15000),
  ('billing-reconcile-providers', '30 0 * * *', '/providers/reconciliation/run', 10000),
  ('billing-reconcile-providers-resume', '* * * * *', '/providers/reconciliation/run', 10000);

select results_eq(
  $$select jobname::text collate "default", schedule from cron.job where command like '%billing.call_function(%' order by 1$$,
  $$select jobname, schedule from expected order by jobname$$,
  'the jobs tick, the AI batches'' sync and the outbox every minute, deep health hourly, the reconciliation daily and its resumption every minute: the only HTTP schedules');

select is(
  (select string_agg(jobname, ', ') from cron.job
   where command ~ '(call_function|net\.http_)' and command !~ 'call_function\(''/[^'']+'', *[0-9]+\)'),
  null, 'every HTTP schedule passes an explicit timeout (pg_net''s default is 5 s)');

-- The resumption calls only while a reconciliation run is unfinished (here, none; then one).
delete from billing.reconciliation_progress where finished_at is null;
select is(pg_temp.run_job('billing-reconcile-providers-resume'), null, 'the resumption sends nothing while no run is unfinished');
insert into billing.reconciliation_progress (day) values ('2001-02-03');
create temp table sent as select e.jobname, pg_temp.run_job(e.jobname) as request_id from expected e;
create temp table secret as
  select (select rtrim(decrypted_secret, '/') from vault.decrypted_secrets where name = 'functions_url') as functions_url,
         (select decrypted_secret from vault.decrypted_secrets where name = 'cron_secret') as cron_secret;

select is((select count(*)::int from sent s join net.http_request_queue q on q.id = s.request_id), 6,
  'each HTTP schedule queues one request with pg_net');
select results_eq(
  $$select s.jobname, q.url from sent s join net.http_request_queue q on q.id = s.request_id order by s.jobname$$,
  $$select e.jobname, x.functions_url || e.path from expected e, secret x order by e.jobname$$,
  'each request goes to Vault''s functions_url followed by the function''s route');
select is(
  (select count(*)::int from sent s join net.http_request_queue q on q.id = s.request_id, secret x
   where q.method = 'POST' and q.headers ->> 'Authorization' = 'Bearer ' || x.cron_secret
     and q.headers ->> 'Content-Type' = 'application/json' and convert_from(q.body, 'UTF8')::jsonb = '{}'::jsonb),
  6, 'each request is a JSON POST carrying Vault''s cron secret as a bearer token');
select results_eq(
  $$select s.jobname, q.timeout_milliseconds from sent s join net.http_request_queue q on q.id = s.request_id order by s.jobname$$,
  $$select jobname, timeout_ms from expected order by jobname$$,
  'each request waits as long as its function may take');

-- Without the Vault secrets, the run fails where operators look (cron.job_run_details).
delete from vault.secrets where name = 'cron_secret';
select is(pg_temp.err($$select billing.call_function('/jobs/worker/tick', 10000)$$), 'CRON_NOT_CONFIGURED',
  'a schedule without its Vault secret fails loudly instead of calling nothing');

-- as authenticated
set local role authenticated;
select throws_ok($$select billing.call_function('/jobs/worker/tick', 1000)$$, '42501', null,
  'authenticated cannot make the database call a function with the cron secret');
reset role;

-- as anon
set local role anon;
select throws_ok($$select billing.call_function('/jobs/worker/tick', 1000)$$, '42501', null,
  'anon cannot either');
reset role;

select * from finish();
rollback;
