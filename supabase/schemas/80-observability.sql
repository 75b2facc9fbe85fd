-- Operations: AI call logs with retention, deep-health results, alerts evaluated by pg_cron
-- (deduplicated: one open alert per condition, resolved when it clears), and the outbox
-- dispatcher's claim/mark functions.

-- ============================================================ tables

create table billing.ai_logs (
  id bigint generated always as identity primary key,
  user_id uuid,
  job_id uuid,
  model text not null,
  input_tokens integer not null,
  output_tokens integer not null,
  duration_ms integer not null,
  consent_level text not null default 'none',     -- none | metadata | content
  data_classification text not null default 'internal',
  prompt_redacted text,                           -- only with consent_level = content, redacted
  response_redacted text,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '30 days',
  constraint ai_logs_consent check (consent_level in ('none', 'metadata', 'content')),
  constraint ai_logs_content_needs_consent check (consent_level = 'content' or (prompt_redacted is null and response_redacted is null))
);
comment on table billing.ai_logs is 'One row per AI call: model, tokens, duration; redacted text only with the caller''s consent. Kept 30 days.';
alter table billing.ai_logs enable row level security;
grant select on table billing.ai_logs to service_role;

create index ai_logs_expiry on billing.ai_logs (expires_at);

create table billing.health_checks (
  id bigint generated always as identity primary key,
  checked_at timestamptz not null default now(),
  results jsonb not null,                         -- {name: {status, durationMs, error?}}
  ok boolean not null
);
comment on table billing.health_checks is 'Results of deep health checks (every dependency checked for real).';
alter table billing.health_checks enable row level security;
grant select on table billing.health_checks to service_role;

create table billing.alerts (
  id bigint generated always as identity primary key,
  condition text not null,                        -- stable key, e.g. webhook_failures
  severity text not null default 'page',
  summary text not null,
  details jsonb not null default '{}',
  status text not null default 'open',
  opened_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  resolved_at timestamptz,
  constraint alerts_status check (status in ('open', 'resolved'))
);
comment on table billing.alerts is 'Operational alerts. At most one open alert per condition; it resolves when the condition clears.';
alter table billing.alerts enable row level security;
grant select on table billing.alerts to service_role;

create unique index alerts_one_open on billing.alerts (condition) where status = 'open';

-- ============================================================ functions

create or replace function billing.record_ai_log(
  p_user uuid, p_job uuid, p_model text, p_input_tokens integer, p_output_tokens integer, p_duration_ms integer,
  p_consent_level text, p_prompt_redacted text default null, p_response_redacted text default null
) returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.ai_logs (user_id, job_id, model, input_tokens, output_tokens, duration_ms, consent_level,
                               prompt_redacted, response_redacted)
  values (p_user, p_job, p_model, p_input_tokens, p_output_tokens, p_duration_ms, p_consent_level,
          case when p_consent_level = 'content' then p_prompt_redacted end,
          case when p_consent_level = 'content' then p_response_redacted end)
$$;
comment on function billing.record_ai_log(p_user uuid, p_job uuid, p_model text, p_input_tokens integer, p_output_tokens integer, p_duration_ms integer, p_consent_level text, p_prompt_redacted text, p_response_redacted text) is 'Logs an AI call; text is kept only with consent_level = content (and must arrive redacted).';
revoke execute on function billing.record_ai_log(p_user uuid, p_job uuid, p_model text, p_input_tokens integer, p_output_tokens integer, p_duration_ms integer, p_consent_level text, p_prompt_redacted text, p_response_redacted text) from public;
grant execute on function billing.record_ai_log(p_user uuid, p_job uuid, p_model text, p_input_tokens integer, p_output_tokens integer, p_duration_ms integer, p_consent_level text, p_prompt_redacted text, p_response_redacted text) to service_role;

create or replace function billing.delete_expired_ai_logs(p_limit integer default 5000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from billing.ai_logs l where l.id in (select x.id from billing.ai_logs x where x.expires_at <= now() limit p_limit);
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.delete_expired_ai_logs(p_limit integer) is 'pg_cron: deletes AI logs past their 30 days.';
revoke execute on function billing.delete_expired_ai_logs(p_limit integer) from public;
grant execute on function billing.delete_expired_ai_logs(p_limit integer) to service_role;

create or replace function billing.record_health_check(p_results jsonb, p_ok boolean) returns void
language sql
security definer
set search_path = ''
as $$ insert into billing.health_checks (results, ok) values (p_results, p_ok) $$;
revoke execute on function billing.record_health_check(p_results jsonb, p_ok boolean) from public;
grant execute on function billing.record_health_check(p_results jsonb, p_ok boolean) to service_role;

-- Opens (or refreshes) one alert per condition, or resolves it; writes an outbox row when it opens.
create or replace function billing.set_alert(p_condition text, p_firing boolean, p_summary text, p_details jsonb default '{}')
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  if p_firing then
    update billing.alerts a set last_seen_at = now(), details = p_details, summary = p_summary
    where a.condition = p_condition and a.status = 'open';
    if not found then
      insert into billing.alerts (condition, summary, details) values (p_condition, p_summary, p_details)
      on conflict (condition) where status = 'open' do nothing
      returning id into v_id;
      if v_id is not null then
        insert into billing.notification_outbox (template, dedupe_key, payload)
        values ('alert', 'alert:' || v_id, jsonb_build_object('alert_id', v_id, 'condition', p_condition, 'summary', p_summary));
      end if;
    end if;
  else
    update billing.alerts a set status = 'resolved', resolved_at = now() where a.condition = p_condition and a.status = 'open';
  end if;
end;
$$;
revoke execute on function billing.set_alert(p_condition text, p_firing boolean, p_summary text, p_details jsonb) from public;

-- The unspent liability in /health/metrics: users' accounts, and beside them the credits in
-- organisation wallets and members' allowances, so users + organisations + platform accounts = 0
-- (every transfer's entries sum to zero).
create or replace function billing.ops_metrics() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'webhook_events', (select coalesce(jsonb_agg(jsonb_build_object('type', type, 'status', status, 'count', n)), '[]')
                       from (select type, status, count(*) n from billing.stripe_events group by type, status) e),
    'webhook_signature_failures', coalesce((select value from billing.counters where name = 'stripe_webhook_signature_failures'), 0),
    'webhook_failing', (select count(*) from billing.stripe_events where status = 'failed'),
    'outbox', (select jsonb_build_object(
                 'pending', count(*) filter (where status = 'pending'),
                 'failed', count(*) filter (where status = 'failed'),
                 'oldest_pending_seconds', coalesce(extract(epoch from now() - min(created_at) filter (where status = 'pending')), 0))
               from billing.notification_outbox),
    'platform_balances', (select coalesce(jsonb_object_agg(code, balance::text), '{}') from billing.platform_balances),
    'user_balance_total', (select coalesce(sum(balance), 0)::text from billing.accounts where user_id is not null),
    -- Organisation wallets and members' allowances: the rest of the unspent liability.
    'org_balance_total', (select coalesce(sum(balance), 0)::text from billing.accounts where org_id is not null),
    -- Gift and sponsor codes not yet redeemed: their escrow accounts (75-codes.sql).
    'code_balance_total', (select coalesce(sum(balance), 0)::text from billing.accounts where code_id is not null),
    'charges_last_hour', (select count(*) filter (where type in ('charge.succeeded', 'payment_intent.payment_failed'))
                          from billing.stripe_events where api_created > now() - interval '1 hour'),
    'charge_failures_last_hour', (select count(*) filter (where type = 'payment_intent.payment_failed')
                                  from billing.stripe_events where api_created > now() - interval '1 hour'),
    'open_alerts', (select count(*) from billing.alerts where status = 'open'),
    'jobs', (select coalesce(jsonb_object_agg(status, n), '{}') from (select status, count(*) n from billing.jobs group by status) j)
  )
$$;
comment on function billing.ops_metrics() is 'The database side of /health/metrics and readiness: webhooks, outbox, ledger totals, charges, alerts, jobs.';
revoke execute on function billing.ops_metrics() from public;
grant execute on function billing.ops_metrics() to service_role;

create or replace function billing.open_alerts() returns setof billing.alerts
language sql stable
security definer
set search_path = ''
as $$ select * from billing.alerts where status = 'open' order by opened_at $$;
revoke execute on function billing.open_alerts() from public;
grant execute on function billing.open_alerts() to service_role;

create or replace function billing.evaluate_core_alerts() returns setof billing.alerts
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_failing integer;
  v_backlog integer;
  v_charges integer;
  v_failed integer;
  v_deep billing.health_checks;
begin
  -- Webhooks: any event that failed 3+ times, or failures older than 5 minutes not yet processed.
  select count(*) filter (where e.attempts >= 3), count(*) filter (where e.received_at < now() - interval '5 minutes')
  into v_failing, v_backlog
  from billing.stripe_events e where e.status = 'failed';
  perform billing.set_alert('webhook_failures', v_failing > 0 or v_backlog > 0,
    format('%s Stripe events failing 3+ times, %s unprocessed for over 5 minutes', v_failing, v_backlog),
    jsonb_build_object('failing', v_failing, 'backlog', v_backlog));

  -- Charge failure rate over the last hour, with a minimum volume so one decline is no page.
  select count(*) filter (where e.type in ('charge.succeeded', 'payment_intent.payment_failed')),
         count(*) filter (where e.type = 'payment_intent.payment_failed')
  into v_charges, v_failed
  from billing.stripe_events e where e.api_created > now() - interval '1 hour';
  perform billing.set_alert('charge_failure_rate', v_charges >= 20 and v_failed::numeric / v_charges > 0.005,
    format('%s of %s charges failed in the last hour', v_failed, v_charges),
    jsonb_build_object('failed', v_failed, 'attempts', v_charges));

  -- Deep health: the latest run failed.
  select * into v_deep from billing.health_checks h order by h.checked_at desc limit 1;
  perform billing.set_alert('deep_health', found and not v_deep.ok, 'A dependency failed its deep health check',
    coalesce(v_deep.results, '{}'::jsonb));

  return query select * from billing.alerts a where a.status = 'open' order by a.opened_at;
end;
$$;
comment on function billing.evaluate_core_alerts() is 'pg_cron: evaluates every alert condition, opening or resolving one alert per condition. Later domains add theirs here.';
revoke execute on function billing.evaluate_core_alerts() from public;
grant execute on function billing.evaluate_core_alerts() to service_role;

create or replace function billing.evaluate_alerts() returns setof billing.alerts
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_mismatches integer;
  v_days text;
  v_late integer;
  v_failed integer;
begin
  perform billing.evaluate_core_alerts();

  -- Any mismatch in the last week's reconciliations (a clean re-run of the day clears it).
  select coalesce(sum(r.mismatches), 0), string_agg(r.day::text, ', ' order by r.day)
  into v_mismatches, v_days
  from billing.reconciliation_runs r where r.day > current_date - 7 and r.mismatches > 0;
  perform billing.set_alert('reconciliation_mismatch', v_mismatches > 0,
    format('%s provider reconciliation mismatches (days: %s)', v_mismatches, v_days),
    jsonb_build_object('mismatches', v_mismatches, 'days', v_days));

  -- Payouts past their arrival date by a day and not paid, and payouts that failed this week.
  select count(*) filter (where po.status in ('pending', 'in_transit') and po.arrival_date < now() - interval '1 day'),
         count(*) filter (where po.status = 'failed' and po.updated_at > now() - interval '7 days')
  into v_late, v_failed
  from billing.provider_payouts po where po.status in ('pending', 'in_transit', 'failed');
  perform billing.set_alert('payout_delay', v_late > 0 or v_failed > 0,
    format('%s provider payouts overdue, %s failed in the last 7 days', v_late, v_failed),
    jsonb_build_object('overdue', v_late, 'failed', v_failed));

  return query select * from billing.alerts a where a.status = 'open' order by a.opened_at;
end;
$$;
comment on function billing.evaluate_alerts() is 'pg_cron: evaluates every alert condition (core, then providers: reconciliation_mismatch, payout_delay).';
revoke execute on function billing.evaluate_alerts() from public;
grant execute on function billing.evaluate_alerts() to service_role;
