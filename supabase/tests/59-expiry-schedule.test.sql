-- The expiry schedule: every upcoming expiry of a student's own credits with its amount, and
-- for the live plan's current period what its rollover rule carries over (up to N credits, or a
-- share of the plan's credits, never more than is left), nothing when the plan will not renew;
-- read-only, and only the service role may call it.
begin;
select plan(10);
\ir helpers.psql

insert into auth.users (id) values ('e5c4ed01-0000-4000-8000-000000000001'), ('e5c4ed01-0000-4000-8000-000000000002');
create function pg_temp.u(n int) returns uuid language sql as $$ select ('e5c4ed01-0000-4000-8000-00000000000' || n)::uuid $$;
-- Stripe's state after a paid first invoice of `plan` for user n: period [now, now + 30 days).
create function pg_temp.paid(n int, plan text, cents int, cancelling boolean default false) returns text language sql as $$
  select billing.sync_subscription(jsonb_build_object('kind', 'subscription',
    'subscription', jsonb_build_object('id', 'sub_x' || n, 'status', 'active', 'customer', 'cus_x' || n,
      'cancel_at_period_end', cancelling,
      'current_period_start', extract(epoch from now())::bigint,
      'current_period_end', extract(epoch from now() + interval '30 days')::bigint,
      'metadata', jsonb_build_object('subscription_id', (select x.id from billing.subscriptions x where x.user_id = pg_temp.u(n)),
        'user_id', pg_temp.u(n), 'plan_id', plan)),
    'invoice', jsonb_build_object('id', 'in_x' || n, 'status', 'paid', 'billing_reason', 'subscription_create',
      'amount_paid', cents, 'amount_due', cents, 'currency', 'usd', 'attempted', true,
      'period_start', extract(epoch from now())::bigint,
      'period_end', extract(epoch from now() + interval '30 days')::bigint, 'plan_id', plan)))
$$;
-- The schedule as text rows: source:credits:rolls_over:expires:plan_id:plan_renews (t/f).
create function pg_temp.rows(n int) returns text[] language sql as $$
  select array_agg(concat_ws(':', s.source, s.credits, s.rolls_over, s.expires, s.plan_id, s.plan_renews)
                   order by s.ends_at, s.source)
  from billing.get_expiry_schedule(pg_temp.u(n)) s
$$;

select billing.begin_subscription(pg_temp.u(1), 'basic_monthly', 'k1');
select billing.begin_subscription(pg_temp.u(2), 'pro_monthly', 'k2');

-- as service_role
select is((select count(*)::int from billing.get_expiry_schedule(pg_temp.u(1))), 0, 'a student with no credits has no expiry');
select pg_temp.paid(1, 'basic_monthly', 999);
select is(pg_temp.rows(1), array['plan:10000:2000:8000:basic_monthly:t'],
  'of a Basic period''s 10,000 credits, up to 2,000 roll over at the renewal and 8,000 end');
select is((select abs(extract(epoch from s.ends_at - now() - interval '30 days')) < 1 from billing.get_expiry_schedule(pg_temp.u(1)) s),
  true, 'they end with the period');
select pg_temp.spend(pg_temp.u(1), 8500, 'spend-1');
select is(pg_temp.rows(1), array['plan:1500:1500:0:basic_monthly:t'],
  'with 1,500 left, all of it rolls over: never more than is left');
select billing.grant_credits(pg_temp.u(1), 40, 'promo_grant', 'promo-1', null, null, null,
  jsonb_build_object('expires_at', now() + interval '10 days'));
select billing.grant_credits(pg_temp.u(1), 25, 'purchase', 'buy-1', null, null, null,
  jsonb_build_object('expires_at', now() + interval '60 days'));
select billing.grant_credits(pg_temp.u(1), 5, 'adjustment', 'fix-1', null, null, null, null);
select is(pg_temp.rows(1), array['promotional:40:0:40', 'plan:1500:1500:0:basic_monthly:t', 'paid:25:0:25'],
  'every upcoming expiry, soonest first, with its amount; a lot that never expires is not one');

select pg_temp.paid(2, 'pro_monthly', 2999, true);
select is(pg_temp.rows(2), array['plan:35000:0:35000:pro_monthly:f'],
  'a plan ending at the period''s end rolls nothing over: all of it expires');
update billing.subscriptions s set cancel_at_period_end = false where s.user_id = pg_temp.u(2);
select is(pg_temp.rows(2), array['plan:35000:8750:26250:pro_monthly:t'],
  'Pro rolls over up to a quarter of its 35,000 credits (8,750)');
update billing.lots l set frozen = true from billing.accounts a where a.id = l.account_id and a.user_id = pg_temp.u(2);
select is(pg_temp.rows(2), null, 'a disputed (frozen) lot waits for its dispute and is left out');
select is((select jsonb_build_object('l', c -> 'lots', 'a', c -> 'accounts') from billing.check_lots() c),
  '{"l": [], "a": []}'::jsonb, 'reading the schedule moved nothing: lots and balances agree');

-- as authenticated
set local request.jwt.claims = '{"sub": "e5c4ed01-0000-4000-8000-000000000001", "role": "authenticated"}';
set local role authenticated;
select is(pg_temp.err($$select billing.get_expiry_schedule('e5c4ed01-0000-4000-8000-000000000001')$$),
  'permission denied for function get_expiry_schedule', 'a student reads it through the credits function, never directly');
reset role;

select * from finish();
rollback;
