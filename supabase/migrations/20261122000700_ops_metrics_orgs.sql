-- The unspent liability in /health/metrics counted users' accounts only: credits in organisation
-- wallets and members' allowances (#22) were in no gauge. ops_metrics reports them beside it, so
-- users + organisations + platform accounts = 0 (every transfer's entries sum to zero).

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
    'charges_last_hour', (select count(*) filter (where type in ('charge.succeeded', 'payment_intent.payment_failed'))
                          from billing.stripe_events where api_created > now() - interval '1 hour'),
    'charge_failures_last_hour', (select count(*) filter (where type = 'payment_intent.payment_failed')
                                  from billing.stripe_events where api_created > now() - interval '1 hour'),
    'open_alerts', (select count(*) from billing.alerts where status = 'open'),
    'jobs', (select coalesce(jsonb_object_agg(status, n), '{}') from (select status, count(*) n from billing.jobs group by status) j)
  )
$$;
comment on function billing.ops_metrics() is 'The database side of /health/metrics and readiness: webhooks, outbox, ledger totals, charges, alerts, jobs.';
