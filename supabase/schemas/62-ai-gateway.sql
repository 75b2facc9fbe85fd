-- The metered AI gateway (supabase/functions/ai, docs/ai-gateway.md): usage comes from the
-- provider, never from the payer. Before the provider is called, the gateway counts the prompt
-- and begins a call (begin_ai_call): the model must be on the rate card and allowed for the
-- caller, and a hold covers the dearest way the prompt plus the largest answer the request allows
-- can be billed. After the call, finish_ai_call captures the price of exactly what the provider
-- reported (or, for an answer cut short before the provider said, what was streamed, counted by
-- the gateway's tokenizer) and releases the rest; fail_ai_call releases everything.
--
-- Usage from outside the gateway is reported only by trusted servers: the service role, or a
-- server key an admin created (server_keys, stored as SHA-256 hashes).

-- ============================================================ tables

create table billing.ai_calls (
  id uuid primary key default gen_random_uuid(),
  seq bigint generated always as identity, -- the order calls are listed in (a page's cursor)
  user_id uuid not null,
  idempotency_key text,                -- the caller's Idempotency-Key, or a random one per call; null: refused
  request_hash text,                   -- SHA-256 of the request: one key, one request; null: refused
  model text,                          -- the rate card's model the provider is asked for first, once charged the one that answered (a fallback's); null: a refused name not on it
  endpoint text not null default 'chat', -- the API the caller spoke: chat, responses, messages, embeddings
  upstream text,                       -- the upstream that answered (the card's, or a fallback after it failed); failed: the last tried
  stream boolean not null default false, -- the caller asked for a streamed answer
  org_id uuid,                         -- the school whose wallet or allowance the hold drew on; null: the student's own credits
  prompt_tokens bigint not null,       -- counted by the gateway before the call
  max_output_tokens bigint not null,   -- the most the request lets the provider answer
  hold_id uuid,                        -- no foreign keys here (holds and transfers are never deleted; the invariants check them)
  status text not null default 'held',
  usage jsonb,                         -- what was priced, in disjoint kinds (docs/pricing.md)
  usage_source text,                   -- provider: its own report; tokenizer: counted by the gateway
  charged numeric(38, 18),
  transfer_id bigint,
  failure text,                        -- a stable code (refused, failed, or charged then failed), never the provider's text
  upstream_status integer,             -- the provider's HTTP status; null: never reached or no answer
  first_token_ms integer,              -- from the gateway receiving the call to the provider's first answer bytes (streamed) or whole answer
  duration_ms integer,                 -- from the gateway receiving the call to its settlement
  finish_reason text,                  -- the provider's reason the answer ended (stop, length, tool_calls, …)
  client_left boolean not null default false, -- the caller hung up before the answer's end (it was read on and charged)
  keep_content boolean not null default false, -- the student (or the school paying) consented: prompt and answer kept redacted in ai_logs
  answer jsonb,                        -- a replay copy of the answer (its JSON text, a jsonb string) for the same Idempotency-Key until expires_at
  content_deleted boolean not null default false, -- its owner deleted its content: no replay copy is stored, even when it settles later
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  expires_at timestamptz not null default now() + interval '24 hours',
  attempts jsonb,                      -- upstreams that failed before the first byte, in order: [{upstream, model, failure, status, ms}]; null: none (what any billed is the operator's cost)
  fallbacks text[],                    -- the fallback models the request named (cards' own), tried in order after `model`'s upstreams; null: none
  tail_ms integer,                     -- from the provider's last answer byte to the settling statement (the gateway's own time after the provider)
  constraint ai_calls_status check (status in ('held', 'charged', 'failed', 'refused')),
  constraint ai_calls_usage_source check (usage_source in ('provider', 'tokenizer')),
  constraint ai_calls_finished check ((status = 'held') = (finished_at is null)),
  constraint ai_calls_counts check (prompt_tokens >= 0 and max_output_tokens >= 0),
  constraint ai_calls_endpoint check (endpoint in ('chat', 'responses', 'messages', 'embeddings')),
  constraint ai_calls_claimed check (status = 'refused' or (idempotency_key is not null and request_hash is not null
                                                             and model is not null)),
  constraint ai_calls_refused check (status <> 'refused' or (failure is not null and hold_id is null)),
  constraint ai_calls_codes check (length(failure) <= 64 and length(finish_reason) <= 64),
  constraint ai_calls_times check (first_token_ms >= 0 and duration_ms >= 0 and tail_ms >= 0)
);
comment on table billing.ai_calls is 'Every gateway call, one record each (docs/ai-gateway.md, "The call log"): refused, failed or charged, its timings, usage, charge and ledger transfer. A failed or refused call charged nothing. Kept 180 days, then rolled up into ai_call_days.';
alter table billing.ai_calls enable row level security;
grant select on table billing.ai_calls to service_role;

-- One live call per key: a failed one frees its key for a retry (one hold per attempt); a
-- refused one has none.
create unique index ai_calls_key on billing.ai_calls (user_id, idempotency_key) where status <> 'failed';
create index ai_calls_held on billing.ai_calls (created_at) where status = 'held';
-- The log's pages (newest first): everyone's, a student's own; and the windows of the stats and alerts.
create unique index ai_calls_seq on billing.ai_calls (seq);
create index ai_calls_user_seq on billing.ai_calls (user_id, seq);
create index ai_calls_created on billing.ai_calls (created_at);

create table billing.ai_content_consent (
  user_id uuid primary key references auth.users (id),
  granted_at timestamptz not null default now()
);
comment on table billing.ai_content_consent is 'Students who consented to keeping the redacted prompt and answer of their AI calls for 30 days (docs/ai-gateway.md).';
alter table billing.ai_content_consent enable row level security;
grant select on table billing.ai_content_consent to service_role;

-- Call records past their retention (sweep_ai_call_records), rolled up per UTC day, model,
-- endpoint and outcome: what the daily summary needs, exact.
create table billing.ai_call_days (
  day date not null,
  model text not null,                 -- '' for refused calls that named no priced model
  endpoint text not null,
  outcome text not null,
  calls bigint not null,
  errors bigint not null,
  input_tokens bigint not null,
  cached_input_tokens bigint not null,
  cache_write_tokens bigint not null,
  output_tokens bigint not null,
  reasoning_tokens bigint not null,
  credits numeric(38, 18) not null,
  primary key (day, model, endpoint, outcome)
);
comment on table billing.ai_call_days is 'AI call records older than their 180 days, rolled up per day, model, endpoint and outcome (billing.ai_calls_summary).';
alter table billing.ai_call_days enable row level security;
grant select on table billing.ai_call_days to service_role;

create table billing.model_access (
  plan_id text references billing.plans (id),  -- null: the default list (no plan, or a plan without a list)
  model text not null,
  set_by uuid,
  created_at timestamptz not null default now(),
  constraint model_access_one unique nulls not distinct (plan_id, model)
);
comment on table billing.model_access is 'Which models a plan''s subscribers (plan_id) or everyone else (null) may call through the gateway. No rows for a list: every priced model.';
alter table billing.model_access enable row level security;
grant select on table billing.model_access to service_role;

create table billing.server_keys (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  key_hash text not null unique,       -- SHA-256 (hex) of the secret, which is shown once at creation
  prefix text not null,                -- the secret's first characters, to tell keys apart in a list
  created_by uuid not null,
  created_at timestamptz not null default now(),
  revoked_at timestamptz,
  revoked_by uuid,
  constraint server_keys_hash check (key_hash ~ '^[0-9a-f]{64}$')
);
comment on table billing.server_keys is 'Per-application keys a trusted server reports usage with, naming the user. Revoked keys stay listed.';
alter table billing.server_keys enable row level security;
grant select on table billing.server_keys to service_role;

-- ============================================================ who may call which model

-- Which model list decides for a user (billing.model_list_of): whether there is one, whose plan's
-- it is (null: the default list), and the user's plan family.
create type billing.model_list as (
  has_list boolean,
  list_plan text,
  user_plan text
);
comment on type billing.model_list is 'Which model list decides for a user: whether there is one, the plan whose list it is (null: the default), the user''s plan.';

-- Which list decides for `p_user`: their active plan's if it has one, else the default list if
-- there is one (list_plan null), else none (every model with a rate card in effect). A member of
-- a school calls under their own plan: the allowlist follows the student, the wallet only pays.
-- A list is a plan's (its family's), whichever version the student renews at.
-- Answered as a named type, not OUT parameters: a function with OUT parameters rebuilds its
-- result's row type on every call, and selected FROM it is run through the executor (~30 µs of
-- an AI call's hold for ~6 µs of index reads: bench/README.md, "An AI call against its own row writes").
create or replace function billing.model_list_of(p_user uuid) returns billing.model_list
language plpgsql stable
set search_path = ''
as $$
declare
  v billing.model_list;
begin
  select p.family into v.user_plan from billing.subscriptions s join billing.plans p on p.id = s.plan_id
  where s.user_id = p_user and s.status in ('active', 'trialing', 'past_due')
  order by s.current_period_end desc nulls last limit 1;
  if v.user_plan is not null and exists (select 1 from billing.model_access m where m.plan_id = v.user_plan) then
    v.has_list := true;
    v.list_plan := v.user_plan;
  else
    v.has_list := exists (select 1 from billing.model_access m where m.plan_id is null);
  end if;
  return v;
end;
$$;
comment on function billing.model_list_of(p_user uuid) is 'Internal: which model list decides for a user (their plan''s, the default, or none: every priced model).';
revoke execute on function billing.model_list_of(p_user uuid) from public;

-- The models `p_user` may call (GET /ai/v1/models).
create or replace function billing.allowed_models(p_user uuid)
returns table (model text, plan_id text)
language plpgsql stable
set search_path = ''
as $$
declare
  v billing.model_list := billing.model_list_of(p_user);
begin
  if v.has_list then
    return query select m.model, v.user_plan from billing.model_access m where m.plan_id is not distinct from v.list_plan;
  else
    -- An alias is its card's other name, not a model of its own (billing.model_aliases).
    return query select distinct r.model, v.user_plan from billing.rate_cards r where r.effective_from <= now()
      and not exists (select 1 from billing.model_aliases x where x.alias = r.model);
  end if;
end;
$$;
comment on function billing.allowed_models(p_user uuid) is 'Internal: the models a user may call (their plan''s list, else the default list, else every priced model).';
revoke execute on function billing.allowed_models(p_user uuid) from public;

-- Whether `p_user` may call `p_model` (a card's model: callers resolve an alias first,
-- billing.card_model): the same rule, by index lookups (the gateway's hot path).
create or replace function billing.model_allowed(p_user uuid, p_model text) returns boolean
language plpgsql stable
set search_path = ''
as $$
declare
  v billing.model_list := billing.model_list_of(p_user);
begin
  if v.has_list then
    return exists (select 1 from billing.model_access m
                   where (m.plan_id = v.list_plan or (v.list_plan is null and m.plan_id is null)) and m.model = p_model);
  end if;
  return exists (select 1 from billing.rate_cards r where r.model = p_model and r.effective_from <= now());
end;
$$;
comment on function billing.model_allowed(p_user uuid, p_model text) is 'Internal: whether a user may call a model (the rule of model_list_of).';
revoke execute on function billing.model_allowed(p_user uuid, p_model text) from public;

-- GET /ai/v1/models: each model the caller may call, once, with the other names it answers to
-- (billing.model_aliases), its kind, the APIs its kind is served by (the gateway keeps those its
-- upstream speaks) and its current price per unit of each kind of token (credits, exact). Works
-- whatever the balance: a student over budget still sees the list.
create or replace function billing.list_ai_models(p_user uuid) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  return coalesce((
    select jsonb_agg(jsonb_build_object('id', c.model, 'object', 'model', 'created', extract(epoch from c.effective_from)::bigint,
      'owned_by', 'scholarlink', 'upstream', c.upstream, 'kind', c.kind,
      'aliases', coalesce((select jsonb_agg(x.alias order by x.alias) from billing.model_aliases x where x.model = c.model),
        '[]'::jsonb),
      'endpoints', to_jsonb(billing.model_kind_endpoints(c.kind)), 'plan_id', a.plan_id, 'rate_card_version', c.version,
      'pricing', jsonb_strip_nulls(jsonb_build_object(
        'input_token', trim_scale(c.credits_per_input_token)::text,
        'cached_input_token', trim_scale(c.credits_per_cached_input_token)::text,
        'output_token', trim_scale(c.credits_per_output_token)::text,
        'reasoning_token', trim_scale(c.credits_per_reasoning_token)::text,
        'cache_write_token', case when c.usd_per_million_cache_write is not null
                                  then trim_scale(c.credits_per_cache_write_token)::text end,
        'cache_write_1h_token', case when c.usd_per_million_cache_write_1h is not null
                                  then trim_scale(c.credits_per_cache_write_1h_token)::text end))) order by c.model)
    from billing.allowed_models(p_user) a
    cross join lateral (select * from billing.rate_cards r where r.model = a.model and r.effective_from <= now()
                        order by r.effective_from desc, r.version desc limit 1) c), '[]'::jsonb);
end;
$$;
comment on function billing.list_ai_models(p_user uuid) is 'GET /ai/v1/models: the models a user may call, each once with its aliases, its kind, the APIs its kind is served by and its rate card''s price per kind of token.';
revoke execute on function billing.list_ai_models(p_user uuid) from public, anon, authenticated;
grant execute on function billing.list_ai_models(p_user uuid) to service_role;

-- PUT /admin/model-access: replaces one list (a plan's, or the default with p_plan null); an
-- empty list removes it (the plan falls back to the default, the default to every model). An
-- alias given is kept as its card's model, so the list allows both names.
create or replace function billing.set_model_access(p_admin uuid, p_plan text, p_models text[]) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_unpriced text;
begin
  perform billing.assert_user_standing(p_admin, true);
  if p_plan is not null and not exists (select 1 from billing.plans p where p.id = p_plan) then
    perform billing.raise_error('PLAN_NOT_FOUND', '{}'::jsonb);
  end if;
  select m into v_unpriced from unnest(p_models) m
  where not exists (select 1 from billing.rate_cards r where r.model = m) limit 1;
  if v_unpriced is not null then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('rule', 'every model must have a rate card'));
  end if;
  delete from billing.model_access m where m.plan_id is not distinct from p_plan;
  insert into billing.model_access (plan_id, model, set_by)
  select p_plan, m, p_admin from (select distinct billing.card_model(n) as m from unnest(p_models) n) x;
  return jsonb_build_object('plan_id', p_plan,
    'models', coalesce((select jsonb_agg(m.model order by m.model) from billing.model_access m
                        where m.plan_id is not distinct from p_plan), '[]'::jsonb));
end;
$$;
comment on function billing.set_model_access(p_admin uuid, p_plan text, p_models text[]) is 'PUT /admin/model-access: an admin (checked now) sets the models a plan (or, null, everyone else) may call.';
revoke execute on function billing.set_model_access(p_admin uuid, p_plan text, p_models text[]) from public, anon, authenticated;
grant execute on function billing.set_model_access(p_admin uuid, p_plan text, p_models text[]) to service_role;

-- GET /admin/model-access: every list.
create or replace function billing.get_model_access() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('plan_id', x.plan_id, 'models', x.models) order by x.plan_id nulls first),
                  '[]'::jsonb)
  from (select m.plan_id, jsonb_agg(m.model order by m.model) as models from billing.model_access m group by m.plan_id) x
$$;
comment on function billing.get_model_access() is 'GET /admin/model-access: the default list (plan_id null) and each plan''s.';
revoke execute on function billing.get_model_access() from public, anon, authenticated;
grant execute on function billing.get_model_access() to service_role;

-- ============================================================ metering a call

-- Which of the gateway's APIs serve a model of each kind (its rate card's): a chat model answers
-- text (Chat Completions, Responses, Messages, and ai_completion jobs, which ask as `chat`); an
-- embedding model answers vectors (embeddings) and its card prices input only, so no API that
-- writes an answer may call it.
create or replace function billing.model_kind_endpoints(p_kind text) returns text[]
language plpgsql immutable
set search_path = ''
as $$
begin
  return case p_kind when 'chat' then array['chat', 'responses', 'messages']
                     when 'embedding' then array['embeddings'] else array[]::text[] end;
end;
$$;
comment on function billing.model_kind_endpoints(p_kind text) is 'Internal: the gateway APIs that serve a model of a kind (chat: chat, responses, messages; embedding: embeddings).';
revoke execute on function billing.model_kind_endpoints(p_kind text) from public;

-- Why card `c` may not serve a call on `p_endpoint` (null: it may): a model of another kind
-- (MODEL_KIND_NOT_SUPPORTED), or an upstream that does not speak the API (ENDPOINT_NOT_SUPPORTED;
-- `p_upstreams`: the upstreams configured that speak it). One rule for the gateway's calls
-- (billing.begin_ai_call) and jobs (billing.ai_model_upstream).
create or replace function billing.ai_card_refusal(c billing.rate_cards, p_endpoint text, p_upstreams text[])
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_endpoint <> all (billing.model_kind_endpoints(c.kind)) then
    return jsonb_build_object('token', 'MODEL_KIND_NOT_SUPPORTED', 'detail', jsonb_build_object('model', c.model,
      'kind', c.kind, 'endpoint', p_endpoint, 'endpoints', to_jsonb(billing.model_kind_endpoints(c.kind)),
      'rule', 'a chat model is served on chat, responses and messages, an embedding model on embeddings only (GET /ai/v1/models: kind, endpoints)'));
  elsif c.upstream <> all (p_upstreams) then
    return jsonb_build_object('token', 'ENDPOINT_NOT_SUPPORTED', 'detail', jsonb_build_object('model', c.model,
      'upstream', c.upstream, 'endpoint', p_endpoint,
      'rule', 'each model is served on the endpoints its upstream speaks (GET /ai/v1/models: endpoints)'));
  end if;
  return null;
end;
$$;
comment on function billing.ai_card_refusal(c billing.rate_cards, p_endpoint text, p_upstreams text[]) is 'Internal: why a card may not serve a call on an API (a model of another kind, an upstream that does not speak it), or null.';
revoke execute on function billing.ai_card_refusal(c billing.rate_cards, p_endpoint text, p_upstreams text[]) from public;

-- The most `p_input` prompt tokens and `p_output` answer tokens can cost under card `c`: the
-- provider may bill input as cached and output as reasoning, each priced on its own, so the
-- dearest of the four; with `p_writes_cache` (a request that asks the provider to write its
-- cache) input may be billed as cache writes too, and with `p_writes_cache_1h` as hour-long ones.
-- The kinds are priced independently, so the dearest way is the dearer input price times the
-- input plus the dearer output price times the output.
create or replace function billing.card_hold_amount(c billing.rate_cards, p_input bigint, p_output bigint,
  p_writes_cache boolean, p_writes_cache_1h boolean default false) returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  -- PL/pgSQL: a SQL function with its own search_path is planned afresh on every call.
  return round(greatest(c.credits_per_input_token, c.credits_per_cached_input_token,
      case when p_writes_cache then c.credits_per_cache_write_token end,
      case when p_writes_cache_1h then c.credits_per_cache_write_1h_token end) * p_input
    + greatest(c.credits_per_output_token, c.credits_per_reasoning_token) * p_output, 18);
end;
$$;
comment on function billing.card_hold_amount(c billing.rate_cards, p_input bigint, p_output bigint, p_writes_cache boolean, p_writes_cache_1h boolean) is 'Internal: the dearest price a prompt and answer can be billed at under a card (billing.ai_hold_amount).';
revoke execute on function billing.card_hold_amount(c billing.rate_cards, p_input bigint, p_output bigint, p_writes_cache boolean, p_writes_cache_1h boolean) from public;
-- billing.ai_hold_amount (which the service role calls) runs as its caller.
grant execute on function billing.card_hold_amount(c billing.rate_cards, p_input bigint, p_output bigint, p_writes_cache boolean, p_writes_cache_1h boolean) to service_role;

-- billing.card_hold_amount under the model's current card; UNKNOWN_MODEL without one. A job's
-- reserve (jobs/types/ai-completion.ts); the gateway's begin reads the card itself.
create or replace function billing.ai_hold_amount(p_model text, p_input bigint, p_output bigint,
  p_writes_cache boolean default false) returns numeric
language plpgsql stable
set search_path = ''
as $$
declare
  v_amount numeric;
begin
  select billing.card_hold_amount(r, p_input, p_output, p_writes_cache) into v_amount
  from billing.rate_cards r
  where r.model = billing.card_model(p_model) and r.effective_from <= now()
  order by r.effective_from desc, r.version desc limit 1;
  if v_amount is null then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('rule', 'GET /ai/v1/models lists the models you may call'));
  end if;
  return v_amount;
end;
$$;
comment on function billing.ai_hold_amount(p_model text, p_input bigint, p_output bigint, p_writes_cache boolean) is 'The dearest price p_input prompt and p_output answer tokens can be billed at (input as cached, uncached or, with p_writes_cache, cache writes; output as reasoning or not).';
revoke execute on function billing.ai_hold_amount(p_model text, p_input bigint, p_output bigint, p_writes_cache boolean) from public;
grant execute on function billing.ai_hold_amount(p_model text, p_input bigint, p_output bigint, p_writes_cache boolean) to service_role;

-- Where a job's call of `p_model` on `p_endpoint` goes: its current card's upstream, once the
-- gateway's rules let it, in the gateway's order: the student's allowlist (`p_user`; null when
-- the job runs: it was asked when the job was queued), then the card (billing.ai_card_refusal;
-- `p_upstreams` null: no upstream is called, the kind alone is checked), raised as the gateway
-- answers them. Asked when a job is created (a refusal: no job) and when it runs (the card may
-- have changed since).
create or replace function billing.ai_model_upstream(p_user uuid, p_model text, p_endpoint text, p_upstreams text[])
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_card billing.rate_cards;
  v_refusal jsonb;
begin
  select * into v_card from billing.rate_cards r where r.model = billing.card_model(p_model) and r.effective_from <= now()
  order by r.effective_from desc, r.version desc limit 1;
  if v_card.id is null then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('rule', 'GET /ai/v1/models lists the models you may call'));
  elsif p_user is not null and not billing.model_allowed(p_user, v_card.model) then
    perform billing.raise_error('MODEL_NOT_ALLOWED', jsonb_build_object('rule', 'GET /ai/v1/models lists the models you may call'));
  end if;
  v_refusal := billing.ai_card_refusal(v_card, p_endpoint, coalesce(p_upstreams, array[v_card.upstream]));
  if v_refusal is not null then
    perform billing.raise_error(v_refusal ->> 'token', v_refusal -> 'detail');
  end if;
  return v_card.upstream;
end;
$$;
comment on function billing.ai_model_upstream(p_user uuid, p_model text, p_endpoint text, p_upstreams text[]) is 'Jobs: the upstream a model''s call on an API goes to; UNKNOWN_MODEL, MODEL_NOT_ALLOWED (the user''s allowlist, when named), MODEL_KIND_NOT_SUPPORTED (a model of another kind) or ENDPOINT_NOT_SUPPORTED (no configured upstream of its speaks it).';
revoke execute on function billing.ai_model_upstream(p_user uuid, p_model text, p_endpoint text, p_upstreams text[]) from public, anon, authenticated;
grant execute on function billing.ai_model_upstream(p_user uuid, p_model text, p_endpoint text, p_upstreams text[]) to service_role;

create or replace function billing.ai_call_json(c billing.ai_calls) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object('call_id', c.id, 'status', c.status, 'model', c.model,
    'endpoint', c.endpoint, 'upstream', c.upstream, 'attempts', c.attempts, 'max_output_tokens', c.max_output_tokens,
    'charged', trim_scale(coalesce(c.charged, 0))::text, 'usage', c.usage, 'usage_source', c.usage_source,
    'transfer_id', c.transfer_id::text, 'failure', c.failure, 'tail_ms', c.tail_ms, 'answer', c.answer);
end;
$$;
comment on function billing.ai_call_json(c billing.ai_calls) is 'Internal: a call as the gateway reads it back.';
revoke execute on function billing.ai_call_json(c billing.ai_calls) from public;

-- Before the provider is called: {state: 'held', call_id, hold_id, held, model, upstream} to go
-- ahead (model: the card's own, what the provider is asked for, though `p_model` named an alias),
-- {state: 'replay', call} for a key already answered, {state: 'settle'} when something of the
-- paying accounts fell due (nothing is written: the gateway settles them, billing.settle_spender,
-- and asks again; the call's road never carries expiry), or a refusal, {state: 'refused', token,
-- detail}, already recorded (billing.refuse_ai_call; `p_elapsed_ms`: the call's time before this
-- statement): the caller's standing, the model, a model whose kind the endpoint does not serve
-- or whose upstream does not speak it (`p_upstreams`: the upstreams the gateway has that speak
-- `p_endpoint`; billing.ai_card_refusal), a cache write the card
-- does not price, a reused key or one whose first call still runs (IDEMPOTENCY_KEY_IN_USE), a
-- hold the balance or a cap refuses (402; what the call owes from before included), keeping
-- nothing. Every refusal a person can meet is a row, so the gateway sends this statement in one
-- round trip (sql.oneTrip); only a broken invariant raises.
create or replace function billing.begin_ai_call(p_user uuid, p_model text, p_prompt_tokens bigint,
  p_max_output_tokens bigint, p_key text, p_request_hash text, p_ttl_seconds integer, p_endpoint text default 'chat',
  p_upstreams text[] default array['openai'], p_writes_cache boolean default false, p_stream boolean default false,
  p_elapsed_ms integer default 0, p_writes_cache_1h boolean default false, p_min_output_tokens bigint default null,
  p_fallback_models text[] default '{}', p_price_share numeric default 1)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_call billing.ai_calls;
  v_refusal jsonb := billing.standing_refusal(p_user);
  v_card billing.rate_cards;
  v_cards billing.rate_cards[] := '{}'::billing.rate_cards[]; -- the model's card, then each fallback's, in order
  v_models text[] := '{}'::text[];                -- their models
  v_fallbacks jsonb := '[]'::jsonb;               -- the fallbacks' models and upstreams, as the gateway tries them
  v_name text;
  v_amount numeric := 0;                          -- the dearest candidate's price of the prompt and largest answer
  v_least numeric := 0;                           -- of the prompt and the least answer worth holding for
  v_per_token numeric := 0;                       -- the dearest answer token
  v_hold billing.hold_result;
  v_granted bigint := p_max_output_tokens;        -- the answer's maximum the hold pays for
  v_org uuid;
  v_detail text;
  v_id uuid;
  v_model text;
begin
  if cardinality(p_fallback_models) > 3 then     -- the gateway refuses more (VALIDATION_FAILED)
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "at most 3 fallback models"}');
  end if;
  -- The model, then each fallback model (docs/ai-gateway.md § Fallback models), each checked as
  -- the model is; a name met again (itself or an alias of a card before it) is tried once. Plain
  -- expressions, no query, past the card's read: most calls name one model.
  foreach v_name in array p_model || coalesce(p_fallback_models, '{}') loop
    exit when v_refusal is not null;
    -- From here the call is its card's: an alias (billing.model_aliases) is priced, recorded
    -- and sent to the provider as the card's own model.
    v_model := billing.card_model(v_name);        -- once: in the query it ran for every card read
    continue when v_model = any (v_models);
    select * into v_card from billing.rate_cards r where r.model = v_model and r.effective_from <= now()
    order by r.effective_from desc, r.version desc limit 1;
    v_refusal := case
      when v_card.id is null or not billing.model_allowed(p_user, v_card.model) then jsonb_build_object(
        'token', case when v_card.id is not null then 'MODEL_NOT_ALLOWED' else 'UNKNOWN_MODEL' end,
        'detail', jsonb_build_object('rule', 'GET /ai/v1/models lists the models you may call'))
      else coalesce(billing.ai_card_refusal(v_card, p_endpoint, p_upstreams),
        case when p_writes_cache and v_card.usd_per_million_cache_write is null then jsonb_build_object(
          'token', 'UNPRICED_USAGE', 'detail', jsonb_build_object('model', v_card.model, 'kind', 'cache_write_tokens'))
        when p_writes_cache_1h and v_card.usd_per_million_cache_write_1h is null then jsonb_build_object(
          'token', 'UNPRICED_USAGE', 'detail', jsonb_build_object('model', v_card.model, 'kind', 'cache_write_1h_tokens')) end)
    end;
    -- A fallback's refusal says it is one (its name is the caller's: never in the detail).
    v_refusal := case when cardinality(v_cards) > 0 then jsonb_set(v_refusal, '{detail,field}', '"models"')
                      else v_refusal end;
    v_cards := v_cards || v_card;
    v_models := v_models || v_card.model;
    if cardinality(v_models) > 1 then
      v_fallbacks := v_fallbacks || jsonb_build_object('model', v_card.model, 'upstream', v_card.upstream);
    end if;
    -- Whichever model answers, the hold pays for it: the dearest candidate's figures.
    v_amount := greatest(v_amount, billing.card_hold_amount(v_card, p_prompt_tokens, p_max_output_tokens, p_writes_cache,
      p_writes_cache_1h));
    v_least := greatest(v_least, billing.card_hold_amount(v_card, p_prompt_tokens,
      least(p_min_output_tokens, p_max_output_tokens), p_writes_cache, p_writes_cache_1h));
    v_per_token := greatest(v_per_token, v_card.credits_per_output_token, v_card.credits_per_reasoning_token);
  end loop;
  v_card := v_cards[1];
  -- A batch (billing.begin_ai_batch) is held at its share of the card's price, rounded up to the
  -- ledger's 18 places: never less than its lines can cost.
  v_amount := round(ceil(v_amount * p_price_share * 1e18) / 1e18, 18);
  v_least := round(ceil(v_least * p_price_share * 1e18) / 1e18, 18);
  v_per_token := round(ceil(v_per_token * p_price_share * 1e18) / 1e18, 18);
  if v_refusal is null then
    begin
      if not exists (select 1 from billing.ai_calls c
                     where c.user_id = p_user and c.idempotency_key = p_key and c.status <> 'failed') then
        v_id := gen_random_uuid();
        -- Caps (per model too: each candidate's), school wallets, allowances and pools apply as to
        -- any hold; it reserves only lots that may pay for every candidate. Only amounts and the
        -- model reach a refusal's detail, never the caller's text. Given a minimum answer, the
        -- hold is the most that fits (docs/ai-gateway.md § The last credits) in whole tokens of
        -- answer, and the answer's maximum is what it pays for under every candidate's card: the
        -- hold is a price of the prompt and that answer, never the paying account's figure.
        v_hold := billing.reserve_hold(p_user, v_amount, 'ai:' || v_id, p_ttl_seconds, 'ai', 'ai:' || v_id,
          jsonb_build_object('model', v_card.model, 'ai_call_id', v_id) || case when cardinality(v_models) > 1
            then jsonb_build_object('fallbacks', to_jsonb(v_models[2:])) else '{}' end, v_least, v_per_token);
        if v_hold.amount < v_amount then
          v_granted := greatest(least(p_min_output_tokens, p_max_output_tokens),
            (select min(floor((v_hold.amount - billing.card_hold_amount(c, p_prompt_tokens, 0, p_writes_cache,
              p_writes_cache_1h)) / greatest(c.credits_per_output_token, c.credits_per_reasoning_token))) from unnest(v_cards) c));
        end if;
        -- Who pays (a school's wallet or allowance, or the student) and whether the content may
        -- be kept (docs/ai-gateway.md, "Content, only with consent"): the call's record is
        -- written once, with them. A duplicate that claimed the key meanwhile committed first
        -- (this hold waited on its account lock, this insert on its claim): this one is undone.
        select a.org_id into v_org from billing.holds h join billing.accounts a on a.id = h.account_id
        where h.id = v_hold.hold_id;
        insert into billing.ai_calls (id, user_id, idempotency_key, request_hash, model, prompt_tokens, max_output_tokens,
          endpoint, upstream, stream, hold_id, org_id, keep_content, fallbacks)
        values (v_id, p_user, p_key, p_request_hash, v_card.model, p_prompt_tokens, v_granted, p_endpoint,
          v_card.upstream, p_stream, v_hold.hold_id, v_org, billing.content_consented(p_user, v_org),
          nullif(v_models[2:], '{}'))
        on conflict (user_id, idempotency_key) where status <> 'failed' do nothing
        returning * into v_call;
        if not found then
          perform billing.raise_error('IDEMPOTENCY_KEY_IN_USE', '{}'::jsonb);
        end if;
      end if;
    exception when sqlstate 'P0001' then
      -- Tokens that mean our fault are 5xx (_shared/adapters/sql-errors.ts) and raise. A refusal
      -- rolls back the hold: nothing is held or kept.
      if sqlerrm in ('LEDGER_IMMUTABLE', 'PAYMENT_AMOUNT_MISMATCH', 'MONEY_UNBALANCED', 'LEDGER_INVARIANT',
                     'INTERNAL_ERROR') then
        raise;
      elsif sqlerrm = 'ACCOUNT_FELL_DUE' then
        return jsonb_build_object('state', 'settle');  -- the gateway settles (billing.settle_spender), asks again
      end if;
      get stacked diagnostics v_detail = pg_exception_detail;
      v_refusal := jsonb_build_object('token', sqlerrm, 'detail', coalesce(nullif(v_detail, '')::jsonb, '{}'::jsonb));
    end;
    if v_call.id is null then
      -- The key's claim answers, if there is one: the same call again (replayed once it
      -- finished), another request under its key, or a call that claimed it while this one
      -- waited or was refused.
      select * into v_call from billing.ai_calls c
      where c.user_id = p_user and c.idempotency_key = p_key and c.status <> 'failed';
      if found then
        v_refusal := case when v_call.request_hash <> p_request_hash
                            then jsonb_build_object('token', 'IDEMPOTENCY_KEY_REUSED', 'detail', '{}'::jsonb)
                          when v_call.status = 'held'
                            then jsonb_build_object('token', 'IDEMPOTENCY_KEY_IN_USE', 'detail', '{}'::jsonb) end;
        if v_refusal is null then
          return jsonb_build_object('state', 'replay', 'call', billing.ai_call_json(v_call));
        end if;
      elsif v_refusal is null then
        -- The claim seen above ended (its call failed) since: no call, no hold here; the key is
        -- free for the caller's retry. Never a go-ahead without a record to charge.
        v_refusal := jsonb_build_object('token', 'IDEMPOTENCY_KEY_IN_USE', 'detail', '{}'::jsonb);
      end if;
    end if;
  end if;
  if v_refusal is not null then
    perform billing.refuse_ai_call(p_user, p_model, p_endpoint, p_stream, v_refusal ->> 'token',
      p_elapsed_ms + (extract(epoch from pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) * 1000)::integer);
    return v_refusal || jsonb_build_object('state', 'refused');
  end if;
  return jsonb_build_object('state', 'held', 'call_id', v_call.id, 'hold_id', v_hold.hold_id,
    'held', trim_scale(v_hold.amount)::text, 'max_output_tokens', v_granted, 'model', v_card.model,
    'upstream', v_card.upstream, 'rate_card_id', v_card.id, 'keep_content', v_call.keep_content,
    'fallbacks', v_fallbacks);
end;
$$;
comment on function billing.begin_ai_call(p_user uuid, p_model text, p_prompt_tokens bigint, p_max_output_tokens bigint, p_key text, p_request_hash text, p_ttl_seconds integer, p_endpoint text, p_upstreams text[], p_writes_cache boolean, p_stream boolean, p_elapsed_ms integer, p_writes_cache_1h boolean, p_min_output_tokens bigint, p_fallback_models text[], p_price_share numeric) is 'Gateway: checks the model is allowed and served on the endpoint (its kind and its upstream), claims the call''s key and holds the dearest price of the prompt plus the largest answer (given p_min_output_tokens, the largest answer that fits, at least that: max_output_tokens in the answer); answers a row (held, replay or refused, a refusal recorded), raising only on a broken invariant.';
revoke execute on function billing.begin_ai_call(p_user uuid, p_model text, p_prompt_tokens bigint, p_max_output_tokens bigint, p_key text, p_request_hash text, p_ttl_seconds integer, p_endpoint text, p_upstreams text[], p_writes_cache boolean, p_stream boolean, p_elapsed_ms integer, p_writes_cache_1h boolean, p_min_output_tokens bigint, p_fallback_models text[], p_price_share numeric) from public, anon, authenticated;
grant execute on function billing.begin_ai_call(p_user uuid, p_model text, p_prompt_tokens bigint, p_max_output_tokens bigint, p_key text, p_request_hash text, p_ttl_seconds integer, p_endpoint text, p_upstreams text[], p_writes_cache boolean, p_stream boolean, p_elapsed_ms integer, p_writes_cache_1h boolean, p_min_output_tokens bigint, p_fallback_models text[], p_price_share numeric) to service_role;

-- Ends a server's hold at a price worked out after the work (a job's usage, an AI call's): the
-- hold pays what it can and the rest of it is released. Should the provider have billed past the
-- hold, the excess is the one debt (docs/credit-lots.md § Spending order, rule 7): charged at
-- once to the account the hold drew on, into debt if it must, so the next call is refused while
-- it is owed; never a claim that waits on another hold's end. The caller holds the
-- account lock and found nothing due (billing.lock_holder; an ended hold captures nothing). `p_capture_facts` go on the capture, `p_overage_facts` on the excess; `p_key` is the
-- excess's idempotency key, `p_correlation` both transfers'.
create or replace function billing.charge_hold_at(p_hold_id uuid, p_amount numeric, p_rate_card_id bigint,
  p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb,
  out captured numeric, out overage numeric, out transfer_id bigint)
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
  v_account billing.accounts;
  v_model text;
  v_owed bigint;
begin
  -- The caller locked the account and found nothing due (billing.lock_holder): a hold that shrank
  -- by expired credits was settled before, and captures only what it still holds.
  select * into v_account from billing.accounts a where a.id = (select h.account_id from billing.holds h where h.id = p_hold_id);
  select * into v_hold from billing.holds h where h.id = p_hold_id;
  v_model := coalesce((select r.model from billing.rate_cards r where r.id = p_rate_card_id), v_hold.metadata ->> 'model');
  captured := case when p_amount > 0 and v_hold.status = 'active' then least(p_amount, v_hold.amount) else 0 end;
  overage := greatest(p_amount, 0) - captured;
  if captured > 0 then
    -- Under the caller's lock, checked here: no second lock (capture_hold is the user's door).
    transfer_id := (billing.post_capture(v_hold, captured, p_correlation,
      coalesce(p_capture_facts, '{}'::jsonb) || jsonb_build_object('model', v_model))).capture_transfer_id;
  elsif v_hold.status = 'active' then
    perform billing.void_hold(p_hold_id);
  end if;
  if overage > 0 then
    -- Counted against its caps now, past them, all of it: the next call is refused.
    perform billing.take_cap_room(v_account.id, overage, v_model, v_hold.member_id, p_past => true) where v_account.caps > 0;
    -- Charged first, then named (coalesce would skip the charge when the capture is there).
    -- Free credits that may pay for the model first; short of them, the account's live holds give
    -- up what they reserved of such lots (billing.give_way_to_excess), and their cap room of it
    -- comes back (this charge counted it); then frozen credits; the rest is debt (the writer's `owe`).
    perform billing.return_hold_cap_room(jsonb_populate_record(null::billing.holds, x -> 'hold'), (x ->> 'given')::numeric)
    from jsonb_array_elements(billing.give_way_to_excess(v_hold.account_id, v_model, overage)) x;
    v_owed := billing.take_credits(a.id, 'usage', overage, p_key, p_correlation, null,
      p_overage_facts || jsonb_build_object('reserved', trim_scale(v_hold.amount)::text, 'priced', trim_scale(p_amount)::text),
      p_rate_card_id, case when a.org_id is not null then coalesce(v_hold.member_id, a.member_id) end,
      jsonb_build_object('first', '[]'::jsonb, 'owe', true)
        || case when a.restricted_lots then jsonb_build_object('for', v_model) else '{}' end)
    from billing.accounts a where a.id = v_hold.account_id;
    transfer_id := coalesce(transfer_id, v_owed);
  end if;
end;
$$;
comment on function billing.charge_hold_at(p_hold_id uuid, p_amount numeric, p_rate_card_id bigint, p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb, out captured numeric, out overage numeric, out transfer_id bigint) is 'Internal: ends a job''s or an AI call''s hold at a price worked out after the work: captured from the hold, any excess charged to the hold''s account from its free credits, then as debt (counted against its caps past them); the rest released.';
revoke execute on function billing.charge_hold_at(p_hold_id uuid, p_amount numeric, p_rate_card_id bigint, p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb, out captured numeric, out overage numeric, out transfer_id bigint) from public;

-- A call, locked: finishing and failing it are one at a time (the second answers the first).
create or replace function billing.lock_ai_call(p_call uuid) returns billing.ai_calls
language plpgsql
set search_path = ''
as $$
declare
  v_call billing.ai_calls;
begin
  select * into v_call from billing.ai_calls c where c.id = p_call for update;
  if not found then
    perform billing.raise_error('AI_CALL_NOT_FOUND', '{}'::jsonb);
  end if;
  return v_call;
end;
$$;
comment on function billing.lock_ai_call(p_call uuid) is 'Internal: a gateway call, locked for its finish or failure; AI_CALL_NOT_FOUND when there is none.';
revoke execute on function billing.lock_ai_call(p_call uuid) from public;

-- After the provider answered. `p_usage` in disjoint kinds ({input_tokens, cached_input_tokens,
-- output_tokens, reasoning_tokens, cache_write_tokens, cache_write_1h_tokens}), from `p_source` (provider or tokenizer). Ends the hold at
-- the rate card's price of it, as a job's is ended (billing.charge_hold_at: the excess of a
-- provider that billed more is charged to the hold's account, into debt if it must). `p_failed`: the provider reported usage, then the call
-- failed; charged (the provider bills it) and marked so an operator's failed_only correction
-- can give it back. Finishing a finished call answers it again.
create or replace function billing.finish_ai_call(p_call uuid, p_usage jsonb, p_source text, p_answer jsonb,
  p_failed boolean default false, p_report jsonb default '{}')
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_call billing.ai_calls := billing.lock_ai_call(p_call);
  v_hold billing.holds;
  v_price billing.usage_price;
  v_charged record;
  v_facts jsonb;
begin
  if v_call.status <> 'held' then
    return billing.ai_call_json(v_call);
  end if;
  -- Charged at the card of the model that answered: the one asked for, or a fallback it named.
  if p_report ? 'model' and p_report ->> 'model' <> v_call.model then
    if not p_report ->> 'model' = any (v_call.fallbacks) then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a call is charged for its model or a fallback it named"}');
    end if;
    v_call.model := p_report ->> 'model';
  end if;
  v_price := billing.price_usage(v_call.model, (p_usage ->> 'input_tokens')::bigint,
    (p_usage ->> 'output_tokens')::bigint, (p_usage ->> 'cached_input_tokens')::bigint,
    (p_usage ->> 'reasoning_tokens')::bigint, 0, 0, coalesce((p_usage ->> 'cache_write_tokens')::bigint, 0),
    coalesce((p_usage ->> 'cache_write_1h_tokens')::bigint, 0));
  -- The account's lock first (as capture_hold takes it), so no expiry shrinks the hold between
  -- reading it and capturing from it; an account that fell due (a call that outlived its hold's
  -- TTL, a lot past its expiry) is settled first by the gateway (billing.lock_holder).
  perform billing.lock_holder(v_call.hold_id);
  select * into v_hold from billing.holds h where h.id = v_call.hold_id;
  -- What the ledger records of the call: the model, every kind, where the counts came from.
  v_facts := jsonb_build_object('model', v_call.model, 'ai_call_id', v_call.id, 'usage_source', p_source,
    'input_tokens', (p_usage ->> 'input_tokens')::bigint, 'output_tokens', (p_usage ->> 'output_tokens')::bigint,
    'cached_input_tokens', coalesce((p_usage ->> 'cached_input_tokens')::bigint, 0),
    'reasoning_tokens', coalesce((p_usage ->> 'reasoning_tokens')::bigint, 0))
    || case when (p_usage ->> 'cache_write_tokens')::bigint > 0
         then jsonb_build_object('cache_write_tokens', (p_usage ->> 'cache_write_tokens')::bigint) else '{}'::jsonb end
    || case when (p_usage ->> 'cache_write_1h_tokens')::bigint > 0
         then jsonb_build_object('cache_write_1h_tokens', (p_usage ->> 'cache_write_1h_tokens')::bigint)
         else '{}'::jsonb end
    || case when p_failed then jsonb_build_object('failed', true, 'failed_by', 'gateway') else '{}'::jsonb end
    -- A fallback upstream answered: its provider price is what the call cost (billing.provider_cost).
    || case when p_report ->> 'upstream' <> v_call.upstream or v_call.fallbacks is not null
         then jsonb_build_object('upstream', p_report ->> 'upstream') else '{}'::jsonb end;
  v_charged := billing.charge_hold_at(v_hold.id, v_price.amount, v_price.rate_card_id,
    'ai-overage:' || v_call.id, 'ai:' || v_call.id,
    v_facts || jsonb_build_object('rate_card_version', v_price.rate_card_version), v_facts);
  update billing.ai_calls c set status = 'charged', model = v_call.model,
    usage = v_facts - 'model' - 'ai_call_id' - 'usage_source' - 'upstream',
    usage_source = p_source, charged = v_charged.captured + v_charged.overage, transfer_id = v_charged.transfer_id,
    answer = case when not c.content_deleted then p_answer end,
    finished_at = now(), failure = case when p_failed then 'PROVIDER_FAILED_AFTER_USAGE' end,
    upstream = coalesce(p_report ->> 'upstream', c.upstream), attempts = nullif(p_report -> 'attempts', '[]'),
    upstream_status = (p_report ->> 'upstream_status')::integer, first_token_ms = (p_report ->> 'first_token_ms')::integer,
    duration_ms = (p_report ->> 'duration_ms')::integer, tail_ms = (p_report ->> 'tail_ms')::integer,
    finish_reason = left(p_report ->> 'finish_reason', 64),
    client_left = coalesce((p_report ->> 'client_left')::boolean, false)
  where c.id = p_call returning * into v_call;
  return billing.ai_call_json(v_call);
end;
$$;
comment on function billing.finish_ai_call(p_call uuid, p_usage jsonb, p_source text, p_answer jsonb, p_failed boolean, p_report jsonb) is 'Gateway: captures the rate card''s price of what the provider reported (an excess charged to the hold''s account, into debt if it must), releases the rest; idempotent.';
revoke execute on function billing.finish_ai_call(p_call uuid, p_usage jsonb, p_source text, p_answer jsonb, p_failed boolean, p_report jsonb) from public, anon, authenticated;
grant execute on function billing.finish_ai_call(p_call uuid, p_usage jsonb, p_source text, p_answer jsonb, p_failed boolean, p_report jsonb) to service_role;

-- The provider failed, timed out or refused before reporting usage: nothing is charged and the
-- key is free for a retry. Failing a finished call changes nothing.
create or replace function billing.fail_ai_call(p_call uuid, p_failure text, p_report jsonb default '{}') returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_call billing.ai_calls := billing.lock_ai_call(p_call);
begin
  if v_call.status = 'held' then
    if exists (select 1 from billing.holds h where h.id = v_call.hold_id and h.status = 'active') then
      perform billing.release_hold(null, v_call.hold_id);
    end if;
    update billing.ai_calls c set status = 'failed', failure = p_failure, finished_at = now(),
      upstream = coalesce(p_report ->> 'upstream', c.upstream), attempts = nullif(p_report -> 'attempts', '[]'),
      upstream_status = (p_report ->> 'upstream_status')::integer, first_token_ms = (p_report ->> 'first_token_ms')::integer,
      duration_ms = (p_report ->> 'duration_ms')::integer, tail_ms = (p_report ->> 'tail_ms')::integer,
      client_left = coalesce((p_report ->> 'client_left')::boolean, false)
    where c.id = p_call returning * into v_call;
  end if;
  return billing.ai_call_json(v_call);
end;
$$;
comment on function billing.fail_ai_call(p_call uuid, p_failure text, p_report jsonb) is 'Gateway: the provider failed before reporting usage; releases the hold, charges nothing, records the failure code.';
revoke execute on function billing.fail_ai_call(p_call uuid, p_failure text, p_report jsonb) from public, anon, authenticated;
grant execute on function billing.fail_ai_call(p_call uuid, p_failure text, p_report jsonb) to service_role;
