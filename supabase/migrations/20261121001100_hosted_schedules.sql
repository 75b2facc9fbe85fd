-- On hosted Supabase, HTTP-only work (the jobs worker tick, the outbox dispatcher, the hourly
-- deep health check) is scheduled with pg_cron + pg_net. The URL and the cron secret come from
-- Supabase Vault (secrets `functions_url`, e.g. https://<ref>.supabase.co/functions/v1, and
-- `cron_secret`); without pg_net or those secrets (as on the local stack, where
-- scripts/local/ticker.ts makes the calls) the scheduled function does nothing.

create function billing.call_function(p_path text) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_net')
     or not exists (select 1 from pg_namespace where nspname = 'vault') then
    return;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1' into v_url using 'functions_url';
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1' into v_secret using 'cron_secret';
  if v_url is null or v_secret is null then
    return;
  end if;
  execute 'select net.http_post(url => $1, headers => $2, body => ''{}''::jsonb)'
    using v_url || p_path, jsonb_build_object('Authorization', 'Bearer ' || v_secret, 'Content-Type', 'application/json');
end;
$$;
comment on function billing.call_function(text)
  is 'pg_cron: POSTs to an Edge Function with the cron secret through pg_net (hosted only; a no-op without pg_net and Vault secrets).';
revoke execute on function billing.call_function(text) from public, anon, authenticated;

select cron.schedule('billing-jobs-tick', '* * * * *', $$select billing.call_function('/jobs/worker/tick')$$);
select cron.schedule('billing-notify-dispatch', '* * * * *', $$select billing.call_function('/notify/dispatch')$$);
select cron.schedule('billing-deep-health', '7 * * * *', $$select billing.call_function('/health/deep')$$);
