-- Scheduled upkeep with pg_cron (minute granularity). Each job calls one idempotent,
-- batch-bounded function, so an overlapping or repeated run is harmless.
--
-- HTTP-only work (the jobs worker tick, the outbox dispatcher, the hourly deep health check,
-- the daily provider reconciliation) is scheduled with pg_cron + pg_net:
-- each job POSTs to an Edge Function with the cron secret. The base URL and the secret come
-- from Supabase Vault, created once per project (docs/deploy-database.md):
--   select vault.create_secret('https://<ref>.supabase.co/functions/v1', 'functions_url');
--   select vault.create_secret('<CRON_SECRET>', 'cron_secret');
-- Locally the bootstrap stands in for pg_net and Vault, and scripts/local/ticker.ts sends the
-- requests pg_net would.

-- ============================================================ functions

create or replace function billing.call_function(p_path text, p_timeout_milliseconds integer) returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
begin
  select s.decrypted_secret into v_url from vault.decrypted_secrets s where s.name = 'functions_url';
  select s.decrypted_secret into v_secret from vault.decrypted_secrets s where s.name = 'cron_secret';
  if v_url is null or v_secret is null then
    -- Fails the cron run (cron.job_run_details), rather than never calling anything unseen.
    raise exception using errcode = 'P0001', message = 'CRON_NOT_CONFIGURED',
      detail = jsonb_build_object('missing_vault_secrets',
        to_jsonb(array_remove(array[case when v_url is null then 'functions_url' end,
                                    case when v_secret is null then 'cron_secret' end], null)))::text;
  end if;
  return net.http_post(
    url => rtrim(v_url, '/') || p_path,
    body => '{}'::jsonb,
    headers => jsonb_build_object('Authorization', 'Bearer ' || v_secret, 'Content-Type', 'application/json'),
    timeout_milliseconds => p_timeout_milliseconds
  );
end;
$$;
comment on function billing.call_function(p_path text, p_timeout_milliseconds integer) is 'pg_cron: queues a POST to an Edge Function (Vault functions_url || path) with the cron secret through pg_net; returns pg_net''s request id. The timeout must cover the function''s own budget: pg_net gives up after it (5 s by default).';
revoke execute on function billing.call_function(p_path text, p_timeout_milliseconds integer) from public;

-- ============================================================ schedules

select cron.schedule('billing-release-expired-holds', '* * * * *', $$select billing.release_expired_holds(500)$$);

select cron.schedule('billing-take-back-due-claims', '* * * * *', $$select billing.take_back_due_claims(500)$$);

select cron.schedule('billing-delete-expired-idempotency-keys', '*/5 * * * *',
  $$select billing.delete_expired_idempotency_keys(5000)$$);

select cron.schedule('billing-expire-stale-purchases', '*/10 * * * *', $$select billing.expire_stale_purchases(500)$$);

select cron.schedule('billing-expire-jobs', '*/5 * * * *', $$select billing.expire_jobs(500)$$);

select cron.schedule('billing-sweep-ai-calls', '* * * * *', $$select billing.sweep_ai_calls(500)$$);

select cron.schedule('billing-evaluate-alerts', '* * * * *', $$select count(*) from billing.evaluate_alerts()$$);

select cron.schedule('billing-delete-expired-ai-logs', '17 * * * *', $$select billing.delete_expired_ai_logs(5000)$$);

-- Call records past their 180 days, rolled up (a day's worth in batches; nothing is due on most nights).
select cron.schedule('billing-sweep-ai-call-records', '23 * * * *', $$select billing.sweep_ai_call_records('180 days', 5000)$$);

-- Timeouts: the tick answers within JOBS_TICK_BUDGET_MS (at most 8 s) + 1 s; the dispatcher
-- sends up to 100 emails, one at a time (claimed rows it does not finish come back after two
-- minutes); the deep check bounds each dependency at 5 s, in parallel.
select cron.schedule('billing-jobs-tick', '* * * * *', $$select billing.call_function('/jobs/worker/tick', 10000)$$);

-- AI batches the provider ended are settled within a minute, read or not (the sync answers
-- within 20 s: batches one at a time).
select cron.schedule('billing-ai-batches-sync', '* * * * *', $$select billing.call_function('/ai/v1/batches/sync', 30000)$$);

select cron.schedule('billing-notify-dispatch', '* * * * *', $$select billing.call_function('/notify/dispatch', 30000)$$);

select cron.schedule('billing-deep-health', '7 * * * *', $$select billing.call_function('/health/deep', 15000)$$);

-- After midnight UTC the providers function reconciles the day before (hosted: pg_net). Each call
-- pages for a few seconds and answers 202 if the run is not done; the second schedule calls
-- again every minute while a run is unfinished (nothing is sent otherwise).
select cron.schedule('billing-reconcile-providers', '30 0 * * *', $$select billing.call_function('/providers/reconciliation/run', 10000)$$);

select cron.schedule('billing-reconcile-providers-resume', '* * * * *',
  $$select billing.call_function('/providers/reconciliation/run', 10000)
    where exists (select 1 from billing.reconciliation_progress r where r.finished_at is null)$$);

select cron.schedule('billing-daily-revenue', '15 0 * * *', $$select billing.run_daily_revenue()$$);

-- Every minute: a request sums only the credit ledger written since the last run (90-reporting.sql).
select cron.schedule('billing-revenue-rollup', '* * * * *', $$select billing.refresh_stale_revenue(31)$$);

select cron.schedule('billing-usage-rollup', '*/10 * * * *', $$select billing.roll_up_usage(31)$$);

select cron.schedule('billing-expire-lots', '* * * * *', $$select billing.expire_lots(500)$$);

select cron.schedule('billing-expiry-warnings', '23 * * * *', $$select billing.queue_expiry_warnings(1000)$$);

select cron.schedule('billing-reconcile-lots', '45 0 * * *', $$select billing.reconcile_lots()$$);

select cron.schedule('billing-sweep-ended-terms', '* * * * *', $$select billing.sweep_ended_terms()$$);

-- Sponsor codes past their window, unredeemed, give their credits back to the wallet (76-sponsor-codes.sql).
select cron.schedule('billing-close-sponsor-codes', '*/5 * * * *', $$select billing.close_expired_sponsor_codes(100)$$);

select cron.schedule('billing-delete-old-code-attempts', '41 3 * * *', $$select billing.delete_old_code_attempts(50000)$$);

select cron.schedule('billing-correction-runs', '* * * * *', $$select billing.process_correction_runs(1000)$$);
