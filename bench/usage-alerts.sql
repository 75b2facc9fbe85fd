-- What the usage alerts add to the minute's alert evaluation (pg_cron, billing.evaluate_alerts),
-- on a realistic roll-up: 5,000 students, 90 days, two models a student on 4 days of 5, one
-- student in ten a member of one of 50 schools, and 25 students whose last day jumps. Runs in
-- one transaction and rolls back (nothing stays):
--   PGPASSWORD=postgres psql -h 127.0.0.1 -p $DB_PORT -U postgres -d postgres -f bench/usage-alerts.sql
-- Figures: docs/runbook.md § Alerts (usage alerts).
\timing on
begin;
delete from billing.usage_daily where day > current_date - 120;
insert into billing.usage_rollup (rolled_through) values (current_date - 1)
  on conflict (singleton) do update set rolled_through = excluded.rolled_through;

insert into billing.usage_daily (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens, cost_usd)
select ('49000000-0000-4000-8000-' || lpad(s::text, 12, '0'))::uuid,
  case when s % 10 = 0 then ('49100000-0000-4000-8000-' || lpad((s % 50)::text, 12, '0'))::uuid end,
  current_date - d, m.model, c.cost * 2000, 10, 10000, 2000, c.cost
from generate_series(1, 5000) s
cross join generate_series(1, 90) d
cross join (values ('gpt-4o'), ('gpt-4o-mini')) m(model)
cross join lateral (select round((0.05 + random() * 0.2
  * case when d = 1 and s % 200 = 0 then 500 else 1 end)::numeric, 6) as cost) c -- 25 students jump on the last day
where (s + d) % 5 <> 0;
analyze billing.usage_daily;
select count(*) as usage_daily_rows from billing.usage_daily;

-- Warm, then measured: the whole evaluation, and the usage alerts alone.
select count(*) from billing.evaluate_alerts();
explain (analyze, timing off, summary on) select count(*) from billing.evaluate_alerts();
explain (analyze, timing off, summary on) select billing.evaluate_usage_alerts();
explain (analyze, timing off, summary on) select billing.evaluate_usage_alerts();
select condition, details ->> 'accounts' as accounts from billing.alerts
where status = 'open' and (condition like 'cost_spike:%' or condition like 'margin_low:%');
rollback;
