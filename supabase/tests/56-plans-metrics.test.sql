-- Plan reports (billing.plan_metrics, `plans` in revenue_metrics): subscribers and MRR from the
-- paid periods covering the range's end, new and churned against its start, and the credits
-- granted and rolled over in it. A refused plan, a period refunded in full and an invoice that
-- granted nothing (a period already over) count for no one; an upgrade counts at its new plan.
begin;
select plan(10);
\ir helpers.psql

insert into auth.users (id) select ('5a7e5a7e-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 8) n;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('5a7e5a7e-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.d(n int) returns timestamptz language sql as $$ select now() + make_interval(days => n) $$;
insert into billing.subscriptions (user_id, plan_id, request_key, status, refused_at)
select pg_temp.u(n), 'basic_monthly', 'k', 'active', case when n = 6 then now() end from generate_series(1, 8) n;
-- A paid period: user n, invoice id, plan, [from, to) in days from now, granted at, credits, refunded.
create function pg_temp.paid(n int, inv text, plan text, d_from int, d_to int, d_at int, n_credits numeric,
                             refunded int default 0, rolled numeric default 0) returns void language sql as $$
  insert into billing.plan_grants (invoice_id, subscription_id, plan_id, billing_reason, period_start, period_end,
                                   amount_cents, currency, credits, rolled_over, granted_at, amount_refunded_cents)
  select inv, x.id, plan, 'subscription_cycle', pg_temp.d(d_from), pg_temp.d(d_to), p.price_cents, 'usd', n_credits, rolled,
         pg_temp.d(d_at), case when refunded > 0 then p.price_cents else 0 end
  from billing.subscriptions x, billing.plans p where x.user_id = pg_temp.u(n) and p.id = plan
$$;
-- Other tests' plans may be in this database: the assertions are on what these add.
create temp table b as select billing.plan_metrics(pg_temp.d(-25), pg_temp.d(1)) as v;
create function pg_temp.usd(x jsonb) returns numeric language sql as $$
  select coalesce((select (e ->> 'mrr_cents')::numeric from jsonb_array_elements(x -> 'mrr') e where e ->> 'currency' = 'usd'), 0) $$;
select pg_temp.paid(1, 'in_m1a', 'basic_monthly', -40, -10, -40, 10000);
select pg_temp.paid(1, 'in_m1b', 'basic_monthly', -10, 20, -10, 10000, 0, 2000);  -- renewed: stays
select pg_temp.paid(2, 'in_m2', 'basic_monthly', -40, -10, -40, 10000);           -- did not renew: churned
select pg_temp.paid(3, 'in_m3', 'pro_monthly', -5, 25, -5, 35000);                -- new
select pg_temp.paid(4, 'in_m4', 'pro_yearly', -100, 265, -100, 420000);           -- yearly: a twelfth a month
select pg_temp.paid(5, 'in_m5', 'basic_monthly', -5, 25, -5, 10000, 1);           -- refunded in full
select pg_temp.paid(6, 'in_m6', 'basic_monthly', -5, 25, -5, 10000);              -- a refused second plan
select pg_temp.paid(7, 'in_m7a', 'basic_monthly', -20, 10, -20, 10000);           -- new, then upgraded
select pg_temp.paid(7, 'in_m7b', 'pro_monthly', -20, 10, -3, 25000);
select pg_temp.paid(8, 'in_m8', 'basic_monthly', -5, 25, -5, 0);                  -- granted nothing

create temp table m as select billing.plan_metrics(pg_temp.d(-25), pg_temp.d(1)) as v;
create function pg_temp.delta(k text) returns numeric language sql as $$
  select (select (v ->> k)::numeric from m) - (select (v ->> k)::numeric from b) $$;
select is(pg_temp.delta('subscribers'), 4::numeric, 'subscribers at the end: the renewed, the new, the yearly and the upgraded');
select is(pg_temp.delta('new_subscribers'), 2::numeric, 'two were not subscribed at the start');
select is(pg_temp.delta('churned'), 1::numeric, 'one subscribed at the start and not at the end');
select is((select (v ->> 'churn_rate')::numeric from m),
  (select round((v ->> 'churned')::numeric / ((v ->> 'subscribers')::numeric - (v ->> 'new_subscribers')::numeric
    + (v ->> 'churned')::numeric), 6) from m), 'churn is a share of those at the start');
select ok(abs((select pg_temp.usd(v) from m) - (select pg_temp.usd(v) from b) - 9496.1667) < 1,
  'MRR: 9.99 + 29.99 + 299.90/12 + 29.99 (the upgrade at its new plan), rounded to the cent once');
select is(trim_scale(pg_temp.delta('credits_granted')) || ':' || trim_scale(pg_temp.delta('credits_rolled_over')), '100000:2000',
  'credits granted and rolled over in the range, by when they were granted');
select is(billing.plan_metrics(pg_temp.d(-25), pg_temp.d(30)), (select v from m),
  'a range that ends in the future is measured now');
select is(billing.revenue_metrics(pg_temp.d(-25), pg_temp.d(1)) -> 'plans', (select v from m),
  'revenue_metrics carries it');

-- A series reads the plans once for all its periods: each period counts as it would alone.
create function pg_temp.series_plans(g text) returns jsonb language sql as $$
  select jsonb_agg(jsonb_build_array(x -> 'plans', billing.revenue_metrics((x ->> 'from')::timestamptz, (x ->> 'to')::timestamptz) -> 'plans')
    order by x ->> 'from')
  from jsonb_array_elements(billing.metrics_series((now() - interval '45 days')::date, (now() + interval '2 days')::date, g)) x $$;
select ok((select bool_and(p -> 0 = p -> 1) and count(*) = 47 and count(distinct p -> 0) > 5
           from jsonb_array_elements(pg_temp.series_plans('day')) p),
  'each day of a daily series counts plans as that day alone does (and the days differ)');
select ok((select bool_and(p -> 0 = p -> 1) and count(*) >= 7 from jsonb_array_elements(pg_temp.series_plans('week')) p),
  'so does each week of a weekly series, the first and last clipped to the range');

select * from finish();
rollback;
