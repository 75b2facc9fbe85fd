-- A money request's values are written into its statement since it became one round trip
-- (_shared/db.ts, inline), and Postgres logs the text of a statement that fails: a refusal raised
-- out of billing.run_money_request put the caller's request (usage metadata, a grant's reason)
-- in the server log. The three refusals it raised (the user's standing, a reused
-- Idempotency-Key) are now answered like the others, as a row: nothing is stored (as before,
-- when the raise rolled back), the answer is the same, and no error reaches the log.

-- Why a user may not move credits now, or null: {token, detail}.
create function billing.standing_refusal(p_user uuid, p_admin boolean default false) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_role text;
begin
  select coalesce(u.raw_app_meta_data ->> 'role', '') into v_role
  from auth.users u
  where u.id = p_user and u.deleted_at is null and (u.banned_until is null or u.banned_until <= now());
  if not found then
    return jsonb_build_object('token', 'USER_NOT_ACTIVE',
      'detail', jsonb_build_object('rule', 'the user must exist and not be deleted or banned'));
  end if;
  if p_admin and v_role <> 'admin' then
    return jsonb_build_object('token', 'ADMIN_REQUIRED', 'detail', jsonb_build_object('rule', 'app_metadata.role must be admin now'));
  end if;
  return null;
end;
$$;
comment on function billing.standing_refusal(uuid, boolean)
  is 'Internal: USER_NOT_ACTIVE unless the user exists, is not deleted and not banned; ADMIN_REQUIRED unless (when asked) they are an admin now; else null.';
revoke execute on function billing.standing_refusal(uuid, boolean) from public, anon, authenticated;

create or replace function billing.assert_user_standing(p_user uuid, p_admin boolean default false) returns void
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_refusal jsonb := billing.standing_refusal(p_user, p_admin);
begin
  if v_refusal is not null then
    perform billing.raise_error(v_refusal ->> 'token', v_refusal -> 'detail');
  end if;
end;
$$;

create or replace function billing.run_money_request(
  p_user uuid,
  p_action text,
  p_key text,
  p_request_hash text,
  p_request_id text,
  p_args jsonb,
  p_success_status integer,
  p_admin boolean default false
) returns billing.money_response
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
begin
  -- Refused before anything is claimed: answered, not stored, not raised (see above).
  if v_refusal is not null then
    return (null, null, v_refusal ->> 'token', (v_refusal -> 'detail')::text, p_request_id, now(), false)::billing.money_response;
  end if;
  -- A concurrent duplicate blocks here until the first commits, then reads its answer.
  insert into billing.idempotency_keys as k (user_id, action, key, request_hash, request_id)
  values (p_user, p_action, p_key, p_request_hash, p_request_id)
  on conflict (user_id, action, key) do update
    set request_hash = excluded.request_hash, request_id = excluded.request_id, response_status = null,
        response_data = null, refusal_token = null, refusal_detail = null, responded_at = null,
        locked_at = now(), expires_at = now() + interval '24 hours'
    where k.expires_at <= now()
  returning * into v_row;
  if not found then
    select * into v_row from billing.idempotency_keys k where k.user_id = p_user and k.action = p_action and k.key = p_key;
    if v_row.request_hash <> p_request_hash then
      return (null, null, 'IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action)::text, p_request_id, now(),
              false)::billing.money_response;
    end if;
    return (v_row.response_status, v_row.response_data, v_row.refusal_token, v_row.refusal_detail, v_row.request_id,
            v_row.responded_at, true)::billing.money_response;
  end if;

  begin
    v_data := billing.perform_money_action(p_user, p_action, p_args,
      'http:' || p_user::text || ':' || p_action || ':' || p_key);
  exception when sqlstate 'P0001' then
    -- Tokens that mean our fault are 5xx (db.ts): not stored, so a retry runs again.
    if sqlerrm in ('LEDGER_IMMUTABLE', 'PAYMENT_AMOUNT_MISMATCH', 'MONEY_UNBALANCED') then
      raise;
    end if;
    get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
  end;
  update billing.idempotency_keys k
  set response_status = case when v_token is null then p_success_status end, response_data = v_data,
      refusal_token = v_token, refusal_detail = v_detail, responded_at = now()
  where k.user_id = p_user and k.action = p_action and k.key = p_key
  returning * into v_row;
  return (v_row.response_status, v_row.response_data, v_row.refusal_token, v_row.refusal_detail, v_row.request_id,
          v_row.responded_at, false)::billing.money_response;
end;
$$;
