-- DELETE /ai/v1/calls/{id}/content reaches every copy of a call's text: its kept content and its
-- replay copy; only its owner's request does.
begin;
select plan(4);

insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-0000000000e1'), ('eeeeeeee-0000-4000-8000-0000000000e2');
insert into billing.ai_calls (id, user_id, idempotency_key, request_hash, model, prompt_tokens, max_output_tokens, status,
                              finished_at, keep_content, answer)
values ('eeeeeeee-0000-4000-8000-00000000ca11', 'eeeeeeee-0000-4000-8000-0000000000e1', 'k', 'h', 'gpt-4o', 1, 1, 'charged',
        now(), true, to_jsonb('{"json": {"text": "secret answer"}}'::text));
insert into billing.ai_logs (user_id, call_id, model, input_tokens, output_tokens, duration_ms, consent_level,
                             prompt_redacted, response_redacted)
values ('eeeeeeee-0000-4000-8000-0000000000e1', 'eeeeeeee-0000-4000-8000-00000000ca11', 'gpt-4o', 1, 1, 1, 'content',
        'secret prompt', 'secret answer');

-- as the service role (the route)
select is(billing.delete_ai_call_content('eeeeeeee-0000-4000-8000-0000000000e2', 'eeeeeeee-0000-4000-8000-00000000ca11'),
  false, 'another student cannot delete a call''s content');
select is((select answer is not null from billing.ai_calls where id = 'eeeeeeee-0000-4000-8000-00000000ca11'), true,
  'and its replay copy stays');
select is(billing.delete_ai_call_content('eeeeeeee-0000-4000-8000-0000000000e1', 'eeeeeeee-0000-4000-8000-00000000ca11'),
  true, 'its owner deletes it');
select is((select (c.answer is null)::text || ':' || (select count(*) from billing.ai_logs l where l.call_id = c.id)
           from billing.ai_calls c where c.id = 'eeeeeeee-0000-4000-8000-00000000ca11'), 'true:0',
  'its kept content and its replay copy are both gone');

select * from finish();
rollback;
