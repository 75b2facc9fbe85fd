-- The money routes' one door: run_money_request runs a money action (perform_money_action:
-- grant, reserve, capture, release, a usage charge, a code's redemption) in one statement, under
-- the caller's standing and Idempotency-Key, and stores its answer. It sits above every domain an
-- action reaches (75-codes.sql the highest); the keys, the standing checks and the usage fast
-- path it calls first are in 20-money-requests.sql.

-- ============================================================ functions

create or replace function billing.perform_money_action(p_user uuid, p_action text, p_args jsonb, p_key text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  u billing.usage_result;
  t billing.transfer_result;
  h billing.hold_result;
  v_org uuid;
  v_account bigint;
  v_answer jsonb;
begin
  case p_action
  when 'credits.usage' then
    u := billing.charge_usage(p_user, p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
      (p_args ->> 'output_tokens')::bigint, p_key, p_args ->> 'correlation_id', p_args -> 'metadata',
      (p_args ->> 'cached_input_tokens')::bigint, (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint,
      (p_args ->> 'audio_seconds')::bigint);
    -- Who paid: the debited account's organisation, if any (a pool's balance never shown: as_seen_by).
    select a.id, a.org_id into v_account, v_org
    from billing.transfers x join billing.accounts a on a.id = x.from_account_id where x.id = u.transfer_id;
    v_answer := billing.usage_answer(u.transfer_id, u.charged, u.balance, u.balance - u.available, u.rate_card_version);
    return case when v_org is null then v_answer
      else billing.as_seen_by(p_user, v_account, v_answer || jsonb_build_object('paid_by', jsonb_build_object('org_id', v_org))) end;
  when 'credits.holds' then
    h := billing.reserve_credits(p_user, (p_args ->> 'amount')::numeric, p_key,
      coalesce((p_args ->> 'ttl_seconds')::integer, 900), p_args ->> 'correlation_id', null);
  when 'credits.holds.capture' then
    h := billing.capture_hold(p_user, (p_args ->> 'hold_id')::uuid, (p_args ->> 'amount')::numeric, null);
  when 'credits.holds.release' then
    h := billing.release_hold(p_user, (p_args ->> 'hold_id')::uuid);
  when 'credits.codes.redeem' then
    return billing.redeem_code(p_user, p_args ->> 'code_hash', p_args ->> 'address_hash',
      (p_args ->> 'address_limit')::integer);
  when 'credits.grants' then
    t := billing.grant_credits((p_args ->> 'user_id')::uuid, (p_args ->> 'amount')::numeric,
      (p_args ->> 'kind')::billing.transfer_kind, p_key, null, null,
      jsonb_build_object('reason', p_args ->> 'reason', 'granted_by', p_user), p_args -> 'lot');
    return jsonb_build_object('transfer_id', t.transfer_id::text, 'amount', trim_scale(t.amount)::text,
      'balance', trim_scale(t.balance)::text,
      'lot_id', (select l.id::text from billing.lots l where l.grant_transfer_id = t.transfer_id));
  end case;
  select a.id, a.org_id into v_account, v_org
  from billing.holds x join billing.accounts a on a.id = x.account_id where x.id = h.hold_id;
  return case when v_org is null then billing.hold_json(h) else billing.as_seen_by(p_user, v_account, billing.hold_json(h)) end;
end;
$$;
comment on function billing.perform_money_action(p_user uuid, p_action text, p_args jsonb, p_key text) is 'Internal: the one SQL call behind each money route.';
revoke execute on function billing.perform_money_action(p_user uuid, p_action text, p_args jsonb, p_key text) from public;

-- p_server_key_hash: the SHA-256 of the server key a usage report came with (null for the
-- service role or a user's own request), checked first, in this statement, and held against its
-- revocation until the statement commits (use_server_key): a revoked key stops at once, and a
-- caller without a live key learns nothing of the user it names.
create or replace function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false,
  p_server_key_hash text default null) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
  v_data jsonb;
  v_token text;
  v_detail text;
  v_refusal jsonb := case when p_server_key_hash is not null and billing.use_server_key(p_server_key_hash) is null
                          then jsonb_build_object('token', 'SERVER_KEY_UNKNOWN', 'detail', '{}'::jsonb)
                          else billing.standing_refusal(p_user, p_admin) end;
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
  v_row := billing.take_idempotency_key(p_user, p_action, p_key, p_request_hash, p_request_id);
  if v_row.user_id is not null then
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
    if sqlerrm in ('LEDGER_IMMUTABLE', 'PAYMENT_AMOUNT_MISMATCH', 'MONEY_UNBALANCED', 'LEDGER_INVARIANT', 'ACCOUNT_FELL_DUE') then
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
comment on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) is 'One statement per money request: user check, idempotency claim, the work, the stored answer (or the stored one replayed).';
revoke execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) from public;
grant execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) to service_role;

-- POST /credits/usage/batch: the reporting server's key (its SHA-256; null for the service role)
-- held against its revocation until this statement commits, as run_money_request holds it, then
-- the batch. Null when the key is unknown or revoked: nothing is charged.
create or replace function billing.run_usage_batch(p_events jsonb, p_server_key_hash text default null) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_server_key_hash is not null and billing.use_server_key(p_server_key_hash) is null then
    return null;
  end if;
  return billing.charge_usage_batch(p_events);
end;
$$;
comment on function billing.run_usage_batch(p_events jsonb, p_server_key_hash text) is 'POST /credits/usage/batch: the server key held against revocation, then billing.charge_usage_batch; null when the key is unknown or revoked.';
revoke execute on function billing.run_usage_batch(p_events jsonb, p_server_key_hash text) from public, anon, authenticated;
grant execute on function billing.run_usage_batch(p_events jsonb, p_server_key_hash text) to service_role;
