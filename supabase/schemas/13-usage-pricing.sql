-- Usage pricing: what a single usage charge costs and records. The price formula
-- (billing.usage_amount) is written once and priced with the model's current rate card
-- (15-catalog.sql); billing.usage_facts builds what a charge records (model and every usage
-- kind). billing.charge_usage prices and debits one usage event.

-- ============================================================ types

create type billing.usage_result as (
  transfer_id bigint,
  charged numeric(38, 18),
  rate_card_version integer,
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);

-- What billing.price_usage answers. A named type, not OUT parameters: a function with OUT
-- parameters rebuilds its result's row type from its catalogue entry on every call, a
-- measurable share of pricing (bench/pricing.ts).
create type billing.usage_price as (
  rate_card_id bigint,
  rate_card_version integer,
  amount numeric
);
comment on type billing.usage_price is 'A usage event''s price: the rate card (id and version) and the amount in credits.';

-- ============================================================ functions

-- The price formula, the one place it is written: billing.price_usage (a single charge), the
-- usage batch and the rate-card dry run (billing.reprice_usage) all call it. Kinds are disjoint
-- (input excludes cached input, output excludes reasoning); each count times the card's credits
-- per unit of its kind (exact, worked out once per card: billing.rate_cards), summed, rounded once
-- to 18 places. A kind the card leaves null: cached input at the input price, reasoning at the
-- output price, cache writes (5-minute or hour-long, each its own kind) at the input price (the
-- card's generated columns; a request that asks for them is refused before the call instead,
-- docs/ai-gateway.md), images and audio unpriced: null when used, which
-- the callers refuse as UNPRICED_USAGE. Null counts of the optional kinds count as 0. Counts are
-- numeric so the dry run can price its summed counts.
create or replace function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric,
  p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric,
  p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric,
  p_per_image numeric, p_per_audio_second numeric, p_cache_write_tokens numeric default 0,
  p_per_cache_write numeric default null, p_cache_write_1h_tokens numeric default 0,
  p_per_cache_write_1h numeric default null)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  return round(p_input_tokens * p_per_input + coalesce(p_cached_input_tokens, 0) * p_per_cached_input
    + p_output_tokens * p_per_output + coalesce(p_reasoning_tokens, 0) * p_per_reasoning
    + case when coalesce(p_cache_write_tokens, 0) = 0 then 0 else p_cache_write_tokens * p_per_cache_write end
    + case when coalesce(p_cache_write_1h_tokens, 0) = 0 then 0 else p_cache_write_1h_tokens * p_per_cache_write_1h end
    + case when coalesce(p_images, 0) = 0 then 0 else p_images * p_per_image end
    + case when coalesce(p_audio_seconds, 0) = 0 then 0 else p_audio_seconds * p_per_audio_second end, 18);
end
$$;
comment on function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric, p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric, p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric, p_per_image numeric, p_per_audio_second numeric, p_cache_write_tokens numeric, p_per_cache_write numeric, p_cache_write_1h_tokens numeric, p_per_cache_write_1h numeric) is 'The price formula: usage counts by kind times a card''s credits per unit, rounded once to 18 places; null when a used kind is unpriced.';
revoke execute on function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric, p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric, p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric, p_per_image numeric, p_per_audio_second numeric, p_cache_write_tokens numeric, p_per_cache_write numeric, p_cache_write_1h_tokens numeric, p_per_cache_write_1h numeric) from public;

-- The bounds every usage count must keep, one place for the single charge, the batch and the
-- dry run: input and output given, every count from 0 to 10^12 (an amount far past that would
-- overflow). Null optional counts count as 0.
create or replace function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint,
  p_cache_write_tokens bigint default 0, p_cache_write_1h_tokens bigint default 0)
returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  return p_input_tokens is not null and p_output_tokens is not null
    and least(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds,
      p_cache_write_tokens, p_cache_write_1h_tokens) >= 0
    and greatest(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds,
      p_cache_write_tokens, p_cache_write_1h_tokens) <= 1000000000000;
end
$$;
comment on function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) is 'Internal: whether usage counts are within bounds (input and output given, each from 0 to 10^12).';
revoke execute on function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) from public;

-- One row, not a set: a caller assigns it (v := billing.quote_usage(…)) without a table
-- function's tuplestore. Every kind but input and output is optional (null counts as 0).
create or replace function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint default 0, p_reasoning_tokens bigint default 0, p_images bigint default 0,
  p_audio_seconds bigint default 0, p_cache_write_tokens bigint default 0, p_cache_write_1h_tokens bigint default 0)
returns billing.usage_price
language plpgsql stable
set search_path = ''
as $$
declare
  r billing.rate_cards;                           -- all nulls when the model has no card
  v_model text := billing.card_model(p_model);    -- once: in the query it ran for every card read
begin
  select * into r
  from billing.rate_cards c
  where c.model = v_model and c.effective_from <= now()
  order by c.effective_from desc, c.version desc limit 1;
  if not billing.usage_counts_valid(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images,
    p_audio_seconds, p_cache_write_tokens, p_cache_write_1h_tokens) then
    return (r.id, r.version, null::numeric);
  end if;
  return (r.id, r.version, billing.usage_amount(p_input_tokens, p_cached_input_tokens, p_output_tokens, p_reasoning_tokens,
    p_images, p_audio_seconds, r.credits_per_input_token, r.credits_per_cached_input_token, r.credits_per_output_token,
    r.credits_per_reasoning_token, r.credits_per_image, r.credits_per_audio_second, p_cache_write_tokens,
    r.credits_per_cache_write_token, p_cache_write_1h_tokens, r.credits_per_cache_write_1h_token));
end;
$$;
comment on function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) is 'Internal: usage by kind priced with the model''s current rate card, in credits; the amount is null when it cannot be priced (billing.price_usage says why).';
revoke execute on function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) from public;

-- billing.quote_usage, or the refusal that says why it has no price.
create or replace function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint default 0, p_reasoning_tokens bigint default 0, p_images bigint default 0,
  p_audio_seconds bigint default 0, p_cache_write_tokens bigint default 0, p_cache_write_1h_tokens bigint default 0)
returns billing.usage_price
language plpgsql stable
set search_path = ''
as $$
declare
  v billing.usage_price := billing.quote_usage(p_model, p_input_tokens, p_output_tokens, p_cached_input_tokens,
    p_reasoning_tokens, p_images, p_audio_seconds, p_cache_write_tokens, p_cache_write_1h_tokens);
begin
  if v.amount is null then
    if not billing.usage_counts_valid(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images,
      p_audio_seconds, p_cache_write_tokens, p_cache_write_1h_tokens) then
      perform billing.raise_error('INVALID_TOKENS', jsonb_build_object('rule', 'integers from 0 to 10^12'));
    elsif v.rate_card_id is null then
      perform billing.raise_error('UNKNOWN_MODEL', '{}'); -- never the caller's text: DETAILs reach the Postgres log
    end if;
    perform billing.raise_error('UNPRICED_USAGE', jsonb_build_object('model', p_model,
      'kind', case when p_images > 0 and (select c.credits_per_image from billing.rate_cards c where c.id = v.rate_card_id) is null
        then 'images' else 'audio_seconds' end));
  end if;
  return v;
end;
$$;
comment on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) is 'Prices usage by kind (tokens, images, audio seconds) with the model''s current rate card, in credits.';
revoke execute on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) from public;
grant execute on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint, p_cache_write_tokens bigint, p_cache_write_1h_tokens bigint) to service_role;

-- Metadata keys only the ledger writes: a correction or a report filters on them, so a caller's
-- metadata never carries them (the API refuses them; charge_usage drops them as well).
create or replace function billing.ledger_owned_keys() returns text[]
language plpgsql immutable
set search_path = ''
as $$
begin
  -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call.
  return array['model', 'input_tokens', 'output_tokens', 'cached_input_tokens', 'reasoning_tokens', 'images',
    'audio_seconds', 'failed', 'failed_by', 'usage_source', 'ai_call_id', 'job_id', 'rate_card_version', 'reserved',
    'priced', 'unbilled', 'charged_at', 'request_hash', 'request_id', 'held_after'];
end
$$;
comment on function billing.ledger_owned_keys() is 'The usage metadata keys only the ledger writes (_shared/contract/credits.ts refuses the same list).';
revoke execute on function billing.ledger_owned_keys() from public;

-- What a usage charge records of what it paid for: the model (its card's, for an alias: the model
-- it was priced as) and every kind (a dry run re-prices a charge from them, a void and the
-- summaries read them). One place for a single charge, the usage path's common road and the batch.
create or replace function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return jsonb_build_object('model', billing.card_model(p_model), 'input_tokens', p_input_tokens,
    'output_tokens', p_output_tokens,
    'cached_input_tokens', coalesce(p_cached_input_tokens, 0), 'reasoning_tokens', coalesce(p_reasoning_tokens, 0),
    'images', coalesce(p_images, 0), 'audio_seconds', coalesce(p_audio_seconds, 0));
end
$$;
comment on function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Internal: the model (an alias''s card''s) and usage counts by kind a usage charge records (null optional counts as 0).';
revoke execute on function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;

create or replace function billing.charge_usage(
  p_user uuid,
  p_model text,
  p_input_tokens bigint,
  p_output_tokens bigint,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_cached_input_tokens bigint default 0,
  p_reasoning_tokens bigint default 0,
  p_images bigint default 0,
  p_audio_seconds bigint default 0
) returns billing.usage_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_price record;
  v_result billing.transfer_result;
  v_bal billing.balance;
begin
  v_price := billing.price_usage(p_model, p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens,
    p_images, p_audio_seconds);
  if v_price.amount = 0 then
    -- Nothing to charge: no transfer is written.
    v_bal := billing.balance_of(billing.ensure_user_account(p_user));
    return (null, 0, v_price.rate_card_version, v_bal.balance, v_bal.held, v_bal.available, false)::billing.usage_result;
  end if;
  -- Every kind is recorded (the dry run re-prices a charge from them), over the caller's keys.
  v_result := billing.post_user_transfer(p_user, -1, 'spend', v_price.amount, 'usage', 'usage_revenue',
    p_idempotency_key, p_correlation_id, null,
    (coalesce(p_metadata, '{}'::jsonb) - billing.ledger_owned_keys()) || billing.usage_facts(p_model, p_input_tokens,
      p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds),
    v_price.rate_card_id);
  return (v_result.transfer_id, v_result.amount, v_price.rate_card_version, v_result.balance, v_result.held,
          v_result.available, v_result.replayed)::billing.usage_result;
end;
$$;
comment on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Prices model usage by kind from the rate card and debits it; the transfer records the rate card and every kind.';
revoke execute on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;
grant execute on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) to service_role;
