-- A model's kind (its rate card's): each gateway API and the job path serve only the kinds they
-- answer, a refusal holds and charges nothing, and a chat card that would give answers away
-- (an output or reasoning price of 0) is never published.
begin;
select plan(16);
\ir helpers.psql

insert into auth.users (id) values ('c1c1c1c1-0000-4000-8000-000000000001');
insert into auth.users (id, raw_app_meta_data) values ('c1c1c1c1-0000-4000-8000-0000000000ad', '{"role": "admin"}');
select billing.grant_credits('c1c1c1c1-0000-4000-8000-000000000001', 100, 'promo_grant', 'kinds-fund');

-- ============================================================ internal (as the owner)

select is(billing.model_kind_endpoints('chat'), array['chat', 'responses', 'messages'],
  'a chat model is served by the APIs that write an answer');
select is(billing.model_kind_endpoints('embedding'), array['embeddings'], 'an embedding model by embeddings only');

-- ============================================================ as service_role (the gateway, jobs, admin routes)
set local role service_role;

select is(billing.begin_ai_call('c1c1c1c1-0000-4000-8000-000000000001', 'text-embedding-3-small', 10, 800, 'k-chat', 'h',
    600, 'chat', array['openai']) - 'detail',
  '{"state": "refused", "token": "MODEL_KIND_NOT_SUPPORTED"}'::jsonb,
  'an embedding model on Chat Completions is refused before any hold');
select is(billing.begin_ai_call('c1c1c1c1-0000-4000-8000-000000000001', 'text-embedding-3-small', 10, 800, 'k-resp', 'h',
    600, 'responses', array['openai']) -> 'detail',
  '{"model": "text-embedding-3-small", "kind": "embedding", "endpoint": "responses", "endpoints": ["embeddings"],
    "rule": "a chat model is served on chat, responses and messages, an embedding model on embeddings only (GET /ai/v1/models: kind, endpoints)"}'::jsonb,
  'the refusal says the model''s kind and the APIs that serve it');
select is(billing.begin_ai_call('c1c1c1c1-0000-4000-8000-000000000001', 'text-embedding-3-small', 10, 800, 'k-msg', 'h',
    600, 'messages', array['anthropic']) ->> 'token', 'MODEL_KIND_NOT_SUPPORTED',
  'on Messages too: the kind is checked before the upstream');
select is(billing.begin_ai_call('c1c1c1c1-0000-4000-8000-000000000001', 'gpt-4o', 10, 0, 'k-emb', 'h',
    600, 'embeddings', array['openai']) ->> 'token', 'MODEL_KIND_NOT_SUPPORTED',
  'a chat model on embeddings is refused');
select is(billing.begin_ai_call('c1c1c1c1-0000-4000-8000-000000000001', 'text-embedding-3-small', 10, 0, 'k-ok', 'h',
    600, 'embeddings', array['openai']) ->> 'state', 'held', 'an embedding model on embeddings is held');
select is((select count(*)::int from billing.ai_calls where user_id = 'c1c1c1c1-0000-4000-8000-000000000001'
           and status = 'refused' and failure = 'MODEL_KIND_NOT_SUPPORTED'), 4, 'each refusal is recorded');
select is((select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
           where a.user_id = 'c1c1c1c1-0000-4000-8000-000000000001'), 1, 'no refused call held anything');

select is(pg_temp.err($$select billing.ai_model_upstream(null, 'text-embedding-3-small', 'chat', null)$$),
  'MODEL_KIND_NOT_SUPPORTED', 'a job (asking as chat) refuses an embedding model, whatever its upstream');
select is(billing.ai_model_upstream('c1c1c1c1-0000-4000-8000-000000000001', 'claude-haiku-4-5', 'chat',
    array['openai', 'anthropic']), 'anthropic',
  'a job goes to the model''s own upstream');
select is(pg_temp.err($$select billing.ai_model_upstream(null, 'claude-haiku-4-5', 'chat', array['openai'])$$),
  'ENDPOINT_NOT_SUPPORTED', 'a job whose model''s upstream is not configured is refused');

-- ============================================================ publishing a card

create temp table drafts as select
  billing.draft_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad', '{"model": "kinds-free-out", "usd_per_million_input": "1",
    "usd_per_million_output": "0", "markup": "1"}', 'free answers') ->> 'id' as free_output,
  billing.draft_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad', '{"model": "kinds-free-think", "usd_per_million_input": "1",
    "usd_per_million_output": "2", "usd_per_million_reasoning": "0", "markup": "1"}', 'free reasoning') ->> 'id' as free_reasoning,
  billing.draft_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad', '{"model": "kinds-embed", "usd_per_million_input": "1",
    "usd_per_million_output": "0", "markup": "1", "kind": "embedding"}', 'vectors') ->> 'id' as embedding;

select is(pg_temp.err($$select billing.publish_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad',
    (select free_output::uuid from drafts), null, 'go')$$), 'OUTPUT_PRICE_REQUIRED',
  'a chat card pricing output at 0 is never published');
select is(pg_temp.err($$select billing.publish_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad',
    (select free_reasoning::uuid from drafts), null, 'go')$$), 'OUTPUT_PRICE_REQUIRED',
  'nor one pricing reasoning at 0');
select is(billing.publish_rate_card('c1c1c1c1-0000-4000-8000-0000000000ad', (select embedding::uuid from drafts), null, 'go')
    -> 'rate_card' ->> 'kind', 'embedding', 'an embedding card may price input only');
select is((select count(*)::int from billing.rate_cards where model in ('kinds-free-out', 'kinds-free-think')), 0,
  'the refused drafts made no card');

select * from finish();
rollback;
