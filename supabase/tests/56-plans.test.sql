-- Plans: invoice.paid grants a period's credits once; a replay, an older invoice and a period
-- that is over grant nothing; a renewal rolls over what the rule allows; a failed renewal
-- queues an email; students read only their own subscriptions and call none of the functions.
begin;
select plan(15);
\ir helpers.psql

insert into auth.users (id) values ('5ab5ab5a-0000-4000-8000-000000000001'), ('5ab5ab5a-0000-4000-8000-000000000002');
create function pg_temp.u(n int) returns uuid language sql as $$ select ('5ab5ab5a-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.bal(n int) returns numeric language sql as $$ select balance from billing.get_balance(pg_temp.u(n)) $$;
-- Stripe's state: subscription sub_<n> of user n in period [s, e) (days from now), and an invoice.
create function pg_temp.state(n int, inv text, status text, reason text, cents int, s int, e int, plan text default 'basic_monthly')
returns jsonb language sql as $$
  select jsonb_build_object('kind', 'subscription',
    'subscription', jsonb_build_object('id', 'sub_t' || n, 'status', case when status = 'paid' then 'active' else 'past_due' end,
      'customer', 'cus_t' || n, 'cancel_at_period_end', false,
      'current_period_start', extract(epoch from now() + make_interval(days => s))::bigint,
      'current_period_end', extract(epoch from now() + make_interval(days => e))::bigint,
      'metadata', jsonb_build_object('subscription_id', (select x.id from billing.subscriptions x where x.user_id = pg_temp.u(n)),
        'user_id', pg_temp.u(n), 'plan_id', plan)),
    'invoice', jsonb_build_object('id', inv, 'status', status, 'billing_reason', reason, 'amount_paid',
      case when status = 'paid' then cents else 0 end, 'amount_due', cents, 'currency', 'usd', 'attempted', true,
      'period_start', extract(epoch from now() + make_interval(days => s))::bigint,
      'period_end', extract(epoch from now() + make_interval(days => e))::bigint, 'plan_id', plan))
$$;

select billing.begin_subscription(pg_temp.u(1), 'basic_monthly', 'k1');
select billing.begin_subscription(pg_temp.u(2), 'basic_monthly', 'k2');

-- as service_role (the webhook)
select is(billing.sync_subscription(pg_temp.state(1, 'in_t1', 'paid', 'subscription_create', 999, 0, 30)),
  'plan_credits_granted', 'the first invoice.paid grants the plan''s credits');
select is(pg_temp.bal(1), 10000::numeric, 'the period''s 10,000 credits arrive');
select is(billing.sync_subscription(pg_temp.state(1, 'in_t1', 'paid', 'subscription_create', 999, 0, 30)),
  'plan_invoice_already_granted', 'the same invoice again grants nothing');
select is((select l.priority || ':' || l.cost_cents::int || ':' || (abs(extract(epoch from l.expires_at - now() - interval '30 days')) < 1)
           from billing.lots l join billing.plan_lots pl on pl.lot_id = l.id where pl.subscription_id =
             (select x.id from billing.subscriptions x where x.user_id = pg_temp.u(1))),
  '5:999:true', 'the lot is spent before packages, costs the invoice, and expires at the period''s end');
select is(pg_temp.err($$select billing.sync_subscription(pg_temp.state(2, 'in_t2', 'paid', 'subscription_create', 100, 0, 30))$$),
  'PAYMENT_AMOUNT_MISMATCH', 'a first invoice that does not pay the plan''s price is refused');
select is(billing.sync_subscription(pg_temp.state(1, 'in_t3', 'paid', 'subscription_cycle', 999, 30, 60)),
  'plan_credits_granted', 'the renewal grants the next period');
select is(pg_temp.bal(1), 12000::numeric, 'up to 2,000 of the 10,000 left roll over; the rest expires');
select is((select count(*)::int from billing.lots l join billing.plan_lots pl on pl.lot_id = l.id
           where l.moved_from is not null and abs(extract(epoch from l.expires_at - now() - interval '60 days')) < 1),
  1, 'the rolled-over credits are a lot of their own, moved from the old one, expiring with the new period');
select is(billing.sync_subscription(pg_temp.state(1, 'in_t4', 'paid', 'subscription_update', 500, 10, 30, 'pro_monthly')),
  'plan_invoice_stale', 'an invoice for a period older than one granted grants nothing');
select is(billing.sync_subscription(pg_temp.state(1, 'in_t5', 'open', 'subscription_cycle', 999, 60, 90)),
  'plan_payment_failed', 'a failed renewal grants nothing');
select is((select count(*)::int from billing.notification_outbox o where o.user_id = pg_temp.u(1) and o.template = 'plan_payment_failed'),
  1, 'and queues one email to update the card');
select is((select jsonb_build_object('l', c -> 'lots', 'a', c -> 'accounts') from billing.check_lots() c),
  '{"l": [], "a": []}'::jsonb, 'lots and balances agree');

-- A plan whose credits may pay for some models only: each period's lot says so.
update billing.plans set applies_to = '{gpt-4o-mini*}' where id = 'basic_monthly';
select billing.sync_subscription(pg_temp.state(2, 'in_t6', 'paid', 'subscription_create', 999, 0, 30));
select is((select l.applies_to from billing.lots l join billing.plan_lots pl on pl.lot_id = l.id
           where pl.subscription_id = (select x.id from billing.subscriptions x where x.user_id = pg_temp.u(2))),
  '{gpt-4o-mini*}'::text[], 'a plan for some models grants credits for those models');

-- as authenticated
set local request.jwt.claims = '{"sub": "5ab5ab5a-0000-4000-8000-000000000002", "role": "authenticated"}';
set local role authenticated;
select is((select count(*)::int from billing.subscriptions), 1, 'a student reads only their own subscription');
select is(pg_temp.err($$select billing.sync_subscription('{}')$$), 'permission denied for function sync_subscription',
  'a student cannot apply Stripe state');
reset role;

select * from finish();
rollback;
