-- The AI gateway's SQL: who may call it, the hold of the dearest price, capture of exactly what
-- the provider reported, failures that charge nothing, the allowlist, server keys.
begin;
select plan(32);
\ir helpers.psql

insert into auth.users (id) values ('a1a1a1a1-0000-4000-8000-000000000001'), ('b2b2b2b2-0000-4000-8000-000000000002');
insert into auth.users (id, raw_app_meta_data) values ('adadadad-0000-4000-8000-00000000000a', '{"role": "admin"}');
select billing.grant_credits('a1a1a1a1-0000-4000-8000-000000000001', 100, 'promo_grant', 'ai-fund-1');

-- ============================================================ as anon and authenticated

set local role authenticated;
select is(pg_temp.err($$select billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 10, 10, 'k', 'h', 60)$$),
  'permission denied for function begin_ai_call', 'a signed-in user cannot begin a call (only the gateway, as service_role)');
select is(pg_temp.err($$select billing.finish_ai_call(gen_random_uuid(), '{}', 'provider', null)$$),
  'permission denied for function finish_ai_call', 'a signed-in user cannot finish a call');
select is(pg_temp.err($$select billing.create_server_key('adadadad-0000-4000-8000-00000000000a', 'x', repeat('a', 64), 'slk_')$$),
  'permission denied for function create_server_key', 'a signed-in user cannot create a server key');
select is(pg_temp.err($$select * from billing.ai_calls$$), 'permission denied for table ai_calls',
  'a signed-in user cannot read calls');
reset role;
set local role anon;
select is(pg_temp.err($$select billing.list_ai_models('a1a1a1a1-0000-4000-8000-000000000001')$$), 'permission denied for schema billing',
  'anon cannot list a user''s models');
reset role;

-- ============================================================ as service_role (the gateway)
set local role service_role;

select is(billing.ai_hold_amount('gpt-4o', 1000, 500), 50.0::numeric,
  'the hold for gpt-4o (no dearer cached or reasoning price) is the plain price');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 1000, 500, 'call-1', 'h1', 600) ->> 'state',
  'held', 'a call the balance covers is held');
select is((select available from billing.balance_of((select id from billing.accounts where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'))),
  50.0::numeric, 'the hold takes the dearest price from what is available');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 1000, 500, 'call-1', 'h1', 600) ->> 'token',
  'IDEMPOTENCY_KEY_IN_USE', 'the same key while it runs is refused as in use');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 1000, 500, 'call-1', 'other', 600) ->> 'token',
  'IDEMPOTENCY_KEY_REUSED', 'the same key with another request is refused');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 1000, 2000, 'call-2', 'h2', 600, 'chat',
    array['openai'], false, false, 7) - 'detail',
  '{"state": "refused", "token": "INSUFFICIENT_CREDITS"}'::jsonb,
  'a second call the rest cannot cover is refused before the provider, as a row (one round trip)');
select is((select jsonb_build_object('status', status, 'failure', failure, 'hold', hold_id, 'key', idempotency_key,
             'duration_at_least_elapsed', duration_ms >= 7)
           from billing.ai_calls where user_id = 'a1a1a1a1-0000-4000-8000-000000000001' order by seq desc limit 1),
  '{"status": "refused", "failure": "INSUFFICIENT_CREDITS", "hold": null, "key": null, "duration_at_least_elapsed": true}'::jsonb,
  'the refusal is recorded by the same statement, with the time before it');
select is((select count(*)::int from billing.ai_calls where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'
           and failure in ('IDEMPOTENCY_KEY_IN_USE', 'IDEMPOTENCY_KEY_REUSED', 'INSUFFICIENT_CREDITS')), 3,
  'every refusal a row answers is recorded once');
select is((select count(*)::int from billing.ai_calls where idempotency_key = 'call-2'), 0,
  'the refused call keeps no claim: its key is free');
select is((select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
           where a.user_id = 'a1a1a1a1-0000-4000-8000-000000000001' and h.status = 'active'), 1,
  'the refused call holds nothing');

select is(billing.finish_ai_call((select id from billing.ai_calls where idempotency_key = 'call-1'),
    '{"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 50, "reasoning_tokens": 0}', 'provider',
    '{"json": {"id": "x"}}') ->> 'charged',
  '5', 'finishing captures the price of exactly what the provider reported (100 in + 50 out of gpt-4o = 5)');
select is((select balance from billing.accounts where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'), 95.0::numeric,
  'the rest of the hold is released');
select is((select t.metadata ->> 'usage_source' from billing.ai_calls c join billing.transfers t on t.id = c.transfer_id
           where c.idempotency_key = 'call-1'), 'provider', 'the ledger says where the counts came from');
select is(billing.finish_ai_call((select id from billing.ai_calls where idempotency_key = 'call-1'),
    '{"input_tokens": 1, "output_tokens": 1}', 'provider', null) ->> 'charged',
  '5', 'finishing again answers the first finish and charges nothing more');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 1000, 500, 'call-1', 'h1', 600) -> 'call' ->> 'charged',
  '5', 'the same key after it finished replays the call');

select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 10, 10, 'call-3', 'h3', 600) ->> 'state',
  'held', 'another call is held');
select is(billing.fail_ai_call((select id from billing.ai_calls where idempotency_key = 'call-3'), 'PROVIDER_ERROR_500') ->> 'status',
  'failed', 'a provider failure fails the call');
select is((select balance - held from billing.accounts where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'), 95.0::numeric,
  'a failed call charges nothing and holds nothing');
select is(billing.begin_ai_call('a1a1a1a1-0000-4000-8000-000000000001', 'gpt-4o', 10, 10, 'call-3', 'h3', 600) ->> 'state',
  'held', 'a failed call''s key is free for a retry (one hold per attempt)');

-- What a provider bills beyond the hold is the one debt: charged whole, the rest of the balance
-- then debt, and the next call is refused (debt: true) until a credit pays it.
insert into auth.users (id) values ('c3c3c3c3-0000-4000-8000-000000000003');
select billing.grant_credits('c3c3c3c3-0000-4000-8000-000000000003', 1, 'promo_grant', 'ai-fund-3');
select billing.begin_ai_call('c3c3c3c3-0000-4000-8000-000000000003', 'gpt-4o', 10, 10, 'owe-1', 'h', 600);
select is((billing.finish_ai_call((select id from billing.ai_calls where idempotency_key = 'owe-1'),
  '{"input_tokens": 100000, "output_tokens": 0, "cached_input_tokens": 0, "reasoning_tokens": 0}', 'provider', null)) ->> 'charged',
  trim_scale((billing.price_usage('gpt-4o', 100000, 0, 0, 0)).amount)::text, 'an excess beyond the hold is charged whole');
select is((select balance from billing.accounts where user_id = 'c3c3c3c3-0000-4000-8000-000000000003'),
  1 - (billing.price_usage('gpt-4o', 100000, 0, 0, 0)).amount, 'what the balance lacked is debt on it');
select is(billing.begin_ai_call('c3c3c3c3-0000-4000-8000-000000000003', 'gpt-4o-mini', 1, 1, 'owe-2', 'h', 600)
    #>> '{detail,debt}', 'true', 'the next call is refused while the debt stands');
select billing.grant_credits('c3c3c3c3-0000-4000-8000-000000000003', 3000, 'promo_grant', 'ai-fund-4');
select is(billing.begin_ai_call('c3c3c3c3-0000-4000-8000-000000000003', 'gpt-4o-mini', 1, 1, 'owe-2', 'h', 600) ->> 'state',
  'held', 'once a credit paid it, the next call is held');
select is((select balance from billing.accounts where user_id = 'c3c3c3c3-0000-4000-8000-000000000003'),
  3001 - (billing.price_usage('gpt-4o', 100000, 0, 0, 0)).amount, 'the grant paid the debt first, exactly');

-- The allowlist: the default list decides for a user on no plan.
select billing.set_model_access('adadadad-0000-4000-8000-00000000000a', null, array['gpt-4o-mini']);
select is(billing.begin_ai_call('b2b2b2b2-0000-4000-8000-000000000002', 'gpt-4o', 1, 1, 'call-4', 'h4', 600) ->> 'token',
  'MODEL_NOT_ALLOWED', 'a model off the default list is refused before any hold');
select is(jsonb_array_length(billing.list_ai_models('b2b2b2b2-0000-4000-8000-000000000002')), 1,
  '/models lists only the allowed model');
select is(pg_temp.err($$select billing.set_model_access('b2b2b2b2-0000-4000-8000-000000000002', null, array['gpt-4o'])$$),
  'ADMIN_REQUIRED', 'only an admin sets the allowlist');

select * from finish();
rollback;
