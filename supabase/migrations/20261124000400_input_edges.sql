-- Every Idempotency-Key the API takes (1–255 printable characters, docs/api.md) works on every
-- money route. The keys a route derives from it for the ledger ('http:<user>:<action>:<key>',
-- 'allowance:<key>:<member>') grew past the 300 characters transfers_key_length and the
-- ledger functions allow, so keys of 237–255 characters were refused (by action). A derived
-- key now always fits: as before when it does (so a retry across this change still finds its
-- transfer), else with the key replaced by its SHA-256.

-- `p_scope || p_key` when that fits in 300 characters, else `p_scope || 'sha256:' || hex`.
create function billing.scoped_key(p_scope text, p_key text) returns text
language sql immutable
set search_path = ''
as $$
  select case when length(p_scope || p_key) <= 300 then p_scope || p_key
    else p_scope || 'sha256:' || encode(sha256(convert_to(p_key, 'UTF8')), 'hex') end
$$;
comment on function billing.scoped_key(text, text)
  is 'Internal: a ledger idempotency key derived from a request''s key under p_scope, at most 300 characters (the key''s SHA-256 when the whole would not fit).';
revoke execute on function billing.scoped_key(text, text) from public, anon, authenticated;

create or replace function billing.run_money_request(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer, p_admin boolean default false) returns billing.money_response
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
      billing.scoped_key('http:' || p_user::text || ':' || p_action || ':', p_key));
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

create or replace function billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_wallet bigint := billing.org_wallet_id(p_org);
  v_members uuid[];
  v_new integer;
  v_account billing.accounts;
  m uuid;
  v_results jsonb := '[]';
  v_transfer billing.transfers;
begin
  perform billing.check_amount(p_amount);
  if v_org.funding <> 'allowance' then
    perform billing.raise_error('ORG_FUNDING_MODE', jsonb_build_object('funding', v_org.funding, 'needs', 'allowance'));
  end if;
  select array_agg(x.user_id order by x.user_id) into v_members from billing.org_members x
  where x.org_id = p_org and x.active and x.role = 'member' and (p_member is null or x.user_id = p_member);
  if v_members is null then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  perform billing.allowance_account_id(p_org, x) from unnest(v_members) x;
  perform 1 from billing.accounts a where a.id = v_wallet or (a.org_id = p_org and a.member_id = any(v_members))
  order by a.id for update;
  -- Only members not yet funded under this key count (a retry after a partial network failure).
  select count(*) into v_new from unnest(v_members) x
  where not exists (select 1 from billing.transfers t where t.idempotency_key = billing.scoped_key('allowance:', p_key || ':' || x)
                    and t.kind = 'allowance');
  select * into v_account from billing.accounts a where a.id = v_wallet;
  if v_account.held > 0 or v_account.next_expiry <= now() then
    v_account := billing.settle_account(v_wallet);
  end if;
  if v_account.balance - v_account.held < p_amount * v_new then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount * v_new)::text,
      'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text, 'debt', v_account.balance < 0,
      'wallet', 'organisation', 'org_id', p_org));
  end if;
  foreach m in array v_members loop
    v_transfer := billing.move_credits(v_wallet, billing.allowance_account_id(p_org, m), p_amount, 'allowance',
      billing.scoped_key('allowance:', p_key || ':' || m), m, jsonb_build_object('org_id', p_org, 'funded_by', p_user));
    v_results := v_results || jsonb_build_object('user_id', m, 'transfer_id', v_transfer.id::text,
      'amount', trim_scale(v_transfer.amount)::text);
  end loop;
  return jsonb_build_object('org_id', p_org, 'funded', v_results,
    'wallet', billing.wallet_json(v_wallet));
end;
$$;

-- Every value a route's schema accepts is one its SQL function answers without failing: a
-- package that does not exist, sent while turning auto-recharge off, was a foreign-key error.
create or replace function billing.set_auto_recharge(p_user uuid, p_enabled boolean, p_package_id text, p_threshold numeric, p_monthly_max_count integer, p_monthly_max_cents integer) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
  v_before jsonb := billing.auto_recharge_json(p_user);
begin
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  if p_enabled then
    if not exists (select 1 from billing.saved_cards c where c.user_id = p_user) then
      perform billing.raise_error('NO_SAVED_CARD', jsonb_build_object('rule', 'buy a package with save_card: true first'));
    end if;
    if not exists (select 1 from billing.credit_packages k where k.id = p_package_id and k.active) then
      perform billing.raise_error('PACKAGE_NOT_FOUND', jsonb_build_object('package_id', p_package_id));
    end if;
    perform billing.check_amount(p_threshold);
  elsif p_package_id is not null and not exists (select 1 from billing.credit_packages k where k.id = p_package_id) then
    -- Turning it off may name a package too: one that does not exist is the same 404, not a
    -- foreign-key violation (a 500, with the value in the server log).
    perform billing.raise_error('PACKAGE_NOT_FOUND', jsonb_build_object('package_id', p_package_id));
  end if;
  begin
    insert into billing.auto_recharge as s (user_id, enabled, package_id, threshold, monthly_max_count, monthly_max_cents)
    values (p_user, p_enabled, p_package_id, p_threshold, coalesce(p_monthly_max_count, 5), coalesce(p_monthly_max_cents, 10000))
    on conflict (user_id) do update set enabled = excluded.enabled,
      package_id = coalesce(excluded.package_id, s.package_id), threshold = coalesce(excluded.threshold, s.threshold),
      monthly_max_count = coalesce(p_monthly_max_count, s.monthly_max_count),
      monthly_max_cents = coalesce(p_monthly_max_cents, s.monthly_max_cents),
      disabled_reason = case when excluded.enabled then null else s.disabled_reason end, updated_at = now();
  exception when check_violation then
    perform billing.raise_error('INVALID_AUTO_RECHARGE', jsonb_build_object(
      'rule', 'monthly_max_count 1–31, monthly_max_cents > 0; a package and a threshold to turn it on'));
  end;
  update billing.accounts a
  set auto_recharge_below = case when p_enabled then p_threshold end, auto_recharge_armed = true
  where a.id = v_account_id;
  insert into billing.auto_recharge_audit (user_id, actor, change)
  values (p_user, p_user, jsonb_build_object('before', v_before - 'recent', 'after', billing.auto_recharge_json(p_user) - 'recent'));
  perform billing.check_auto_recharge(a) from billing.accounts a where a.id = v_account_id;
  return billing.auto_recharge_json(p_user);
end;
$$;
