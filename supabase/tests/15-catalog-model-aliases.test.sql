-- Model aliases (billing.model_aliases): an alias is its card's other name. A price, a model
-- list, a cap and a lot's list take it as the card's model; no list shows it as a model of its
-- own; only the service role and signed-in readers may read the table, and no one may write it.
begin;
select plan(19);
\ir helpers.psql

insert into auth.users (id) values ('a1a5a1a5-0000-4000-8000-000000000001');
insert into auth.users (id, raw_app_meta_data) values ('a1a5a1a5-0000-4000-8000-0000000000ad', '{"role": "admin"}');

-- ============================================================ internal (as the owner)

select is(billing.card_model('claude-3-5-haiku'), 'claude-haiku-4-5', 'an alias names its card''s model');
select is(billing.card_model('gpt-4o'), 'gpt-4o', 'a card''s own model is itself');
select is(billing.card_model('no-such-model'), 'no-such-model', 'an unknown name stays unknown');
select is(pg_temp.err($$insert into billing.model_aliases (alias, model) values ('gpt-4o-old', 'no-such-model')$$),
  'UNKNOWN_MODEL', 'an alias names a rate card''s model');
select is(pg_temp.err($$insert into billing.model_aliases (alias, model) values ('haiku', 'claude-3-5-haiku')$$),
  'UNKNOWN_MODEL', 'never another alias: one step from any name to its card');
select is(pg_temp.err($$insert into billing.model_aliases (alias, model) values ('claude-haiku-4-5', 'gpt-4o')$$),
  'UNKNOWN_MODEL', 'nor a name an alias names');
select is((select row(p.rate_card_id, p.amount)::text from billing.price_usage('claude-3-5-haiku', 1000, 100, 10) p),
  (select row(p.rate_card_id, p.amount)::text from billing.price_usage('claude-haiku-4-5', 1000, 100, 10) p),
  'usage under an alias is priced by its card, to the credit');
select billing.grant_credits('a1a5a1a5-0000-4000-8000-000000000001', 100, 'promo_grant', 'alias-fund');
select billing.charge_usage('a1a5a1a5-0000-4000-8000-000000000001', 'claude-3-5-haiku', 1000, 100, 'alias-usage');
select is((select t.metadata ->> 'model' from billing.transfers t where t.idempotency_key = 'alias-usage'), 'claude-haiku-4-5',
  'a usage charge naming an alias records its card''s model');
select is((select e ->> 'model' from billing.priced_usage_events('[{"event_id": "e1", "user_id": "a1a5a1a5-0000-4000-8000-000000000001",
    "model": "claude-3-5-haiku", "input_tokens": 1000, "output_tokens": 100, "occurred_at": "2026-11-27T00:00:00Z"}]') p,
    unnest(p.b_facts) e), 'claude-haiku-4-5', 'and so does a batch''s event');

-- ============================================================ as service_role (the gateway, usage reports, admin routes)
set local role service_role;

select is(billing.ai_hold_amount('claude-3-5-haiku', 1000, 100), billing.ai_hold_amount('claude-haiku-4-5', 1000, 100),
  'a job''s hold under an alias is its card''s');
select is((select count(*)::int from jsonb_array_elements(billing.list_ai_models('a1a5a1a5-0000-4000-8000-000000000001')) m
           where m ->> 'id' in ('claude-3-5-haiku', 'claude-haiku-4-5')), 1, 'the models list shows the card once');
select is((select m -> 'aliases' from jsonb_array_elements(billing.list_ai_models('a1a5a1a5-0000-4000-8000-000000000001')) m
           where m ->> 'id' = 'claude-haiku-4-5'), '["claude-3-5-haiku"]'::jsonb, 'with its aliases');
select is(billing.set_model_access('a1a5a1a5-0000-4000-8000-0000000000ad', null, array['claude-3-5-haiku', 'gpt-4o']) -> 'models',
  '["claude-haiku-4-5", "gpt-4o"]'::jsonb, 'a model list naming an alias keeps its card');
select is(pg_temp.err($$select billing.draft_rate_card('a1a5a1a5-0000-4000-8000-0000000000ad',
  '{"model": "claude-3-5-haiku", "usd_per_million_input": 1, "usd_per_million_output": 5, "markup": 4, "upstream": "anthropic"}',
  'a card under an alias would never price anything')$$), 'INVALID_RATE_CARD', 'no card is drafted under an alias');
reset role;

-- ============================================================ internal, after the list was set (as the owner)

select is(billing.model_allowed('a1a5a1a5-0000-4000-8000-000000000001', billing.card_model('claude-3-5-haiku')), true,
  'so a call naming the alias is allowed');
select is(billing.applies_to_of('{"applies_to": ["claude-3-5-haiku", "gpt-4o*"]}'), array['claude-haiku-4-5', 'gpt-4o*'],
  'a lot''s list naming an alias keeps its card, the name its charges are recorded under');

-- ============================================================ as authenticated
set local request.jwt.claims = '{"sub": "a1a5a1a5-0000-4000-8000-000000000001", "role": "authenticated"}';
set local role authenticated;
select is((select a.model from billing.model_aliases a where a.alias = 'claude-3-5-haiku'), 'claude-haiku-4-5',
  'a signed-in user reads the aliases (billing_api.rate_cards leaves them out)');
select is(pg_temp.err($$insert into billing.model_aliases (alias, model) values ('mine', 'gpt-4o')$$),
  'permission denied for table model_aliases', 'and cannot add, change or remove one');
reset role;

-- ============================================================ as anon
set local role anon;
select is(pg_temp.err($$select * from billing.model_aliases$$), 'permission denied for schema billing',
  'anon reads nothing');
reset role;

select * from finish();
rollback;
