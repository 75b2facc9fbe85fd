-- Rate cards by token kind: every kind priced exactly, the defaults for kinds a card leaves
-- null, the refusals, and the kinds reaching the transfer's metadata through every path.
begin;
select plan(22);
\ir helpers.psql

insert into auth.users (id) values ('aaaaaaaa-0000-4000-8000-000000000001'), ('bbbbbbbb-0000-4000-8000-000000000002');

-- A card with every kind priced, and one that leaves the optional kinds null.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second) values
  ('kinds-full', 1, 2, 8, 2, now() - interval '1 day', 0.5, 12, 0.04, 0.006),
  ('kinds-bare', 1, 2, 8, 2, now() - interval '1 day', null, null, null, null);

-- ============================================================ pricing

-- (1000×2 + 4000×0.5 + 500×8 + 250×12) × 2 / 1000 + (3×0.04 + 10×0.006) × 2 × 1000
select is((billing.price_usage('kinds-full', 1000, 500, 4000, 250, 3, 10)).amount, 382.0::numeric,
  'every kind is priced at its own rate, with the markup');
select is((billing.price_usage('kinds-full', 1000, 500)).amount, (billing.price_usage('kinds-full', 1000, 500, 0, 0, 0, 0)).amount,
  'absent kinds count as zero');
select is((billing.price_usage('kinds-full', 1000, 500, null, null, null, null)).amount, 12.0::numeric,
  'null optional kinds count as zero');
select is((billing.price_usage('kinds-bare', 0, 0, 1000000, 0)).amount, (billing.price_usage('kinds-bare', 1000000, 0)).amount,
  'a card without a cached-input price charges cached input at the input price');
select is((billing.price_usage('kinds-bare', 0, 0, 0, 1000000)).amount, (billing.price_usage('kinds-bare', 0, 1000000)).amount,
  'a card without a reasoning price charges reasoning at the output price');
select is(pg_temp.err($$select billing.price_usage('kinds-bare', 1, 1, 0, 0, 1, 0)$$), 'UNPRICED_USAGE',
  'images on a card without an image price are refused');
select is(pg_temp.detail($$select billing.price_usage('kinds-bare', 1, 1, 0, 0, 0, 5)$$) ->> 'kind', 'audio_seconds',
  'audio on a card without an audio price is refused, naming the kind');
select is((billing.price_usage('kinds-bare', 1000, 0, 0, 0, 0, 0)).amount, 4.0::numeric,
  'zero images on a card without an image price is no refusal');
select is((billing.price_usage('kinds-full', 1, 0, 1, 0, 0, 1)).amount, 12.005::numeric,
  'prices are exact: a token at $2 and one at $0.5 a million, and an audio second at $0.006, × 2');
select is(pg_temp.err($$select billing.price_usage('kinds-full', 1, 1, -1, 0)$$), 'INVALID_TOKENS',
  'a negative cached-input count is refused');
select is(pg_temp.err($$select billing.price_usage('kinds-full', 1, 1, 0, 0, 0, -1)$$), 'INVALID_TOKENS',
  'a negative audio count is refused');
select is(pg_temp.err($$select billing.price_usage('kinds-full', 1, 1, 0, 9223372036854775807)$$), 'INVALID_TOKENS',
  'a count above 10^12 is refused before it can overflow an amount');
select is(pg_temp.err($$insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from, usd_per_image) values ('neg', 1, 1, 1, 1, now(), -1)$$),
  'new row for relation "rate_cards" violates check constraint "rate_cards_prices_in_range"',
  'a negative per-unit price is refused by the table');

-- ============================================================ the paths that charge

select lives_ok($$select billing.grant_credits('aaaaaaaa-0000-4000-8000-000000000001', 10000, 'purchase', 'kinds-grant')$$,
  'a student has credits');
select is((billing.charge_usage('aaaaaaaa-0000-4000-8000-000000000001', 'kinds-full', 1000, 500, 'kinds-usage-1', null,
  '{"reasoning_tokens": "forged"}', 4000, 250, 3, 10)).charged, 382.0::numeric,
  'POST /credits/usage''s function charges every kind');
select is((select metadata - 'model' from billing.transfers where idempotency_key = 'kinds-usage-1'),
  '{"images": 3, "input_tokens": 1000, "audio_seconds": 10, "output_tokens": 500, "reasoning_tokens": 250, "cached_input_tokens": 4000}'::jsonb,
  'the usage transfer records every kind, over the caller''s metadata');
select is((billing.run_usage_report('aaaaaaaa-0000-4000-8000-000000000001', 'credits.usage', 'kinds-usage-2', 'h-kinds-2',
  'r-kinds-2', '{"model": "kinds-full", "input_tokens": 0, "output_tokens": 0, "images": 1}', 201)).data ->> 'charged', '80',
  'the money request passes the optional kinds through');
select is(
  (select jsonb_agg(o ->> 'status' order by ord) from jsonb_array_elements(billing.charge_usage_batch(jsonb_build_array(
    jsonb_build_object('event_id', 'kinds-b1', 'user_id', 'aaaaaaaa-0000-4000-8000-000000000001', 'model', 'kinds-full',
      'input_tokens', 0, 'output_tokens', 0, 'reasoning_tokens', 1000, 'occurred_at', now()),
    jsonb_build_object('event_id', 'kinds-b2', 'user_id', 'aaaaaaaa-0000-4000-8000-000000000001', 'model', 'kinds-bare',
      'input_tokens', 0, 'output_tokens', 0, 'images', 1, 'occurred_at', now()),
    jsonb_build_object('event_id', 'kinds-b3', 'user_id', 'aaaaaaaa-0000-4000-8000-000000000001', 'model', 'kinds-full',
      'input_tokens', 0, 'output_tokens', -5, 'occurred_at', now())))) with ordinality x(o, ord)),
  '["applied", "invalid", "invalid"]'::jsonb,
  'a batch prices the kinds, and refuses an unpriced kind and a negative count event by event');
select is((select amount from billing.transfers where idempotency_key = 'usage-event:aaaaaaaa-0000-4000-8000-000000000001:kinds-b1'), 24.0::numeric,
  'a batch event''s reasoning tokens are priced at the reasoning rate');
select is((select metadata ->> 'reasoning_tokens' from billing.transfers where idempotency_key = 'usage-event:aaaaaaaa-0000-4000-8000-000000000001:kinds-b1'), '1000',
  'a batch transfer records every kind');
select is((select (o ->> 'charged')::numeric from jsonb_array_elements(billing.charge_usage_batch(jsonb_build_array(
    jsonb_build_object('event_id', 'kinds-b4', 'user_id', 'aaaaaaaa-0000-4000-8000-000000000001', 'model', 'kinds-full',
      'input_tokens', 1000, 'output_tokens', 500, 'cached_input_tokens', 4000, 'reasoning_tokens', 250, 'images', 3,
      'audio_seconds', 10, 'occurred_at', now())))) o), (billing.price_usage('kinds-full', 1000, 500, 4000, 250, 3, 10)).amount,
  'the batch prices every kind as price_usage does');
select is(pg_temp.detail($$select billing.charge_usage('bbbbbbbb-0000-4000-8000-000000000002', 'kinds-full', 1000, 500, 'kinds-poor', null, null, 4000, 250, 3, 10)$$) ->> 'required',
  '382', 'the 402''s required prices every kind');

select * from finish();
rollback;
