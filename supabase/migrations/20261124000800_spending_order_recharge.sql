-- After the attack on #30's fixes: lots past their expiry are no longer first in the spending
-- order (an account's due lots expire before it spends; only a disputed purchase's frozen lots
-- can be overdue, and they are spent last like every frozen lot); a reversal (refund, dispute,
-- expiry) never starts an auto-recharge; allowance keys are scoped by organisation (the same
-- Idempotency-Key used by two schools for one member no longer collides).

CREATE OR REPLACE FUNCTION billing.draw_lots(p_kind billing.transfer_kind, p_transfer_ids bigint[], p_account_ids bigint[], p_amounts numeric[], p_first bigint[] DEFAULT '{}'::bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
begin
  -- plpgsql, not sql: a sql function's statement is planned again on every call.
  with d as (
    select t.transfer_id, t.account_id, t.amount,
      sum(t.amount) over (partition by t.account_id order by t.ord) as hi
    from unnest(p_transfer_ids, p_account_ids, p_amounts) with ordinality as t(transfer_id, account_id, amount, ord)
  ), l as (
    select l.id, l.account_id, l.remaining,
      sum(l.remaining) over (partition by l.account_id order by array_position(p_first, l.id) nulls last,
        l.frozen, l.priority, l.expires_at nulls last, l.granted_at, l.id) as hi
    from billing.lots l
    where l.account_id = any(p_account_ids) and l.open
  ), a as (
    select d.transfer_id, l.id as lot_id, least(d.hi, l.hi) - greatest(d.hi - d.amount, l.hi - l.remaining) as amount
    from d join l on l.account_id = d.account_id and l.hi - l.remaining < d.hi and d.hi - d.amount < l.hi
  ), ins as (
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
    select a.transfer_id, a.lot_id, p_kind, a.amount from a
    returning lot_id, amount
  )
  update billing.lots x set remaining = x.remaining - s.total
  from (select ins.lot_id, sum(ins.amount) as total from ins group by ins.lot_id) s
  where x.id = s.lot_id;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text DEFAULT NULL::text, p_reference text DEFAULT NULL::text, p_metadata jsonb DEFAULT NULL::jsonb, p_rate_card_id bigint DEFAULT NULL::bigint, p_hold_id uuid DEFAULT NULL::uuid, p_lot jsonb DEFAULT NULL::jsonb, p_account_id bigint DEFAULT NULL::bigint)
 RETURNS billing.transfer_result
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_account billing.accounts;
  v_account_id bigint;
  v_platform_id bigint := billing.platform_account_id(p_platform_code);
  v_existing billing.transfers;
  v_transfer_id bigint;
  v_bal billing.balance;
  v_delta numeric(38, 18);
  v_member uuid;
begin
  perform billing.check_amount(p_amount);
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;

  -- Find and lock the account in one statement; create it first only when it must exist.
  if p_account_id is not null then
    select * into v_account from billing.accounts a where a.id = p_account_id for update;
  else
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  if not found then
    if p_direction < 0 and p_mode <> 'reverse' then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
        'debt', false));
    end if;
    perform billing.ensure_user_account(p_user);
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  -- A member of organisations that fund them: the wallet that pays (orgs = 0 skips it all).
  if v_account.orgs > 0 and p_mode = 'spend' and p_account_id is null then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, p_kind);
  end if;
  v_account_id := v_account.id;
  v_member := case when v_account.org_id is not null then p_user end;

  -- Checked after the lock: a concurrent call with the same key has committed by now.
  select * into v_existing from billing.transfers t where t.idempotency_key = p_idempotency_key and t.kind = p_kind;
  if found then
    if v_existing.amount <> p_amount
      or (p_direction > 0 and v_existing.to_account_id <> v_account_id)
      or (p_direction < 0 and v_existing.from_account_id <> v_account_id) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    v_bal := billing.balance_of(v_account_id);
    return (v_existing.id, v_existing.amount, v_bal.balance, v_bal.held, v_bal.available, true)::billing.transfer_result;
  end if;

  if p_mode = 'spend' then
    if v_account.held > 0 or v_account.next_expiry <= now() then
      v_account := billing.settle_account(v_account_id);
    end if;
    if v_account.balance - v_account.held < p_amount then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
        'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
        'debt', v_account.balance < 0));
    end if;
    if v_account.caps > 0 and v_account.org_id is null then  -- a pooled wallet's were counted choosing it
      perform billing.charge_caps(v_account_id, p_amount, p_metadata ->> 'model');
    end if;
  elsif p_mode = 'capture' and v_account.balance < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance, 0))::text, 'debt', v_account.balance < 0));
  end if;

  begin
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id, member_id)
    values (p_kind,
            case when p_direction > 0 then v_platform_id else v_account_id end,
            case when p_direction > 0 then v_account_id else v_platform_id end,
            p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, p_hold_id, v_member)
    returning id into v_transfer_id;
  exception when unique_violation then
    -- The same key and kind was used for another account.
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
  end;

  v_delta := p_direction * p_amount;
  update billing.accounts a set balance = a.balance + v_delta, version = a.version + 1
  where a.id = v_account_id
  returning * into v_account;

  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version) values
    (v_transfer_id, v_account_id, v_delta, v_account.balance, v_account.version),
    (v_transfer_id, v_platform_id, -v_delta, null, null);

  if p_direction > 0 then
    perform billing.create_lot(v_account_id, v_transfer_id, p_kind, p_amount, v_account.balance, p_lot);
  elsif p_lot is null then
    -- The common debit, in one statement: the first lot in spending order covers it (the order
    -- is draw_lots'). Otherwise draw_lots spreads it over several lots.
    with drawn as (
      update billing.lots l set remaining = l.remaining - p_amount
      where l.id = (select x.id from billing.lots x where x.account_id = v_account_id and x.open
                    order by x.frozen, x.priority, x.expires_at nulls last,
                      x.granted_at, x.id
                    limit 1)
        and l.remaining >= p_amount
      returning l.id
    )
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
    select v_transfer_id, drawn.id, p_kind, p_amount from drawn;
    if not found then
      perform billing.draw_lots(p_kind, array[v_transfer_id], array[v_account_id], array[p_amount]);
    end if;
  else
    perform billing.draw_lots(p_kind, array[v_transfer_id], array[v_account_id], array[p_amount],
      array(select jsonb_array_elements_text(p_lot -> 'first')::bigint));
  end if;
  -- Auto-recharge follows spending: a refund, dispute or expiry never charges the card by itself
  -- (a student refunded would be charged again at once); the low-balance alert still tells them.
  if p_mode = 'reverse' then
    if v_account.low_balance_threshold is not null then
      perform billing.check_low_balance(v_account);
    end if;
  elsif v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;

  -- Overdue holds and due lots were settled above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.fund_allowances(p_user uuid, p_org uuid, p_member uuid, p_amount numeric, p_key text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
  where not exists (select 1 from billing.transfers t where t.idempotency_key = billing.scoped_key('allowance:' || p_org || ':', p_key || ':' || x)
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
      billing.scoped_key('allowance:' || p_org || ':', p_key || ':' || m), m, jsonb_build_object('org_id', p_org, 'funded_by', p_user));
    v_results := v_results || jsonb_build_object('user_id', m, 'transfer_id', v_transfer.id::text,
      'amount', trim_scale(v_transfer.amount)::text);
  end loop;
  return jsonb_build_object('org_id', p_org, 'funded', v_results,
    'wallet', billing.wallet_json(v_wallet));
end;
$function$;
