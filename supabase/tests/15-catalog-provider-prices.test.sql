-- Provider prices per model and upstream: ./scripts/prices writes versions through
-- billing.record_provider_prices (numbered per model and upstream, from now, none when the price
-- in effect is the same), reads the routed models through billing.provider_price_routes, and only
-- the service role may call either; rows are never edited; a charge is costed at the upstream of
-- its model's card; the dry run's margins are at the draft's upstream's price now, unknown without one.
begin;
select plan(14);
\ir helpers.psql

insert into auth.users (id, raw_app_meta_data) values ('adadadad-0000-4000-8000-00000000000c', '{"role": "admin"}');
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  upstream) values ('pp-model', 1, 2, 8, 2, now() - interval '1 minute', 'anthropic');

-- ============================================================ as service_role

set local role service_role;
select is(billing.record_provider_prices('[{"model": "pp-model", "upstream": "anthropic", "usd_per_million_input": "1",
    "usd_per_million_output": "4", "usd_per_million_cache_write_1h": 2, "source_url": "catalogue"}]'),
  '[{"model": "pp-model", "upstream": "anthropic", "version": 1, "written": true}]'::jsonb,
  'a new price is version 1 of its model at its upstream');
select is(billing.record_provider_prices('[{"model": "pp-model", "upstream": "anthropic", "usd_per_million_input": 1,
    "usd_per_million_output": 4.0, "usd_per_million_cache_write_1h": "2.00"}]'),
  '[{"model": "pp-model", "upstream": "anthropic", "version": 1, "written": false}]'::jsonb,
  'the same prices again write nothing');
select is(billing.record_provider_prices('[{"model": "pp-model", "upstream": "openai", "usd_per_million_input": "3",
    "usd_per_million_output": "9"}, {"model": "pp-model", "upstream": "anthropic", "usd_per_million_input": "1.5",
    "usd_per_million_output": "6"}]'),
  '[{"model": "pp-model", "upstream": "openai", "version": 1, "written": true},
    {"model": "pp-model", "upstream": "anthropic", "version": 2, "written": true}]'::jsonb,
  'versions are numbered per model and upstream');
select is(pg_temp.err($$select billing.record_provider_prices('[{"model": "pp-model", "usd_per_million_input": "1",
    "usd_per_million_output": "4"}]')$$), 'INVALID_PROVIDER_PRICE', 'a price without an upstream is refused');
select is(pg_temp.err($$select billing.record_provider_prices('[{"model": "pp-model", "upstream": "openai",
    "usd_per_million_input": "-1", "usd_per_million_output": "4"}]')$$), 'INVALID_PROVIDER_PRICE',
  'a negative price is refused');
select is(pg_temp.err($$select billing.record_provider_prices('[{"model": "pp-model", "upstream": "openai",
    "usd_per_million_input": "lots", "usd_per_million_output": "4"}]')$$), 'INVALID_PROVIDER_PRICE',
  'a price that is not a number is refused');
select is((select r -> 'provider_price' ->> 'usd_per_million_input' from jsonb_array_elements(billing.provider_price_routes()) r
    where r ->> 'model' = 'pp-model'), '1.5', 'a routed model shows the price at its card''s upstream in effect now');
reset role;

select is((select (effective_from <= now(), source_checked_on = current_date) from billing.provider_prices
    where model = 'pp-model' and upstream = 'anthropic' and version = 1), (true, true),
  'a written version is in effect from now and dated today');
select is(pg_temp.err($$update billing.provider_prices set usd_per_million_input = 0 where model = 'pp-model'$$),
  'LEDGER_IMMUTABLE', 'a provider price is never edited');
select is(billing.provider_cost('pp-model', now(), '{"input_tokens": 1000000, "output_tokens": 1000000}'), 7.5::numeric,
  'a charge is costed at the upstream of its model''s card (anthropic: 1.5 + 6), not another upstream''s');

-- ============================================================ the dry run's margins

create temp table pp_draft as select (billing.draft_rate_card('adadadad-0000-4000-8000-00000000000c',
  '{"model": "pp-model", "usd_per_million_input": "1.5", "usd_per_million_output": "6", "markup": "3",
    "upstream": "anthropic"}', 'catalogue') ->> 'id')::uuid as id;
select is((select billing.simulate_rate_card(id, now() - interval '1 hour', now()) -> 'margins' -> 'provider_price'
    ->> 'version' from pp_draft), '2', 'the dry run''s margins name the provider price in effect at the draft''s upstream');
create temp table pp_elsewhere as select (billing.draft_rate_card('adadadad-0000-4000-8000-00000000000c',
  '{"model": "pp-model", "usd_per_million_input": "1.5", "usd_per_million_output": "6", "markup": "3",
    "upstream": "groq"}', 'catalogue') ->> 'id')::uuid as id;
select is((select billing.simulate_rate_card(id, now() - interval '1 hour', now()) -> 'margins'
    from pp_elsewhere), '{"after": {"margin_usd": null, "revenue_usd": "0", "margin_percent": null}, "before": {"margin_usd": null,
    "revenue_usd": "0", "margin_percent": null}, "cost_usd": null, "provider_price": null}'::jsonb,
  'at an upstream without a provider price the dry run''s cost and margins are unknown, never 0');

-- ============================================================ as anon and authenticated

set local role anon;
select matches(pg_temp.err($$select billing.record_provider_prices('[]')$$), '^permission denied',
  'anon cannot write provider prices');
set local role authenticated;
select is(pg_temp.err($$select billing.provider_price_routes()$$),
  'permission denied for function provider_price_routes', 'a signed-in user cannot read provider prices');
reset role;

select * from finish();
rollback;
