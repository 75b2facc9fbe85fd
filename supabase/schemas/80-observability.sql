-- Operations: AI call logs with retention, deep-health results, and the alerts evaluated by
-- pg_cron (deduplicated: one open alert per condition, resolved when it clears; the alerts
-- table and billing.set_alert sit in 05-notifications.sql, so every layer can raise one).

-- ============================================================ tables

create table billing.ai_logs (
  id bigint generated always as identity primary key,
  user_id uuid,
  job_id uuid,                                    -- an AI job's call (billing.keep_job_log); no foreign key: kept past the job's 24 hours
  org_id uuid,                                    -- a job's paying school, whose consent may cover its content
  call_id uuid references billing.ai_calls (id) on delete cascade, -- a gateway call's kept content (ai_calls.keep_content)
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
comment on table billing.ai_logs is 'An AI job''s call (job_id: model, tokens, duration) and the content a gateway call kept (call_id); redacted prompt and answer only under the one consent rule (billing.content_consented). Kept 30 days.';
alter table billing.ai_logs enable row level security;
grant select on table billing.ai_logs to service_role;

create index ai_logs_expiry on billing.ai_logs (expires_at);
create unique index ai_logs_call on billing.ai_logs (call_id) where call_id is not null;
create index ai_logs_job on billing.ai_logs (job_id) where job_id is not null;

create table billing.health_checks (
  id bigint generated always as identity primary key,
  checked_at timestamptz not null default now(),
  results jsonb not null,                         -- {name: {status, durationMs, error?}}
  ok boolean not null
);
comment on table billing.health_checks is 'Results of deep health checks (every dependency checked for real).';
alter table billing.health_checks enable row level security;
grant select on table billing.health_checks to service_role;

-- The thresholds of the usage alerts (margin_low, cost_spike), one row: the older conditions
-- keep theirs in evaluate_core_alerts, but these are business choices an operator tunes
-- (`update billing.alert_settings set margin_min_percent = 25;`), read at every evaluation.
create table billing.alert_settings (
  singleton boolean primary key default true,
  margin_min_percent numeric(7, 2) not null default 20,      -- margin_low: a model's margin under this
  margin_min_revenue_usd numeric(20, 6) not null default 1,  -- ... on a day it earned at least this (a few charges are noise)
  cost_spike_sigmas numeric(6, 2) not null default 4,        -- cost_spike: the day above mean + this many σ of the 7 before
  cost_spike_min_jump_usd numeric(20, 6) not null default 5, -- ... and above the mean by at least this much (the floor)
  ai_error_max_percent numeric(5, 2) not null default 10,   -- ai_error_rate: a model's errors over this share of its recent calls
  ai_ttft_p95_max_ms integer not null default 10000,        -- ai_latency: a model's p95 time to first token over this
  ai_window_minutes integer not null default 15,            -- ... over its calls of the last this many minutes
  ai_window_calls integer not null default 100,             -- ... at most its latest this many
  ai_min_calls integer not null default 10,                 -- ... and only with at least this many (a few calls are noise)
  constraint alert_settings_singleton check (singleton),
  constraint alert_settings_ranges check (margin_min_percent <= 100 and margin_min_revenue_usd >= 0
    and cost_spike_sigmas > 0 and cost_spike_min_jump_usd > 0),
  constraint alert_settings_ai_ranges check (ai_error_max_percent >= 0 and ai_error_max_percent <= 100
    and ai_ttft_p95_max_ms > 0 and ai_window_minutes >= 1 and ai_window_minutes <= 1440 and ai_window_calls >= 1
    and ai_window_calls <= 100000 and ai_min_calls >= 1 and ai_min_calls <= ai_window_calls)
);
comment on table billing.alert_settings is 'Thresholds of the margin_low, cost_spike, ai_error_rate and ai_latency alerts (one row; docs/runbook.md). Changed in SQL by an operator.';
alter table billing.alert_settings enable row level security;
grant select on table billing.alert_settings to service_role;

insert into billing.alert_settings default values;

-- ============================================================ functions

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
comment on function billing.record_health_check(p_results jsonb, p_ok boolean) is 'Records a deep health check''s results.';
revoke execute on function billing.record_health_check(p_results jsonb, p_ok boolean) from public;
grant execute on function billing.record_health_check(p_results jsonb, p_ok boolean) to service_role;

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
    -- Gift and sponsor codes not yet redeemed: their escrow accounts (75-codes.sql, 76-sponsor-codes.sql).
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
comment on function billing.open_alerts() is 'The alerts open now, oldest first.';
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
  v_unrefunded integer;
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

  -- A plan invoice paid for nothing (its period over, or the period already granted) that is
  -- still not refunded an hour on: the webhook's refund did not reach Stripe. Refund it by hand.
  select count(*) into v_unrefunded from billing.plan_grants g
  where g.credits = 0 and g.amount_cents > 0 and g.amount_refunded_cents = 0 and g.granted_at < now() - interval '1 hour';
  perform billing.set_alert('plan_refund_due', v_unrefunded > 0,
    format('%s paid plan invoices granted nothing and are not refunded', v_unrefunded),
    jsonb_build_object('invoices', v_unrefunded));

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

-- Opens an alert for each condition in `p_firing` (condition → {summary, details}) and resolves
-- the open ones starting with `p_prefix` that are not in it: a family of conditions, one per
-- model or day, evaluated together.
create or replace function billing.set_alerts(p_prefix text, p_firing jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_condition text;
begin
  for v_condition in select a.condition from billing.alerts a
    where a.status = 'open' and starts_with(a.condition, p_prefix) and not p_firing ? a.condition loop
    perform billing.set_alert(v_condition, false, '');
  end loop;
  for v_condition in select k from jsonb_object_keys(p_firing) k order by k loop
    perform billing.set_alert(v_condition, true, p_firing -> v_condition ->> 'summary', p_firing -> v_condition -> 'details');
  end loop;
end;
$$;
comment on function billing.set_alerts(p_prefix text, p_firing jsonb) is 'Internal: opens (or refreshes) each alert of p_firing and resolves the open ones of the family p_prefix that are not in it.';
revoke execute on function billing.set_alerts(p_prefix text, p_firing jsonb) from public;

-- The usage alerts, over the last closed day the roll-up holds (usage_daily, so a minute's
-- evaluation reads one day's rows and a few accounts' history, never the ledger):
--   margin_low:<model>: the model's margin that day, (revenue − provider cost) ÷ revenue, is
--     under margin_min_percent while it earned at least margin_min_revenue_usd. One condition
--     per model: each model opens (and emails) once and resolves on its own. Never for a model
--     whose provider cost that day is unknown (a charge without a provider price in effect).
--   cost_spike:<day>: students and organisations whose provider cost that day is above the
--     mean + cost_spike_sigmas × σ (population) of their 7 days before (days without charges
--     count as 0), by at least cost_spike_min_jump_usd, and who had charges 7 or more days
--     before it (a short history has no pattern yet). One condition per day, listing the
--     accounts by id (no personal data): one email for a day, however many accounts.
-- A student's cost is all their charges (own and school-paid); an organisation's, what it paid.
create or replace function billing.evaluate_usage_alerts() returns void
language plpgsql
set search_path = ''
as $$
declare
  v_day date := (select u.rolled_through from billing.usage_rollup u);
  s billing.alert_settings;
  v_margins jsonb;
  v_spikes jsonb;
begin
  select * into s from billing.alert_settings;
  if v_day is null or s is null then
    perform billing.set_alerts('margin_low:', '{}');
    perform billing.set_alerts('cost_spike:', '{}');
    return;
  end if;

  select coalesce(jsonb_object_agg('margin_low:' || m.model, jsonb_build_object(
      'summary', format('%s margin %s%% on %s (under %s%%): revenue %s USD, provider cost %s USD', m.model,
        round(m.margin * 100 / m.revenue, 2), v_day, trim_scale(s.margin_min_percent), trim_scale(round(m.revenue, 2)),
        trim_scale(round(m.cost, 2))),
      'details', jsonb_build_object('model', m.model, 'day', v_day, 'threshold_percent', trim_scale(s.margin_min_percent))
        || billing.margin_json(m.credits, m.cost, 0))), '{}')
  into v_margins
  from (select d.model, sum(d.credits) as credits, sum(d.credits) * 0.001 as revenue, sum(d.cost_usd) as cost,
          sum(d.credits) * 0.001 - sum(d.cost_usd) as margin
        from billing.usage_daily d where d.day = v_day group by d.model
        having sum(d.uncosted_credits) = 0) m -- a model whose cost is unknown has no margin to be low
  where m.revenue >= s.margin_min_revenue_usd and m.revenue > 0 and m.margin * 100 < s.margin_min_percent * m.revenue;
  perform billing.set_alerts('margin_low:', v_margins);

  with day_cost as materialized ( -- the day's cost per account; only those above the floor can jump by it
    select 'student' as kind, d.user_id as id, sum(d.cost_usd) as cost from billing.usage_daily d
    where d.day = v_day group by d.user_id having sum(d.cost_usd) >= s.cost_spike_min_jump_usd
    union all
    select 'org', d.org_id, sum(d.cost_usd) from billing.usage_daily d
    where d.day = v_day and d.org_id is not null group by d.org_id having sum(d.cost_usd) >= s.cost_spike_min_jump_usd
  ),
  history as ( -- those accounts' 7 days before, by day (through the indexes on user and on organisation)
    select 'student' as kind, d.user_id as id, sum(d.cost_usd) as cost from billing.usage_daily d
    where d.user_id = any(array(select c.id from day_cost c where c.kind = 'student'))
      and d.day between v_day - 7 and v_day - 1
    group by d.user_id, d.day
    union all
    select 'org', d.org_id, sum(d.cost_usd) from billing.usage_daily d
    where d.org_id = any(array(select c.id from day_cost c where c.kind = 'org')) and d.day between v_day - 7 and v_day - 1
    group by d.org_id, d.day
  ),
  stats as ( -- mean and population σ over 7 days, days without charges as 0; only accounts with charges 7+ days before
    select c.kind, c.id, c.cost, coalesce(sum(h.cost), 0) / 7 as mean, coalesce(sum(h.cost * h.cost), 0) / 7 as mean_square
    from day_cost c left join history h on h.kind = c.kind and h.id = c.id
    where case c.kind
      when 'student' then exists (select 1 from billing.usage_daily x where x.user_id = c.id and x.day <= v_day - 7)
      else exists (select 1 from billing.usage_daily x where x.org_id = c.id and x.day <= v_day - 7) end
    group by c.kind, c.id, c.cost
  ),
  spikes as (
    select st.kind, st.id, st.cost, st.mean, sqrt(greatest(st.mean_square - st.mean * st.mean, 0)) as sd,
      st.cost - st.mean as jump
    from stats st
  )
  select case when count(*) > 0 then jsonb_build_object('cost_spike:' || v_day, jsonb_build_object(
      'summary', format('%s accounts'' provider cost on %s jumped past their 7-day mean + %sσ (%s students, %s organisations)',
        count(*), v_day, trim_scale(s.cost_spike_sigmas), count(*) filter (where x.kind = 'student'),
        count(*) filter (where x.kind = 'org')),
      'details', jsonb_build_object('day', v_day, 'accounts', count(*),
        'top', (jsonb_agg(jsonb_build_object('kind', x.kind, 'id', x.id, 'cost_usd', trim_scale(round(x.cost, 6))::text,
          'mean_usd', trim_scale(round(x.mean, 6))::text, 'stddev_usd', trim_scale(round(x.sd, 6))::text)
          order by x.jump desc, x.id) filter (where x.rank <= 20)))))
    else '{}' end
  into v_spikes
  from (select sp.*, row_number() over (order by sp.jump desc, sp.id) as rank from spikes sp
        where sp.cost > sp.mean + s.cost_spike_sigmas * sp.sd and sp.jump >= s.cost_spike_min_jump_usd) x;
  perform billing.set_alerts('cost_spike:', v_spikes);
end;
$$;
comment on function billing.evaluate_usage_alerts() is 'Internal (evaluate_alerts): margin_low per model and cost_spike per day, over the last closed day of usage_daily, with the thresholds of alert_settings.';
revoke execute on function billing.evaluate_usage_alerts() from public;

-- The AI alerts, per model, over its calls that reached the provider in the last
-- ai_window_minutes (at most its latest ai_window_calls), once it has ai_min_calls of them:
--   ai_error_rate:<model>: errors (billing.ai_call_error) above ai_error_max_percent of them;
--   ai_latency:<model>: the p95 time to first token above ai_ttft_p95_max_ms.
-- A model recovers when its latest calls are back under the threshold (or too few are recent).
create or replace function billing.evaluate_ai_alerts() returns void
language plpgsql
set search_path = ''
as $$
declare
  s billing.alert_settings;
  v_errors jsonb;
  v_slow jsonb;
  v_free record;
  v_over record;
begin
  select * into s from billing.alert_settings;
  with recent as (
    select c.model, billing.ai_call_error(c.status, c.failure) as error, c.first_token_ms,
      row_number() over (partition by c.model order by c.seq desc) as rn
    from billing.ai_calls c
    where c.created_at >= now() - make_interval(mins => s.ai_window_minutes) and c.status in ('charged', 'failed')
  ),
  m as (
    select r.model, count(*) as calls, count(*) filter (where r.error) as errors,
      count(r.first_token_ms) as timed, percentile_disc(0.95) within group (order by r.first_token_ms) as ttft_p95
    from recent r where r.rn <= s.ai_window_calls group by r.model
  )
  select coalesce(jsonb_object_agg('ai_error_rate:' || m.model, jsonb_build_object(
           'summary', format('%s: %s of its last %s calls failed (over %s%%)', m.model, m.errors, m.calls,
                             trim_scale(s.ai_error_max_percent)),
           'details', jsonb_build_object('model', m.model, 'calls', m.calls, 'errors', m.errors,
                                         'threshold_percent', trim_scale(s.ai_error_max_percent))))
           filter (where m.calls >= s.ai_min_calls and m.errors * 100 > s.ai_error_max_percent * m.calls), '{}'),
         coalesce(jsonb_object_agg('ai_latency:' || m.model, jsonb_build_object(
           'summary', format('%s: p95 time to first token %s ms over its last %s calls (over %s ms)', m.model,
                             m.ttft_p95, m.timed, s.ai_ttft_p95_max_ms),
           'details', jsonb_build_object('model', m.model, 'calls', m.timed, 'ttft_p95_ms', m.ttft_p95,
                                         'threshold_ms', s.ai_ttft_p95_max_ms)))
           filter (where m.timed >= s.ai_min_calls and m.ttft_p95 > s.ai_ttft_p95_max_ms), '{}')
  into v_errors, v_slow
  from m;
  perform billing.set_alerts('ai_error_rate:', v_errors);
  perform billing.set_alerts('ai_latency:', v_slow);

  -- Calls that cost more than their holds (the excess charged as the one debt: a provider
  -- counted more than the bound) and calls that succeeded at no cost, in the window: read here,
  -- not in the transaction that found them.
  select c.model, c.id, c.charged - h.amount as excess into v_over
  from billing.ai_calls c join billing.holds h on h.id = c.hold_id
  where c.created_at >= now() - make_interval(mins => s.ai_window_minutes) and c.status = 'charged'
    and c.charged > h.amount and not coalesce((h.metadata ->> 'given_to_expiry')::boolean, false)
  order by c.created_at desc limit 1;
  perform billing.set_alert('ai_call_overran', v_over.id is not null, 'An AI call cost more than its hold',
    jsonb_build_object('model', v_over.model, 'call_id', v_over.id, 'excess', trim_scale(v_over.excess)::text));
  select c.model, c.id, c.usage_source into v_free
  from billing.ai_calls c
  where c.created_at >= now() - make_interval(mins => s.ai_window_minutes) and c.status = 'charged' and c.charged = 0
    and c.failure is null
  order by c.created_at desc limit 1;
  perform billing.set_alert('ai_call_cost_nothing', v_free.id is not null, 'An AI call succeeded and cost nothing',
    jsonb_build_object('model', v_free.model, 'call_id', v_free.id, 'usage_source', v_free.usage_source));
end;
$$;
comment on function billing.evaluate_ai_alerts() is 'Internal (evaluate_alerts): ai_error_rate and ai_latency per model over its recent calls, with the thresholds of alert_settings; ai_call_overran and ai_call_cost_nothing for a call in the window that cost more than its hold, or nothing.';
revoke execute on function billing.evaluate_ai_alerts() from public;

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

  perform billing.evaluate_usage_alerts();
  perform billing.evaluate_ai_alerts();

  return query select * from billing.alerts a where a.status = 'open' order by a.opened_at;
end;
$$;
comment on function billing.evaluate_alerts() is 'pg_cron: evaluates every alert condition (core, then providers: reconciliation_mismatch, payout_delay, then usage: margin_low, cost_spike, then AI: ai_error_rate, ai_latency).';
revoke execute on function billing.evaluate_alerts() from public;
grant execute on function billing.evaluate_alerts() to service_role;
