-- What the gateway keeps of its calls (62-ai-gateway.sql meters them): the call log a student and
-- an admin read, content kept under the one consent rule and its deletion, the daily roll-ups and
-- sweeps, and the server keys that call the gateway for a product.

-- ============================================================ the call log (docs/ai-gateway.md, "The call log")

-- Whether a call's prompt and answer may be kept (redacted, 30 days, in ai_logs): the student
-- consented, or the school paying for the call did, for its members.
-- PL/pgSQL, not SQL: a SQL function with its own search_path is never inlined and is planned
-- afresh on every call (it runs in every AI call's begin and finish); PL/pgSQL keeps its plans.
create or replace function billing.content_consented(p_user uuid, p_org uuid) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  return exists (select 1 from billing.ai_content_consent k where k.user_id = p_user)
      or exists (select 1 from billing.orgs o where o.id = p_org and o.ai_content_consent);
end;
$$;
comment on function billing.content_consented(p_user uuid, p_org uuid) is 'Internal: whether the student, or the school paying for the call, consented to keeping AI content.';
revoke execute on function billing.content_consented(p_user uuid, p_org uuid) from public;

-- A finished call's prompt and answer ({prompt, answer}, redacted by the gateway), kept 30 days
-- when its record says consent was given at its start and a consent still covers it now (one
-- withdrawn while the call ran keeps nothing); nothing otherwise, and nothing twice. The gateway
-- sends it in a statement of its own after the call's finish or failure: content is no money, so
-- it never sits in the money's transaction, and losing it loses nothing owed.
create or replace function billing.keep_ai_content(p_call uuid, p_content jsonb) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  c billing.ai_calls;
begin
  select * into c from billing.ai_calls x where x.id = p_call and x.status in ('charged', 'failed') for update;
  -- Consent is read under a share lock on what gives it: a withdrawal (its row deleted or its flag
  -- cleared, then billing.forget_unconsented_content) waits for this to commit, or this for it.
  perform 1 from billing.ai_content_consent k where k.user_id = c.user_id for share;
  perform 1 from billing.orgs o where o.id = c.org_id for share;
  if not coalesce(c.keep_content, false) or jsonb_typeof(p_content) is distinct from 'object'
     or not billing.content_consented(c.user_id, c.org_id)
     or exists (select 1 from billing.ai_logs l where l.call_id = p_call) then
    return;
  end if;
  insert into billing.ai_logs (user_id, call_id, model, input_tokens, output_tokens, duration_ms, consent_level,
                               prompt_redacted, response_redacted)
  values (c.user_id, c.id, c.model,
    least(coalesce((c.usage ->> 'input_tokens')::bigint + (c.usage ->> 'cached_input_tokens')::bigint
                   + coalesce((c.usage ->> 'cache_write_tokens')::bigint, 0)
                   + coalesce((c.usage ->> 'cache_write_1h_tokens')::bigint, 0), c.prompt_tokens), 2147483647),
    least(coalesce((c.usage ->> 'output_tokens')::bigint + (c.usage ->> 'reasoning_tokens')::bigint, 0), 2147483647),
    coalesce(c.duration_ms, 0), 'content', p_content ->> 'prompt', p_content ->> 'answer');
end;
$$;
comment on function billing.keep_ai_content(p_call uuid, p_content jsonb) is 'Gateway: keeps a finished call''s redacted prompt and answer in ai_logs (30 days), only when its owner consented, once.';
revoke execute on function billing.keep_ai_content(p_call uuid, p_content jsonb) from public, anon, authenticated;
grant execute on function billing.keep_ai_content(p_call uuid, p_content jsonb) to service_role;

-- A call refused before the provider (402, 403, an unknown model, a prompt too long …): one row,
-- no hold. The model is kept only when it is on the rate card, so a caller's made-up name is
-- never stored (nor a metric label).
create or replace function billing.refuse_ai_call(p_user uuid, p_model text, p_endpoint text, p_stream boolean,
  p_code text, p_duration_ms integer) returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.ai_calls (user_id, model, endpoint, stream, prompt_tokens, max_output_tokens, status, failure,
                                duration_ms, finished_at)
  values (p_user, (select r.model from billing.rate_cards r where r.model = billing.card_model(p_model) limit 1),
          p_endpoint, p_stream, 0, 0,
          'refused', left(p_code, 64), greatest(p_duration_ms, 0), now())
$$;
comment on function billing.refuse_ai_call(p_user uuid, p_model text, p_endpoint text, p_stream boolean, p_code text, p_duration_ms integer) is 'Gateway: records a call refused before the provider (its stable code; the model only if priced: an alias''s card''s).';
revoke execute on function billing.refuse_ai_call(p_user uuid, p_model text, p_endpoint text, p_stream boolean, p_code text, p_duration_ms integer) from public, anon, authenticated;
grant execute on function billing.refuse_ai_call(p_user uuid, p_model text, p_endpoint text, p_stream boolean, p_code text, p_duration_ms integer) to service_role;

-- Whether a call counts against the provider's error rate: it failed after reaching it (not a
-- refusal of the request's own, PROVIDER_REFUSED_4xx), or it failed after reporting usage.
create or replace function billing.ai_call_error(p_status text, p_failure text) returns boolean
language sql immutable
set search_path = ''
as $$
  select coalesce((p_status = 'failed' and p_failure not like 'PROVIDER_REFUSED%')
                  or (p_status = 'charged' and p_failure is not null), p_status = 'failed')
$$;
comment on function billing.ai_call_error(p_status text, p_failure text) is 'Internal: whether a call is an error of the provider or the gateway (the AI error rate''s numerator).';
revoke execute on function billing.ai_call_error(p_status text, p_failure text) from public;

create or replace function billing.ai_call_log_json(c billing.ai_calls) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', c.id, 'created_at', billing.json_time(c.created_at), 'user_id', c.user_id,
    'org_id', c.org_id, 'model', c.model, 'upstream', c.upstream, 'endpoint', c.endpoint, 'stream', c.stream,
    'outcome', c.status, 'code', c.failure, 'upstream_status', c.upstream_status, 'attempts', c.attempts,
    'first_token_ms', c.first_token_ms,
    'duration_ms', c.duration_ms, 'tail_ms', c.tail_ms, 'usage', c.usage - 'failed' - 'failed_by', 'usage_source', c.usage_source,
    'charged', trim_scale(coalesce(c.charged, 0))::text,
    'finish_reason', c.finish_reason, 'client_left', c.client_left, 'transfer_id', c.transfer_id::text,
    'content_kept', exists (select 1 from billing.ai_logs l where l.call_id = c.id))
$$;
comment on function billing.ai_call_log_json(c billing.ai_calls) is 'Internal: a call as the call log shows it (never the replay copy of its answer).';
revoke execute on function billing.ai_call_log_json(c billing.ai_calls) from public;

-- GET /admin/ai/calls (every filter) and GET /ai/v1/calls (p_user: the caller's own): newest
-- first, a page before `p_before` (the previous page's last seq).
create or replace function billing.list_ai_calls(p_user uuid, p_org uuid, p_model text, p_outcome text,
  p_from timestamptz, p_to timestamptz, p_before bigint, p_limit integer)
returns table (seq bigint, call jsonb)
language sql stable
security definer
set search_path = ''
as $$
  select c.seq, billing.ai_call_log_json(c) from billing.ai_calls c
  where (p_user is null or c.user_id = p_user) and (p_org is null or c.org_id = p_org)
    and (p_model is null or c.model = p_model) and (p_outcome is null or c.status = p_outcome)
    and (p_from is null or c.created_at >= p_from) and (p_to is null or c.created_at < p_to)
    and (p_before is null or c.seq < p_before)
  order by c.seq desc limit p_limit
$$;
comment on function billing.list_ai_calls(p_user uuid, p_org uuid, p_model text, p_outcome text, p_from timestamptz, p_to timestamptz, p_before bigint, p_limit integer) is 'The call log, newest first, filtered; p_user limits it to one student''s calls.';
revoke execute on function billing.list_ai_calls(p_user uuid, p_org uuid, p_model text, p_outcome text, p_from timestamptz, p_to timestamptz, p_before bigint, p_limit integer) from public, anon, authenticated;
grant execute on function billing.list_ai_calls(p_user uuid, p_org uuid, p_model text, p_outcome text, p_from timestamptz, p_to timestamptz, p_before bigint, p_limit integer) to service_role;

-- One call with its kept content (null when none was kept): p_user the owner, or null for an
-- operator. Content exists only with consent, so an operator sees it only then. An AI job's id
-- answers its job's call as ai_logs has it (endpoint `job`), for its 30 days. Null: no such call.
create or replace function billing.get_ai_call(p_user uuid, p_id uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(
    (select billing.ai_call_log_json(c) || jsonb_build_object('content',
       (select jsonb_build_object('prompt', l.prompt_redacted, 'answer', l.response_redacted,
                                  'expires_at', billing.json_time(l.expires_at))
        from billing.ai_logs l where l.call_id = c.id))
       -- A batch's record: the batch and each of its lines.
       || coalesce((select jsonb_build_object('batch', b) from billing.ai_batch_lines_json(c.id) b where b is not null),
            '{}'::jsonb)
     from billing.ai_calls c where c.id = p_id and (p_user is null or c.user_id = p_user)),
    (select jsonb_build_object('id', l.job_id, 'job_id', l.job_id, 'created_at', billing.json_time(l.created_at),
       'user_id', l.user_id, 'org_id', l.org_id, 'model', l.model, 'endpoint', 'job', 'duration_ms', l.duration_ms,
       'usage', jsonb_build_object('input_tokens', l.input_tokens, 'output_tokens', l.output_tokens),
       'content_kept', l.prompt_redacted is not null,
       'content', case when l.prompt_redacted is not null then jsonb_build_object('prompt', l.prompt_redacted,
                    'answer', l.response_redacted, 'expires_at', billing.json_time(l.expires_at)) end)
     from billing.ai_logs l where l.job_id = p_id and (p_user is null or l.user_id = p_user)
     order by l.id desc limit 1))
$$;
comment on function billing.get_ai_call(p_user uuid, p_id uuid) is 'One call of the log (or an AI job''s call) with its kept content (only ever kept with consent); p_user: only if it is theirs.';
revoke execute on function billing.get_ai_call(p_user uuid, p_id uuid) from public, anon, authenticated;
grant execute on function billing.get_ai_call(p_user uuid, p_id uuid) to service_role;

-- DELETE /ai/v1/calls/{id}/content: the owner deletes what was kept of a call (its content, its
-- replay copy and a streamed answer's items kept for its references) or of an AI job (its
-- content, and a finished job's input and result); false when neither is theirs (404). Deleting
-- twice is fine.
create or replace function billing.delete_ai_call_content(p_user uuid, p_id uuid) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job boolean;
begin
  -- A call or job still running keeps nothing when it settles (its row is locked until it has).
  update billing.ai_calls c set keep_content = false, answer = null, content_deleted = true
  where c.id = p_id and c.user_id = p_user;
  if found then
    delete from billing.ai_logs l where l.call_id = p_id;
    delete from billing.ai_reference_items i where i.call_id = p_id;
    return true;
  end if;
  -- A job still running needs its input to run and deliver its result (both go with the job).
  update billing.jobs j set keep_content = false,
    input = case when j.status in ('queued', 'processing') then j.input else '{}'::jsonb end,
    result = case when j.status in ('queued', 'processing') then j.result end
  where j.id = p_id and j.user_id = p_user and j.type = 'ai_completion';
  v_job := found;
  update billing.ai_logs l set consent_level = 'none', prompt_redacted = null, response_redacted = null
  where l.job_id = p_id and l.user_id = p_user;
  return v_job or found;
end;
$$;
comment on function billing.delete_ai_call_content(p_user uuid, p_id uuid) is 'A student deletes the kept content of one of their calls (a streamed answer''s items kept for its references too) or AI jobs (a finished job''s input and result too); false when it is not theirs.';
revoke execute on function billing.delete_ai_call_content(p_user uuid, p_id uuid) from public, anon, authenticated;
grant execute on function billing.delete_ai_call_content(p_user uuid, p_id uuid) to service_role;

-- Deletes the kept content that no consent covers any more (after a student or a school
-- withdrew). Calls still running are told first (keep nothing when they settle): that update
-- waits for any settling now, whose content the delete then sees.
create or replace function billing.forget_unconsented_content(p_user uuid, p_org uuid) returns void
language plpgsql
set search_path = ''
as $$
begin
  update billing.ai_calls c set keep_content = false
  where (c.user_id = p_user or c.org_id = p_org) and c.status = 'held' and c.keep_content
    and not billing.content_consented(c.user_id, c.org_id);
  update billing.jobs j set keep_content = false
  where (j.user_id = p_user or j.org_id = p_org) and j.status in ('queued', 'processing') and j.keep_content
    and not billing.content_consented(j.user_id, j.org_id);
  delete from billing.ai_logs l using billing.ai_calls c
  where l.call_id = c.id and (c.user_id = p_user or c.org_id = p_org)
    and not billing.content_consented(c.user_id, c.org_id);
  -- A job's log names its student and paying school itself (it outlives the job); its counts stay.
  update billing.ai_logs l set consent_level = 'none', prompt_redacted = null, response_redacted = null
  where l.job_id is not null and l.prompt_redacted is not null and (l.user_id = p_user or l.org_id = p_org)
    and not billing.content_consented(l.user_id, l.org_id);
end;
$$;
comment on function billing.forget_unconsented_content(p_user uuid, p_org uuid) is 'Internal: deletes kept AI content of a student''s (or a school''s) calls and AI jobs that no consent covers now.';
revoke execute on function billing.forget_unconsented_content(p_user uuid, p_org uuid) from public;

-- GET /ai/v1/content-consent.
create or replace function billing.get_ai_content_consent(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('keep_content', exists (select 1 from billing.ai_content_consent k where k.user_id = p_user),
    'schools_keeping', coalesce((select jsonb_agg(o.id order by o.id) from billing.org_members m
                                 join billing.orgs o on o.id = m.org_id
                                 where m.user_id = p_user and m.active and o.ai_content_consent), '[]'::jsonb),
    'retention_days', 30)
$$;
comment on function billing.get_ai_content_consent(p_user uuid) is 'A student''s consent to keeping AI content, and the schools that keep it for the calls they pay.';
revoke execute on function billing.get_ai_content_consent(p_user uuid) from public, anon, authenticated;
grant execute on function billing.get_ai_content_consent(p_user uuid) to service_role;

-- PUT /ai/v1/content-consent: opting in keeps the content of later calls; opting out deletes at
-- once what this consent kept (a school's consent keeps covering the calls it paid).
create or replace function billing.set_ai_content_consent(p_user uuid, p_keep boolean) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_keep then
    insert into billing.ai_content_consent (user_id) values (p_user) on conflict do nothing;
  else
    delete from billing.ai_content_consent k where k.user_id = p_user;
    perform billing.forget_unconsented_content(p_user, null);
  end if;
  return billing.get_ai_content_consent(p_user);
end;
$$;
comment on function billing.set_ai_content_consent(p_user uuid, p_keep boolean) is 'A student opts in to (or out of, deleting what it kept) keeping the redacted content of their AI calls.';
revoke execute on function billing.set_ai_content_consent(p_user uuid, p_keep boolean) from public, anon, authenticated;
grant execute on function billing.set_ai_content_consent(p_user uuid, p_keep boolean) to service_role;

-- The AI panel, the Prometheus series and the alerts read this: per model since `p_since`,
-- calls by outcome, errors, time to first token and duration (p50, p95, and histogram buckets
-- over `p_bounds`, ms: bucket i counts values ≤ p_bounds[i], past the last one in the last + 1),
-- tokens by kind and credits; per model, endpoint and outcome; the top spenders, the latest
-- failures and the latest calls that moved on to a fallback upstream (by id: no personal data).
create or replace function billing.ai_call_stats(p_since timestamptz, p_bounds integer[]) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  with w as materialized (
    select c.*, coalesce(c.model, '(unpriced)') as label, billing.ai_call_error(c.status, c.failure) as error
    from billing.ai_calls c where c.created_at >= p_since
  ),
  models as (
    select w.label, count(*) as calls, count(*) filter (where w.status = 'charged') as charged,
      count(*) filter (where w.status = 'failed') as failed, count(*) filter (where w.status = 'refused') as refused,
      count(*) filter (where w.error) as errors, count(*) filter (where w.status in ('charged', 'failed')) as reached,
      percentile_disc(0.5) within group (order by w.first_token_ms) as ttft_p50,
      percentile_disc(0.95) within group (order by w.first_token_ms) as ttft_p95,
      percentile_disc(0.5) within group (order by w.duration_ms) as duration_p50,
      percentile_disc(0.95) within group (order by w.duration_ms) as duration_p95,
      coalesce(sum((w.usage ->> 'input_tokens')::bigint), 0) as input_tokens,
      coalesce(sum((w.usage ->> 'cached_input_tokens')::bigint), 0) as cached_input_tokens,
      -- Writes of either lifetime.
      coalesce(sum((w.usage ->> 'cache_write_tokens')::bigint), 0)
        + coalesce(sum((w.usage ->> 'cache_write_1h_tokens')::bigint), 0) as cache_write_tokens,
      coalesce(sum((w.usage ->> 'output_tokens')::bigint), 0) as output_tokens,
      coalesce(sum((w.usage ->> 'reasoning_tokens')::bigint), 0) as reasoning_tokens,
      coalesce(sum(w.charged), 0) as credits,
      (select jsonb_agg(n order by b) from (
         select b, count(*) filter (where width_bucket(x.first_token_ms, p_bounds) = b) as n
         from generate_series(0, cardinality(p_bounds)) b cross join w x where x.label = w.label group by b) h)
        as ttft_buckets,
      (select jsonb_agg(n order by b) from (
         select b, count(*) filter (where width_bucket(x.duration_ms, p_bounds) = b) as n
         from generate_series(0, cardinality(p_bounds)) b cross join w x where x.label = w.label group by b) h)
        as duration_buckets
    from w group by w.label
  )
  select jsonb_build_object(
    'since', billing.json_time(p_since),
    'models', coalesce((select jsonb_agg(jsonb_build_object('model', m.label, 'calls', m.calls, 'charged', m.charged,
        'failed', m.failed, 'refused', m.refused, 'errors', m.errors,
        'error_rate', case when m.reached > 0 then round(m.errors::numeric / m.reached, 4)::text end,
        'ttft_p50_ms', m.ttft_p50, 'ttft_p95_ms', m.ttft_p95, 'duration_p50_ms', m.duration_p50,
        'duration_p95_ms', m.duration_p95, 'credits', trim_scale(m.credits)::text,
        'tokens', jsonb_build_object('input', m.input_tokens, 'cached_input', m.cached_input_tokens,
          'cache_write', m.cache_write_tokens, 'output', m.output_tokens, 'reasoning', m.reasoning_tokens),
        'ttft_buckets', m.ttft_buckets, 'duration_buckets', m.duration_buckets) order by m.label) from models m), '[]'),
    'by_outcome', coalesce((select jsonb_agg(jsonb_build_object('model', o.label, 'endpoint', o.endpoint,
        'outcome', o.status, 'calls', o.n) order by o.label, o.endpoint, o.status)
      from (select w.label, w.endpoint, w.status, count(*) as n from w group by 1, 2, 3) o), '[]'),
    'top_spenders', coalesce((select jsonb_agg(jsonb_build_object('user_id', t.user_id, 'calls', t.n,
        'credits', trim_scale(t.credits)::text) order by t.credits desc, t.user_id)
      from (select w.user_id, count(*) as n, sum(w.charged) as credits from w where w.charged > 0
            group by w.user_id order by 3 desc, 1 limit 10) t), '[]'),
    'refusals', coalesce((select jsonb_agg(jsonb_build_object('code', r.failure, 'calls', r.n) order by r.n desc, r.failure)
      from (select w.failure, count(*) as n from w where w.status = 'refused' group by w.failure) r), '[]'),
    'latest_failures', coalesce((select jsonb_agg(jsonb_build_object('id', f.id, 'created_at', billing.json_time(f.created_at),
        'model', f.model, 'endpoint', f.endpoint, 'outcome', f.status, 'code', f.failure,
        'upstream_status', f.upstream_status, 'upstream', f.upstream, 'attempts', f.attempts) order by f.seq desc)
      from (select * from w where w.error order by w.seq desc limit 10) f), '[]'),
    'latest_fallbacks', coalesce((select jsonb_agg(jsonb_build_object('id', f.id,
        'created_at', billing.json_time(f.created_at), 'model', f.model, 'endpoint', f.endpoint, 'outcome', f.status,
        'upstream', f.upstream, 'attempts', f.attempts) order by f.seq desc)
      from (select * from w where w.attempts is not null order by w.seq desc limit 10) f), '[]'))
$$;
comment on function billing.ai_call_stats(p_since timestamptz, p_bounds integer[]) is 'The AI panel''s and Prometheus'' figures since a time: per model (calls by outcome, errors, time to first token, duration, tokens, credits), top spenders, refusals by code, latest failures, latest fallbacks.';
revoke execute on function billing.ai_call_stats(p_since timestamptz, p_bounds integer[]) from public, anon, authenticated;
grant execute on function billing.ai_call_stats(p_since timestamptz, p_bounds integer[]) to service_role;

-- pg_cron (daily): call records older than `p_keep` (180 days: past the 120 days a card payment
-- can be disputed in, so a dispute's evidence is still there) are rolled up into ai_call_days
-- and deleted, in one statement, so the daily summary reads the same before and after. Calls
-- still held stay.
create or replace function billing.sweep_ai_call_records(p_keep interval default '180 days', p_limit integer default 5000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with gone as (
    delete from billing.ai_calls c where c.id = any (array(
      select x.id from billing.ai_calls x
      where x.created_at < now() - p_keep and x.status <> 'held'
      order by x.created_at limit p_limit))
    returning c.*
  ),
  days as (
    insert into billing.ai_call_days as d (day, model, endpoint, outcome, calls, errors, input_tokens, cached_input_tokens,
      cache_write_tokens, output_tokens, reasoning_tokens, credits)
    select (g.created_at at time zone 'UTC')::date, coalesce(g.model, ''), g.endpoint, g.status, count(*),
      count(*) filter (where billing.ai_call_error(g.status, g.failure)),
      coalesce(sum((g.usage ->> 'input_tokens')::bigint), 0), coalesce(sum((g.usage ->> 'cached_input_tokens')::bigint), 0),
      -- Writes of either lifetime, as the stats count them.
      coalesce(sum((g.usage ->> 'cache_write_tokens')::bigint), 0)
        + coalesce(sum((g.usage ->> 'cache_write_1h_tokens')::bigint), 0), coalesce(sum((g.usage ->> 'output_tokens')::bigint), 0),
      coalesce(sum((g.usage ->> 'reasoning_tokens')::bigint), 0), coalesce(sum(g.charged), 0)
    from gone g group by 1, 2, 3, 4
    on conflict (day, model, endpoint, outcome) do update set calls = d.calls + excluded.calls,
      errors = d.errors + excluded.errors, input_tokens = d.input_tokens + excluded.input_tokens,
      cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
      cache_write_tokens = d.cache_write_tokens + excluded.cache_write_tokens,
      output_tokens = d.output_tokens + excluded.output_tokens,
      reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens, credits = d.credits + excluded.credits
  )
  select count(*) into v_count from gone;
  return v_count;
end;
$$;
comment on function billing.sweep_ai_call_records(p_keep interval, p_limit integer) is 'pg_cron: rolls call records older than 180 days into ai_call_days and deletes them (never one still held or owing).';
revoke execute on function billing.sweep_ai_call_records(p_keep interval, p_limit integer) from public, anon, authenticated;
grant execute on function billing.sweep_ai_call_records(p_keep interval, p_limit integer) to service_role;

-- GET /admin/ai/summary: per UTC day and model, the calls by outcome, errors, tokens and credits,
-- from the roll-up for days past retention and from the records for the rest: the same figures
-- whichever holds a call.
create or replace function billing.ai_calls_summary(p_from date, p_to date) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('day', u.day, 'model', nullif(u.model, ''), 'calls', u.calls,
      'charged', u.charged, 'failed', u.failed, 'refused', u.refused, 'errors', u.errors,
      'tokens', jsonb_build_object('input', u.input_tokens, 'cached_input', u.cached_input_tokens,
        'cache_write', u.cache_write_tokens, 'output', u.output_tokens, 'reasoning', u.reasoning_tokens),
      'credits', trim_scale(u.credits)::text) order by u.day, u.model), '[]'::jsonb)
  from (
    select r.day, r.model, sum(r.calls) as calls, sum(r.calls) filter (where r.outcome = 'charged') as charged,
      coalesce(sum(r.calls) filter (where r.outcome = 'failed'), 0) as failed,
      coalesce(sum(r.calls) filter (where r.outcome = 'refused'), 0) as refused, sum(r.errors) as errors,
      sum(r.input_tokens) as input_tokens, sum(r.cached_input_tokens) as cached_input_tokens,
      sum(r.cache_write_tokens) as cache_write_tokens, sum(r.output_tokens) as output_tokens,
      sum(r.reasoning_tokens) as reasoning_tokens, sum(r.credits) as credits
    from (
      select d.day, d.model, d.outcome, d.calls, d.errors, d.input_tokens, d.cached_input_tokens, d.cache_write_tokens,
        d.output_tokens, d.reasoning_tokens, d.credits
      from billing.ai_call_days d where d.day between p_from and p_to
      union all
      select (c.created_at at time zone 'UTC')::date, coalesce(c.model, ''), c.status, 1,
        billing.ai_call_error(c.status, c.failure)::integer, coalesce((c.usage ->> 'input_tokens')::bigint, 0),
        coalesce((c.usage ->> 'cached_input_tokens')::bigint, 0),
        coalesce((c.usage ->> 'cache_write_tokens')::bigint, 0) + coalesce((c.usage ->> 'cache_write_1h_tokens')::bigint, 0),
        coalesce((c.usage ->> 'output_tokens')::bigint, 0), coalesce((c.usage ->> 'reasoning_tokens')::bigint, 0),
        coalesce(c.charged, 0)
      from billing.ai_calls c
      where c.created_at >= p_from::timestamp at time zone 'UTC' and c.created_at < (p_to + 1)::timestamp at time zone 'UTC'
    ) r group by r.day, r.model
  ) u
$$;
comment on function billing.ai_calls_summary(p_from date, p_to date) is 'Per UTC day and model: AI calls by outcome, errors, tokens and credits, exact across the retention boundary (records, then ai_call_days).';
revoke execute on function billing.ai_calls_summary(p_from date, p_to date) from public, anon, authenticated;
grant execute on function billing.ai_calls_summary(p_from date, p_to date) to service_role;

-- pg_cron: a call whose gateway died holds nothing once its hold expired (release_expired_holds);
-- it is marked failed so its key is free again, and kept answers are forgotten after 24 hours.
-- Lost means past the hold's TTL (the gateway's deadline and a minute): a hold that shrank to
-- nothing by an expiry ends early while the provider still answers, and that call's finish
-- charges it (or records it owed).
create or replace function billing.sweep_ai_calls(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- `status = 'held'` again on the row itself: a finish that committed while this waited on its
  -- row charged the call, which then stays charged (its key taken, so a retry is a replay).
  with lost as (
    update billing.ai_calls c set status = 'failed', failure = 'GATEWAY_LOST', finished_at = now()
    where c.status = 'held' and c.id = any (array(
      select x.id from billing.ai_calls x left join billing.holds h on h.id = x.hold_id
      where x.status = 'held' and x.created_at < now() - interval '1 minute'
        and (h.id is null or (h.status <> 'active' and h.expires_at <= now()))
        -- A batch's call is ended by its batch (billing.finish_ai_batch), whenever that comes.
        and not exists (select 1 from billing.ai_batches b where b.call_id = x.id and b.status = 'in_progress')
      order by x.created_at limit p_limit))
    returning c.id)
  select count(*) into v_count from lost;
  update billing.ai_calls c set answer = null
  where c.id = any (array(select x.id from billing.ai_calls x where x.answer is not null and x.expires_at <= now()
                          limit p_limit));
  return v_count;
end;
$$;
comment on function billing.sweep_ai_calls(p_limit integer) is 'pg_cron: marks calls whose gateway died (hold no longer active) failed, and forgets kept answers after 24 hours.';
revoke execute on function billing.sweep_ai_calls(p_limit integer) from public, anon, authenticated;
grant execute on function billing.sweep_ai_calls(p_limit integer) to service_role;

-- ============================================================ server keys

create or replace function billing.server_key_json(k billing.server_keys) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('id', k.id, 'name', k.name, 'prefix', k.prefix, 'created_at', billing.json_time(k.created_at),
    'revoked_at', case when k.revoked_at is not null then billing.json_time(k.revoked_at) end)
$$;
comment on function billing.server_key_json(k billing.server_keys) is 'Internal: a server key as the API shows it (never its hash).';
revoke execute on function billing.server_key_json(k billing.server_keys) from public;

-- POST /admin/server-keys: the route makes the secret and sends only its hash.
create or replace function billing.create_server_key(p_admin uuid, p_name text, p_hash text, p_prefix text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key billing.server_keys;
begin
  perform billing.assert_user_standing(p_admin, true);
  insert into billing.server_keys (name, key_hash, prefix, created_by) values (p_name, p_hash, p_prefix, p_admin)
  returning * into v_key;
  return billing.server_key_json(v_key);
end;
$$;
comment on function billing.create_server_key(p_admin uuid, p_name text, p_hash text, p_prefix text) is 'POST /admin/server-keys: an admin (checked now) records a new server key by its hash.';
revoke execute on function billing.create_server_key(p_admin uuid, p_name text, p_hash text, p_prefix text) from public, anon, authenticated;
grant execute on function billing.create_server_key(p_admin uuid, p_name text, p_hash text, p_prefix text) to service_role;

create or replace function billing.list_server_keys() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.server_key_json(k) order by k.created_at desc), '[]'::jsonb) from billing.server_keys k
$$;
comment on function billing.list_server_keys() is 'GET /admin/server-keys: every key, revoked ones too (never a secret or hash).';
revoke execute on function billing.list_server_keys() from public, anon, authenticated;
grant execute on function billing.list_server_keys() to service_role;

create or replace function billing.revoke_server_key(p_admin uuid, p_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key billing.server_keys;
begin
  perform billing.assert_user_standing(p_admin, true);
  -- Waits for every report that took this key (billing.use_server_key) to commit, and makes any
  -- later one wait for this revocation: once the DELETE answers, no report with the key is recorded.
  perform pg_advisory_xact_lock(hashtextextended('server-key:' || k.key_hash, 0))
  from billing.server_keys k where k.id = p_id;
  update billing.server_keys k set revoked_at = coalesce(k.revoked_at, now()), revoked_by = coalesce(k.revoked_by, p_admin)
  where k.id = p_id returning * into v_key;
  if not found then
    perform billing.raise_error('SERVER_KEY_NOT_FOUND', '{}'::jsonb);
  end if;
  return billing.server_key_json(v_key);
end;
$$;
comment on function billing.revoke_server_key(p_admin uuid, p_id uuid) is 'DELETE /admin/server-keys/:id: revokes a key at once; revoking again answers the first revocation.';
revoke execute on function billing.revoke_server_key(p_admin uuid, p_id uuid) from public, anon, authenticated;
grant execute on function billing.revoke_server_key(p_admin uuid, p_id uuid) to service_role;

create or replace function billing.server_key_id(p_hash text) returns uuid
language sql stable
security definer
set search_path = ''
as $$
  select k.id from billing.server_keys k where k.key_hash = p_hash and k.revoked_at is null
$$;
comment on function billing.server_key_id(p_hash text) is 'The live server key with this SHA-256 hash, or null (revoked or unknown).';
revoke execute on function billing.server_key_id(p_hash text) from public, anon, authenticated;
grant execute on function billing.server_key_id(p_hash text) to service_role;

-- A report's statement calls this before it records anything: the shared lock, held until the
-- statement's transaction ends, makes billing.revoke_server_key wait for the report (and a report
-- that arrives during a revocation wait for it); the look-up after the lock sees the revocation.
create or replace function billing.use_server_key(p_hash text) returns uuid
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock_shared(hashtextextended('server-key:' || p_hash, 0));
  return billing.server_key_id(p_hash);
end;
$$;
comment on function billing.use_server_key(p_hash text) is 'The live server key with this SHA-256 hash, or null; held against its revocation until the caller''s transaction ends.';
revoke execute on function billing.use_server_key(p_hash text) from public, anon, authenticated;
grant execute on function billing.use_server_key(p_hash text) to service_role;
