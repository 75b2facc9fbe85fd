-- The money routes' doors, one per route group, each a single statement under the caller's
-- standing and Idempotency-Key that stores its answer: run_money_request (a hold's reserve,
-- capture or release), run_grant_request (an admin's grant), run_code_request (a code's
-- redemption) and run_usage_report (a usage charge, its fast path first). Each reaches only its
-- own route's work. They share a frame: refuse_money_request and claim_money_request before the
-- work (the server key, the standing; the key's claim) and close_money_request after it (the
-- stored answer). They sit above every
-- domain a route reaches (75-codes.sql the highest); the keys and the usage fast path are in
-- 20-money-requests.sql, the standing check in 10-ledger.sql.

-- ============================================================ the request frame

-- Every answer says whether it is a replay; a step of the frame answers null (its `replayed`
-- null too) when the request goes on to its work.

-- p_server_key_hash: the SHA-256 of the server key a usage report came with (null for the
-- service role or a user's own request), checked first, in this statement, and held against its
-- revocation until the statement commits (use_server_key): a revoked key stops at once, and a
-- caller without a live key learns nothing of the user it names. A refusal here comes before
-- anything is claimed: answered, not stored, and not raised (Postgres would log the statement,
-- the request's values with it).
create or replace function billing.refuse_money_request(p_user uuid, p_request_id text, p_admin boolean,
  p_server_key_hash text)
returns billing.request_answer
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb := case when p_server_key_hash is not null and billing.use_server_key(p_server_key_hash) is null
                          then jsonb_build_object('token', 'SERVER_KEY_UNKNOWN', 'detail', '{}'::jsonb)
                          else billing.standing_refusal(p_user, p_admin) end;
begin
  if v_refusal is null then
    return null;
  end if;
  return billing.refusal_answer(v_refusal ->> 'token', v_refusal -> 'detail', p_request_id);
end;
$$;
comment on function billing.refuse_money_request(p_user uuid, p_request_id text, p_admin boolean, p_server_key_hash text) is 'Internal: a money request''s refusal before its key is claimed (an unknown or revoked server key, the user''s standing), or null.';
revoke execute on function billing.refuse_money_request(p_user uuid, p_request_id text, p_admin boolean, p_server_key_hash text) from public;

-- The key's claim: null when the key is this request's now; else the first request's answer
-- (a replay) or IDEMPOTENCY_KEY_REUSED for another request under it. A concurrent duplicate
-- blocks here until the first commits, then reads its answer.
create or replace function billing.claim_money_request(p_user uuid, p_action text, p_key text, p_request_hash text,
  p_request_id text)
returns billing.request_answer
language plpgsql
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys := billing.take_idempotency_key(p_user, p_action, p_key, p_request_hash, p_request_id);
begin
  if v_row.user_id is null then
    return null;
  elsif v_row.request_hash <> p_request_hash then
    return billing.refusal_answer('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action), p_request_id);
  end if;
  return billing.answer_of(v_row, true);
end;
$$;
comment on function billing.claim_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) is 'Internal: claims a money request''s key (null: the work runs), or answers the first request''s answer or IDEMPOTENCY_KEY_REUSED.';
revoke execute on function billing.claim_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) from public;

-- After the work: its answer stored under the key this request claimed, a success's data or the
-- refusal its work raised (p_token, p_detail), and returned as every replay will answer it. A
-- token that means our fault is a 5xx (_shared/adapters/sql-errors.ts): raised again, never
-- stored, so a retry runs again.
create or replace function billing.close_money_request(p_user uuid, p_action text, p_key text, p_data jsonb, p_token text,
  p_detail text, p_success_status integer)
returns billing.request_answer
language plpgsql
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
begin
  if p_token in ('LEDGER_IMMUTABLE', 'PAYMENT_AMOUNT_MISMATCH', 'MONEY_UNBALANCED', 'LEDGER_INVARIANT', 'ACCOUNT_FELL_DUE') then
    raise exception using errcode = 'P0001', message = p_token, detail = coalesce(p_detail, '');
  end if;
  update billing.idempotency_keys k
  set response_status = case when p_token is null then p_success_status end, response_data = p_data,
      refusal_token = p_token, refusal_fields = case when p_token is not null
        then jsonb_build_object('details', nullif(p_detail, '')::jsonb) end, responded_at = now()
  where k.user_id = p_user and k.action = p_action and k.key = p_key
  returning * into v_row;
  return billing.answer_of(v_row, false);
end;
$$;
comment on function billing.close_money_request(p_user uuid, p_action text, p_key text, p_data jsonb, p_token text, p_detail text, p_success_status integer) is 'Internal: stores a money request''s answer (its data, or its work''s refusal token and detail) under the key it claimed, and returns it; a token that is our fault is raised again.';
revoke execute on function billing.close_money_request(p_user uuid, p_action text, p_key text, p_data jsonb, p_token text, p_detail text, p_success_status integer) from public;

-- ============================================================ the doors

-- Each door: its frame's answer if it has one; else its work, whose refusal (a P0001 token) is
-- stored like a success unless it is our fault; then the stored answer.

-- POST /credits/holds, /credits/holds/{id}/capture and /credits/holds/{id}/release.
create or replace function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false,
  p_server_key_hash text default null) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer billing.request_answer;
  v_key text := billing.scoped_key('http:' || p_user::text || ':' || p_action || ':', p_key);
  h billing.hold_result;
  v_account bigint;
  v_org uuid;
  v_data jsonb;
  v_token text;
  v_detail text;
begin
  if p_action not in ('credits.holds', 'credits.holds.capture', 'credits.holds.release') then
    raise exception 'billing.run_money_request does not run %', p_action;
  end if;
  v_answer := billing.refuse_money_request(p_user, p_request_id, p_admin, p_server_key_hash);
  if v_answer.replayed is null then
    v_answer := billing.claim_money_request(p_user, p_action, p_key, p_request_hash, p_request_id);
  end if;
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  begin
    case p_action
    when 'credits.holds' then
      h := billing.reserve_credits(p_user, (p_args ->> 'amount')::numeric, v_key,
        coalesce((p_args ->> 'ttl_seconds')::integer, 900), p_args ->> 'correlation_id', null);
    when 'credits.holds.capture' then
      h := billing.capture_hold(p_user, (p_args ->> 'hold_id')::uuid, (p_args ->> 'amount')::numeric, null);
    when 'credits.holds.release' then
      h := billing.release_hold(p_user, (p_args ->> 'hold_id')::uuid);
    end case;
    select a.id, a.org_id into v_account, v_org
    from billing.holds x join billing.accounts a on a.id = x.account_id where x.id = h.hold_id;
    v_data := case when v_org is null then billing.hold_json(h) else billing.as_seen_by(p_user, v_account, billing.hold_json(h)) end;
  exception when sqlstate 'P0001' then
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
  end;
  return billing.close_money_request(p_user, p_action, p_key, v_data, v_token, v_detail, p_success_status);
end;
$$;
comment on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) is 'POST /credits/holds (and a hold''s capture and release) in one statement: the user''s standing, the idempotency claim, the work, the stored answer (or the stored one replayed).';
revoke execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) from public, anon, authenticated;
grant execute on function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) to service_role;

-- POST /credits/grants: an admin's grant (p_admin: the standing asks for the role).
create or replace function billing.run_grant_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false,
  p_server_key_hash text default null) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer billing.request_answer;
  t billing.transfer_result;
  v_data jsonb;
  v_token text;
  v_detail text;
begin
  if p_action <> 'credits.grants' then
    raise exception 'billing.run_grant_request does not run %', p_action;
  end if;
  v_answer := billing.refuse_money_request(p_user, p_request_id, p_admin, p_server_key_hash);
  if v_answer.replayed is null then
    v_answer := billing.claim_money_request(p_user, p_action, p_key, p_request_hash, p_request_id);
  end if;
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  begin
    t := billing.grant_credits((p_args ->> 'user_id')::uuid, (p_args ->> 'amount')::numeric,
      (p_args ->> 'kind')::billing.transfer_kind, billing.scoped_key('http:' || p_user::text || ':' || p_action || ':', p_key),
      null, null, jsonb_build_object('reason', p_args ->> 'reason', 'granted_by', p_user), p_args -> 'lot');
    v_data := jsonb_build_object('transfer_id', t.transfer_id::text, 'amount', trim_scale(t.amount)::text,
      'balance', trim_scale(t.balance)::text,
      'lot_id', (select l.id::text from billing.lots l where l.grant_transfer_id = t.transfer_id));
  exception when sqlstate 'P0001' then
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
  end;
  return billing.close_money_request(p_user, p_action, p_key, v_data, v_token, v_detail, p_success_status);
end;
$$;
comment on function billing.run_grant_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) is 'POST /credits/grants in one statement: the admin''s standing, the idempotency claim, the grant, the stored answer (or the stored one replayed).';
revoke execute on function billing.run_grant_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) from public, anon, authenticated;
grant execute on function billing.run_grant_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) to service_role;

-- POST /credits/codes/redeem. A redemption's failed-guess count and the record of its refusal
-- go one caller at a time (lock_code_guesses, 75-codes.sql), and a refused redemption is audited
-- after its work rolled back.
create or replace function billing.run_code_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false,
  p_server_key_hash text default null) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer billing.request_answer;
  v_data jsonb;
  v_token text;
  v_detail text;
begin
  if p_action <> 'credits.codes.redeem' then
    raise exception 'billing.run_code_request does not run %', p_action;
  end if;
  v_answer := billing.refuse_money_request(p_user, p_request_id, p_admin, p_server_key_hash);
  if v_answer.replayed is null then
    v_answer := billing.claim_money_request(p_user, p_action, p_key, p_request_hash, p_request_id);
  end if;
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  perform billing.lock_code_guesses(p_user, p_args ->> 'address_hash');
  begin
    v_data := billing.redeem_code(p_user, p_args ->> 'code_hash', p_args ->> 'address_hash',
      (p_args ->> 'address_limit')::integer);
  exception when sqlstate 'P0001' then
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
    perform billing.record_code_attempt(p_user, p_args, v_token);
  end;
  return billing.close_money_request(p_user, p_action, p_key, v_data, v_token, v_detail, p_success_status);
end;
$$;
comment on function billing.run_code_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) is 'POST /credits/codes/redeem in one statement: the user''s standing, the idempotency claim, the redemption under the failed-guess lock (a refusal audited), the stored answer (or the stored one replayed).';
revoke execute on function billing.run_code_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) from public, anon, authenticated;
grant execute on function billing.run_code_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) to service_role;

-- POST /credits/usage. Between the standing and the key's claim, the fast path
-- (run_usage_request, 20-money-requests.sql) answers nearly every request; what it hands on is
-- charged here (billing.charge_usage), settling first what fell due.
create or replace function billing.run_usage_report(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false,
  p_server_key_hash text default null) returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer billing.request_answer;
  u billing.usage_result;
  v_account bigint;
  v_org uuid;
  v_data jsonb;
  v_token text;
  v_detail text;
begin
  if p_action <> 'credits.usage' then
    raise exception 'billing.run_usage_report does not run %', p_action;
  end if;
  v_answer := billing.refuse_money_request(p_user, p_request_id, p_admin, p_server_key_hash);
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  v_answer := billing.run_usage_request(p_user, p_key, p_request_hash, p_request_id, p_args, p_success_status);
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  v_answer := billing.claim_money_request(p_user, p_action, p_key, p_request_hash, p_request_id);
  if v_answer.replayed is not null then
    return v_answer;
  end if;
  begin
    u := billing.charge_usage(p_user, p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
      (p_args ->> 'output_tokens')::bigint, billing.scoped_key('http:' || p_user::text || ':' || p_action || ':', p_key),
      p_args ->> 'correlation_id', p_args -> 'metadata', (p_args ->> 'cached_input_tokens')::bigint,
      (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint, (p_args ->> 'audio_seconds')::bigint);
    -- Who paid: the debited account's organisation, if any (a pool's balance never shown: as_seen_by).
    select a.id, a.org_id into v_account, v_org
    from billing.transfers x join billing.accounts a on a.id = x.from_account_id where x.id = u.transfer_id;
    v_data := billing.usage_answer(u.transfer_id, u.charged, u.balance, u.balance - u.available, u.rate_card_version);
    if v_org is not null then
      v_data := billing.as_seen_by(p_user, v_account, v_data || jsonb_build_object('paid_by', jsonb_build_object('org_id', v_org)));
    end if;
  exception when sqlstate 'P0001' then
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
  end;
  return billing.close_money_request(p_user, p_action, p_key, v_data, v_token, v_detail, p_success_status);
end;
$$;
comment on function billing.run_usage_report(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) is 'POST /credits/usage in one statement: the server key and the user''s standing, the fast path (run_usage_request), else the idempotency claim, the charge and the stored answer (or the stored one replayed).';
revoke execute on function billing.run_usage_report(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) from public, anon, authenticated;
grant execute on function billing.run_usage_report(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean, p_server_key_hash text) to service_role;

-- POST /credits/usage/batch: the reporting server's key (its SHA-256; null for the service role)
-- held against its revocation until this statement commits, as run_usage_report holds it, then
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
