-- Fallback models (docs/ai-gateway.md § Fallback models): a call naming them holds the dearest
-- candidate's price, counts against each candidate's caps, is charged at the card of the model
-- that answered (one it named, never another), and gives back what it did not spend to each cap.
begin;
select plan(14);
\ir helpers.psql

insert into auth.users (id) values ('f0f0f0f0-0000-4000-8000-000000000001');
select billing.grant_credits('f0f0f0f0-0000-4000-8000-000000000001', 100, 'promo_grant', 'fallback-fund');
select billing.set_spend_cap('f0f0f0f0-0000-4000-8000-000000000001', 'day', 'UTC', 'gpt-4o', 5,
  'f0f0f0f0-0000-4000-8000-000000000001', 'self');
create temp view capped as select trim_scale(c.spent) as spent from billing.spend_caps c
  join billing.accounts a on a.id = c.account_id
  where a.user_id = 'f0f0f0f0-0000-4000-8000-000000000001' and c.model = 'gpt-4o';
grant select on capped to service_role;

set local role service_role;

select is(billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800, 'k0', 'h', 600, 'chat',
    array['openai'], p_fallback_models => array['gpt-4o']) ->> 'token', 'SPEND_CAP_REACHED',
  'a fallback model''s own cap counts the hold: too small, the call is refused');
select is(billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800, 'k1', 'h', 600, 'chat',
    array['openai']) ->> 'state', 'held', 'without the fallback the model alone fits');
select is((select spent from capped), 0::numeric, 'and counts nothing against the other model''s cap');

reset role;
select billing.set_spend_cap('f0f0f0f0-0000-4000-8000-000000000001', 'day', 'UTC', 'gpt-4o', 100,
  'f0f0f0f0-0000-4000-8000-000000000001', 'self');
set local role service_role;

create temp table c2 as select billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800,
  'k2', 'h', 600, 'chat', array['openai'], p_fallback_models => array['gpt-4o', 'gpt-4o-mini']) as r;
select is((select r -> 'fallbacks' from c2), '[{"model": "gpt-4o", "upstream": "openai"}]'::jsonb,
  'each fallback model once, with its card''s upstream (the model itself is not its own fallback)');
select is((select r ->> 'held' from c2)::numeric, billing.ai_hold_amount('gpt-4o', 10, 800),
  'the hold is the dearest candidate''s price');
select is((select spent from capped), billing.ai_hold_amount('gpt-4o', 10, 800), 'counted against the fallback''s cap');
select billing.fail_ai_call((select (r ->> 'call_id')::uuid from c2), 'PROVIDER_ERROR_500');
select is((select spent from capped), 0::numeric, 'a failed call gives it all back');

create temp table c3 as select billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800,
  'k3', 'h', 600, 'chat', array['openai'], p_fallback_models => array['gpt-4o']) as r;
select is(billing.finish_ai_call((select (r ->> 'call_id')::uuid from c3),
    '{"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 100, "reasoning_tokens": 0}', 'provider', null,
    false, '{"model": "gpt-4o", "upstream": "openai"}') ->> 'charged',
  trim_scale((billing.price_usage('gpt-4o', 10, 100, 0, 0)).amount)::text, 'charged at the card of the model that answered');
select is((select model from billing.ai_calls where id = (select (r ->> 'call_id')::uuid from c3)), 'gpt-4o',
  'the record names the model that answered');
select is((select spent from capped), (billing.price_usage('gpt-4o', 10, 100, 0, 0)).amount,
  'what it spent stays on the cap, the rest comes back');

create temp table c4 as select billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800,
  'k4', 'h', 600, 'chat', array['openai'], p_fallback_models => array['gpt-4o']) as r;
select is(pg_temp.err(format($$select billing.finish_ai_call(%L, '{"input_tokens": 1, "output_tokens": 1}', 'provider',
    null, false, '{"model": "claude-haiku-4-5"}')$$, (select r ->> 'call_id' from c4))), 'LEDGER_INVARIANT',
  'never charged as a model the call did not name');
select is(pg_temp.err($$select billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800,
    'k5', 'h', 600, 'chat', array['openai'], p_fallback_models => array['gpt-4o', 'a', 'b', 'c'])$$), 'LEDGER_INVARIANT',
  'at most 3 fallback models (the gateway refuses more)');

reset role;
select billing.fail_ai_call((select (r ->> 'call_id')::uuid from c4), 'PROVIDER_ERROR_500');
create temp table c6 as select billing.begin_ai_call('f0f0f0f0-0000-4000-8000-000000000001', 'gpt-4o-mini', 10, 800,
  'k6', 'h', 600, 'chat', array['openai'], p_fallback_models => array['gpt-4o']) as r;
-- Beside a call without fallbacks (k1's), expiring in the same sweep.
update billing.holds set expires_at = now() - interval '1 second'
where id in ((select (r ->> 'hold_id')::uuid from c6), (select hold_id from billing.ai_calls where idempotency_key = 'k1'));
select billing.expire_overdue_holds(a.id) from billing.accounts a where a.user_id = 'f0f0f0f0-0000-4000-8000-000000000001';
select is((select spent from capped), (billing.price_usage('gpt-4o', 10, 100, 0, 0)).amount,
  'a fallback hold that expires gives back to the fallback''s cap too');
select is((select count(*)::int from billing.accounts a where a.user_id = 'f0f0f0f0-0000-4000-8000-000000000001'
           and a.balance <> (select coalesce(sum(e.amount), 0) from billing.entries e where e.account_id = a.id)), 0,
  'the balance is the sum of its entries');

select * from finish();
rollback;
