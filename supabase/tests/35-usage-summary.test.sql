-- The usage summary: closed days rolled up into usage_daily answer exactly what the ledger
-- answers live (own and school-paid charges, tokens, models, day and week buckets), each day is
-- rolled once, today stays live, caller metadata never counts as tokens, and the runway.
begin;
select plan(15);

insert into auth.users (id, email) values
  ('45000000-0000-4000-8000-000000000001', 'student@usage.test'),
  ('45000000-0000-4000-8000-000000000002', 'owner@usage.test'),
  ('45000000-0000-4000-8000-000000000003', 'member@usage.test');
create temp table t0 as select (now() at time zone 'UTC')::date as today, '45000000-0000-4000-8000-000000000001'::uuid as u,
  '45000000-0000-4000-8000-000000000003'::uuid as m,
  (billing.create_org('45000000-0000-4000-8000-000000000002', 'Usage School', 'pool', true) ->> 'id')::uuid as org;

-- A student charging on three days; a school's member charged to the school's pool. In the
-- order of their days, as the ledger writes them (its ids and times agree).
select billing.grant_credits((select u from t0), 1000, 'adjustment', 'usage-test:grant');
select billing.grant_org_credits((select org from t0), 100, 'adjustment', 'usage-test:org', 'pilot', null);
select billing.invite_member('45000000-0000-4000-8000-000000000002', (select org from t0), 'member@usage.test', 'member',
  'usage-test-hash', 86400);
select billing.answer_invitation('45000000-0000-4000-8000-000000000003', 'member@usage.test', 'usage-test-hash', true);
select billing.charge_usage((select u from t0), 'gpt-4o', 1000, 500, 'usage-test:a');
select billing.charge_usage((select m from t0), 'gpt-4o', 1000, 0, 'usage-test:f');
-- b reports cached input and reasoning too (the other kinds: tests/15-catalog-token-kinds).
select billing.charge_usage((select u from t0), 'gpt-4o-mini', 2000, 1000, 'usage-test:b', null, null, 1000, 500);
-- A job's capture whose caller put token-like keys in its metadata: a charge, but no tokens.
select billing.capture_hold((select u from t0), (billing.reserve_credits((select u from t0), 2.5, 'usage-test:d', 900, null,
  '{"model": "gpt-4o"}')).hold_id, 2.5, null, '{"model": "gpt-4o", "input_tokens": 77, "output_tokens": "many"}');
-- Its transfer is keyed by its hold: named by the test's key from here on.
create temp table d_hold as select h.id from billing.holds h where h.idempotency_key = 'usage-test:d';
select billing.charge_usage((select m from t0), 'gpt-4o', 2000, 0, 'usage-test:g');
select billing.charge_usage((select u from t0), 'gpt-4o', 400, 0, 'usage-test:c');
select billing.charge_usage((select u from t0), 'claude-haiku-4-5', 100, 100, 'usage-test:e');

-- Backdate them (the test owns the tables; the ledger is dated by insertion): a and f three
-- days ago, b, d and g two days ago; c and e stay today.
alter table billing.transfers disable trigger transfers_immutable;
alter table billing.entries disable trigger entries_immutable;
update billing.transfers set created_at = now() - interval '3 days' where idempotency_key in ('usage-test:a', 'usage-test:f');
update billing.transfers set created_at = now() - interval '2 days'
  where idempotency_key in ('usage-test:b', 'usage-test:g') or hold_id = (select id from d_hold);
update billing.entries e set created_at = t.created_at from billing.transfers t
  where t.id = e.transfer_id and (t.idempotency_key like 'usage-test:%' or t.hold_id = (select id from d_hold));
alter table billing.transfers enable trigger transfers_immutable;
alter table billing.entries enable trigger entries_immutable;

-- Nothing rolled since before those days (in this transaction only).
delete from billing.usage_daily where day >= (select today - 5 from t0);
insert into billing.usage_rollup (rolled_through) values ((select today - 5 from t0))
  on conflict (singleton) do update set rolled_through = excluded.rolled_through;

create temp table live as select
  billing.usage_summary((select u from t0), (select today - 9 from t0), (select today + 1 from t0), 'day') as own,
  billing.usage_summary((select u from t0), (select today - 9 from t0), (select today + 1 from t0), 'week') as own_weekly,
  billing.org_member_usage_summary('45000000-0000-4000-8000-000000000002', (select org from t0), (select m from t0),
    (select today - 9 from t0), (select today + 1 from t0), 'day') as member;

select is((live.own -> 'totals' ->> 'requests')::int, 5, 'live: five charges of the student') from live;
select is(live.own -> 'totals' -> 'tokens',
  '{"input": 3500, "output": 1600, "cached_input": 1000, "reasoning": 500, "images": 0, "audio_seconds": 0}',
  'live: tokens of the priced charges only, by kind')
from live;
select is(live.member -> 'totals' ->> 'school_funded', live.member -> 'totals' ->> 'credits',
  'live: the member''s charges were all school-paid') from live;

select ok(billing.roll_up_usage(31) >= 3, 'the roll-up closes the days up to yesterday (or the day before, before 01:00 UTC)');
select ok((select rolled_through >= today - 2 from billing.usage_rollup, t0), 'the watermark passed the backdated days');
select is((select count(*)::int from billing.usage_daily d, t0 where d.user_id in (t0.u, t0.m) and d.day = t0.today), 0,
  'today is never rolled');
select is(
  (select array_agg(d.model || ':' || trim_scale(d.credits) || ':' || d.requests || ':' || d.input_tokens || ':'
     || coalesce(d.org_id::text, 'own') order by d.day, d.model, d.org_id)
   from billing.usage_daily d, t0 where d.user_id = t0.u and d.day >= t0.today - 3),
  (select array_agg(x order by n) from t0, lateral (values
     (1, 'gpt-4o:50:1:1000:own'), (2, 'gpt-4o:2.5:1:0:own'), (3, 'gpt-4o-mini:5.1:1:2000:own')) v(n, x)), -- its 1,000 cached tokens at half the input price
  'the rolled rows: per day and model, the capture''s planted tokens not counted');
select is(
  (select d.cached_input_tokens || ':' || d.reasoning_tokens || ':' || d.images || ':' || d.audio_seconds
   from billing.usage_daily d, t0 where d.user_id = t0.u and d.model = 'gpt-4o-mini'),
  '1000:500:0:0', 'the rolled rows keep every kind');
select is(
  (select array_agg(d.day - t0.today || ':' || trim_scale(d.credits) order by d.day)
   from billing.usage_daily d, t0 where d.user_id = t0.m and d.org_id = t0.org),
  array['-3:20', '-2:40'], 'the member''s school-paid days, under the school');

select is(billing.usage_summary((select u from t0), (select today - 9 from t0), (select today + 1 from t0), 'day'),
  live.own, 'rolled days and the live rest answer what the ledger answers live') from live;
select is(billing.usage_summary((select u from t0), (select today - 9 from t0), (select today + 1 from t0), 'week'),
  live.own_weekly, 'by week too') from live;
select is(billing.org_member_usage_summary('45000000-0000-4000-8000-000000000002', (select org from t0), (select m from t0),
  (select today - 9 from t0), (select today + 1 from t0), 'day'), live.member, 'and for the member, as the school sees it')
from live;

select is(billing.roll_up_usage(31), 0, 'a second run rolls nothing: each day once');

select is(billing.usage_summary((select u from t0), (select today - 9 from t0), (select today + 1 from t0), 'day')
  -> 'runway' ->> 'pace_per_day', trim_scale(round(
    (select sum(t.amount) from billing.transfers t where (t.idempotency_key like 'usage-test:%' or t.hold_id = (select id from d_hold))
       and t.idempotency_key not in ('usage-test:f', 'usage-test:g', 'usage-test:org', 'usage-test:grant'))::numeric(38, 18) / 7, 18))::text,
  'the runway''s pace: the last 7 days'' own charges ÷ 7');

select throws_ok($$select billing.usage_summary(gen_random_uuid(), '2026-01-01', '2027-01-03', 'day')$$, 'P0001', 'INVALID_RANGE',
  'more than 366 days is refused by the function itself');

select * from finish();
rollback;
