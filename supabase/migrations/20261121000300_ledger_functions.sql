-- The only write path to the ledger. Every function is SECURITY DEFINER with an empty
-- search_path and fully qualified names; EXECUTE is for service_role only (the Edge Functions
-- connect as the owner). Errors raise a stable token as the message with JSON detail; the
-- TypeScript side maps tokens to HTTP in one place (_shared/db.ts).
--
-- Concurrency: a user account row is locked (FOR UPDATE) before its balance is read, so
-- parallel debits serialise per account and can never overdraw. When a function needs an
-- account and one of its holds, it locks the account first, then the hold; no function locks
-- two user accounts, and if one ever must, it locks them in ascending id order. Idempotency
-- keys are checked again after the lock, so N parallel identical calls make one transfer.

create type billing.balance as (
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18)
);
comment on type billing.balance is 'A user account''s balance, its active holds, and what it may spend (balance − held).';

create type billing.transfer_result as (
  transfer_id bigint,
  amount numeric(38, 18),
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);
comment on type billing.transfer_result is 'What a money-moving function returns: the transfer and the account after it.';

-- ============================================================ helpers (not granted to anyone)

create function billing.raise_error(p_token text, p_detail jsonb default '{}'::jsonb) returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception using errcode = 'P0001', message = p_token, detail = p_detail::text;
end;
$$;
comment on function billing.raise_error(text, jsonb) is 'Raises a stable error token with structured detail.';

create function billing.check_amount(p_amount numeric) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_amount is null or p_amount <= 0 or scale(p_amount) > 18 or p_amount >= 1e20 then
    perform billing.raise_error('INVALID_AMOUNT', jsonb_build_object('amount', p_amount::text,
      'rule', 'a positive decimal below 1e20 with at most 18 fractional digits'));
  end if;
end;
$$;
comment on function billing.check_amount(numeric) is 'Refuses amounts that are not positive, too large, or finer than 18 decimal places.';

create function billing.platform_account_id(p_code text) returns bigint
language sql stable
set search_path = ''
as $$ select a.id from billing.accounts a where a.code = p_code $$;
comment on function billing.platform_account_id(text) is 'The id of a platform account by its code.';

create function billing.ensure_user_account(p_user uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.user_id = p_user;
  if v_id is null then
    insert into billing.accounts (user_id) values (p_user) on conflict (user_id) do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.user_id = p_user;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.ensure_user_account(uuid) is 'The user''s account id, creating the account on first use.';

create function billing.expire_overdue_holds(p_account_id bigint) returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_count integer;
  v_total numeric(38, 18);
  v_caps integer;
  v_expired jsonb;
begin
  -- The account is locked first, as everywhere else, then its holds.
  select a.caps into v_caps from billing.accounts a where a.id = p_account_id for update;
  with expired as (
    update billing.holds h set status = 'expired', finished_at = now()
    where h.account_id = p_account_id and h.status = 'active' and h.expires_at <= now()
    returning h.amount, h.purpose, h.metadata ->> 'model' as model, h.created_at
  )
  select count(*), coalesce(sum(e.amount), 0),
         jsonb_agg(jsonb_build_object('amount', e.amount, 'model', e.model, 'at', e.created_at)) filter (where e.purpose <> 'dispute')
    into v_count, v_total, v_expired from expired e;
  if v_count > 0 then
    update billing.accounts a set held = a.held - v_total where a.id = p_account_id;
    perform billing.on_available_change(a) from billing.accounts a
    where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
    if v_caps > 0 then
      perform billing.return_cap_room(p_account_id, (x ->> 'amount')::numeric, x ->> 'model', (x ->> 'at')::timestamptz)
      from jsonb_array_elements(coalesce(v_expired, '[]')) x;
    end if;
  end if;
  return v_count;
end;
$$;
comment on function billing.expire_overdue_holds(bigint) is 'Releases one account''s holds whose TTL has passed. Used by the spend path and the pg_cron sweep.';

create function billing.balance_of(p_account_id bigint) returns billing.balance
language sql stable
set search_path = ''
as $$
  select a.balance, a.held - coalesce(o.overdue, 0), a.balance - a.held + coalesce(o.overdue, 0)
  from billing.accounts a
  left join lateral (
    select sum(h.amount) as overdue from billing.holds h
    where h.account_id = a.id and h.status = 'active' and h.expires_at <= now()
  ) o on a.held > 0
  where a.id = p_account_id
$$;
comment on function billing.balance_of(bigint) is 'Balance, live held amount (holds past their TTL no longer count) and available.';

-- ============================================================ lots

-- Draws each transfer's amount from its account's lots in spending order: the lots named in
-- p_first (in that order: a refund takes back its own purchase's lots), then lots past their
-- expiry (only a hold can have kept them from the sweep), then lots no dispute has frozen, by
-- priority, earliest expiry, oldest. Several transfers of one account draw one after another in
-- array order (batch ingestion). What the lots cannot cover stays unallocated: only a reversal
-- can ask for more than the balance, and that part is debt. One statement, so the common debit
-- (one open lot) costs one index probe, one row update and one insert.
create function billing.draw_lots(p_kind billing.transfer_kind, p_transfer_ids bigint[], p_account_ids bigint[],
  p_amounts numeric[], p_first bigint[] default '{}') returns void
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan  -- planned once per session: planning costs more than the work
as $$
begin
  -- plpgsql, not sql: a sql function's statement is planned again on every call.
  with d as (
    select t.transfer_id, t.account_id, t.amount,
      sum(t.amount) over (partition by t.account_id order by t.ord) as hi
    from unnest(p_transfer_ids, p_account_ids, p_amounts) with ordinality as t(transfer_id, account_id, amount, ord)
  ), l as (
    select l.id, l.account_id, l.remaining,
      sum(l.remaining) over (partition by l.account_id order by array_position(p_first, l.id) nulls last,
        coalesce(l.expires_at <= now(), false) desc, l.frozen, l.priority, l.expires_at nulls last, l.granted_at, l.id) as hi
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
$$;
comment on function billing.draw_lots(billing.transfer_kind, bigint[], bigint[], numeric[], bigint[])
  is 'Internal: allocates debiting transfers to lots in spending order, under the caller''s account locks.';

-- p_lot (all optional): category ('paid' | 'promotional'; default paid for a purchase,
-- promotional otherwise), priority and expires_at (default from billing.credit_expiry_policy;
-- an explicit null expires_at never expires), cost_cents (what was paid for the whole lot),
-- currency, purchase_id.
create function billing.create_lot(p_account_id bigint, p_transfer_id bigint, p_kind billing.transfer_kind,
  p_amount numeric, p_balance_after numeric, p_lot jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_lot jsonb := coalesce(p_lot, '{}'::jsonb);
  v_category text := coalesce(v_lot ->> 'category', case p_kind when 'purchase' then 'paid' else 'promotional' end);
  v_policy billing.credit_expiry_policy;
  -- The part that pays a debt the account was in: min(amount, −balance before).
  v_settled numeric(38, 18) := least(p_amount, greatest(p_amount - p_balance_after, 0));
begin
  select * into v_policy from billing.credit_expiry_policy c where c.category = v_category;
  if not found then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'category', 'rule', 'paid or promotional'));
  elsif v_category = 'promotional' and coalesce((v_lot ->> 'cost_cents')::numeric, 0) <> 0 then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'cost_cents', 'rule', 'promotional credits cost nothing'));
  elsif (v_lot ->> 'cost_cents')::numeric < 0 then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'cost_cents', 'rule', 'not negative'));
  elsif (v_lot ->> 'expires_at')::timestamptz <= now() then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'expires_at', 'rule', 'in the future'));
  elsif (v_lot ->> 'priority')::integer not between 0 and 1000 then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'priority', 'rule', '0 to 1000'));
  end if;
  insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency, amount,
                            debt_settled, remaining, expires_at)
  values (p_account_id, p_transfer_id, (v_lot ->> 'purchase_id')::uuid, v_category,
          coalesce((v_lot ->> 'priority')::integer, v_policy.priority), coalesce((v_lot ->> 'cost_cents')::numeric, 0),
          coalesce(v_lot ->> 'currency', 'usd'), p_amount, v_settled, p_amount - v_settled,
          -- A support adjustment does not expire unless the admin says so: a correction that
          -- quietly vanishes would need correcting again.
          case when v_lot ? 'expires_at' then (v_lot ->> 'expires_at')::timestamptz
               when p_kind <> 'adjustment' then now() + v_policy.expires_after end);
end;
$$;
comment on function billing.create_lot(bigint, bigint, billing.transfer_kind, numeric, numeric, jsonb)
  is 'Internal: the lot a granting transfer creates; what pays an existing debt is recorded as settled, not remaining.';

-- The one place a transfer touching a user account is written.
-- p_direction: +1 credits the user (from the platform account), −1 debits the user (to it).
-- p_mode: 'credit' | 'spend' (needs available ≥ amount) | 'capture' (spends reserved credits,
--         needs balance ≥ amount) | 'reverse' (no funds check: may create debt).
create function billing.post_user_transfer(
  p_user uuid,
  p_direction integer,
  p_mode text,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_platform_code text,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_reference text default null,
  p_metadata jsonb default null,
  p_rate_card_id bigint default null,
  p_hold_id uuid default null,
  p_lot jsonb default null
) returns billing.transfer_result
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_account_id bigint;
  v_platform_id bigint := billing.platform_account_id(p_platform_code);
  v_existing billing.transfers;
  v_transfer_id bigint;
  v_bal billing.balance;
  v_delta numeric(38, 18);
begin
  perform billing.check_amount(p_amount);
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;

  -- Find and lock the account in one statement; create it first only when it must exist.
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    if p_direction < 0 and p_mode <> 'reverse' then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
        'debt', false));
    end if;
    perform billing.ensure_user_account(p_user);
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  v_account_id := v_account.id;

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
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account_id);
      select * into v_account from billing.accounts a where a.id = v_account_id;
    end if;
    if v_account.balance - v_account.held < p_amount then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
        'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
        'debt', v_account.balance < 0));
    end if;
    if v_account.caps > 0 then
      perform billing.charge_caps(v_account_id, p_amount, p_metadata ->> 'model');
    end if;
  elsif p_mode = 'capture' and v_account.balance < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance, 0))::text, 'debt', v_account.balance < 0));
  end if;

  begin
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id)
    values (p_kind,
            case when p_direction > 0 then v_platform_id else v_account_id end,
            case when p_direction > 0 then v_account_id else v_platform_id end,
            p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, p_hold_id)
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
                    order by coalesce(x.expires_at <= now(), false) desc, x.frozen, x.priority, x.expires_at nulls last,
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
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;

  -- Overdue holds were expired above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$$;
comment on function billing.post_user_transfer(uuid, integer, text, numeric, billing.transfer_kind, text, text, text, text, jsonb, bigint, uuid, jsonb)
  is 'Internal: writes one transfer between a user account and a platform account, idempotently, under the account lock; a credit creates its lot, a debit draws from lots.';

-- ============================================================ grant, debit, reverse

create function billing.grant_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_lot jsonb default null
) returns billing.transfer_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_kind not in ('purchase', 'promo_grant', 'adjustment') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'purchase, promo_grant, adjustment'));
  end if;
  return billing.post_user_transfer(p_user, 1, 'credit', p_amount, p_kind,
    case p_kind when 'purchase' then 'purchases' when 'promo_grant' then 'promotions' else 'adjustments' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null, p_lot);
end;
$$;
comment on function billing.grant_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, jsonb)
  is 'Adds credits to a user as a new lot (p_lot: see create_lot): a purchase, a promotion, or a support adjustment. Idempotent by (key, kind).';

create function billing.debit_credits(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_reference text default null,
  p_metadata jsonb default null
) returns billing.transfer_result
language sql
security definer
set search_path = ''
as $$
  select billing.post_user_transfer(p_user, -1, 'spend', p_amount, 'debit', 'usage_revenue',
    p_idempotency_key, p_correlation_id, p_reference, p_metadata)
$$;
comment on function billing.debit_credits(uuid, numeric, text, text, text, jsonb)
  is 'Spends a given amount. Refused with INSUFFICIENT_CREDITS when available < amount (including while in debt).';

create function billing.reverse_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_first_lots bigint[] default null
) returns billing.transfer_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_kind not in ('refund_reversal', 'dispute_reversal', 'expiry') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'refund_reversal, dispute_reversal, expiry'));
  end if;
  return billing.post_user_transfer(p_user, -1, 'reverse', p_amount, p_kind,
    case p_kind when 'refund_reversal' then 'refunds' when 'dispute_reversal' then 'disputes' else 'expired' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null,
    jsonb_build_object('first', to_jsonb(coalesce(p_first_lots, '{}'))));
end;
$$;
comment on function billing.reverse_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, bigint[])
  is 'Takes credits back after a refund, a lost dispute or an expiry, from p_first_lots first. The only path that may make a balance negative (debt).';

-- ============================================================ usage

create function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint)
returns table (rate_card_id bigint, rate_card_version integer, amount numeric(38, 18))
language plpgsql stable
set search_path = ''
as $$
declare
  v_card billing.rate_cards;
begin
  if p_input_tokens is null or p_output_tokens is null or p_input_tokens < 0 or p_output_tokens < 0 then
    perform billing.raise_error('INVALID_TOKENS', jsonb_build_object('rule', 'non-negative integers'));
  end if;
  select * into v_card from billing.rate_cards r
  where r.model = p_model and r.effective_from <= now()
  order by r.effective_from desc, r.version desc limit 1;
  if not found then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('model', p_model));
  end if;
  -- credits = USD × 1,000; USD = (tokens × USD per million) / 1e6 × markup
  return query select v_card.id, v_card.version,
    round((p_input_tokens * v_card.usd_per_million_input + p_output_tokens * v_card.usd_per_million_output)
          * v_card.markup / 1000, 18)::numeric(38, 18);
end;
$$;
comment on function billing.price_usage(text, bigint, bigint) is 'Prices tokens with the model''s current rate card, in credits.';

create type billing.usage_result as (
  transfer_id bigint,
  charged numeric(38, 18),
  rate_card_version integer,
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);

create function billing.charge_usage(
  p_user uuid,
  p_model text,
  p_input_tokens bigint,
  p_output_tokens bigint,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_metadata jsonb default null
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
  select * into v_price from billing.price_usage(p_model, p_input_tokens, p_output_tokens);
  if v_price.amount = 0 then
    -- Nothing to charge: no transfer is written.
    v_bal := billing.balance_of(billing.ensure_user_account(p_user));
    return (null, 0, v_price.rate_card_version, v_bal.balance, v_bal.held, v_bal.available, false)::billing.usage_result;
  end if;
  v_result := billing.post_user_transfer(p_user, -1, 'spend', v_price.amount, 'usage', 'usage_revenue',
    p_idempotency_key, p_correlation_id, null,
    coalesce(p_metadata, '{}'::jsonb) || jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens,
      'output_tokens', p_output_tokens),
    v_price.rate_card_id);
  return (v_result.transfer_id, v_result.amount, v_price.rate_card_version, v_result.balance, v_result.held,
          v_result.available, v_result.replayed)::billing.usage_result;
end;
$$;
comment on function billing.charge_usage(uuid, text, bigint, bigint, text, text, jsonb)
  is 'Prices model usage from the rate card and debits it; the transfer records the rate-card version.';

-- ============================================================ holds

create type billing.hold_result as (
  hold_id uuid,
  status text,
  amount numeric(38, 18),
  captured numeric(38, 18),
  released numeric(38, 18),
  transfer_id bigint,
  expires_at timestamptz,
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);

create function billing.hold_result_of(p_hold billing.holds, p_replayed boolean) returns billing.hold_result
language plpgsql stable
set search_path = ''
as $$
declare
  v_bal billing.balance := billing.balance_of(p_hold.account_id);
begin
  return (p_hold.id, p_hold.status, p_hold.amount, coalesce(p_hold.captured_amount, 0),
    case when p_hold.status = 'active' then 0 else p_hold.amount - coalesce(p_hold.captured_amount, 0) end,
    p_hold.capture_transfer_id, p_hold.expires_at, v_bal.balance, v_bal.held, v_bal.available, p_replayed)::billing.hold_result;
end;
$$;

create function billing.place_hold(
  p_account_id bigint,
  p_amount numeric,
  p_idempotency_key text,
  p_expires_at timestamptz,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
begin
  -- The caller holds the account lock and has checked what may be held.
  insert into billing.holds (account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose)
  values (p_account_id, p_amount, p_idempotency_key, p_correlation_id, p_metadata, p_expires_at, p_purpose)
  returning * into v_hold;
  update billing.accounts a set held = a.held + p_amount where a.id = p_account_id;
  perform billing.on_available_change(a) from billing.accounts a
  where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return v_hold;
end;
$$;
comment on function billing.place_hold(bigint, numeric, text, timestamptz, text, text, jsonb)
  is 'Internal: writes a hold and adds it to the account''s held amount, under the caller''s account lock.';

create function billing.reserve_hold(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_ttl_seconds integer,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.hold_result
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_hold billing.holds;
begin
  perform billing.check_amount(p_amount);
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and 86400 then
    perform billing.raise_error('INVALID_TTL', jsonb_build_object('rule', '1 to 86400 seconds'));
  end if;
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
      'debt', false));
  end if;

  select * into v_hold from billing.holds h where h.idempotency_key = p_idempotency_key;
  if found then
    if v_hold.account_id <> v_account.id or v_hold.amount <> p_amount or v_hold.purpose <> p_purpose then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'hold'));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;

  if v_account.held > 0 then
    perform billing.expire_overdue_holds(v_account.id);
    select * into v_account from billing.accounts a where a.id = v_account.id;
  end if;
  if v_account.balance - v_account.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
      'debt', v_account.balance < 0));
  end if;

  if v_account.caps > 0 then
    perform billing.charge_caps(v_account.id, p_amount, p_metadata ->> 'model');
  end if;
  v_hold := billing.place_hold(v_account.id, p_amount, p_idempotency_key, now() + make_interval(secs => p_ttl_seconds),
    p_purpose, p_correlation_id, p_metadata);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.reserve_hold(uuid, numeric, text, integer, text, text, jsonb)
  is 'Internal: reserves available credits as a hold of the given purpose (user or job), under the account lock.';

create function billing.reserve_credits(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_ttl_seconds integer default 900,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.hold_result
language sql
security definer
set search_path = ''
as $$
  select billing.reserve_hold(p_user, p_amount, p_idempotency_key, p_ttl_seconds, 'user', p_correlation_id, p_metadata)
$$;
comment on function billing.reserve_credits(uuid, numeric, text, integer, text, jsonb)
  is 'Reserves credits for a while (default 15 min) as the user''s own hold: they stay in the balance but cannot be spent elsewhere.';

-- Locks the hold's account, then the hold; HOLD_NOT_FOUND unless it belongs to p_user
-- (p_user null: any owner, for service callers such as the jobs worker and disputes).
-- A user acts only on holds of their own making: a job's or a dispute's hold is finished by
-- its job or its dispute, or a student could release a chargeback's hold and spend it.
create function billing.lock_hold(p_user uuid, p_hold_id uuid) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_hold billing.holds;
begin
  select h.account_id into v_account_id from billing.holds h
  join billing.accounts a on a.id = h.account_id
  where h.id = p_hold_id and (p_user is null or a.user_id = p_user);
  if v_account_id is null then
    perform billing.raise_error('HOLD_NOT_FOUND', jsonb_build_object('hold_id', p_hold_id));
  end if;
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  select * into v_hold from billing.holds h where h.id = p_hold_id for update;
  if p_user is not null and v_hold.purpose <> 'user' then
    perform billing.raise_error('HOLD_NOT_USER_MANAGED', jsonb_build_object('hold_id', p_hold_id, 'purpose', v_hold.purpose));
  end if;
  return v_hold;
end;
$$;

-- What a finished hold did not spend goes back to its caps (a dispute's hold never counted).
create function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_hold.purpose <> 'dispute' and p_unspent > 0
     and (select a.caps from billing.accounts a where a.id = p_hold.account_id) > 0 then
    perform billing.return_cap_room(p_hold.account_id, p_unspent, p_hold.metadata ->> 'model', p_hold.created_at);
  end if;
end;
$$;
comment on function billing.return_hold_cap_room(billing.holds, numeric) is 'Internal: returns a finished hold''s unspent amount to its caps.';

create function billing.capture_hold(
  p_user uuid,
  p_hold_id uuid,
  p_amount numeric default null,
  p_correlation_id text default null
) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
  v_capture numeric(38, 18) := coalesce(p_amount, v_hold.amount);
  v_transfer billing.transfer_result;
  v_user uuid;
  v_unfrozen numeric(38, 18);
begin
  if v_hold.status = 'captured' then
    if p_amount is not null and p_amount <> v_hold.captured_amount then
      perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id,
        'captured', trim_scale(v_hold.captured_amount)::text));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;
  if v_hold.status <> 'active' or v_hold.expires_at <= now() then
    perform billing.raise_error(case when v_hold.status = 'released' then 'HOLD_RELEASED' else 'HOLD_EXPIRED' end,
      jsonb_build_object('hold_id', p_hold_id, 'expires_at', v_hold.expires_at));
  end if;
  perform billing.check_amount(v_capture);
  if v_capture > v_hold.amount then
    perform billing.raise_error('CAPTURE_EXCEEDS_HOLD', jsonb_build_object('held', trim_scale(v_hold.amount)::text,
      'requested', trim_scale(v_capture)::text));
  end if;

  -- A user's own capture never spends credits a dispute has frozen (a reversal of another
  -- purchase can take the balance below what is held). A job's capture is work already done.
  if p_user is not null then
    select a.balance - coalesce(sum(h.amount), 0) into v_unfrozen
    from billing.accounts a
    left join billing.holds h on h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute'
    where a.id = v_hold.account_id group by a.balance;
    if v_unfrozen < v_capture then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(v_capture)::text,
        'available', trim_scale(greatest(v_unfrozen, 0))::text, 'frozen_by_dispute', true));
    end if;
  end if;

  -- The hold stops counting first, so the capture spends the reserved credits.
  update billing.accounts a set held = a.held - v_hold.amount where a.id = v_hold.account_id returning a.user_id into v_user;
  v_transfer := billing.post_user_transfer(v_user, -1, 'capture', v_capture, 'hold_capture', 'usage_revenue',
    'hold:' || p_hold_id::text, coalesce(p_correlation_id, v_hold.correlation_id), null, null, null, p_hold_id);
  update billing.holds h set status = 'captured', captured_amount = v_capture, capture_transfer_id = v_transfer.transfer_id,
    finished_at = now()
  where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - v_capture);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.capture_hold(uuid, uuid, numeric, text)
  is 'Spends all or part of an active hold and releases the rest. Capturing a captured hold again replays the result.';

create function billing.release_hold(p_user uuid, p_hold_id uuid) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
begin
  if v_hold.status = 'captured' then
    perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id, 'captured', v_hold.captured_amount::text));
  end if;
  if v_hold.status <> 'active' then
    return billing.hold_result_of(v_hold, true); -- released or expired: nothing left to release
  end if;
  update billing.accounts a set held = a.held - v_hold.amount where a.id = v_hold.account_id;
  update billing.holds h set status = 'released', finished_at = now() where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount);
  perform billing.on_available_change(a) from billing.accounts a
  where a.id = v_hold.account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.release_hold(uuid, uuid) is 'Releases an active hold in full. Releasing a released or expired hold is a no-op.';

create function billing.release_expired_holds(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_total integer := 0;
begin
  for v_account_id in
    select distinct h.account_id from billing.holds h
    where h.status = 'active' and h.expires_at <= now()
    order by h.account_id limit p_limit
  loop
    v_total := v_total + billing.expire_overdue_holds(v_account_id);
  end loop;
  return v_total;
end;
$$;
comment on function billing.release_expired_holds(integer) is 'pg_cron: releases holds past their TTL, for at most p_limit accounts per run. Idempotent.';

-- ============================================================ reads

create function billing.get_balance(p_user uuid)
returns table (balance numeric(38, 18), held numeric(38, 18), available numeric(38, 18),
               expiring_amount numeric(38, 18), expiring_at timestamptz)
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(b.balance, 0), coalesce(b.held, 0), coalesce(b.available, 0), x.amount, x.expires_at
  from (select 1) one
  -- balance_of in FROM, not `(balance_of(…)).*`, which would run it once per column.
  left join lateral (select a.id, y.* from billing.accounts a cross join lateral billing.balance_of(a.id) y
                     where a.user_id = p_user) b on true
  -- The next expiry: the earliest date any open lot expires, and how much expires then.
  left join lateral (select l.expires_at, sum(l.remaining) as amount from billing.lots l
                     where l.account_id = b.id and l.open and l.expires_at is not null
                     group by l.expires_at order by l.expires_at limit 1) x on true
$$;
comment on function billing.get_balance(uuid)
  is 'A user''s balance, held and available, and the next expiry (amount, time); zeros when the user has no account yet.';

create function billing.get_ledger(
  p_user uuid,
  p_before_id bigint default null,
  p_limit integer default 50,
  p_from timestamptz default null,
  p_to timestamptz default null
) returns table (id bigint, created_at timestamptz, kind billing.transfer_kind, amount numeric(38, 18),
               balance_after numeric(38, 18), correlation_id text, reference text, lots jsonb)
language sql stable
security definer
set search_path = ''
as $$
  select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference,
    -- The lot a grant created, or the lots a debit drew from.
    coalesce(g.lots, x.lots, '[]')
  from billing.accounts a
  join billing.entries e on e.account_id = a.id
  join billing.transfers t on t.id = e.transfer_id
  left join lateral (select jsonb_build_array(jsonb_build_object('lot_id', l.id::text, 'amount', trim_scale(l.amount)::text)) as lots
                     from billing.lots l where l.grant_transfer_id = t.id) g on e.amount > 0
  left join lateral (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id::text, 'amount', trim_scale(la.amount)::text)
                                      order by la.lot_id) as lots
                     from billing.lot_allocations la where la.transfer_id = t.id) x on e.amount < 0
  where a.user_id = p_user
    and e.balance_after is not null -- always true for user entries; lets the partial index serve
    and (p_before_id is null or e.id < p_before_id)
    and (p_from is null or e.created_at >= p_from)
    and (p_to is null or e.created_at < p_to)
  order by e.id desc
  limit least(greatest(p_limit, 1), 1000)
$$;
comment on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz)
  is 'A user''s entries in [p_from, p_to), newest first, keyset-paginated by entry id, each with the lots it created or drew from.';

-- ============================================================ grants

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function
  billing.grant_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, jsonb),
  billing.debit_credits(uuid, numeric, text, text, text, jsonb),
  billing.reverse_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, bigint[]),
  billing.charge_usage(uuid, text, bigint, bigint, text, text, jsonb),
  billing.reserve_credits(uuid, numeric, text, integer, text, jsonb),
  billing.capture_hold(uuid, uuid, numeric, text),
  billing.release_hold(uuid, uuid),
  billing.release_expired_holds(integer),
  billing.get_balance(uuid),
  billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz),
  billing.price_usage(text, bigint, bigint)
to service_role;
