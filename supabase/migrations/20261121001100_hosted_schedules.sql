-- HTTP-only work (the jobs worker tick, the outbox dispatcher, the hourly deep health check;
-- the providers migration adds the daily reconciliation) is scheduled with pg_cron + pg_net:
-- each job POSTs to an Edge Function with the cron secret. The base URL and the secret come
-- from Supabase Vault, created once per project (docs/deploy-database.md):
--   select vault.create_secret('https://<ref>.supabase.co/functions/v1', 'functions_url');
--   select vault.create_secret('<CRON_SECRET>', 'cron_secret');
-- Locally the bootstrap stands in for pg_net and Vault, and scripts/local/ticker.ts sends the
-- requests pg_net would.

-- pg_net's functions live in schema net; the extension is registered in extensions.
create extension if not exists pg_net with schema extensions;

create function billing.call_function(p_path text, p_timeout_milliseconds integer) returns bigint
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
comment on function billing.call_function(text, integer)
  is 'pg_cron: queues a POST to an Edge Function (Vault functions_url || path) with the cron secret through pg_net; returns pg_net''s request id. The timeout must cover the function''s own budget: pg_net gives up after it (5 s by default).';
revoke execute on function billing.call_function(text, integer) from public, anon, authenticated;

-- Timeouts: the tick answers within JOBS_TICK_BUDGET_MS (at most 8 s) + 1 s; the dispatcher
-- sends up to 100 emails, one at a time (claimed rows it does not finish come back after two
-- minutes); the deep check bounds each dependency at 5 s, in parallel.
select cron.schedule('billing-jobs-tick', '* * * * *', $$select billing.call_function('/jobs/worker/tick', 10000)$$);
select cron.schedule('billing-notify-dispatch', '* * * * *', $$select billing.call_function('/notify/dispatch', 30000)$$);
select cron.schedule('billing-deep-health', '7 * * * *', $$select billing.call_function('/health/deep', 15000)$$);
