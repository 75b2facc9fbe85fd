-- The road to the ledger's writer (11-ledger-writer.sql): one user's movement against a platform
-- account (post_user_transfer, and its faces grant_credits and reverse_credits), a move between
-- two tracked accounts (move_credits), the account that pays a member's charge
-- (lock_spending_source), whether an account owes (in_debt), and settling an account before
-- anything reads what it has (settled). Every feature that moves credits comes
-- this way; the writer decides how.


-- Whether an account is in debt, the rule every refusal's `debt` states: its balance is below
-- what its open lots hold (debt = Σ remaining − balance, billing.post_transfers). Credits for some
-- models stay beside a debt (it is owed in money paid for anything), and so do credits live holds
-- reserved (a refund's debt beside them is owed when each hold ends, billing.owe), so only an account
-- holding either can owe with a balance of zero or more; any other is in debt exactly when its
-- balance is below zero, and is answered without reading its lots.
create or replace function billing.in_debt(p_account billing.accounts) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  if not (p_account.restricted_lots or p_account.held > 0) or p_account.balance < 0 then
    return p_account.balance < 0;
  end if;
  return p_account.balance < (select coalesce(sum(l.remaining), 0) from billing.lots l
                              where l.account_id = p_account.id and l.open);
end;
$$;
comment on function billing.in_debt(p_account billing.accounts) is 'Internal: whether an account owes: its balance is below what its open lots hold (credits for some models stay beside a debt).';
revoke execute on function billing.in_debt(p_account billing.accounts) from public;

create or replace function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind,
                                                p_key text, p_member uuid, p_metadata jsonb default null,
                                                p_applies_to text[] default null)
returns billing.transfers
language plpgsql
set search_path = ''
as $$
declare
  v_from billing.accounts;
  v_transfer billing.transfers;
  v_posted billing.posted_transfer[];
begin
  perform billing.check_amount(p_amount);
  perform 1 from billing.accounts a where a.id in (p_from, p_to) order by a.id for update;
  select * into v_transfer from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
  if found then
    if v_transfer.amount <> p_amount or v_transfer.from_account_id <> p_from or v_transfer.to_account_id <> p_to
       or v_transfer.metadata -> 'applies_to' is distinct from to_jsonb(p_applies_to) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    return v_transfer;
  end if;
  select * into v_from from billing.accounts a where a.id = p_from;
  v_from := billing.settled(v_from);

  -- The free credits drawn arrive on the receiving side as they were (billing.post_transfers),
  -- restricted ones still restricted; what holds reserved stays theirs.
  v_posted := billing.post_transfers(array[(p_kind, p_from, p_to, p_amount, p_key, null, null,
    case when p_applies_to is null then p_metadata
         else coalesce(p_metadata, '{}') || jsonb_build_object('applies_to', p_applies_to) end, null, null, p_member,
    nullif(jsonb_strip_nulls(jsonb_build_object('applies_to', p_applies_to)), '{}'))::billing.transfer_spec]);
  if (v_posted[1]).result = 'insufficient' then
    perform billing.raise_error('INSUFFICIENT_CREDITS', (v_posted[1]).refusal
      || jsonb_build_object('debt', billing.in_debt(v_from), 'wallet', 'organisation'));
  end if;
  select * into v_transfer from billing.transfers t where t.id = (v_posted[1]).transfer_id;
  return v_transfer;
end;
$$;
comment on function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid, p_metadata jsonb, p_applies_to text[]) is 'Internal: a transfer between two tracked accounts (wallet ↔ allowance), the lots drawn mirrored on the receiving side (narrowed to p_applies_to when given).';
revoke execute on function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid, p_metadata jsonb, p_applies_to text[]) from public;

-- The accounts that may pay a member's charge, in the order they are asked: organisations that
-- pay first (0), the member's own account (1), those that pay after (2); by when the member joined.
-- A member without an allowance account yet has nothing there.
create or replace function billing.spending_sources(p_user uuid, p_own bigint, out accounts bigint[], out orgs uuid[])
language plpgsql stable
set search_path = ''
as $$
begin
  select array_agg(s.account_id order by s.rank, s.joined_at), array_agg(s.org_id order by s.rank, s.joined_at)
  into accounts, orgs
  from (
    select o.id as org_id, case when o.org_pays_first then 0 else 2 end as rank, m.joined_at,
      case when o.funding = 'allowance'
        then (select a.id from billing.accounts a where a.org_id = o.id and a.member_id = p_user)
        else (select a.id from billing.accounts a where a.org_id = o.id and a.member_id is null)
      end as account_id
    from billing.org_members m join billing.orgs o on o.id = m.org_id
    where m.user_id = p_user and m.active and m.role = 'member'
    union all
    select null, 1, null, p_own
  ) s where s.account_id is not null;
end;
$$;
comment on function billing.spending_sources(p_user uuid, p_own bigint, out accounts bigint[], out orgs uuid[]) is 'Internal: the accounts that may pay a member''s charge, in the order they are asked (organisations that pay first, the member''s own, those that pay after), and their organisations.';
revoke execute on function billing.spending_sources(p_user uuid, p_own bigint, out accounts bigint[], out orgs uuid[]) from public;

create or replace function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind,
  p_also text[] default null)
returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_existing billing.transfers;
  v_sources record;
  v_account billing.accounts;
  v_available numeric(38, 18);
  v_cap jsonb;
  v_wallets jsonb := '[]'::jsonb;
  v_best numeric(38, 18) := 0;
  v_pool boolean;
begin
  if p_kind is not null then
    select * into v_existing from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
    if found and v_existing.member_id = p_user then
      select * into v_account from billing.accounts a where a.id = v_existing.from_account_id for update;
      return v_account;
    elsif found then
      return p_own;
    end if;
  end if;

  -- Where the charge may come from, locked (in id order). A change that committed while we waited
  -- (a switch to pool funding that swept the allowance, a member removed) may have moved it: look
  -- again under the locks, until it stands still, so a charge never stops at an allowance swept
  -- into the wallet that now pays.
  loop
    select * into v_sources from billing.spending_sources(p_user, p_own.id);
    perform 1 from billing.accounts a where a.id = any(v_sources.accounts) and a.id <> p_own.id order by a.id for update;
    exit when (billing.spending_sources(p_user, p_own.id)).accounts = v_sources.accounts;
  end loop;

  for i in 1 .. array_length(v_sources.accounts, 1) loop
    select * into v_account from billing.accounts a where a.id = v_sources.accounts[i];
    if billing.falls_due(v_account) then           -- the caller settles first (billing.settle_spender)
      perform billing.raise_error('ACCOUNT_FELL_DUE', jsonb_build_object('account', 'paying'));
    end if;
    if v_account.id = p_own.id then
      p_own := v_account;                             -- the refusal's debt is read from it
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_account.reads_lots then
      v_available := least(v_available, billing.free_credits(v_account.id, p_model, false, p_also));
    end if;
    if v_available >= p_amount then
      if v_account.org_id is null then
        return v_account;                                 -- the member's own caps: the writer's, as for anyone
      end if;
      -- Asked, not counted: what spends counts it (the writer, or reserve_hold for a hold).
      v_cap := case when v_account.caps > 0 then billing.take_cap_room(v_account.id, p_amount, p_model, p_user, false, p_also => p_also) end;
      if v_cap is null then
        return v_account;
      end if;
    end if;
    -- A member sees what they may spend: their own account, their allowance, their cap's room;
    -- never the balance of a pool the whole organisation shares.
    v_pool := v_account.org_id is not null and v_account.member_id is null;
    v_best := greatest(v_best, case when v_cap is null and not v_pool then v_available else 0 end);
    v_wallets := v_wallets || jsonb_strip_nulls(jsonb_build_object(
      'wallet', case when v_account.org_id is null then 'personal' else 'organisation' end,
      'org_id', v_sources.orgs[i],
      'available', case when not v_pool then trim_scale(v_available)::text end,
      'short_by', case when not v_pool then trim_scale(greatest(p_amount - v_available, 0))::text end,
      'reason', case when v_cap is not null then 'cap' else 'insufficient' end, 'cap', v_cap));
    v_cap := null;
  end loop;
  perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
    'available', trim_scale(v_best)::text, 'debt', billing.in_debt(p_own), 'wallets', v_wallets));
  return null;                                      -- not reached: raise_error raised
end;
$$;
comment on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind, p_also text[]) is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';
revoke execute on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind, p_also text[]) from public;

create or replace function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text default null::text, p_reference text default null::text, p_metadata jsonb default null::jsonb, p_rate_card_id bigint default null::bigint, p_lot jsonb default null::jsonb, p_account_id bigint default null::bigint)
returns billing.transfer_result
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
  v_posted billing.posted_transfer;
  v_member uuid;
  v_model text;
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
    v_account := billing.settle_spender(p_user);
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, p_kind);
  end if;
  v_account_id := v_account.id;
  v_member := case when v_account.org_id is not null then p_user end;

  -- A replay finds the transfer written before: a concurrent call with the same key has
  -- committed by now (its account lock was ours to wait for).
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
    v_account := billing.settled(v_account);
  end if;
  -- Credits for some models only: the charge draws free credits of the lots that may pay for its
  -- model (the rate card's, or the gateway's facts on a capture's excess); none named: lots for any model.
  if v_account.restricted_lots and p_mode in ('spend', 'capture') then
    v_model := coalesce((select r.model from billing.rate_cards r where r.id = p_rate_card_id), p_metadata ->> 'model');
    p_lot := coalesce(p_lot, '{}'::jsonb) || jsonb_build_object('for', v_model);
  end if;

  v_posted := (billing.post_transfers(array[(p_kind,
    case when p_direction > 0 then v_platform_id else v_account_id end,
    case when p_direction > 0 then v_account_id else v_platform_id end,
    p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, null, v_member,
    p_lot)::billing.transfer_spec]))[1];
  -- What the account has, and its caps (a member's on a school's account among them): the writer's.
  if v_posted.result = 'insufficient' then
    -- A pooled wallet's figures are never told (a member may be the one refused).
    perform billing.raise_error('INSUFFICIENT_CREDITS', case when v_account.org_id is not null and v_account.member_id is null
      then v_posted.refusal - 'available' else v_posted.refusal || jsonb_build_object('debt', billing.in_debt(v_account))
        || case when v_account.restricted_lots and p_mode in ('spend', 'capture') then billing.model_refusal(v_account, v_model)
                else '{}'::jsonb end end);
  elsif v_posted.result = 'capped' then
    perform billing.raise_error('SPEND_CAP_REACHED', v_posted.refusal);
  end if;
  v_account.balance := coalesce(v_posted.from_balance, v_posted.to_balance);
  v_account.version := v_account.version + 1;
  v_transfer_id := v_posted.transfer_id;

  -- Auto-recharge follows spending: a refund, dispute or expiry, or credits that come in, never
  -- charge the card by themselves (a student refunded would be charged again at once); the
  -- low-balance alert still tells them.
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held,
      case when p_direction < 0 and p_mode <> 'reverse' then v_account.auto_recharge_below end);
  end if;

  -- Overdue holds and due lots were settled above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$$;
comment on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_lot jsonb, p_account_id bigint) is 'Internal: moves credits between a user''s account (or, for a member, the organisation wallet that pays; or p_account_id) and a platform account, under the account lock.';
revoke execute on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_lot jsonb, p_account_id bigint) from public;

-- What the ledger takes from an account whose lock the caller holds: a refund's or a lost
-- dispute's reversal, an expiry, or what it owes of a provider's bill (billing.charge_hold_at). None of them
-- is refused (a reversal and an owed charge may go into debt), so none needs what a user's
-- movement does first (billing.post_user_transfer: which account pays, settling, the refusals):
-- the writer's movement, then the tick's watch. `p_member`: a school's account's member the
-- movement names. Auto-recharge follows spending only: what is owed is spending, a reversal or
-- an expiry is not. Returns the transfer id (a replay's: the one written before).
create or replace function billing.take_credits(p_account_id bigint, p_kind billing.transfer_kind, p_amount numeric,
  p_key text, p_correlation text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_member uuid, p_lots jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_posted billing.posted_transfer;
  v_account billing.accounts;
begin
  v_posted := billing.post_debit((p_kind, p_account_id, billing.platform_account_id(case p_kind
      when 'refund_reversal' then 'refunds' when 'dispute_reversal' then 'disputes' when 'expiry' then 'expired'
      else 'usage_revenue' end), p_amount, p_key, p_correlation, p_reference, p_metadata, p_rate_card_id, null, p_member,
    p_lots)::billing.transfer_spec);
  if v_posted.result not in ('applied', 'exists') then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a reversal, an expiry or what is owed is never refused"}');
  end if;
  select * into v_account from billing.accounts a where a.id = p_account_id;
  if v_posted.result = 'applied' and (v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null) then
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held,
      case when p_kind = 'usage' then v_account.auto_recharge_below end);
  end if;
  return v_posted.transfer_id;
end;
$$;
comment on function billing.take_credits(p_account_id bigint, p_kind billing.transfer_kind, p_amount numeric, p_key text, p_correlation text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_member uuid, p_lots jsonb) is 'Internal: a reversal, an expiry or an owed charge from an account the caller locked, never refused (into debt if it must); the transfer id.';
revoke execute on function billing.take_credits(p_account_id bigint, p_kind billing.transfer_kind, p_amount numeric, p_key text, p_correlation text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_member uuid, p_lots jsonb) from public;

create or replace function billing.grant_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_lot jsonb default null,
  p_account_id bigint default null                -- an organisation's wallet instead of p_user's account
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
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, p_lot, p_account_id);
end;
$$;
comment on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) is 'Adds credits to a user (or the account p_account_id) as a new lot (p_lot: the lot''s options, see billing.transfer_spec): a purchase, a promotion, or a support adjustment. Idempotent by (key, kind).';
revoke execute on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) from public;
grant execute on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) to service_role;

create or replace function billing.reverse_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_first_lots bigint[] default null,
  p_account_id bigint default null                -- an organisation's wallet instead of p_user's account
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
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null,
    jsonb_build_object('first', to_jsonb(coalesce(p_first_lots, '{}'))), p_account_id);
end;
$$;
comment on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) is 'Takes credits back after a refund, a lost dispute or an expiry, from p_first_lots first. The only path that may make a balance negative (debt).';
revoke execute on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) from public;
grant execute on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) to service_role;

-- Whether something fell due on an account (a lot past its expiry, a hold past its TTL): what
-- billing.settled ends before anything reads what the account has. A path that does not settle
-- (a usage request's fast path) asks this and leaves such an account to one that does.
create or replace function billing.falls_due(p_account billing.accounts) returns boolean
language sql stable
set search_path = ''
as $$
  select coalesce(p_account.next_expiry <= now(), false) or coalesce(p_account.next_hold_expiry <= now(), false)
$$;
comment on function billing.falls_due(p_account billing.accounts) is 'Internal: whether a lot of the account is past its expiry or a hold past its TTL (billing.settled ends them).';
revoke execute on function billing.falls_due(p_account billing.accounts) from public;

-- The one settle step: the account as it is once what fell due (billing.falls_due) is ended, or as
-- it is when nothing did. Every path that spends, holds or moves credits calls it on the row it
-- locked, but the usage fast path, which hands such an account to one that does.
create or replace function billing.settled(p_account billing.accounts) returns billing.accounts
language plpgsql
set search_path = ''
as $$
begin
  if not billing.falls_due(p_account) then
    return p_account;
  end if;
  -- Due lots expire and overdue holds end in the order they fell due (expire_due_lots).
  if p_account.next_expiry <= now() then
    perform billing.expire_due_lots(p_account.id);
  else
    perform billing.expire_overdue_holds(p_account.id);
  end if;
  select * into p_account from billing.accounts a where a.id = p_account.id;
  return p_account;
end;
$$;
comment on function billing.settled(p_account billing.accounts) is 'Internal: a locked account settled when something fell due (a hold past its TTL: it ends; a lot past its expiry: it expires), else as it is.';
revoke execute on function billing.settled(p_account billing.accounts) from public;

-- The one settle step for a spender: their account and, for a member of organisations that fund
-- them, every account that may pay (billing.spending_sources), locked in the order
-- lock_spending_source locks them. The hold's road (reserve_hold, lock_spending_source: the AI
-- call's) never settles: an account there that fell due refuses with ACCOUNT_FELL_DUE, and its
-- caller settles the spender first, inline or (the gateway) in front of the begin asked again,
-- in its statement (`from billing.settle_spender(…)`; strict: a null user settles nothing): at
-- that statement's one now(), with the accounts locked, nothing falls due between the two.
create or replace function billing.settle_spender(p_user uuid) returns billing.accounts
language plpgsql
strict
security definer
set search_path = ''
as $$
declare
  v_own billing.accounts;
  v_sources bigint[];
begin
  select * into v_own from billing.accounts a where a.user_id = p_user for update;
  v_own := billing.settled(v_own);
  if v_own.orgs > 0 then
    v_sources := array(select x from unnest((billing.spending_sources(p_user, v_own.id)).accounts) x where x <> v_own.id);
    perform 1 from billing.accounts a where a.id = any(v_sources) order by a.id for update;
    perform billing.settled(a) from billing.accounts a where a.id = any(v_sources) order by a.id;
  end if;
  return v_own;
end;
$$;
comment on function billing.settle_spender(p_user uuid) is 'Gateway: settles the user''s account and every account that may pay for them (billing.settled), locked; answers the user''s account (null: none).';
revoke execute on function billing.settle_spender(p_user uuid) from public, anon, authenticated;
grant execute on function billing.settle_spender(p_user uuid) to service_role;

-- The account a hold drew on, locked for the work priced after it ran (an AI call's, a batch's
-- or a job's finish). That road never settles either: an account that fell due refuses with
-- ACCOUNT_FELL_DUE naming the hold, and the caller finishes again with the settle in front, in
-- the same statement (`from billing.settle_holder(…)`, as settle_spender is put in front of a
-- begin). Found not due, the hold is exactly as it reads.
create or replace function billing.lock_holder(p_hold uuid) returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
begin
  select * into v_account from billing.accounts a
  where a.id = (select h.account_id from billing.holds h where h.id = p_hold) for update;
  if billing.falls_due(v_account) then
    perform billing.raise_error('ACCOUNT_FELL_DUE', jsonb_build_object('hold_id', p_hold));
  end if;
  return v_account;
end;
$$;
comment on function billing.lock_holder(p_hold uuid) is 'Internal: the account a hold drew on, locked; ACCOUNT_FELL_DUE (naming the hold) when something of it fell due (billing.settle_holder ends it).';
revoke execute on function billing.lock_holder(p_hold uuid) from public;

create or replace function billing.settle_holder(p_hold uuid) returns void
language plpgsql
strict
security definer
set search_path = ''
as $$
declare
  v_account billing.accounts;
begin
  -- Locked first, then settled (as settle_spender does).
  select * into v_account from billing.accounts a
  where a.id = (select h.account_id from billing.holds h where h.id = p_hold) for update;
  perform billing.settled(v_account);
end;
$$;
comment on function billing.settle_holder(p_hold uuid) is 'Gateway and job worker: settles the account a hold drew on (billing.settled), for a finish that answered ACCOUNT_FELL_DUE.';
revoke execute on function billing.settle_holder(p_hold uuid) from public, anon, authenticated;
grant execute on function billing.settle_holder(p_hold uuid) to service_role;
