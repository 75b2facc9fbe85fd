-- Cache writes by lifetime: 5-minute and hour-long writes each priced at their own card price
-- (an hour-long one without its price at the input price, as a 5-minute one), held for when asked,
-- refused when asked on a card without the price, recorded in the ledger apart, costed at the
-- provider's price, and drafted and published like every other price.
begin;
select plan(12);
\ir helpers.psql

insert into auth.users (id) values ('c4c4c4c4-0000-4000-8000-000000000004');
insert into auth.users (id, raw_app_meta_data) values ('adadadad-0000-4000-8000-00000000000b', '{"role": "admin"}');
select billing.grant_credits('c4c4c4c4-0000-4000-8000-000000000004', 1000, 'promo_grant', 'cw-fund-1');
-- Anthropic's proportions at $1 input, ×1: write 1.25, hour-long write 2; and a card with no hour-long price.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cached_input, usd_per_million_cache_write, usd_per_million_cache_write_1h, upstream) values
  ('cw-hour', 1, 1, 5, 1, now() - interval '1 minute', 0.1, 1.25, 2, 'anthropic'),
  ('cw-five', 1, 1, 5, 1, now() - interval '1 minute', 0.1, 1.25, null, 'anthropic');
insert into billing.provider_prices (model, upstream, version, usd_per_million_input, usd_per_million_output,
  usd_per_million_cache_write, usd_per_million_cache_write_1h, effective_from) values
  ('cw-hour', 'anthropic', 1, 0.5, 2.5, 0.625, 1, now() - interval '1 minute');

-- ============================================================ pricing

select is((billing.price_usage('cw-hour', 0, 0, 0, 0, 0, 0, 1000, 1000)).amount, 3.25::numeric,
  '1,000 5-minute writes at 0.00125 and 1,000 hour-long writes at 0.002 credits cost 3.25');
select is((billing.price_usage('cw-five', 0, 0, 0, 0, 0, 0, 0, 1000)).amount, 1.0::numeric,
  'hour-long writes reported on a card without their price cost the input price');
select is(pg_temp.err($$select billing.price_usage('cw-hour', 0, 0, 0, 0, 0, 0, 0, -1)$$), 'INVALID_TOKENS',
  'a negative count of hour-long writes is refused');

-- ============================================================ the gateway

set local role service_role;
select is(billing.ai_hold_amount('cw-hour', 1000, 0, true), 1.25::numeric,
  'the hold for a 5-minute write prices the prompt at the write price');
select is(billing.begin_ai_call('c4c4c4c4-0000-4000-8000-000000000004', 'cw-five', 1000, 0, 'cw-1', 'h', 600, 'messages',
  array['anthropic'], true, false, 0, true) -> 'detail' ->> 'kind', 'cache_write_1h_tokens',
  'an hour-long write asked on a card without its price is refused, naming the kind');
select is((billing.begin_ai_call('c4c4c4c4-0000-4000-8000-000000000004', 'cw-hour', 1000, 0, 'cw-2', 'h', 600, 'messages',
  array['anthropic'], true, false, 0, true) ->> 'held')::numeric, 2.0::numeric,
  'an hour-long write asked is held at the hour-long price');
select is((billing.finish_ai_call((select id from billing.ai_calls where idempotency_key = 'cw-2'),
  '{"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 10, "reasoning_tokens": 0,
    "cache_write_tokens": 200, "cache_write_1h_tokens": 700}', 'provider', null) ->> 'charged')::numeric,
  1.8::numeric, 'charged 100 × 0.001 + 10 × 0.005 + 200 × 0.00125 + 700 × 0.002 = 1.8');
reset role;

-- ============================================================ the ledger, cost and the dry run

create temp table cw_charge as
  select t.* from billing.transfers t join billing.ai_calls c on c.transfer_id = t.id where c.idempotency_key = 'cw-2';
select is((select (metadata ->> 'cache_write_tokens')::int || ':' || (metadata ->> 'cache_write_1h_tokens')::int
  from cw_charge), '200:700', 'the charge records each lifetime''s writes apart');
select is((select billing.provider_cost('cw-hour', now(), metadata) from cw_charge), 0.0009::numeric,
  'its provider cost prices each at the provider''s own: (100 × 0.5 + 10 × 2.5 + 200 × 0.625 + 700 × 1) / 10^6');
select is((select billing.provider_cost('cw-five', now(), '{"cache_write_1h_tokens": 1000}')), null::numeric,
  'a model without a provider price has an unknown cost');
create temp table cw_draft as select billing.draft_rate_card('adadadad-0000-4000-8000-00000000000b',
  '{"model": "cw-hour", "usd_per_million_input": "1", "usd_per_million_output": "5", "markup": "1",
    "usd_per_million_cached_input": "0.1", "usd_per_million_cache_write": "1.25", "usd_per_million_cache_write_1h": "3",
    "upstream": "anthropic"}', 'dearer hour-long writes') as d;
select is((select d ->> 'usd_per_million_cache_write_1h' from cw_draft), '3', 'a draft carries an hour-long write price');
select billing.publish_rate_card('adadadad-0000-4000-8000-00000000000b', (d ->> 'id')::uuid, null, 'publish') from cw_draft;
select is((billing.price_usage('cw-hour', 0, 0, 0, 0, 0, 0, 0, 1000)).amount, 3.0::numeric,
  'published, it prices hour-long writes');

select * from finish();
rollback;
