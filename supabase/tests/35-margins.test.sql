-- Provider cost and margins: a charge's cost is its counts times the provider price in effect
-- when it was made (versions by effective_from), exact to 18 places; the margins report per
-- model, organisation and student answers the same from the ledger live and from usage_daily
-- once rolled; only the service role may read it.
begin;
select plan(24);

insert into auth.users (id, email) values
  ('46000000-0000-4000-8000-000000000001', 'student@margins.test'),
  ('46000000-0000-4000-8000-000000000002', 'owner@margins.test'),
  ('46000000-0000-4000-8000-000000000003', 'member@margins.test');
create temp table t0 as select (now() at time zone 'UTC')::date as today, '46000000-0000-4000-8000-000000000001'::uuid as u,
  '46000000-0000-4000-8000-000000000003'::uuid as m,
  (billing.create_org('46000000-0000-4000-8000-000000000002', 'Margins School', 'pool', true) ->> 'id')::uuid as org;

-- Sold at 2 / 8 USD per million (× 1.5); bought at 1 / 4 until yesterday, then 1.5 / 5 with
-- cached input at 0.25 (reasoning at the output price).
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
values ('margins-test', 1, 2, 8, 1.5, now() - interval '10 days');
insert into billing.provider_prices (model, version, usd_per_million_input, usd_per_million_output,
  usd_per_million_cached_input, effective_from)
values ('margins-test', 1, 1, 4, null, now() - interval '10 days'),
       ('margins-test', 2, 1.5, 5, 0.25, now() - interval '1 day');

select billing.grant_credits((select u from t0), 1000, 'adjustment', 'margins-test:grant');
select billing.grant_org_credits((select org from t0), 100, 'adjustment', 'margins-test:org', 'pilot', null);
select billing.invite_member('46000000-0000-4000-8000-000000000002', (select org from t0), 'member@margins.test', 'member',
  'margins-test-hash', 86400);
select billing.answer_invitation('46000000-0000-4000-8000-000000000003', 'member@margins.test', 'margins-test-hash', true);
-- a: 9 credits, cost at v1 (1000 × 1 + 500 × 4) / 10^6 = 0.003 (backdated 3 days below).
select billing.charge_usage((select u from t0), 'margins-test', 1000, 500, 'margins-test:a');
-- b: (2000 × 2 + 1000 × 2 + 1000 × 8 + 500 × 8) × 1.5 / 1000 = 27 credits;
--    cost at v2 (2000 × 1.5 + 1000 × 0.25 + 1000 × 5 + 500 × 5) / 10^6 = 0.01075.
select billing.charge_usage((select u from t0), 'margins-test', 2000, 1000, 'margins-test:b', null, null, 1000, 500);
-- c: a member, paid by the school: 3 credits, cost 0.0015.
select billing.charge_usage((select m from t0), 'margins-test', 1000, 0, 'margins-test:c');

alter table billing.transfers disable trigger transfers_immutable;
alter table billing.entries disable trigger entries_immutable;
update billing.transfers set created_at = now() - interval '3 days' where idempotency_key = 'margins-test:a';
update billing.entries e set created_at = t.created_at from billing.transfers t
  where t.id = e.transfer_id and t.idempotency_key = 'margins-test:a';
alter table billing.transfers enable trigger transfers_immutable;
alter table billing.entries enable trigger entries_immutable;

-- Nothing rolled since before those days (in this transaction only).
delete from billing.usage_daily where day >= (select today - 5 from t0);
insert into billing.usage_rollup (rolled_through) values ((select today - 5 from t0))
  on conflict (singleton) do update set rolled_through = excluded.rolled_through;

select is(billing.provider_cost('margins-test', now() - interval '3 days', '{"input_tokens": 1000, "output_tokens": 500}'),
  0.003::numeric, 'a charge is costed at the provider price in effect when it was made');
select is(billing.provider_cost('margins-test', now(),
    '{"input_tokens": 1, "output_tokens": 0, "cached_input_tokens": 1, "reasoning_tokens": 1, "images": 3}'),
  0.00000675::numeric, 'one token of each kind at the current version, exact; images without a price cost nothing');
select is(billing.provider_cost('margins-test', now() - interval '11 days', '{"input_tokens": 1000}'), null::numeric,
  'before any provider price a charge''s cost is unknown (null), not nothing');

create temp table report as select
  billing.margins_report((select today - 9 from t0), (select today + 1 from t0), 'model') as by_model,
  billing.margins_report((select today - 9 from t0), (select today + 1 from t0), 'student') as by_student,
  billing.margins_report((select today - 9 from t0), (select today + 1 from t0), 'org') as by_org;

select is((select g from report, jsonb_array_elements(by_model -> 'groups') g where g ->> 'key' = 'margins-test'),
  '{"key": "margins-test", "revenue_credits": "39", "revenue_usd": "0.039", "cost_usd": "0.01525",
    "margin_usd": "0.02375", "margin_percent": "60.9", "uncosted_credits": "0"}', 'live, per model: revenue, cost and margin of all three');
select is((select g from report, jsonb_array_elements(by_student -> 'groups') g where g ->> 'key' = (select u::text from t0)),
  '{"key": "46000000-0000-4000-8000-000000000001", "revenue_credits": "36", "revenue_usd": "0.036",
    "cost_usd": "0.01375", "margin_usd": "0.02225", "margin_percent": "61.81", "uncosted_credits": "0"}', 'live, per student: their own charges');
select is((select g from report, jsonb_array_elements(by_student -> 'groups') g where g ->> 'key' = (select m::text from t0)),
  '{"key": "46000000-0000-4000-8000-000000000003", "revenue_credits": "3", "revenue_usd": "0.003",
    "cost_usd": "0.0015", "margin_usd": "0.0015", "margin_percent": "50", "uncosted_credits": "0"}', 'live, per student: a member''s school-paid charge');
select is((select g from report, jsonb_array_elements(by_org -> 'groups') g where g ->> 'key' = (select org::text from t0)),
  ('{"key": "' || (select org from t0) || '", "revenue_credits": "3", "revenue_usd": "0.003",
    "cost_usd": "0.0015", "margin_usd": "0.0015", "margin_percent": "50", "uncosted_credits": "0"}')::jsonb, 'live, per organisation: what it paid for');
select ok((select not exists (select 1 from jsonb_array_elements(by_org -> 'groups') g
  where g ->> 'key' = (select u::text from t0)) from report), 'per organisation: a student''s own charges are in no organisation');
select is((select jsonb_array_length(by_model -> 'days') from report), 10, 'one row a day, empty days too');

select ok(billing.roll_up_usage(31) >= 3, 'the roll-up closes the days up to yesterday');
select is((select cost_usd from billing.usage_daily, t0 where user_id = u and model = 'margins-test' and day = today - 3),
  0.003::numeric, 'the rolled day keeps its charge''s cost at the price then');
select is(billing.margins_report((select today - 9 from t0), (select today + 1 from t0), 'model'),
  (select by_model from report), 'rolled days answer exactly what the ledger answered live');

select throws_ok($$select billing.margins_report(current_date, current_date + 1, 'school')$$, 'P0001', 'INVALID_RANGE',
  'by is model, org or student');

-- A charge's cost from the ledger's own counts (at version 2: 1.5 / 5, cached 0.25 per million).
select is(billing.charge_cost('hold_capture', 'margins-test', now(), 5, '{"ai_call_id": "c", "input_tokens": 1000}'),
  0.0015::numeric, 'an AI call''s capture is costed from the counts the gateway recorded');
select is(billing.charge_cost('hold_capture', 'margins-test', now(), 5, '{"input_tokens": 1000}'), 0::numeric,
  'a server''s own capture counts no tokens of its caller''s');
select is(billing.charge_cost('usage', 'margins-test', now(), 2,
    '{"reserved": "3", "priced": "5", "unbilled": "0", "input_tokens": 1000}'), 0::numeric,
  'an excess beyond a hold that captured costs nothing (the capture carries the call''s counts)');
select is(billing.charge_cost('usage', 'margins-test', now(), 5,
    '{"reserved": "3", "priced": "5", "unbilled": "0", "input_tokens": 1000}'), 0.0015::numeric,
  'an excess that is the whole price (nothing captured) carries the cost');
select is(billing.charge_cost('hold_capture', 'margins-test', now(), 1, '{"input_tokens": 1000}'), 0::numeric,
  'a job''s capture (no AI call) carries caller-written counts: they cost nothing');
select is(billing.charge_cost('usage', 'margins-unpriced', now(), 1, '{"input_tokens": 1000}'), null::numeric,
  'a model without a provider price has an unknown cost');

-- A model sold without a provider price: its margin is unknown, never 100%, and margin_low stays quiet.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
values ('margins-unpriced', 1, 100, 100, 1, now() - interval '10 days');
select billing.charge_usage((select u from t0), 'margins-unpriced', 1000, 0, 'margins-test:unpriced');
alter table billing.transfers disable trigger transfers_immutable;
alter table billing.entries disable trigger entries_immutable;
update billing.transfers set created_at = now() - interval '3 days' where idempotency_key = 'margins-test:unpriced';
update billing.entries e set created_at = t.created_at from billing.transfers t
  where t.id = e.transfer_id and t.idempotency_key = 'margins-test:unpriced';
alter table billing.transfers enable trigger transfers_immutable;
alter table billing.entries enable trigger entries_immutable;
delete from billing.usage_daily where day >= (select today - 5 from t0);
update billing.usage_rollup set rolled_through = (select today - 5 from t0);
select billing.roll_up_usage(31);
select is((select g - 'key' from jsonb_array_elements(billing.margins_report((select today - 9 from t0), (select today + 1 from t0),
    'model') -> 'groups') g where g ->> 'key' = 'margins-unpriced'),
  '{"revenue_credits": "100", "revenue_usd": "0.1", "cost_usd": null, "margin_usd": null, "margin_percent": null,
    "uncosted_credits": "100"}', 'a model without a provider price: cost, margin and percentage unknown, never 100%');
select is((select billing.margins_report((select today - 9 from t0), (select today + 1 from t0), 'model') -> 'totals' ->> 'margin_percent'),
  null, 'totals with unknown costs in them have no margin either');
update billing.usage_rollup set rolled_through = (select today - 3 from t0);
update billing.alert_settings set margin_min_percent = 99, margin_min_revenue_usd = 0;
select billing.evaluate_usage_alerts();
select ok(not exists (select 1 from billing.alerts a where a.condition = 'margin_low:margins-unpriced' and a.status = 'open'),
  'margin_low never fires on a model whose cost is unknown');
select ok(exists (select 1 from billing.alerts a where a.condition = 'margin_low:margins-test' and a.status = 'open'),
  'the same day, the priced model under the threshold does fire');

-- as authenticated
set local role authenticated;
select throws_ok($$select billing.margins_report(current_date, current_date + 1, 'model')$$, '42501', null,
  'a signed-in user cannot read margins');
reset role;

select * from finish();
rollback;
