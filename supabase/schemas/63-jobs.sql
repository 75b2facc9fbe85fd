-- Async jobs: anything longer than a request runs as a job the client polls. Jobs live here;
-- workers claim them with FOR UPDATE SKIP LOCKED and a lease, save checkpoints as they go,
-- and a worker that dies loses its lease so another resumes from the last checkpoint.
-- A metered job reserves its estimate as a ledger hold at enqueue; completion captures the
-- actual usage and releases the rest; failure, cancellation or expiry release it. Every one
-- of those steps is one SQL transaction, so no crash leaves a hold behind or charges twice.
-- A long job runs in slices within the edge's limits: a slice checkpoints, then yield_job hands
-- the job back for the next tick (see supabase/functions/jobs/worker.ts).
-- A job that calls a model obeys the AI gateway's rules, so it sits above it (62-ai-gateway.sql):
-- enqueue_job asks whether the student may call the model.

-- ============================================================ tables

create table billing.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete restrict,
  type text not null,
  status text not null default 'queued',
  input jsonb not null,                           -- what the job runs on (an ai_completion's prompt): kept until expires_at
  request_key text not null,                      -- the Idempotency-Key that created it
  client_temp_id text,
  progress integer not null default 0,
  checkpoints jsonb not null default '[]',        -- [{label, progress, at}], for the client
  resume_state jsonb,                             -- the handler's last saved state
  result jsonb,
  error jsonb,                                    -- user-safe {code, message}
  hold_id uuid references billing.holds (id),
  org_id uuid,                                    -- the school whose wallet or allowance the hold drew on; null: the student's own credits
  keep_content boolean not null default false,    -- an AI job whose student (or paying school) consented when it was queued (docs/ai-gateway.md)
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  locked_by text,
  locked_until timestamptz,
  run_after timestamptz not null default now(),
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  expires_at timestamptz not null default now() + interval '24 hours',
  constraint jobs_status check (status in ('queued', 'processing', 'completed', 'failed', 'cancelled')),
  constraint jobs_progress check (progress between 0 and 100),
  constraint jobs_request unique (user_id, request_key),
  constraint jobs_finished check ((status in ('completed', 'failed', 'cancelled')) = (completed_at is not null))
);
comment on table billing.jobs is 'Background work a client polls: queued → processing → completed | failed | cancelled.';
alter table billing.jobs enable row level security;
grant select on table billing.jobs to authenticated;
grant select on table billing.jobs to service_role;

create index jobs_due on billing.jobs (run_after) where status in ('queued', 'processing');

create index jobs_user on billing.jobs (user_id, created_at desc, id);

create index jobs_expiry on billing.jobs (expires_at);

-- Jobs cancelled while a worker ran them, waiting for its report (billing.expire_jobs).
create index jobs_cancelled_running on billing.jobs (locked_until) where status = 'cancelled' and locked_until is not null;

-- A client's temporary id names one job per user (optimistic UIs retry with it).
create unique index jobs_client_temp_id on billing.jobs (user_id, client_temp_id) where client_temp_id is not null;

create table billing.job_result_chunks (
  job_id uuid not null references billing.jobs (id) on delete cascade,
  seq integer not null,
  content text not null,
  primary key (job_id, seq)
);
comment on table billing.job_result_chunks is 'A job''s streamed result (e.g. CSV pages), written with the checkpoint that produced it.';
alter table billing.job_result_chunks enable row level security;

-- ============================================================ functions

create or replace function billing.check_job_transition() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status is distinct from new.status and not (
    (old.status = 'queued' and new.status in ('processing', 'cancelled', 'failed'))
    or (old.status = 'processing' and new.status in ('completed', 'failed', 'cancelled'))
  ) then
    raise exception using errcode = 'P0001', message = 'INVALID_JOB_TRANSITION',
      detail = json_build_object('from', old.status, 'to', new.status)::text;
  end if;
  return new;
end;
$$;
comment on function billing.check_job_transition() is 'Trigger: only queued → processing → completed | failed | cancelled (and queued → cancelled | failed).';
revoke execute on function billing.check_job_transition() from public;

create or replace function billing.enqueue_job(p_user uuid, p_type text, p_input jsonb, p_request_key text,
  p_client_temp_id text default null, p_reserve numeric default null, p_hold_ttl_seconds integer default 3600)
returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs;
  v_hold billing.hold_result;
begin
  select * into v_job from billing.jobs j where j.user_id = p_user and j.request_key = p_request_key;
  if found then
    -- The key outlives its stored answer (24 hours) while the job is kept: another job under it
    -- is refused, never answered with the old job as if it were accepted.
    if v_job.type <> p_type or v_job.input <> p_input or v_job.client_temp_id is distinct from p_client_temp_id then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'jobs.create'));
    end if;
    return v_job;
  end if;
  insert into billing.jobs (user_id, type, input, request_key, client_temp_id)
  values (p_user, p_type, p_input, p_request_key, p_client_temp_id)
  on conflict (user_id, client_temp_id) where client_temp_id is not null do nothing
  returning * into v_job;
  if not found then -- the same optimistic operation, sent again under another key
    select * into v_job from billing.jobs j where j.user_id = p_user and j.client_temp_id = p_client_temp_id;
    return v_job;
  end if;
  -- A job that calls a model may call only what the gateway would let this student call.
  -- It keeps its content by the gateway's one rule (billing.content_consented), read now and
  -- again when it completes (billing.keep_job_log).
  if p_input ? 'model' then
    if not billing.model_allowed(p_user, billing.card_model(p_input ->> 'model')) then
      perform billing.raise_error('MODEL_NOT_ALLOWED', jsonb_build_object('rule', 'GET /ai/v1/models lists the models you may call'));
    end if;
  end if;
  if p_reserve is not null and p_reserve > 0 then
    -- Short → INSUFFICIENT_CREDITS, and the job above rolls back with it. The hold names the
    -- job's model (an alias's card, billing.card_model), so per-model caps count it and only lots
    -- that may pay for it are reserved (and the caps get back what the capture does not use).
    perform billing.settle_spender(p_user);
    v_hold := billing.reserve_hold(p_user, p_reserve, 'job:' || v_job.id, p_hold_ttl_seconds, 'job', 'job:' || v_job.id,
      jsonb_strip_nulls(jsonb_build_object('model', billing.card_model(p_input ->> 'model'))));
    update billing.jobs j set hold_id = v_hold.hold_id,
      org_id = (select a.org_id from billing.holds h join billing.accounts a on a.id = h.account_id where h.id = v_hold.hold_id)
    where j.id = v_job.id returning * into v_job;
  end if;
  if p_input ? 'model' then
    update billing.jobs j set keep_content = billing.content_consented(p_user, v_job.org_id)
    where j.id = v_job.id returning * into v_job;
  end if;
  return v_job;
end;
$$;
comment on function billing.enqueue_job(p_user uuid, p_type text, p_input jsonb, p_request_key text, p_client_temp_id text, p_reserve numeric, p_hold_ttl_seconds integer) is 'Creates a job (idempotent by request key, IDEMPOTENCY_KEY_REUSED for another job under it, and by client_temp_id), refusing a model the student may not call (MODEL_NOT_ALLOWED), reserving its cost estimate as a hold in the same transaction.';
revoke execute on function billing.enqueue_job(p_user uuid, p_type text, p_input jsonb, p_request_key text, p_client_temp_id text, p_reserve numeric, p_hold_ttl_seconds integer) from public;
grant execute on function billing.enqueue_job(p_user uuid, p_type text, p_input jsonb, p_request_key text, p_client_temp_id text, p_reserve numeric, p_hold_ttl_seconds integer) to service_role;

create or replace function billing.release_job_hold(p_job billing.jobs) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_job.hold_id is not null then
    perform billing.release_hold(null, p_job.hold_id);
  end if;
end;
$$;
comment on function billing.release_job_hold(p_job billing.jobs) is 'Internal: releases a job''s hold, when it has one.';
revoke execute on function billing.release_job_hold(p_job billing.jobs) from public;

create or replace function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer, p_skip uuid[])
returns setof billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs;
begin
  -- Jobs that ran out of attempts (their last worker died) fail instead of running again.
  for v_job in
    select * from billing.jobs j
    where j.status = 'processing' and j.locked_until < now() and j.attempts >= j.max_attempts
    for update skip locked
  loop
    update billing.jobs j set status = 'failed', completed_at = now(), locked_by = null, locked_until = null,
      error = '{"code": "JOB_ABANDONED", "message": "The job stopped responding too many times."}'
    where j.id = v_job.id;
    perform billing.release_job_hold(v_job);
  end loop;

  for v_job in
    select * from billing.jobs c
    where c.run_after <= now()
      and (c.status = 'queued' or (c.status = 'processing' and (c.locked_until is null or c.locked_until < now())))
      and c.attempts < c.max_attempts
      and c.id <> all (coalesce(p_skip, '{}'))
    order by c.run_after, c.created_at
    for update skip locked
    limit p_limit
  loop
    -- A job whose user was banned or deleted since it was queued never starts: cancelled, its
    -- hold released, so nothing more is spent for them (a school's pool among what it holds). A
    -- job under way finishes, as when a member is removed (billing.remove_member).
    if v_job.status = 'queued' and billing.standing_refusal(v_job.user_id) is not null then
      perform billing.release_job_hold(v_job);
      update billing.jobs j set status = 'cancelled', completed_at = now(), error = jsonb_build_object('code',
        'USER_NOT_ACTIVE', 'message', 'Your account was suspended before this job started: it was cancelled.')
      where j.id = v_job.id;
      continue;
    end if;
    update billing.jobs j
    set status = 'processing', locked_by = p_worker, locked_until = now() + make_interval(secs => p_lease_seconds),
        attempts = j.attempts + 1, started_at = coalesce(j.started_at, now())
    where j.id = v_job.id
    returning j.* into v_job;
    return next v_job;
  end loop;
end;
$$;
comment on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer, p_skip uuid[]) is 'Claims due jobs with a lease, except p_skip (a tick''s jobs that already had their slice): queued ones, yielded ones, and processing ones whose worker lost its lease (they resume from their checkpoint); a queued job whose user is banned or deleted is cancelled instead, its hold released.';
revoke execute on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer, p_skip uuid[]) from public;
grant execute on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer, p_skip uuid[]) to service_role;

create or replace function billing.claim_jobs(p_worker text, p_limit integer default 1, p_lease_seconds integer default 30)
returns setof billing.jobs
language sql
security definer
set search_path = ''
as $$ select * from billing.claim_jobs(p_worker, p_limit, p_lease_seconds, '{}'::uuid[]) $$;
comment on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer) is 'Claims due jobs with a lease (any job; see the four-argument form).';
revoke execute on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer) from public;
grant execute on function billing.claim_jobs(p_worker text, p_limit integer, p_lease_seconds integer) to service_role;

-- The worker still holds the lease and the job is still running; otherwise it must stop. With
-- p_cancelled, a job cancelled while this worker ran it is returned too (its hold waits for what
-- the worker reports: billing.cancel_job, billing.complete_job).
create or replace function billing.lock_leased_job(p_job uuid, p_worker text, p_cancelled boolean default false)
returns billing.jobs
language plpgsql
set search_path = ''
as $$
declare
  v_job billing.jobs;
begin
  select * into v_job from billing.jobs j where j.id = p_job for update;
  if not found then
    perform billing.raise_error('JOB_NOT_FOUND', jsonb_build_object('job_id', p_job));
  end if;
  if v_job.status = 'cancelled' and p_cancelled and v_job.locked_by = p_worker then
    return v_job;
  end if;
  if v_job.status = 'cancelled' then
    perform billing.raise_error('JOB_CANCELLED', jsonb_build_object('job_id', p_job));
  end if;
  if v_job.status <> 'processing' or v_job.locked_by is distinct from p_worker then
    perform billing.raise_error('LEASE_LOST', jsonb_build_object('job_id', p_job));
  end if;
  return v_job;
end;
$$;
comment on function billing.lock_leased_job(p_job uuid, p_worker text, p_cancelled boolean) is 'Internal: locks a job the worker still leases and that is still running (or, with p_cancelled, was cancelled while it ran); JOB_NOT_FOUND, JOB_CANCELLED or LEASE_LOST otherwise.';
revoke execute on function billing.lock_leased_job(p_job uuid, p_worker text, p_cancelled boolean) from public;

create or replace function billing.checkpoint_job(
  p_job uuid,
  p_worker text,
  p_progress integer,
  p_state jsonb,
  p_label text default null,
  p_chunk text default null,
  p_lease_seconds integer default 30
) returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker);
begin
  if p_chunk is not null then
    insert into billing.job_result_chunks (job_id, seq, content)
    select p_job, coalesce(max(c.seq), 0) + 1, p_chunk from billing.job_result_chunks c where c.job_id = p_job;
  end if;
  update billing.jobs j
  set progress = greatest(j.progress, least(greatest(p_progress, 0), 100)),
      resume_state = p_state,
      checkpoints = case when p_label is null then j.checkpoints
                         else j.checkpoints || jsonb_build_array(jsonb_build_object('label', p_label, 'progress', p_progress, 'at', now())) end,
      locked_until = now() + make_interval(secs => p_lease_seconds)
  where j.id = p_job
  returning * into v_job;
  return v_job;
end;
$$;
comment on function billing.checkpoint_job(p_job uuid, p_worker text, p_progress integer, p_state jsonb, p_label text, p_chunk text, p_lease_seconds integer) is 'Saves progress, resume state and any result chunk atomically, and renews the lease; JOB_CANCELLED or LEASE_LOST tell the worker to stop.';
revoke execute on function billing.checkpoint_job(p_job uuid, p_worker text, p_progress integer, p_state jsonb, p_label text, p_chunk text, p_lease_seconds integer) from public;
grant execute on function billing.checkpoint_job(p_job uuid, p_worker text, p_progress integer, p_state jsonb, p_label text, p_chunk text, p_lease_seconds integer) to service_role;

-- A job that runs in slices (a ledger_export does one page per tick) hands itself back after
-- each one, its progress already saved by checkpoint_job. The claim that took it gives its
-- attempt back: attempts count the claims that failed or died, not the slices that ended well.
create or replace function billing.yield_job(p_job uuid, p_worker text) returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker);
begin
  update billing.jobs j set locked_by = null, locked_until = null, run_after = now(), attempts = greatest(j.attempts - 1, 0)
  where j.id = p_job returning * into v_job;
  return v_job;
end;
$$;
comment on function billing.yield_job(p_job uuid, p_worker text) is 'Ends a slice of a job that has more to do: releases the lease (due again at once, behind other due jobs) without counting an attempt.';
revoke execute on function billing.yield_job(p_job uuid, p_worker text) from public;
grant execute on function billing.yield_job(p_job uuid, p_worker text) to service_role;

-- What an AI job's call leaves in ai_logs (30 days, as a gateway call's content): its model,
-- tokens and duration, and its redacted prompt and answer (`p_log`: {duration_ms, content:
-- {prompt, answer}}) only when the job was queued under a consent and one still covers it now
-- (billing.content_consented, the gateway's one rule; a withdrawal meanwhile waited on this
-- job's row and deletes what this keeps). Runs in the statement that completes the job.
create or replace function billing.keep_job_log(j billing.jobs, p_usage jsonb, p_log jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_keep boolean;
begin
  if p_usage is null or p_log is null then
    return;
  end if;
  v_keep := j.keep_content and jsonb_typeof(p_log -> 'content') = 'object'
            and billing.content_consented(j.user_id, j.org_id);
  insert into billing.ai_logs (user_id, job_id, org_id, model, input_tokens, output_tokens, duration_ms, consent_level,
                               prompt_redacted, response_redacted)
  values (j.user_id, j.id, j.org_id, p_usage ->> 'model',
    least(coalesce((p_usage ->> 'input_tokens')::bigint, 0) + coalesce((p_usage ->> 'cached_input_tokens')::bigint, 0),
          2147483647),
    least(coalesce((p_usage ->> 'output_tokens')::bigint, 0) + coalesce((p_usage ->> 'reasoning_tokens')::bigint, 0),
          2147483647),
    greatest(coalesce((p_log ->> 'duration_ms')::integer, 0), 0), case when v_keep then 'content' else 'none' end,
    case when v_keep then p_log #>> '{content,prompt}' end, case when v_keep then p_log #>> '{content,answer}' end);
end;
$$;
comment on function billing.keep_job_log(j billing.jobs, p_usage jsonb, p_log jsonb) is 'Internal: logs an AI job''s call in ai_logs (model, tokens, duration), with its redacted prompt and answer only under the gateway''s consent rule.';
revoke execute on function billing.keep_job_log(j billing.jobs, p_usage jsonb, p_log jsonb) from public;

create or replace function billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb default null::jsonb,
  p_log jsonb default null::jsonb)
returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker, true);
  v_price record;
  v_amount numeric(38, 18) := 0;
  v_card bigint;
  -- A fallback upstream answered (the worker names it): its provider price is what the job cost
  -- (billing.provider_cost), as for a gateway call.
  v_answered jsonb := jsonb_strip_nulls(jsonb_build_object('upstream', p_usage ->> 'upstream'));
begin
  if v_job.hold_id is not null then
    -- Locked first, found not due (billing.lock_holder: the worker settles an account that fell
    -- due and completes again): a hold that shrank by expired credits captures what it holds.
    perform billing.lock_holder(v_job.hold_id);
    if p_usage is not null then
      select * into v_price from billing.price_usage(p_usage ->> 'model', (p_usage ->> 'input_tokens')::bigint,
        (p_usage ->> 'output_tokens')::bigint, (p_usage ->> 'cached_input_tokens')::bigint,
        (p_usage ->> 'reasoning_tokens')::bigint, (p_usage ->> 'images')::bigint, (p_usage ->> 'audio_seconds')::bigint);
      v_amount := v_price.amount;
      v_card := v_price.rate_card_id;
    end if;
    -- Work already done: counted against caps when its hold was placed; any excess charged to the
    -- hold's account, into debt if it must (billing.charge_hold_at).
    perform billing.charge_hold_at(v_job.hold_id, v_amount, v_card, 'job-overage:' || p_job,
      'job:' || p_job, v_answered, jsonb_build_object('job_id', p_job, 'model', p_usage ->> 'model') || v_answered);
  end if;
  if v_job.status = 'cancelled' then
    -- Cancelled while it ran: the work it reports is charged, its result (and content) not kept.
    update billing.jobs j set locked_by = null, locked_until = null
    where j.id = p_job returning * into v_job;
    perform billing.keep_job_log(v_job, p_usage, p_log - 'content');
    return v_job;
  end if;
  update billing.jobs j
  set status = 'completed', progress = 100, result = p_result, completed_at = now(), locked_by = null, locked_until = null,
      error = null
  where j.id = p_job returning * into v_job;
  perform billing.keep_job_log(v_job, p_usage, p_log);
  return v_job;
end;
$$;
comment on function billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb, p_log jsonb) is 'Completes a job (or ends one cancelled while this worker ran it, its result dropped); a metered one captures its priced usage from the hold (any excess charged to the hold''s account, into debt if it must) and releases the rest, and an AI one logs its call (billing.keep_job_log), in the same transaction.';
revoke execute on function billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb, p_log jsonb) from public;
grant execute on function billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb, p_log jsonb) to service_role;

create or replace function billing.fail_job(p_job uuid, p_worker text, p_error jsonb, p_retryable boolean) returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker, true);
begin
  if v_job.status = 'cancelled' then
    -- Cancelled while it ran, and it failed: nothing to charge, its hold freed.
    perform billing.release_job_hold(v_job);
    update billing.jobs j set locked_by = null, locked_until = null where j.id = p_job returning * into v_job;
    return v_job;
  end if;
  if p_retryable and v_job.attempts < v_job.max_attempts then
    -- Stays processing without a lease; claimable again after a backoff of 2, 4, 8 … s.
    update billing.jobs j set locked_by = null, locked_until = null, error = p_error,
      run_after = now() + make_interval(secs => 2 ^ j.attempts)
    where j.id = p_job returning * into v_job;
    return v_job;
  end if;
  perform billing.release_job_hold(v_job);
  update billing.jobs j set status = 'failed', error = p_error, completed_at = now(), locked_by = null, locked_until = null
  where j.id = p_job returning * into v_job;
  return v_job;
end;
$$;
comment on function billing.fail_job(p_job uuid, p_worker text, p_error jsonb, p_retryable boolean) is 'Records a failure: retried with backoff while attempts remain, else failed with its hold released.';
revoke execute on function billing.fail_job(p_job uuid, p_worker text, p_error jsonb, p_retryable boolean) from public;
grant execute on function billing.fail_job(p_job uuid, p_worker text, p_error jsonb, p_retryable boolean) to service_role;

create or replace function billing.cancel_job(p_user uuid, p_job uuid) returns billing.jobs
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs;
begin
  select * into v_job from billing.jobs j where j.id = p_job and j.user_id = p_user for update;
  if not found then
    perform billing.raise_error('JOB_NOT_FOUND', jsonb_build_object('job_id', p_job));
  end if;
  if v_job.status in ('completed', 'failed', 'cancelled') then
    perform billing.raise_error('JOB_FINISHED', jsonb_build_object('job_id', p_job, 'status', v_job.status));
  end if;
  -- A running handler finds out at its next checkpoint (JOB_CANCELLED) and stops. While a worker
  -- holds its lease, a metered job's hold stays for it: what the provider already answers is
  -- billed to the platform, so the worker's report charges it and frees the rest
  -- (billing.complete_job); a worker that never reports frees it when its lease ends
  -- (billing.expire_jobs). Otherwise the hold is released now.
  if not (v_job.status = 'processing' and v_job.hold_id is not null and v_job.locked_by is not null
          and coalesce(v_job.locked_until > now(), false)) then
    perform billing.release_job_hold(v_job);
    v_job.locked_by := null;
  end if;
  update billing.jobs j set status = 'cancelled', completed_at = now(), locked_by = v_job.locked_by,
    locked_until = case when v_job.locked_by is not null then j.locked_until end
  where j.id = p_job returning * into v_job;
  return v_job;
end;
$$;
comment on function billing.cancel_job(p_user uuid, p_job uuid) is 'Cancels a queued or running job: its hold is released at once, or, while a worker runs it, once the worker reports what it used (charged) or its lease ends.';
revoke execute on function billing.cancel_job(p_user uuid, p_job uuid) from public;
grant execute on function billing.cancel_job(p_user uuid, p_job uuid) to service_role;

create or replace function billing.expire_jobs(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job billing.jobs;
  v_count integer := 0;
begin
  -- A job cancelled while it ran whose worker never reported, its lease over: its hold is freed.
  for v_job in
    select * from billing.jobs j where j.status = 'cancelled' and j.locked_until < now()
    order by j.locked_until limit p_limit for update skip locked
  loop
    perform billing.release_job_hold(v_job);
    update billing.jobs j set locked_by = null, locked_until = null where j.id = v_job.id;
  end loop;
  for v_job in
    select * from billing.jobs j where j.expires_at <= now()
    order by j.expires_at limit p_limit for update skip locked
  loop
    if v_job.status not in ('completed', 'failed', 'cancelled') then
      perform billing.release_job_hold(v_job);  -- never leave a hold behind
    end if;
    delete from billing.jobs j where j.id = v_job.id;
    v_count := v_count + 1;
  end loop;
  delete from billing.job_result_chunks c using billing.jobs j
  where c.job_id = j.id and j.expires_at <= now();
  return v_count;
end;
$$;
comment on function billing.expire_jobs(p_limit integer) is 'pg_cron: frees the holds of jobs cancelled while they ran whose worker never reported, and deletes jobs past expires_at (with their results), releasing any hold still open.';
revoke execute on function billing.expire_jobs(p_limit integer) from public;
grant execute on function billing.expire_jobs(p_limit integer) to service_role;

-- A user's job by id (no row when it is not theirs).
create or replace function billing.get_job(p_user uuid, p_job uuid) returns setof billing.jobs
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.jobs j where j.id = p_job and j.user_id = p_user
$$;
comment on function billing.get_job(p_user uuid, p_job uuid) is 'GET /jobs/:id: one of the user''s jobs; no row when it is another user''s.';
revoke execute on function billing.get_job(p_user uuid, p_job uuid) from public;
grant execute on function billing.get_job(p_user uuid, p_job uuid) to service_role;

-- A user's jobs, newest first: a page before the cursor (created_at in microseconds, then id).
create or replace function billing.list_jobs(p_user uuid, p_status text, p_before_micros bigint, p_before_id uuid, p_limit integer) returns setof billing.jobs
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.jobs j
  where j.user_id = p_user and (p_status is null or j.status = p_status)
    and (p_before_micros is null
         or (floor(extract(epoch from j.created_at) * 1000000)::bigint, j.id) < (p_before_micros, p_before_id))
  order by j.created_at desc, j.id desc limit p_limit
$$;
comment on function billing.list_jobs(p_user uuid, p_status text, p_before_micros bigint, p_before_id uuid, p_limit integer) is 'GET /jobs: a user''s jobs, newest first, of one status when given, before a cursor (created_at in microseconds, id).';
revoke execute on function billing.list_jobs(p_user uuid, p_status text, p_before_micros bigint, p_before_id uuid, p_limit integer) from public;
grant execute on function billing.list_jobs(p_user uuid, p_status text, p_before_micros bigint, p_before_id uuid, p_limit integer) to service_role;

-- A page of a job's saved result (a ledger export's CSV), streamed without holding it whole.
create or replace function billing.list_job_result_chunks(p_job uuid, p_after_seq integer, p_limit integer) returns setof billing.job_result_chunks
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.job_result_chunks c where c.job_id = p_job and c.seq > p_after_seq order by c.seq limit p_limit
$$;
comment on function billing.list_job_result_chunks(p_job uuid, p_after_seq integer, p_limit integer) is 'GET /jobs/:id/result: a page of a completed job''s saved result, after a chunk, in order (the route checks the job is the caller''s).';
revoke execute on function billing.list_job_result_chunks(p_job uuid, p_after_seq integer, p_limit integer) from public;
grant execute on function billing.list_job_result_chunks(p_job uuid, p_after_seq integer, p_limit integer) to service_role;

-- ============================================================ triggers

create trigger jobs_transition before update on billing.jobs for each row execute function billing.check_job_transition();

-- ============================================================ policies

create policy "Users can read their own jobs" on billing.jobs for select to authenticated using (user_id = (select auth.uid()));
