-- The plan_refund_due alert: a paid plan invoice that granted nothing and is still not refunded
-- an hour on opens it (the webhook's refund did not reach Stripe); the refund resolves it.
begin;
select plan(4);
\ir helpers.psql

insert into auth.users (id) values ('5afe5afe-0000-4000-8000-000000000001');
insert into billing.subscriptions (user_id, plan_id, request_key, status)
values ('5afe5afe-0000-4000-8000-000000000001', 'basic_monthly', 'k', 'active');
insert into billing.plan_grants (invoice_id, subscription_id, plan_id, billing_reason, period_start, period_end,
                                 amount_cents, currency, credits, granted_at)
select 'in_due', s.id, 'basic_monthly', 'subscription_cycle', now() - interval '60 days', now() - interval '30 days',
       999, 'usd', 0, now() - interval '10 minutes'
from billing.subscriptions s where s.user_id = '5afe5afe-0000-4000-8000-000000000001';

select billing.evaluate_core_alerts();
select is((select count(*)::int from billing.alerts where condition = 'plan_refund_due' and status = 'open'), 0,
  'not within the hour the webhook has to refund it');
update billing.plan_grants set granted_at = now() - interval '2 hours' where invoice_id = 'in_due';
select billing.evaluate_core_alerts();
select is((select details from billing.alerts where condition = 'plan_refund_due' and status = 'open'),
  '{"invoices": 1}'::jsonb, 'an hour on, still unrefunded: the alert opens');
update billing.plan_grants set amount_refunded_cents = 999 where invoice_id = 'in_due';
select billing.evaluate_core_alerts();
select is((select count(*)::int from billing.alerts where condition = 'plan_refund_due' and status = 'open'), 0,
  'refunded: it resolves');
select is((select count(*)::int from billing.alerts where condition = 'plan_refund_due' and status = 'resolved'), 1,
  'and stays on record');

select * from finish();
rollback;
