-- A streamed answer's items kept for its references (billing.ai_reference_items): kept only for
-- the caller's own call and not once its content was deleted, read only by their owner, deleted
-- with the call's content, past the retention and with the account; never readable by a browser.
begin;
\ir helpers.psql
select plan(17);

insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-0000000000f1'), ('eeeeeeee-0000-4000-8000-0000000000f2');
insert into billing.ai_calls (id, user_id, idempotency_key, request_hash, model, prompt_tokens, max_output_tokens, status,
                              finished_at)
values ('eeeeeeee-0000-4000-8000-00000000cf11', 'eeeeeeee-0000-4000-8000-0000000000f1', 'k1', 'h', 'gpt-4o', 1, 1, 'charged', now()),
       ('eeeeeeee-0000-4000-8000-00000000cf12', 'eeeeeeee-0000-4000-8000-0000000000f1', 'k2', 'h', 'gpt-4o', 1, 1, 'charged', now()),
       ('eeeeeeee-0000-4000-8000-00000000cf21', 'eeeeeeee-0000-4000-8000-0000000000f2', 'k3', 'h', 'gpt-4o', 1, 1, 'charged', now());

-- ============================================================ as service_role (the gateway)
set local role service_role;

select is(billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f2', 'eeeeeeee-0000-4000-8000-00000000cf11',
  jsonb_build_array(jsonb_build_object('key_hash', repeat('a1', 32), 'sealed', 'v1.AAAA'))), 0,
  'nothing is kept for another student''s call');
select is(billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1', 'eeeeeeee-0000-4000-8000-00000000cf11',
  jsonb_build_array(jsonb_build_object('key_hash', repeat('a1', 32), 'sealed', 'v1.AAAA'),
                    jsonb_build_object('key_hash', repeat('a2', 32), 'sealed', 'v1.BBBB'))), 2,
  'a call''s items are kept for its owner');
select is((select count(*)::int from billing.open_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f2',
  jsonb_build_array(repeat('a1', 32)))), 0, 'another student reads none of them');
select is((select array_agg(sealed order by sealed) from billing.open_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1',
  jsonb_build_array(repeat('a1', 32), repeat('a2', 32), repeat('a3', 32)))), array['v1.AAAA', 'v1.BBBB'],
  'their owner reads those kept, in one call');

select is(billing.delete_ai_call_content('eeeeeeee-0000-4000-8000-0000000000f1', 'eeeeeeee-0000-4000-8000-00000000cf11'),
  true, 'its owner deletes the call''s content');
select is((select count(*)::int from billing.ai_reference_items where call_id = 'eeeeeeee-0000-4000-8000-00000000cf11'), 0,
  'and its kept items go with it');
select is(billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1', 'eeeeeeee-0000-4000-8000-00000000cf11',
  jsonb_build_array(jsonb_build_object('key_hash', repeat('a4', 32), 'sealed', 'v1.CCCC'))), 0,
  'a call whose content was deleted (while it ran) keeps nothing');

select is(billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1', 'eeeeeeee-0000-4000-8000-00000000cf12',
  jsonb_build_array(jsonb_build_object('key_hash', repeat('b1', 32), 'sealed', 'v1.DDDD'),
                    jsonb_build_object('key_hash', repeat('b2', 32), 'sealed', 'v1.EEEE'))), 2, 'another call''s items are kept');
select is(billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f2', 'eeeeeeee-0000-4000-8000-00000000cf21',
  jsonb_build_array(jsonb_build_object('key_hash', repeat('c1', 32), 'sealed', 'v1.FFFF'))), 1, 'and another student''s');
reset role; -- back-dating, as a test only
update billing.ai_reference_items set created_at = now() - interval '30 days 1 minute' where key_hash = decode(repeat('b1', 32), 'hex');
update billing.ai_reference_items set created_at = now() - interval '29 days' where key_hash = decode(repeat('b2', 32), 'hex');
set local role service_role;
-- At least ours: the database may hold other expired items.
select ok(billing.delete_expired_ai_reference_items(30, 100) >= 1, 'the sweep deletes the item past the retention');
select is((select array_agg(encode(key_hash, 'hex') order by key_hash) from billing.ai_reference_items
           where user_id = 'eeeeeeee-0000-4000-8000-0000000000f1'), array[repeat('b2', 32)],
  'and keeps the one 29 days old');
reset role; -- the account is soft-deleted (Supabase Auth sets deleted_at)
update auth.users set deleted_at = now() where id = 'eeeeeeee-0000-4000-8000-0000000000f2';
set local role service_role;
select ok(billing.delete_expired_ai_reference_items(30, 100) >= 1, 'the sweep deletes a deleted account''s item');
select is((select count(*)::int from billing.ai_reference_items where user_id = 'eeeeeeee-0000-4000-8000-0000000000f2'), 0,
  'a deleted account''s items are deleted');

reset role;

-- ============================================================ as anon and authenticated (a browser)
set local role authenticated;
select is(pg_temp.err($$select * from billing.ai_reference_items$$), 'permission denied for table ai_reference_items',
  'a signed-in user cannot read the kept items');
select is(pg_temp.err($$select * from billing.open_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1', '[]')$$),
  'permission denied for function open_ai_reference_items', 'nor open them (only the gateway, as service_role)');
select is(pg_temp.err($$select billing.keep_ai_reference_items('eeeeeeee-0000-4000-8000-0000000000f1', 'eeeeeeee-0000-4000-8000-00000000cf12', '[]')$$),
  'permission denied for function keep_ai_reference_items', 'nor keep any');
reset role;
set local role anon;
select is(pg_temp.err($$select billing.delete_expired_ai_reference_items(1, 100)$$), 'permission denied for schema billing',
  'anon cannot sweep them');
reset role;

select * from finish();
rollback;
