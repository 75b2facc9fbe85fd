-- AI batches (docs/ai-gateway.md § Batches): held whole at half the card's price of every line's
-- worst case, ended once at the sum of the lines that succeeded, each at the batch price of its
-- usage; a line the batch does not have, or one reported twice, is never charged; a batch the
-- provider did not take charges nothing; at most p_max_open run at once.
begin;
select plan(18);
\ir helpers.psql

insert into auth.users (id) values ('b0b0b0b0-0000-4000-8000-000000000001'), ('b0b0b0b0-0000-4000-8000-000000000002');
select billing.grant_credits('b0b0b0b0-0000-4000-8000-000000000001', 100, 'promo_grant', 'batch-fund');

set local role service_role;

create temp table b1 as select billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000001', 'anthropic', 'messages',
  'claude-haiku-4-5', '[{"custom_id": "a", "prompt_tokens": 100, "max_output_tokens": 50},
                       {"custom_id": "b", "prompt_tokens": 300, "max_output_tokens": 70},
                       {"custom_id": "c", "prompt_tokens": 10, "max_output_tokens": 10}]', false, null, 'k1', 'h1',
  array['anthropic'], 5, null) as r;
create temp view batch1 as select (r -> 'batch' ->> 'id')::uuid as id, (r -> 'batch' ->> 'call_id')::uuid as call_id from b1;
grant select on batch1 to service_role;

select is((select r ->> 'state' from b1), 'held', 'a batch that fits is held');
select is((select r -> 'batch' ->> 'held' from b1)::numeric,
  0.5 * billing.ai_hold_amount('claude-haiku-4-5', 410, 130),
  'held at half the card''s price of every line''s worst case');
select is((select h.expires_at - h.created_at from billing.holds h join billing.ai_calls c on c.hold_id = h.id
           where c.id = (select call_id from batch1)), interval '26 hours',
  'held through the provider''s 24-hour window and two hours past it');
select is(billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000001', 'anthropic', 'messages', 'claude-haiku-4-5',
    '[{"custom_id": "a", "prompt_tokens": 1, "max_output_tokens": 1}]', false, null, 'k1', 'h1', array['anthropic'], 5,
    null) -> 'batch' ->> 'id', (select id::text from batch1), 'the same key and request answer the same batch');
select is(billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000001', 'anthropic', 'messages', 'claude-haiku-4-5',
    '[{"custom_id": "a", "prompt_tokens": 1, "max_output_tokens": 1}]', false, null, 'k1', 'other', array['anthropic'], 5,
    null) ->> 'token', 'IDEMPOTENCY_KEY_REUSED', 'the same key with another request is refused');
select is(billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000001', 'anthropic', 'messages', 'claude-haiku-4-5',
    '[{"custom_id": "a", "prompt_tokens": 1, "max_output_tokens": 1}]', false, null, 'k2', 'h2', array['anthropic'], 1,
    null) ->> 'token', 'AI_BATCH_LIMIT', 'past the batches a student may run at once: refused');
select is(billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000002', 'anthropic', 'messages', 'claude-haiku-4-5',
    '[{"custom_id": "a", "prompt_tokens": 1000, "max_output_tokens": 1000}]', false, null, 'k3', 'h3',
    array['anthropic'], 5, null) ->> 'token', 'INSUFFICIENT_CREDITS', 'a batch that does not fit is refused whole');
create temp table f1 as select billing.record_ai_batch_file('b0b0b0b0-0000-4000-8000-000000000001', 'openai',
  'chat', 'gpt-4o-mini', '[{"custom_id": "a", "prompt_tokens": 1, "max_output_tokens": 1}]', false, 'f.jsonl', 10, 10)
  -> 'file' as r;
select billing.sent_ai_batch_file((select (r ->> 'id')::uuid from f1), 'file-x');
select is(billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000002', 'openai', 'chat', null, null, false,
    (select (r ->> 'id')::uuid from f1), 'k4', 'h4', array['openai'], 5, null) ->> 'token', 'AI_FILE_NOT_FOUND',
  'another student''s file is not found');

select billing.submitted_ai_batch((select id from batch1), 'msgbatch_1');
select throws_ok(format($$select billing.finish_ai_batch(%L, '[{"custom_id": "zz", "outcome": "succeeded",
    "usage": {"input_tokens": 1, "output_tokens": 1}}]', 'ended', '{}')$$, (select id from batch1)),
  'P0001', 'LEDGER_INVARIANT', 'a line the batch does not have is never charged');
select throws_ok(format($$select billing.finish_ai_batch(%L, '[{"custom_id": "a", "outcome": "succeeded",
    "usage": {"input_tokens": 1, "output_tokens": 1}}, {"custom_id": "a", "outcome": "succeeded",
    "usage": {"input_tokens": 1, "output_tokens": 1}}]', 'ended', '{}')$$, (select id from batch1)),
  'P0001', 'LEDGER_INVARIANT', 'a line reported twice is never charged twice');

create temp table ended as select billing.finish_ai_batch((select id from batch1),
  '[{"custom_id": "a", "outcome": "succeeded", "usage": {"input_tokens": 90, "output_tokens": 40, "cached_input_tokens": 5}},
    {"custom_id": "b", "outcome": "errored", "usage": null},
    {"custom_id": "c", "outcome": "succeeded"}]', 'ended', '{"results_url": "x"}') as r;
reset role;
select is((select r ->> 'charged' from ended)::numeric,
  0.5 * ((billing.price_usage('claude-haiku-4-5', 90, 40, 5)).amount
                              + (billing.price_usage('claude-haiku-4-5', 10, 10)).amount),
  'charged the sum of the lines that succeeded at the batch price (one without usage at its worst case)');
set local role service_role;
select is((select count(*)::int from billing.transfers t where t.correlation_id = 'ai:' || (select call_id from batch1)
           and t.kind = 'hold_capture'), 1, 'in one capture');
select is((select h.status from billing.holds h join billing.ai_calls c on c.hold_id = h.id
           where c.id = (select call_id from batch1)), 'captured', 'the rest of the hold released with it');
select is(billing.finish_ai_batch((select id from batch1),
    '[{"custom_id": "b", "outcome": "succeeded", "usage": {"input_tokens": 300, "output_tokens": 70}}]', 'ended', '{}')
    ->> 'charged', (select r ->> 'charged' from ended), 'ending it again answers the first ending, charging nothing more');

-- A batch the provider did not take: failed, its hold released, nothing charged.
create temp table b2 as select billing.begin_ai_batch('b0b0b0b0-0000-4000-8000-000000000001', 'anthropic', 'messages',
  'claude-haiku-4-5', '[{"custom_id": "a", "prompt_tokens": 10, "max_output_tokens": 10}]', false, null, 'k5', 'h5',
  array['anthropic'], 5, null) as r;
select is((select billing.submitted_ai_batch((r -> 'batch' ->> 'id')::uuid, null) ->> 'status' from b2), 'failed',
  'a batch the provider did not take fails');
select is((select h.status from billing.holds h join billing.ai_calls c on c.hold_id = h.id
           where c.id = (select (r -> 'batch' ->> 'call_id')::uuid from b2)), 'released', 'and its hold is released');

-- Files in no batch yet are limited per student; a banned student uploads none.
select is(billing.record_ai_batch_file('b0b0b0b0-0000-4000-8000-000000000001', 'openai', 'chat', 'gpt-4o-mini',
    '[{"custom_id": "a", "prompt_tokens": 1, "max_output_tokens": 1}]', false, 'f.jsonl', 10, 1) ->> 'token',
  'AI_BATCH_LIMIT', 'past the files a student may have waiting for a batch: refused');
reset role;
update auth.users set banned_until = now() + interval '1 day' where id = 'b0b0b0b0-0000-4000-8000-000000000002';
set local role service_role;
select is(billing.ai_batch_file_refusal('b0b0b0b0-0000-4000-8000-000000000002', 10) ->> 'token', 'USER_NOT_ACTIVE',
  'a banned student may not upload a batch file');

select * from finish();
rollback;
