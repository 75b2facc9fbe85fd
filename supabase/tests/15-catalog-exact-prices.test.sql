-- Exact prices: the six-kind price of awkward inputs (18-digit prices, a 4-digit markup, counts
-- at 10^12, a half at the 19th place) pinned to values worked out by hand, through every path
-- that prices (price_usage, its two-kind inputs, the batch, the dry run). Written before
-- pricing was made cheaper (#36), so that change provably moved no price but the one it
-- corrected (rounded twice, below).
begin;
select plan(14);

insert into auth.users (id) values ('e1000000-0000-4000-8000-000000000001');

-- pin-awkward: every kind priced, 18 fractional digits, markup 1.2345.
-- pin-half: only input priced, so one token costs exactly half of the 18th place.
-- pin-defaults: cached input and reasoning left null (the input and output prices), markup 0.0001.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second) values
  ('pin-awkward', 1, 0.000000000000000001, 1.234567890123456789, 1.2345, now() - interval '1 day',
    999999.999999999999999999, 0.333333333333333333, 0.000000000000000007, 123456.789012345678901234),
  ('pin-half', 1, 0.0000000000000005, 0, 1, now() - interval '1 day', 0, 0, 0, 0),
  ('pin-defaults', 1, 0.000000000000000003, 7.777777777777777777, 0.0001, now() - interval '1 day', null, null, null, null),
  ('pin-dry', 1, 1, 1, 1, now() - interval '1 day', null, null, 0.01, 0.01),
  ('pin-double', 1, 504.5332573663879807, 0, 5.7657, now() - interval '1 day', null, null, null, null);

-- ============================================================ price_usage

-- (1e-18 + 999999.999999999999999999 + 1.234567890123456789 + 0.333333333333333333) × 1.2345 / 1000
--   + (7e-18 + 123456.789012345678901234) × 1.2345 × 1000 = 152408640.537676314663939421905609…
select is((billing.price_usage('pin-awkward', 1, 1, 1, 1, 1, 1)).amount, 152408640.537676314663939422,
  'one of each kind on 18-digit prices is exact, rounded half up at the 18th place');
select is((billing.price_usage('pin-awkward', 1000000000000, 1000000000000, 1000000000000, 1000000000000,
  1000000000000, 1000000000000)).amount, 152408640537676314663.939421905609,
  'every kind at 10^12 is exact to the last digit');
select is((billing.price_usage('pin-awkward', 999999999999, 3, 7, 1000000000000, 9999, 86400)).amount,
  13168411390129.504560371829905781, 'mixed counts on 18-digit prices: …905780|708… rounds up at the 18th place');
select is((billing.price_usage('pin-half', 1, 0, 1, 1, 1, 1)).amount, 0.000000000000000001,
  'half of the 18th place (5e-19) rounds up');
select is((billing.price_usage('pin-half', 3, 0, 1, 1, 1, 1)).amount, 0.000000000000000002,
  '1.5e-18 rounds up to 2e-18');
-- (333 × 3e-18 + 1000000000000 × 3e-18 + 1 × 7.777777777777777777 + 3 × 7.777777777777777777) × 0.0001 / 1000
select is((billing.price_usage('pin-defaults', 333, 1, 1000000000000, 3, 0, 0)).amount, 0.000003111111411111,
  'cached input at the input price and reasoning at the output price, markup 0.0001, exact');
select is((billing.price_usage('pin-defaults', 1, 1, 1, 1, 0, 0)).amount, 0.000001555555555556,
  '1.555555555555555556e-6 rounds at the 18th place');
select is((billing.price_usage('pin-awkward', 999999999999, 7)).amount, 0.010668519657001852,
  'input and output only: (999999999999 × 1e-18 + 7 × 1.234567890123456789) × 1.2345 / 1000');
select is((billing.price_usage('pin-defaults', 123456789, 987654321)).amount, 768.17558299999999996,
  'input and output only on a 0.0001 markup');
select is((billing.price_usage('pin-awkward', 1234567, 89, 101, 2023, 3, 17)).amount, 2591050588.075699681632584048,
  'the price the batch and the dry run must agree with');
-- 254166603 × 504.5332573663879807 × 5.7657 / 1000 = 739367446.135470297831776644|49997: rounded once it ends
-- in …644. The formula before credits per unit divided by 1,000 at 22 places first (…6644|5000, then
-- …645): 10^-18 too much in about one price in a million with 18-digit prices and a 4-digit markup.
select is((billing.price_usage('pin-double', 254166603, 0)).amount, 739367446.135470297831776644,
  'a price is rounded once, at the 18th place (no rounding at the 22nd before it)');

-- ============================================================ the batch and the dry run

select billing.grant_credits('e1000000-0000-4000-8000-000000000001', 10000000000, 'purchase', 'pin:grant');
select is((select (o ->> 'charged')::numeric from jsonb_array_elements(billing.charge_usage_batch(jsonb_build_array(
    jsonb_build_object('event_id', 'pin-b1', 'user_id', 'e1000000-0000-4000-8000-000000000001', 'model', 'pin-awkward',
      'input_tokens', 1234567, 'output_tokens', 89, 'cached_input_tokens', 101, 'reasoning_tokens', 2023, 'images', 3,
      'audio_seconds', 17, 'occurred_at', now())))) o), 2591050588.075699681632584048,
  'the batch prices the awkward event exactly');

select billing.charge_usage('e1000000-0000-4000-8000-000000000001', 'pin-dry', 1234567, 89, 'pin:dry', null, null,
  101, 2023, 3, 17);
create temp table pin_draft as select (billing.draft_rate_card('e1000000-0000-4000-8000-000000000001',
  '{"model": "pin-dry", "usd_per_million_input": "0.000000000000000001", "usd_per_million_output": "1.234567890123456789",
    "usd_per_million_cached_input": "999999.999999999999999999", "usd_per_million_reasoning": "0.333333333333333333",
    "usd_per_image": "0.000000000000000007", "usd_per_audio_second": "123456.789012345678901234", "markup": "1.2345"}',
  'pin') ->> 'id')::uuid as id;
select is((select billing.simulate_rate_card(id, now() - interval '1 hour', now() + interval '1 minute') -> 'totals' ->> 'after'
  from pin_draft), '2591050588.075699681632584048', 'the dry run re-prices the awkward charge exactly');
select is((select billing.simulate_rate_card(id, now() - interval '1 hour', now() + interval '1 minute') -> 'totals' ->> 'before'
  from pin_draft), (select trim_scale(amount)::text from billing.transfers where idempotency_key = 'pin:dry'),
  'the dry run''s before is what was charged');

select * from finish();
rollback;
