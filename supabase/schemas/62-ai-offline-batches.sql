-- AI batches (docs/ai-gateway.md § Batches): OpenAI's Batch API and Anthropic's Message
-- Batches, at the batch price (billing.ai_batch_share of the card's, as both providers charge).
-- A batch is one call record and one hold: begun at the worst case of every line (its prompt,
-- counted by the gateway, and its answer's maximum), held past the provider's 24-hour window,
-- ended once (billing.finish_ai_batch) at the sum of its lines' prices from the provider's usage;
-- failed, expired and cancelled lines cost nothing, and what was not spent returns.

-- ============================================================ tables

-- An uploaded batch file (POST /ai/v1/files): the gateway validated and counted every line and
-- sent the provider its own copy of them; only the counts stay here, never the content.
create table billing.ai_batch_files (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  provider_file_id text,               -- the upstream's id of the validated copy; null while it is sent
  upstream text not null,
  endpoint text not null,              -- the API every line calls
  model text not null,                 -- the model every line names (one per batch, as OpenAI requires)
  lines jsonb not null,                -- [{custom_id, prompt_tokens, max_output_tokens}], as counted
  writes_cache boolean not null default false,
  filename text not null,
  bytes integer not null,
  created_at timestamptz not null default now(),
  constraint ai_batch_files_endpoint check (endpoint = 'chat'),
  constraint ai_batch_files_lines check (jsonb_typeof(lines) = 'array' and jsonb_array_length(lines) >= 1)
);
comment on table billing.ai_batch_files is 'Batch input files a student uploaded: each line''s counts (the content went to the provider, never stored here).';
alter table billing.ai_batch_files enable row level security;
grant select on table billing.ai_batch_files to service_role;
create index ai_batch_files_user on billing.ai_batch_files (user_id, created_at);

create table billing.ai_batches (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  kind text not null,                  -- openai (/batches) or anthropic (/messages/batches)
  call_id uuid not null unique,        -- the call record that carries the batch's hold and charge
  rate_card_id bigint not null,        -- the card it was held under: its lines are priced by it
  file_id uuid unique,                 -- openai: its input file (one batch each)
  provider_batch_id text unique,       -- null until the provider accepted it
  status text not null default 'submitting',
  provider_status text,                -- the provider's last word (completed, expired, cancelled, ended …)
  cancel_requested boolean not null default false,
  line_count integer not null,
  results jsonb,                       -- where the provider keeps the results (openai: output and error file ids)
  metadata jsonb,                      -- the caller's, as OpenAI keeps it (at most 16 short pairs)
  created_at timestamptz not null default now(),
  synced_at timestamptz,               -- the minute sync's last look (it looks at the longest unseen first)
  ended_at timestamptz,
  constraint ai_batches_kind check (kind in ('openai', 'anthropic')),
  constraint ai_batches_status check (status in ('submitting', 'in_progress', 'ended', 'failed')),
  constraint ai_batches_ended check ((status in ('ended', 'failed')) = (ended_at is not null))
);
comment on table billing.ai_batches is 'Students'' AI batches: submitting (held, not yet accepted by the provider), in_progress, ended (every line settled once) or failed (nothing charged).';
alter table billing.ai_batches enable row level security;
grant select on table billing.ai_batches to service_role;
create index ai_batches_open on billing.ai_batches (synced_at nulls first, created_at) where status in ('submitting', 'in_progress');
create index ai_batches_user on billing.ai_batches (user_id, created_at);

create table billing.ai_batch_lines (
  batch_id uuid not null references billing.ai_batches (id),
  custom_id text not null,
  prompt_tokens bigint not null,
  max_output_tokens bigint not null,
  outcome text,                        -- succeeded, errored, expired, cancelled; null while the batch runs
  usage jsonb,                         -- the provider's, in the card's disjoint kinds (succeeded lines)
  charged numeric(38, 18),             -- at the batch price; 0 for a line that did not succeed
  primary key (batch_id, custom_id),
  constraint ai_batch_lines_outcome check (outcome in ('succeeded', 'errored', 'expired', 'cancelled')),
  constraint ai_batch_lines_charged check ((outcome is null) = (charged is null) and charged >= 0)
);
comment on table billing.ai_batch_lines is 'Each line of a batch: its counts when begun, then its outcome, usage and charge once the batch ended.';
alter table billing.ai_batch_lines enable row level security;
grant select on table billing.ai_batch_lines to service_role;

-- ============================================================ functions

-- The batch price as a share of the card's: half, as OpenAI's and Anthropic's batch prices are.
create or replace function billing.ai_batch_share() returns numeric
language sql immutable
set search_path = ''
as $$ select 0.5::numeric $$;
comment on function billing.ai_batch_share() is 'The batch price as a share of the rate card''s (both providers price batches at half).';
revoke execute on function billing.ai_batch_share() from public;

-- Why a student may not upload a batch file now (null: they may): their standing (banned,
-- deleted, a disputed payment), or `p_max_unused` files of theirs in no batch yet (each is
-- stored at the provider). Asked before a file is counted or sent, and again when it is recorded.
create or replace function billing.ai_batch_file_refusal(p_user uuid, p_max_unused integer) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(billing.standing_refusal(p_user),
    case when (select count(*) from billing.ai_batch_files f
               where f.user_id = p_user and not exists (select 1 from billing.ai_batches b where b.file_id = f.id)
                 and (f.provider_file_id is not null or f.created_at > now() - interval '10 minutes'))
              >= p_max_unused
      then jsonb_build_object('token', 'AI_BATCH_LIMIT', 'detail', jsonb_build_object('limit', p_max_unused,
        'rule', 'at most this many of your files wait for a batch: create their batches first')) end)
$$;
comment on function billing.ai_batch_file_refusal(p_user uuid, p_max_unused integer) is 'Gateway: why a student may not upload a batch file (their standing, or too many files in no batch yet), or null.';
revoke execute on function billing.ai_batch_file_refusal(p_user uuid, p_max_unused integer) from public, anon, authenticated;
grant execute on function billing.ai_batch_file_refusal(p_user uuid, p_max_unused integer) to service_role;

-- POST /ai/v1/files: a checked file's counts, recorded before its lines are sent to the provider
-- (so the limit holds for what the provider stores), refused as billing.ai_batch_file_refusal
-- says, one upload at a time per student; billing.sent_ai_batch_file then names the provider's
-- copy. A claim never sent stops counting after 10 minutes.
create or replace function billing.record_ai_batch_file(p_user uuid, p_upstream text,
  p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_filename text, p_bytes integer,
  p_max_unused integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_file billing.ai_batch_files;
  v_refusal jsonb;
begin
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('ai-batch:' || p_user::text, 0));
  v_refusal := billing.ai_batch_file_refusal(p_user, p_max_unused);
  if v_refusal is not null then
    return v_refusal || jsonb_build_object('state', 'refused');
  end if;
  insert into billing.ai_batch_files (user_id, upstream, endpoint, model, lines, writes_cache, filename, bytes)
  values (p_user, p_upstream, p_endpoint, p_model, p_lines, p_writes_cache, p_filename, p_bytes)
  returning * into v_file;
  return jsonb_build_object('state', 'recorded', 'file', billing.ai_batch_file_json(v_file));
end;
$$;
comment on function billing.record_ai_batch_file(p_user uuid, p_upstream text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_filename text, p_bytes integer, p_max_unused integer) is 'Gateway: records a checked batch file''s line counts before it is sent, within the student''s limit.';
revoke execute on function billing.record_ai_batch_file(p_user uuid, p_upstream text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_filename text, p_bytes integer, p_max_unused integer) from public, anon, authenticated;
grant execute on function billing.record_ai_batch_file(p_user uuid, p_upstream text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_filename text, p_bytes integer, p_max_unused integer) to service_role;

-- The provider took the file (`p_provider_file_id`), or did not (null: the claim goes).
create or replace function billing.sent_ai_batch_file(p_file uuid, p_provider_file_id text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_file billing.ai_batch_files;
begin
  if p_provider_file_id is null then
    delete from billing.ai_batch_files f where f.id = p_file and f.provider_file_id is null;
    return null;
  end if;
  update billing.ai_batch_files f set provider_file_id = p_provider_file_id
  where f.id = p_file and f.provider_file_id is null returning * into v_file;
  return billing.ai_batch_file_json(v_file);
end;
$$;
comment on function billing.sent_ai_batch_file(p_file uuid, p_provider_file_id text) is 'Gateway: names the provider''s copy of a recorded batch file, or (null) drops the record of one the provider did not take.';
revoke execute on function billing.sent_ai_batch_file(p_file uuid, p_provider_file_id text) from public, anon, authenticated;
grant execute on function billing.sent_ai_batch_file(p_file uuid, p_provider_file_id text) to service_role;

create or replace function billing.ai_batch_file_json(f billing.ai_batch_files) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', f.id, 'provider_file_id', f.provider_file_id, 'upstream', f.upstream,
    'filename', f.filename, 'bytes', f.bytes, 'created_at', extract(epoch from f.created_at)::bigint,
    'lines', jsonb_array_length(f.lines), 'model', f.model,
    'batch_id', (select b.id from billing.ai_batches b where b.file_id = f.id))
$$;
comment on function billing.ai_batch_file_json(f billing.ai_batch_files) is 'Internal: a batch file as the gateway answers it.';
revoke execute on function billing.ai_batch_file_json(f billing.ai_batch_files) from public;

-- A student's file (theirs only): its record, or null.
create or replace function billing.get_ai_batch_file(p_user uuid, p_id uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select billing.ai_batch_file_json(f) from billing.ai_batch_files f
  where f.id = p_id and f.user_id = p_user and f.provider_file_id is not null
$$;
comment on function billing.get_ai_batch_file(p_user uuid, p_id uuid) is 'Gateway: a student''s own batch file, or null.';
revoke execute on function billing.get_ai_batch_file(p_user uuid, p_id uuid) from public, anon, authenticated;
grant execute on function billing.get_ai_batch_file(p_user uuid, p_id uuid) to service_role;

create or replace function billing.ai_batch_json(b billing.ai_batches) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', b.id, 'kind', b.kind, 'status', b.status, 'provider_status', b.provider_status,
    'provider_batch_id', b.provider_batch_id, 'cancel_requested', b.cancel_requested, 'line_count', b.line_count,
    'results', b.results, 'metadata', b.metadata, 'file_id', b.file_id, 'call_id', b.call_id,
    'created_at', extract(epoch from b.created_at)::bigint, 'ended_at', extract(epoch from b.ended_at)::bigint,
    'model', c.model, 'upstream', c.upstream, 'endpoint', c.endpoint,
    'held', trim_scale(h.amount)::text, 'charged', trim_scale(coalesce(c.charged, 0))::text,
    'counts', (select jsonb_build_object(
      'succeeded', count(*) filter (where l.outcome = 'succeeded'), 'errored', count(*) filter (where l.outcome = 'errored'),
      'expired', count(*) filter (where l.outcome = 'expired'), 'cancelled', count(*) filter (where l.outcome = 'cancelled'))
      from billing.ai_batch_lines l where l.batch_id = b.id))
  from billing.ai_calls c left join billing.holds h on h.id = c.hold_id where c.id = b.call_id
$$;
comment on function billing.ai_batch_json(b billing.ai_batches) is 'Internal: a batch as the gateway answers it (its model, hold, charge and lines'' outcomes).';
revoke execute on function billing.ai_batch_json(b billing.ai_batches) from public;

-- POST /ai/v1/batches and /ai/v1/messages/batches: the batch's worst case held as one AI call
-- at the batch price (billing.begin_ai_call: model, kind, allowlist, caps, lots and the student's
-- standing as for any call), refused whole when it does not fit. `p_lines` are
-- [{custom_id, prompt_tokens, max_output_tokens}]; with `p_file`, the file's (theirs only, once).
-- One student's batches begin one at a time, so at most `p_max_open` run. The same key again
-- answers the batch it began.
create or replace function billing.begin_ai_batch(p_user uuid, p_kind text, p_endpoint text, p_model text,
  p_lines jsonb, p_writes_cache boolean, p_file uuid, p_key text, p_request_hash text, p_upstreams text[],
  p_max_open integer, p_metadata jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_file billing.ai_batch_files;
  v_batch billing.ai_batches;
  v_begun jsonb;
begin
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('ai-batch:' || p_user::text, 0));
  if p_file is not null then
    select * into v_file from billing.ai_batch_files f
    where f.id = p_file and f.user_id = p_user and f.provider_file_id is not null;
    if not found then
      return jsonb_build_object('state', 'refused', 'token', 'AI_FILE_NOT_FOUND', 'detail', '{}'::jsonb);
    end if;
    p_lines := v_file.lines;
    p_model := v_file.model;
    p_endpoint := v_file.endpoint;
    p_writes_cache := v_file.writes_cache;
  end if;
  select b.* into v_batch from billing.ai_batches b join billing.ai_calls c on c.id = b.call_id
  where c.user_id = p_user and c.idempotency_key = p_key and c.status <> 'failed';
  if found then
    return case when (select c.request_hash from billing.ai_calls c where c.id = v_batch.call_id) = p_request_hash
      then jsonb_build_object('state', 'replay', 'batch', billing.ai_batch_json(v_batch))
      else jsonb_build_object('state', 'refused', 'token', 'IDEMPOTENCY_KEY_REUSED', 'detail', '{}'::jsonb) end;
  end if;
  if p_file is not null and exists (select 1 from billing.ai_batches b where b.file_id = p_file) then
    return jsonb_build_object('state', 'refused', 'token', 'AI_FILE_USED', 'detail', '{}'::jsonb);
  end if;
  if (select count(*) from billing.ai_batches b where b.user_id = p_user and b.status in ('submitting', 'in_progress'))
     >= p_max_open then
    return jsonb_build_object('state', 'refused', 'token', 'AI_BATCH_LIMIT',
      'detail', jsonb_build_object('limit', p_max_open, 'rule', 'at most this many batches run at once'));
  end if;
  -- Held through the provider's 24-hour window and two hours past it for the results to be read.
  v_begun := billing.begin_ai_call(p_user, p_model,
    (select sum((l ->> 'prompt_tokens')::bigint) from jsonb_array_elements(p_lines) l)::bigint,
    (select sum((l ->> 'max_output_tokens')::bigint) from jsonb_array_elements(p_lines) l)::bigint,
    p_key, p_request_hash, 26 * 3600, p_endpoint, p_upstreams, p_writes_cache, p_price_share => billing.ai_batch_share());
  if v_begun ->> 'state' <> 'held' then
    return v_begun;
  end if;
  insert into billing.ai_batches (user_id, kind, call_id, rate_card_id, file_id, line_count, metadata)
  values (p_user, p_kind, (v_begun ->> 'call_id')::uuid, (v_begun ->> 'rate_card_id')::bigint, p_file,
    jsonb_array_length(p_lines), p_metadata)
  returning * into v_batch;
  insert into billing.ai_batch_lines (batch_id, custom_id, prompt_tokens, max_output_tokens)
  select v_batch.id, l.custom_id, l.prompt_tokens, l.max_output_tokens
  from jsonb_to_recordset(p_lines) as l(custom_id text, prompt_tokens bigint, max_output_tokens bigint);
  return jsonb_build_object('state', 'held', 'batch', billing.ai_batch_json(v_batch));
end;
$$;
comment on function billing.begin_ai_batch(p_user uuid, p_kind text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_file uuid, p_key text, p_request_hash text, p_upstreams text[], p_max_open integer, p_metadata jsonb) is 'Gateway: holds a batch''s worst case at the batch price as one AI call and records its lines; answers held, replay or refused (402 with the figures when it does not fit).';
revoke execute on function billing.begin_ai_batch(p_user uuid, p_kind text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_file uuid, p_key text, p_request_hash text, p_upstreams text[], p_max_open integer, p_metadata jsonb) from public, anon, authenticated;
grant execute on function billing.begin_ai_batch(p_user uuid, p_kind text, p_endpoint text, p_model text, p_lines jsonb, p_writes_cache boolean, p_file uuid, p_key text, p_request_hash text, p_upstreams text[], p_max_open integer, p_metadata jsonb) to service_role;

-- A batch, locked (its settling is one at a time: a second poller answers the first's result).
create or replace function billing.lock_ai_batch(p_batch uuid) returns billing.ai_batches
language plpgsql
set search_path = ''
as $$
declare
  v_batch billing.ai_batches;
begin
  select * into v_batch from billing.ai_batches b where b.id = p_batch for update;
  if not found then
    perform billing.raise_error('AI_BATCH_NOT_FOUND', '{}'::jsonb);
  end if;
  return v_batch;
end;
$$;
comment on function billing.lock_ai_batch(p_batch uuid) is 'Internal: a batch, locked; AI_BATCH_NOT_FOUND when there is none.';
revoke execute on function billing.lock_ai_batch(p_batch uuid) from public;

-- The provider accepted the batch (`p_provider_batch_id`), or did not (null: nothing is
-- charged, the hold returns, the batch failed).
create or replace function billing.submitted_ai_batch(p_batch uuid, p_provider_batch_id text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_batch billing.ai_batches := billing.lock_ai_batch(p_batch);
begin
  if v_batch.status = 'submitting' then
    if p_provider_batch_id is null then
      perform billing.fail_ai_call(v_batch.call_id, 'PROVIDER_REFUSED_BATCH');
    end if;
    update billing.ai_batches b set provider_batch_id = p_provider_batch_id,
      status = case when p_provider_batch_id is null then 'failed' else 'in_progress' end,
      ended_at = case when p_provider_batch_id is null then now() end
    where b.id = p_batch returning * into v_batch;
  end if;
  return billing.ai_batch_json(v_batch);
end;
$$;
comment on function billing.submitted_ai_batch(p_batch uuid, p_provider_batch_id text) is 'Gateway: records the provider''s batch id, or (null) fails the batch and releases its hold.';
revoke execute on function billing.submitted_ai_batch(p_batch uuid, p_provider_batch_id text) from public, anon, authenticated;
grant execute on function billing.submitted_ai_batch(p_batch uuid, p_provider_batch_id text) to service_role;

-- The provider ended the batch (`p_status`, its word): each line it reported
-- ([{custom_id, outcome, usage}], usage in the card's disjoint kinds) is priced once at the
-- batch price, a line it did not report cost nothing, and the hold is ended at the sum
-- (billing.charge_hold_at: the rest released; past the hold, the excess owed). Ending an ended
-- batch answers it again.
create or replace function billing.finish_ai_batch(p_batch uuid, p_lines jsonb, p_status text, p_results jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_batch billing.ai_batches := billing.lock_ai_batch(p_batch);
  v_call billing.ai_calls;
  v_card billing.rate_cards;
  v_charged record;
  v_usage jsonb;
  v_facts jsonb;
begin
  if v_batch.status <> 'in_progress' then
    return billing.ai_batch_json(v_batch);
  end if;
  v_call := billing.lock_ai_call(v_batch.call_id);
  -- A line the batch does not have, or one reported twice, is the provider's fault: never a charge.
  if exists (select 1 from jsonb_array_elements(p_lines) x
             where not exists (select 1 from billing.ai_batch_lines l where l.batch_id = p_batch
                                 and l.custom_id = x ->> 'custom_id'))
     or (select count(*) <> count(distinct x ->> 'custom_id') from jsonb_array_elements(p_lines) x) then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a batch is charged only for its own lines, each once"}');
  end if;
  -- A line that succeeded without usage is priced at its worst case, what it was held for.
  p_lines := (select coalesce(jsonb_agg(x || case when x ->> 'outcome' = 'succeeded'
      and jsonb_typeof(x -> 'usage') is distinct from 'object' then jsonb_build_object('usage',
        jsonb_build_object('input_tokens', l.prompt_tokens, 'output_tokens', l.max_output_tokens)) else '{}' end),
      '[]'::jsonb)
    from jsonb_array_elements(p_lines) x join billing.ai_batch_lines l on l.batch_id = p_batch
      and l.custom_id = x ->> 'custom_id');
  -- Priced by the card the batch was held under (a card published while it ran prices later
  -- batches); a kind that card leaves unpriced, at the line's worst case under it.
  select * into v_card from billing.rate_cards r where r.id = v_batch.rate_card_id;
  update billing.ai_batch_lines l set outcome = x.outcome,
    usage = case when x.outcome = 'succeeded' then x.usage end,
    charged = case when x.outcome = 'succeeded' then billing.ai_batch_share() * coalesce(billing.usage_amount(
      (x.usage ->> 'input_tokens')::bigint, coalesce((x.usage ->> 'cached_input_tokens')::bigint, 0),
      (x.usage ->> 'output_tokens')::bigint, coalesce((x.usage ->> 'reasoning_tokens')::bigint, 0), 0, 0,
      v_card.credits_per_input_token, v_card.credits_per_cached_input_token, v_card.credits_per_output_token,
      v_card.credits_per_reasoning_token, null, null, coalesce((x.usage ->> 'cache_write_tokens')::bigint, 0),
      v_card.credits_per_cache_write_token, coalesce((x.usage ->> 'cache_write_1h_tokens')::bigint, 0),
      v_card.credits_per_cache_write_1h_token), billing.card_hold_amount(v_card, l.prompt_tokens, l.max_output_tokens,
      true, true)) else 0 end
  from jsonb_to_recordset(p_lines) as x(custom_id text, outcome text, usage jsonb)
  where l.batch_id = p_batch and l.custom_id = x.custom_id;
  update billing.ai_batch_lines l set outcome = case when p_status in ('cancelled', 'canceled') then 'cancelled'
    else 'expired' end, charged = 0
  where l.batch_id = p_batch and l.outcome is null;
  select jsonb_build_object('lines', count(*) filter (where l.outcome = 'succeeded'),
      'input_tokens', coalesce(sum((l.usage ->> 'input_tokens')::bigint), 0),
      'cached_input_tokens', coalesce(sum((l.usage ->> 'cached_input_tokens')::bigint), 0),
      'output_tokens', coalesce(sum((l.usage ->> 'output_tokens')::bigint), 0),
      'reasoning_tokens', coalesce(sum((l.usage ->> 'reasoning_tokens')::bigint), 0),
      'cache_write_tokens', coalesce(sum((l.usage ->> 'cache_write_tokens')::bigint), 0),
      'cache_write_1h_tokens', coalesce(sum((l.usage ->> 'cache_write_1h_tokens')::bigint), 0)),
    sum(l.charged)
  into v_usage, v_call.charged
  from billing.ai_batch_lines l where l.batch_id = p_batch;
  v_facts := jsonb_build_object('model', v_call.model, 'ai_call_id', v_call.id, 'ai_batch_id', v_batch.id,
    'usage_source', 'provider', 'batch_price_share', billing.ai_batch_share()::text,
    'rate_card_version', v_card.version) || v_usage;
  -- The account's lock first, found not due, as finish_ai_call takes it (billing.lock_holder).
  perform billing.lock_holder(v_call.hold_id);
  v_charged := billing.charge_hold_at(v_call.hold_id, v_call.charged, v_card.id, 'ai-overage:' || v_call.id,
    'ai:' || v_call.id, v_facts, v_facts);
  update billing.ai_calls c set status = 'charged', usage = v_usage - 'lines', usage_source = 'provider',
    charged = v_charged.captured + v_charged.overage, transfer_id = v_charged.transfer_id, finished_at = now(),
    duration_ms = least(extract(epoch from now() - c.created_at) * 1000, 2147483647)::integer
  where c.id = v_call.id;
  update billing.ai_batches b set status = 'ended', provider_status = left(p_status, 32), results = p_results,
    ended_at = now()
  where b.id = p_batch returning * into v_batch;
  return billing.ai_batch_json(v_batch);
end;
$$;
comment on function billing.finish_ai_batch(p_batch uuid, p_lines jsonb, p_status text, p_results jsonb) is 'Gateway: prices each line the provider reported once at the batch price and ends the batch''s hold at their sum (the rest released); idempotent.';
revoke execute on function billing.finish_ai_batch(p_batch uuid, p_lines jsonb, p_status text, p_results jsonb) from public, anon, authenticated;
grant execute on function billing.finish_ai_batch(p_batch uuid, p_lines jsonb, p_status text, p_results jsonb) to service_role;

-- GET /ai/v1/batches/:id (and Anthropic's): a student's own batch, or null. `p_cancel` asks for
-- it to be cancelled (POST …/cancel): the gateway then asks the provider.
create or replace function billing.get_ai_batch(p_user uuid, p_id uuid, p_cancel boolean default false) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_batch billing.ai_batches;
begin
  update billing.ai_batches b set cancel_requested = true
  where p_cancel and b.id = p_id and b.user_id = p_user and b.status in ('submitting', 'in_progress');
  select * into v_batch from billing.ai_batches b where b.id = p_id and b.user_id = p_user;
  return case when found then billing.ai_batch_json(v_batch) end;
end;
$$;
comment on function billing.get_ai_batch(p_user uuid, p_id uuid, p_cancel boolean) is 'Gateway: a student''s own batch (null when not theirs), marked to be cancelled with p_cancel.';
revoke execute on function billing.get_ai_batch(p_user uuid, p_id uuid, p_cancel boolean) from public, anon, authenticated;
grant execute on function billing.get_ai_batch(p_user uuid, p_id uuid, p_cancel boolean) to service_role;

-- The batches the minute sync looks at: those the provider still runs, and those never
-- accepted after 10 minutes (their gateway died while submitting: failed, nothing charged).
create or replace function billing.open_ai_batches(p_limit integer default 100) returns setof jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
begin
  for v_id in select b.id from billing.ai_batches b
              where b.status = 'submitting' and b.created_at < now() - interval '10 minutes' limit p_limit loop
    perform billing.submitted_ai_batch(v_id, null);
  end loop;
  -- Those to cancel first (a removed member's), then the longest unseen, so a batch the provider
  -- cannot answer for never keeps others waiting.
  return query with seen as (
    update billing.ai_batches b set synced_at = now()
    where b.id = any (array(select x.id from billing.ai_batches x where x.status = 'in_progress'
                            order by x.cancel_requested desc, x.synced_at nulls first, x.created_at limit p_limit))
    returning b.*)
  select billing.ai_batch_json(s) from seen s;
end;
$$;
comment on function billing.open_ai_batches(p_limit integer) is 'The jobs tick: the batches the provider runs (to poll and settle); fails those never accepted after 10 minutes.';
revoke execute on function billing.open_ai_batches(p_limit integer) from public, anon, authenticated;
grant execute on function billing.open_ai_batches(p_limit integer) to service_role;

-- The call log's view of a batch: its lines, each with its outcome, usage and charge.
create or replace function billing.ai_batch_lines_json(p_call uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', b.id, 'kind', b.kind, 'status', b.status, 'provider_status', b.provider_status,
    'lines', coalesce((select jsonb_agg(jsonb_build_object('custom_id', l.custom_id, 'outcome', l.outcome,
      'usage', l.usage, 'charged', trim_scale(l.charged)::text) order by l.custom_id)
      from billing.ai_batch_lines l where l.batch_id = b.id), '[]'::jsonb))
  from billing.ai_batches b where b.call_id = p_call
$$;
comment on function billing.ai_batch_lines_json(p_call uuid) is 'Internal: the batch a call record carries, with its lines (null: not a batch).';
revoke execute on function billing.ai_batch_lines_json(p_call uuid) from public;
