-- The usage alerts (billing.evaluate_usage_alerts, through evaluate_alerts): margin_low per model
-- and cost_spike per day fire over the last rolled day, deliver like every alert (one open row,
-- one outbox email), and clear; a short, flat or merely busy history does not fire; thresholds
-- come from billing.alert_settings. usage_daily rows are written directly, with controlled costs,
-- on a day no other data shares.
begin;
select plan(16);

create temp table t0 as select date '2024-03-20' as d,
  '48000000-0000-4000-8000-00000000000a'::uuid as spiky,   -- a pattern, then a jump
  '48000000-0000-4000-8000-00000000000b'::uuid as small,   -- flat zero, one small charge today
  '48000000-0000-4000-8000-00000000000c'::uuid as fresh,   -- a short history, then a big day
  '48000000-0000-4000-8000-00000000000f'::uuid as flat,    -- flat, today a little more
  '48000000-0000-4000-8000-000000000010'::uuid as busy,    -- a wide pattern, today inside it
  '48000000-0000-4000-8000-000000000011'::uuid as member,  -- spends the school's credits
  '48000000-0000-4000-8000-000000000012'::uuid as school;

-- Only this test's rows on these days; the roll-up holds through d (in this transaction).
delete from billing.usage_daily where day between (select d - 30 from t0) and (select d + 1 from t0);
insert into billing.usage_rollup (rolled_through) values ((select d from t0))
  on conflict (singleton) do update set rolled_through = excluded.rolled_through;
update billing.alert_settings set margin_min_percent = 20, margin_min_revenue_usd = 1, cost_spike_sigmas = 4,
  cost_spike_min_jump_usd = 5;

create function pg_temp.usage(p_user uuid, p_org uuid, p_day date, p_model text, p_credits numeric, p_cost numeric)
returns void language sql as $$
  insert into billing.usage_daily (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens, cost_usd)
  values (p_user, p_org, p_day, p_model, p_credits, 1, 0, 0, p_cost)
$$;
create function pg_temp.open_alert(p_condition text) returns billing.alerts language sql as $$
  select * from billing.alerts where condition = p_condition and status = 'open'
$$;

-- Margins on d: 1,000 credits = 1 USD of revenue.
select pg_temp.usage(spiky, null, d, 'alerts-low', 10000, 9) from t0;      -- 10 USD, cost 9: 10%
select pg_temp.usage(spiky, null, d, 'alerts-fine', 10000, 5) from t0;     -- 50%
select pg_temp.usage(small, null, d, 'alerts-tiny', 500, 0.5) from t0;     -- 0%, but 0.5 USD of revenue

-- Costs per day (model alerts-cost, credits at 10× cost: a healthy margin).
select pg_temp.usage(spiky, null, d - i, 'alerts-cost', c * 10000, c)     -- 1,2,1,2,1,2,1: mean 1.43, σ 0.49
  from t0, unnest(array[1, 2, 3, 4, 5, 6, 7], array[1, 2, 1, 2, 1, 2, 1]::numeric[]) x(i, c);
select pg_temp.usage(spiky, null, d, 'alerts-cost', 200000, 20) from t0;  -- 20 (+ the margins rows: 26 by then)
select pg_temp.usage(small, null, d - 20, 'alerts-cost', 10, 0.001) from t0;
select pg_temp.usage(small, null, d, 'alerts-cost', 30000, 3) from t0;    -- far above 0 + 4 × 0, under the floor
select pg_temp.usage(fresh, null, d - 3, 'alerts-cost', 10000, 1) from t0;
select pg_temp.usage(fresh, null, d, 'alerts-cost', 500000, 50) from t0;  -- no pattern yet: first charge 3 days ago
select pg_temp.usage(flat, null, d - i, 'alerts-cost', 100000, 10) from t0, generate_series(1, 8) i;
select pg_temp.usage(flat, null, d, 'alerts-cost', 120000, 12) from t0;   -- σ 0, but 2 above the mean
select pg_temp.usage(busy, null, d - i, 'alerts-cost', c * 10000, c)      -- 0,20,…: mean 8.57, σ 9.9
  from t0, unnest(array[1, 2, 3, 4, 5, 6, 7], array[0, 20, 0, 20, 0, 20, 0]::numeric[]) x(i, c);
select pg_temp.usage(busy, null, d, 'alerts-cost', 300000, 30) from t0;   -- inside mean + 4σ
select pg_temp.usage(member, school, d - i, 'alerts-cost', 20000, 2) from t0, generate_series(1, 8) i;
select pg_temp.usage(member, school, d, 'alerts-cost', 300000, 30) from t0;

select count(*) from billing.evaluate_alerts();

-- margin_low
select is((select details ->> 'margin_percent' from pg_temp.open_alert('margin_low:alerts-low')), '10',
  'a model whose margin on the last rolled day is under the threshold opens margin_low:<model>');
select is((select count(*)::int from billing.alerts where condition in ('margin_low:alerts-fine', 'margin_low:alerts-tiny')), 0,
  'a model above the threshold, or under it on too little revenue, opens nothing');
select is((select count(*)::int from billing.notification_outbox
           where template = 'alert' and payload ->> 'condition' = 'margin_low:alerts-low'), 1,
  'the alert is queued for delivery like every alert (template alert)');
select count(*) from billing.evaluate_alerts();
select is((select count(*)::int from billing.alerts where condition = 'margin_low:alerts-low')
        + (select count(*)::int from billing.notification_outbox where payload ->> 'condition' = 'margin_low:alerts-low'), 2,
  'evaluating again keeps one alert and one email');
update billing.usage_daily set cost_usd = 1 where model = 'alerts-low';
select count(*) from billing.evaluate_alerts();
select is((select status from billing.alerts where condition = 'margin_low:alerts-low'), 'resolved',
  'the alert resolves when the margin recovers');
update billing.alert_settings set margin_min_percent = 60;
select count(*) from billing.evaluate_alerts();
select ok((pg_temp.open_alert('margin_low:alerts-fine')).id is not null, 'the threshold is billing.alert_settings''s: at 60%, 50% fires');
update billing.alert_settings set margin_min_percent = 20;

-- cost_spike
create temp table spike as select a.* from billing.alerts a, t0 where condition = 'cost_spike:' || d and status = 'open';
select is((select array_agg(e ->> 'kind' || ':' || (e ->> 'id') order by e ->> 'id') from spike, jsonb_array_elements(details -> 'top') e),
  (select array['student:' || spiky, 'student:' || member, 'org:' || school] from t0),
  'the day''s cost jumps of a student with a pattern, and of a school and the member spending its credits, open cost_spike:<day>');
select is((select details ->> 'accounts' from spike), '3', 'the alert counts the accounts');
select is((select e from spike, t0, jsonb_array_elements(details -> 'top') e where e ->> 'id' = spiky::text),
  (select jsonb_build_object('kind', 'student', 'id', spiky, 'cost_usd', '26', 'mean_usd', '1.428571', 'stddev_usd', '0.494872') from t0),
  'each account: its id (no email), the day''s cost, the mean and σ of the 7 days before');
select ok((select not exists (select 1 from spike, t0, jsonb_array_elements(details -> 'top') e
                              where e ->> 'id' in (small::text, fresh::text, flat::text, busy::text))),
  'no alert for flat zero and a small charge, a short history, a flat day a little higher, or a day inside a wide pattern');
select is((select count(*)::int from billing.notification_outbox n, spike where n.payload ->> 'alert_id' = spike.id::text), 1,
  'the day''s spikes send one email');
update billing.alert_settings set cost_spike_min_jump_usd = 1;
select count(*) from billing.evaluate_alerts();
select ok((select details -> 'top' @> jsonb_build_array(jsonb_build_object('id', flat)) from pg_temp.open_alert('cost_spike:2024-03-20'), t0),
  'a lower floor lets a flat history''s small jump fire (σ 0): the floor is the setting');
update billing.alert_settings set cost_spike_min_jump_usd = 5;
update billing.usage_rollup set rolled_through = rolled_through + 1;
select count(*) from billing.evaluate_alerts();
select is((select status from billing.alerts a, t0 where condition = 'cost_spike:' || d), 'resolved',
  'the day''s alert resolves once the next day is rolled and nothing jumps then');
select is((select count(*)::int from billing.alerts where condition like 'margin_low:alerts-%' and status = 'open'), 0,
  'a day without charges of a model resolves its margin alert');

-- as authenticated
set local role authenticated;
select throws_ok('select billing.evaluate_usage_alerts()', '42501', null, 'a signed-in user cannot evaluate alerts');
select throws_ok('select * from billing.alert_settings', '42501', null, 'a signed-in user cannot read the thresholds');
reset role;

select * from finish();
rollback;
