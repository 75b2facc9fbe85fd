-- An AI job keeps content by the gateway's one consent rule (billing.content_consented): read when
-- it is queued and again when it completes (billing.keep_job_log); withdrawal and per-call
-- deletion reach its kept content; an owed job past its 24 hours keeps its row, not its text.
begin;
select plan(11);
\ir helpers.psql

insert into auth.users (id) values ('cccccccc-0000-4000-8000-0000000000c1'), ('cccccccc-0000-4000-8000-0000000000c2');
select billing.grant_credits('cccccccc-0000-4000-8000-0000000000c1', 10, 'promo_grant', 'jobs-consent-grant');

-- Runs job `p_key` of c1 to its end as worker w1, logging a call with content.
create function pg_temp.run(p_key text) returns uuid language plpgsql as $$
declare
  v_id uuid;
begin
  select id into v_id from billing.enqueue_job('cccccccc-0000-4000-8000-0000000000c1', 'ai_completion',
    jsonb_build_object('model', 'gpt-4o', 'prompt', 'secret ' || p_key, 'max_tokens', 10), p_key, null, 1);
  update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds'
  where id = v_id;
  perform billing.complete_job(v_id, 'w1', '{"text": "answer"}', '{"model": "gpt-4o", "input_tokens": 3, "output_tokens": 2}',
    jsonb_build_object('duration_ms', 5, 'content', jsonb_build_object('prompt', 'secret ' || p_key, 'answer', 'answer')));
  return v_id;
end;
$$;

-- as the service role (the worker and the routes)
select is((select keep_content from billing.enqueue_job('cccccccc-0000-4000-8000-0000000000c1', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "x", "max_tokens": 10}', 'jc-none', null, 1)), false,
  'a job queued without consent may keep nothing');
create temp table none_job as select pg_temp.run('jc-none-2') as id;
select is((select prompt_redacted from billing.ai_logs where job_id = (select id from none_job)), null,
  'a job without consent logs its counts, not its text, whatever the worker sends');

select billing.set_ai_content_consent('cccccccc-0000-4000-8000-0000000000c1', true);
create temp table kept_job as select pg_temp.run('jc-kept') as id;
select is((select consent_level || ':' || prompt_redacted from billing.ai_logs where job_id = (select id from kept_job)),
  'content:secret jc-kept', 'a job queued and completed under consent keeps its redacted content');
select is(billing.get_ai_call('cccccccc-0000-4000-8000-0000000000c1', (select id from kept_job)) #>> '{content,prompt}',
  'secret jc-kept', 'its student reads it as a call of their log');
select is(billing.get_ai_call('cccccccc-0000-4000-8000-0000000000c2', (select id from kept_job)), null,
  'another student does not');

-- Consent gone without the withdrawal's sweep (as if it ended between queue and completion): re-read.
select id as job into temp reread from billing.enqueue_job('cccccccc-0000-4000-8000-0000000000c1', 'ai_completion',
  '{"model": "gpt-4o", "prompt": "late", "max_tokens": 10}', 'jc-late', null, 1);
select is((select keep_content from billing.jobs where id = (select job from reread)), true, 'queued under consent');
delete from billing.ai_content_consent where user_id = 'cccccccc-0000-4000-8000-0000000000c1';
update billing.jobs set status = 'processing', locked_by = 'w1', locked_until = now() + interval '30 seconds'
where id = (select job from reread);
select billing.complete_job((select job from reread), 'w1', '{}', '{"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}',
  '{"duration_ms": 1, "content": {"prompt": "late", "answer": "a"}}');
select is((select prompt_redacted from billing.ai_logs where job_id = (select job from reread)), null,
  'consent is read again when the job completes: none now, nothing kept');

-- Withdrawal reaches what a job kept; its counts stay.
insert into billing.ai_content_consent (user_id) values ('cccccccc-0000-4000-8000-0000000000c1');
create temp table withdrawn as select pg_temp.run('jc-withdrawn') as id;
select billing.set_ai_content_consent('cccccccc-0000-4000-8000-0000000000c1', false);
select is((select consent_level || ':' || coalesce(prompt_redacted, '-') || ':' || input_tokens
           from billing.ai_logs where job_id = (select id from withdrawn)), 'none:-:3',
  'withdrawing consent deletes a job''s kept content at once, not its counts');

-- Per-call deletion reaches a job: its kept content, and a finished job's input and result.
select is(billing.delete_ai_call_content('cccccccc-0000-4000-8000-0000000000c2', (select id from kept_job)), false,
  'another student cannot delete it');
select is(billing.delete_ai_call_content('cccccccc-0000-4000-8000-0000000000c1', (select id from kept_job)), true,
  'its student deletes a job''s content');
select is((select j.input::text || coalesce(j.result::text, '-') || coalesce(l.prompt_redacted, '-')
           from billing.jobs j join billing.ai_logs l on l.job_id = j.id where j.id = (select id from kept_job)), '{}--',
  'no text of the job is left');

select * from finish();
rollback;
