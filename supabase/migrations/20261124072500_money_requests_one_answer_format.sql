-- billing.idempotency_keys keeps every answer in one format: a success's status and data, or a
-- refusal's token and fields, with the first request's id and time (the routes that call Stripe
-- stored the response's bytes instead). Written by hand from supabase/schemas/20-money-requests.sql:
-- the functions that return the old row types go first, then the types, then the columns. No
-- data is converted: nothing is deployed yet.

drop function billing.run_money_request(uuid, text, text, text, text, jsonb, integer, boolean);
drop function billing.run_usage_request(uuid, text, text, text, jsonb, integer);
drop function billing.claim_idempotency_key(uuid, text, text, text);
drop function billing.complete_idempotency_key(uuid, text, text, integer, text);
drop type billing.money_response;
drop type billing.idempotency_claim;

alter table billing.idempotency_keys drop constraint idempotency_keys_body_has_status;
alter table billing.idempotency_keys drop constraint idempotency_keys_one_answer;
alter table billing.idempotency_keys drop column response_body;
alter table billing.idempotency_keys drop column refusal_detail;
alter table billing.idempotency_keys add column refusal_fields jsonb;
alter table billing.idempotency_keys add constraint idempotency_keys_one_answer check (
    responded_at is null or (response_status is null) <> (refusal_token is null));
comment on table billing.idempotency_keys is 'The answers of idempotent HTTP routes by (user, action, Idempotency-Key), kept 24 hours, in one format: a success''s status and data, or a refusal''s token and fields, with the first request''s id and time.';

create type billing.request_answer as (
  status integer,                                 -- a success's HTTP status; null for a refusal
  data jsonb,                                     -- a success's data
  refusal_token text,
  refusal_fields jsonb,
  request_id text,                                -- the first request's id
  responded_at timestamptz,                       -- when the first request was answered
  replayed boolean
);
comment on type billing.request_answer is 'The answer to an idempotent HTTP request, in the one format billing.idempotency_keys stores: a success''s status and data, or a refusal''s token and fields, with the first request''s id and time; _shared/http/idempotency.ts renders every one.';

create or replace function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean)
returns billing.request_answer
language sql immutable
set search_path = ''
as $$
  select (p_row.response_status, p_row.response_data, p_row.refusal_token, p_row.refusal_fields, p_row.request_id,
          p_row.responded_at, p_replayed)::billing.request_answer
$$;
comment on function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean) is 'Internal: the answer a key''s row stores, as the functions render it.';
revoke execute on function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean) from public;

create or replace function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text)
returns billing.request_answer
language sql stable
set search_path = ''
as $$
  select (null, null, p_token, jsonb_build_object('details', p_details), p_request_id, now(), false)::billing.request_answer
$$;
comment on function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text) is 'Internal: a refusal with its details, answered to this request and stored nowhere.';
revoke execute on function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text) from public;

create or replace function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text,
  p_request_id text)
returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
begin
  perform billing.assert_user_standing(p_user);
  -- A concurrent claim of the same key blocks here until the first transaction ends.
  insert into billing.idempotency_keys as k (user_id, action, key, request_hash, request_id)
  values (p_user, p_action, p_key, p_request_hash, p_request_id)
  on conflict (user_id, action, key) do update
    set request_hash = excluded.request_hash, request_id = excluded.request_id, response_status = null,
        response_data = null, refusal_token = null, refusal_fields = null, responded_at = null,
        locked_at = now(), expires_at = now() + interval '24 hours'
    -- An expired key not yet swept starts over; so does a claim abandoned mid-flight by a
    -- crashed instance (its answer was never stored).
    where k.expires_at <= now() or (k.responded_at is null and k.locked_at < now() - interval '60 seconds')
  returning * into v_row;
  if found then
    return null;
  end if;
  select * into v_row from billing.idempotency_keys k where k.user_id = p_user and k.action = p_action and k.key = p_key;
  if v_row.request_hash <> p_request_hash then
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action));
  end if;
  if v_row.responded_at is null then
    perform billing.raise_error('IDEMPOTENCY_KEY_IN_USE', jsonb_build_object('action', p_action));
  end if;
  return billing.answer_of(v_row, true);
end;
$$;
comment on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) is 'Claims a key for a request of a user in good standing (null: the key is this request''s now), or returns the stored answer; IDEMPOTENCY_KEY_REUSED for another request under the key, IDEMPOTENCY_KEY_IN_USE while the first is unanswered.';
revoke execute on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) from public;
grant execute on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) to service_role;

create or replace function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_status integer,
  p_data jsonb, p_refusal_token text, p_refusal_fields jsonb)
returns billing.request_answer
language sql
security definer
set search_path = ''
as $$
  update billing.idempotency_keys k
  set response_status = p_status, response_data = p_data, refusal_token = p_refusal_token,
      refusal_fields = p_refusal_fields, responded_at = now()
  where k.user_id = p_user and k.action = p_action and k.key = p_key
  returning (billing.answer_of(k, false)).*
$$;
comment on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) is 'Stores the answer of a claimed key (a success''s status and data, or a refusal''s token and fields) and returns it as every replay will.';
revoke execute on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) from public;
grant execute on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) to service_role;

create or replace function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text) returns void
language sql
security definer
set search_path = ''
as $$
  delete from billing.idempotency_keys k
  where k.user_id = p_user and k.action = p_action and k.key = p_key and k.responded_at is null
$$;
comment on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text) is 'Forgets an in-flight claim whose work failed before any effect (routes with an external call), so a retry starts over.';
revoke execute on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text) from public;
grant execute on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text) to service_role;

create or replace function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text,
  p_args jsonb, p_success_status integer)
returns billing.request_answer
language plpgsql
set search_path = ''
as $$
declare
  v_key text := billing.scoped_key('http:' || p_user::text || ':credits.usage:', p_key);
  v_price billing.usage_price := billing.quote_usage(p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
    (p_args ->> 'output_tokens')::bigint, (p_args ->> 'cached_input_tokens')::bigint,
    (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint, (p_args ->> 'audio_seconds')::bigint);
  v_account billing.accounts;
  v_t billing.transfers;
  v_posted billing.posted_transfer;
begin
  -- The key first, whatever this request is: a charge recorded under it answers a retry and
  -- refuses another request, on whichever path this one would go.
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    return null;
  end if;
  perform 1 from billing.idempotency_keys k where k.user_id = p_user and k.action = 'credits.usage' and k.key = p_key;
  if found then
    return null;
  end if;
  select * into v_t from billing.transfers t where t.idempotency_key = v_key and t.kind = 'usage';
  if found then
    if not v_t.metadata ? 'request_hash' then
      return null;
    elsif v_t.metadata ->> 'request_hash' <> p_request_hash then
      return billing.refusal_answer('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'credits.usage'), p_request_id);
    end if;
    return (p_success_status, billing.usage_answer(v_t.id, v_t.amount,
        (select e.balance_after from billing.entries e where e.transfer_id = v_t.id and e.account_id = v_t.from_account_id),
        coalesce((v_t.metadata ->> 'held_after')::numeric, 0),
        (select c.version from billing.rate_cards c where c.id = v_t.rate_card_id)),
      null, null, v_t.metadata ->> 'request_id', v_t.created_at, true)::billing.request_answer;
  end if;
  if v_price.amount is null or v_price.amount <= 0 or v_account.orgs > 0 or v_account.caps > 0 or v_account.restricted_lots then
    return null;
  end if;

  if v_account.held > 0 or v_account.next_expiry <= now() then
    v_account := billing.settle_account(v_account.id);
  end if;
  if v_account.balance - v_account.held < v_price.amount then
    return null;
  end if;
  v_posted := (billing.post_transfers(array[('usage', v_account.id, billing.platform_account_id('usage_revenue'),
    v_price.amount, v_key, p_args ->> 'correlation_id', null,
    (coalesce(p_args -> 'metadata', '{}'::jsonb) - billing.ledger_owned_keys())
    || billing.usage_facts(p_args ->> 'model', (p_args ->> 'input_tokens')::bigint, (p_args ->> 'output_tokens')::bigint,
      (p_args ->> 'cached_input_tokens')::bigint, (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint,
      (p_args ->> 'audio_seconds')::bigint)
    || jsonb_strip_nulls(jsonb_build_object('request_hash', p_request_hash, 'request_id', p_request_id,
      'held_after', case when v_account.held > 0 then trim_scale(v_account.held)::text end)),
    v_price.rate_card_id, null, null, null)::billing.transfer_spec]))[1];
  v_account.balance := v_posted.from_balance;
  v_account.version := v_account.version + 1;
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;
  return (p_success_status, billing.usage_answer(v_posted.transfer_id, v_price.amount, v_account.balance, v_account.held,
      v_price.rate_card_version),
    null, null, p_request_id, now(), false)::billing.request_answer;
end;
$$;
comment on function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer) is 'Internal: POST /credits/usage for a student paying from their own account with no cap, the transfer its only record; null hands the request to run_money_request''s general path.';
revoke execute on function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer) from public;

create or replace function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
  v_data jsonb;
  v_token text;
  v_detail text;
  v_refusal jsonb := billing.standing_refusal(p_user, p_admin);
  v_usage billing.request_answer;
begin
  -- Refused before anything is claimed: answered, not stored, not raised (see above).
  if v_refusal is not null then
    return billing.refusal_answer(v_refusal ->> 'token', v_refusal -> 'detail', p_request_id);
  end if;
  if p_action = 'credits.usage' then
    v_usage := billing.run_usage_request(p_user, p_key, p_request_hash, p_request_id, p_args, p_success_status);
    if v_usage.request_id is not null then
      return v_usage;
    end if;
  end if;
  -- A concurrent duplicate blocks here until the first commits, then reads its answer.
  insert into billing.idempotency_keys as k (user_id, action, key, request_hash, request_id)
  values (p_user, p_action, p_key, p_request_hash, p_request_id)
  on conflict (user_id, action, key) do update
    set request_hash = excluded.request_hash, request_id = excluded.request_id, response_status = null,
        response_data = null, refusal_token = null, refusal_fields = null, responded_at = null,
        locked_at = now(), expires_at = now() + interval '24 hours'
    where k.expires_at <= now()
  returning * into v_row;
  if not found then
    select * into v_row from billing.idempotency_keys k where k.user_id = p_user and k.action = p_action and k.key = p_key;
    if v_row.request_hash <> p_request_hash then
      return billing.refusal_answer('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action), p_request_id);
    end if;
    return billing.answer_of(v_row, true);
  end if;

  -- A redemption's failed-guess count and the record of its refusal, one caller at a time (75-codes.sql).
  if p_action = 'credits.codes.redeem' then
    perform billing.lock_code_guesses(p_user, p_args ->> 'address_hash');
  end if;
  begin
    v_data := billing.perform_money_action(p_user, p_action, p_args,
      billing.scoped_key('http:' || p_user::text || ':' || p_action || ':', p_key));
  exception when sqlstate 'P0001' then
    -- Tokens that mean our fault are 5xx (_shared/adapters/sql-errors.ts): not stored, so a retry runs again.
    if sqlerrm in ('LEDGER_IMMUTABLE', 'PAYMENT_AMOUNT_MISMATCH', 'MONEY_UNBALANCED', 'LEDGER_INVARIANT') then
      raise;
    end if;
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
    -- A refused redemption is audited after its work rolled back (75-codes.sql).
    if p_action = 'credits.codes.redeem' then
      perform billing.record_code_attempt(p_user, p_args, v_token);
    end if;
  end;
  update billing.idempotency_keys k
  set response_status = case when v_token is null then p_success_status end, response_data = v_data,
      refusal_token = v_token, refusal_fields = case when v_token is not null
        then jsonb_build_object('details', nullif(v_detail, '')::jsonb) end, responded_at = now()
  where k.user_id = p_user and k.action = p_action and k.key = p_key
  returning * into v_row;
  return billing.answer_of(v_row, false);
end;
$$;
comment on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean) is 'One statement per money request: user check, idempotency claim, the work, the stored answer (or the stored one replayed).';
revoke execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean) from public;
grant execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean) to service_role;
