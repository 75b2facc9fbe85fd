-- Holds: two-phase spending. A hold reserves free credits of specific lots (billing.hold_lots,
-- lots.reserved: the lots that may pay for its model, in spending order) until it is captured
-- (all or part, from what it reserved; the rest returns), released, or expires at its TTL, so
-- available = balance − active holds. Purposes: a user's own hold (lots for any model), a job's
-- estimate, an AI call's worst case. A hold is a pending transfer: billing.post_transfers alone
-- places, posts (a capture, with its movement) and voids (released, expired) one, and
-- keeps the reservation and the account's held with it (hold_step); the functions here decide
-- what may be held and when, under the account lock, account first, then the hold, and tell
-- billing.keep_claims when one ends. The table is in 10-ledger.sql; holds past their TTL end on
-- the writer's road (expire_overdue_holds, 11-ledger-due.sql).

-- ============================================================ types

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

-- ============================================================ functions

-- p_balance: the account's figures when the caller has them exact (a row it locked and settled);
-- otherwise read now (billing.balance_of).
create or replace function billing.hold_result_of(p_hold billing.holds, p_replayed boolean,
  p_balance billing.balance default null) returns billing.hold_result
language plpgsql stable
set search_path = ''
as $$
declare
  v_bal billing.balance := coalesce(p_balance, billing.balance_of(p_hold.account_id));
begin
  return (p_hold.id, p_hold.status, p_hold.amount, coalesce(p_hold.captured_amount, 0),
    case when p_hold.status = 'active' then 0 else p_hold.amount - coalesce(p_hold.captured_amount, 0) end,
    p_hold.capture_transfer_id, p_hold.expires_at, v_bal.balance, v_bal.held, v_bal.available, p_replayed)::billing.hold_result;
end;
$$;
comment on function billing.hold_result_of(p_hold billing.holds, p_replayed boolean, p_balance billing.balance) is 'Internal: a hold as the hold functions answer it, with its account''s balance, held and available now (p_balance when the caller has them).';
revoke execute on function billing.hold_result_of(p_hold billing.holds, p_replayed boolean, p_balance billing.balance) from public;

create or replace function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text default null::text, p_metadata jsonb default null::jsonb,
  p_min_amount numeric default null, p_step numeric default null)
returns billing.hold_result
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_hold billing.holds;
begin
  perform billing.check_amount(p_amount);
  -- An AI hold may outlive a day: a batch's is held through its 24-hour window and after.
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and (case when p_purpose = 'ai' then 93600 else 86400 end) then
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
    if (v_hold.account_id <> v_account.id and v_hold.member_id is distinct from p_user)
       or v_hold.amount not between coalesce(p_min_amount, p_amount) and p_amount or v_hold.purpose <> p_purpose then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'hold'));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;

  -- The caller settled the spender (billing.settle_spender): an account that fell due since refuses.
  if v_account.orgs > 0 then
    -- A member's hold is paid by the first account that can pay at least its minimum (each asked refuses so).
    v_account := billing.lock_spending_source(v_account, p_user, coalesce(p_min_amount, p_amount), p_metadata ->> 'model',
      p_idempotency_key, null, case when p_purpose = 'ai' then array(select jsonb_array_elements_text(p_metadata -> 'fallbacks')) end);
  elsif billing.falls_due(v_account) then
    perform billing.raise_error('ACCOUNT_FELL_DUE', jsonb_build_object('account', 'paying'));
  end if;
  v_hold := billing.place_hold(v_account.id, p_amount, p_idempotency_key, now() + make_interval(secs => p_ttl_seconds),
    p_purpose, p_correlation_id, p_metadata, case when v_account.org_id is not null then p_user end, p_min_amount, p_step);
  -- The account was settled above (or had nothing held or due): its row is what balance_of would
  -- answer, with this hold added (read there when frozen credits are beside it).
  return billing.hold_result_of(v_hold, false, case when not v_account.frozen_lots then (v_account.balance,
    v_account.held + v_hold.amount, v_account.balance - v_account.held - v_hold.amount)::billing.balance end);
end;
$$;
comment on function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text, p_metadata jsonb, p_min_amount numeric, p_step numeric) is 'Internal: reserves available credits as a hold of the given purpose (user, job or ai), under the account lock; given p_min_amount, the most that fits between it and p_amount (in whole p_steps above it, given one).';
revoke execute on function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text, p_metadata jsonb, p_min_amount numeric, p_step numeric) from public;

create or replace function billing.reserve_credits(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_ttl_seconds integer default 900,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.settle_spender(p_user);
  return billing.reserve_hold(p_user, p_amount, p_idempotency_key, p_ttl_seconds, 'user', p_correlation_id, p_metadata);
end
$$;
comment on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) is 'Reserves credits for a while (default 15 min) as the user''s own hold: they stay in the balance but cannot be spent elsewhere.';
revoke execute on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) from public;
grant execute on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) to service_role;

create or replace function billing.lock_hold(p_user uuid, p_hold_id uuid) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_hold billing.holds;
begin
  select h.account_id into v_account_id from billing.holds h
  join billing.accounts a on a.id = h.account_id
  where h.id = p_hold_id and (p_user is null or a.user_id = p_user
    or (h.member_id = p_user and exists (select 1 from billing.org_members m
                                         where m.org_id = a.org_id and m.user_id = p_user and m.active)));
  if v_account_id is null then
    perform billing.raise_error('HOLD_NOT_FOUND', jsonb_build_object('hold_id', p_hold_id));
  end if;
  -- What fell due ends first (billing.settled): credits that expired under the hold are gone (it
  -- shrank by them), so a capture never spends them and a release never returns them to a
  -- refund's claim; a hold past its TTL is expired, whatever asks; other overdue holds end, so
  -- what an alert or an AI call's excess sees is live holds only.
  perform billing.settled(a) from billing.accounts a where a.id = v_account_id for update;
  select * into v_hold from billing.holds h where h.id = p_hold_id for update;
  if p_user is not null and v_hold.purpose <> 'user' then
    perform billing.raise_error('HOLD_NOT_USER_MANAGED', jsonb_build_object('hold_id', p_hold_id, 'purpose', v_hold.purpose));
  end if;
  return v_hold;
end;
$$;
comment on function billing.lock_hold(p_user uuid, p_hold_id uuid) is 'Internal: locks a hold''s account, then the hold (the user''s own, or a member''s of an organisation they belong to), and settles the account (billing.settled); HOLD_NOT_FOUND otherwise, HOLD_NOT_USER_MANAGED for a user''s call on a job''s or AI call''s hold.';
revoke execute on function billing.lock_hold(p_user uuid, p_hold_id uuid) from public;

-- A capture as the writer makes it, straight to it: the hold posted by its transfer, the hold's
-- release in the capture's own account write, the cap room the rest held given back. The caller
-- holds the account lock, found nothing due (billing.lock_hold settles, billing.lock_holder
-- refuses) and checked the capture (an active hold, 0 < amount <= held): the account is read
-- here, never locked again (one lock a phase). The hold as captured; what the user is answered
-- (the balance read after it) is the user's door's to read (capture_hold), never a finish's.
create or replace function billing.post_capture(p_hold billing.holds, p_capture numeric, p_correlation_id text,
  p_metadata jsonb) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_posted billing.posted_transfer;
  v_hold billing.holds := p_hold;
  v_kept numeric(38, 18);
begin
  select * into v_account from billing.accounts a where a.id = p_hold.account_id;
  -- The hold stops counting first, so the capture spends what it reserved.
  v_account.held := v_account.held - p_hold.amount;
  v_posted := billing.post_debit(('hold_capture', v_account.id, billing.platform_account_id('usage_revenue'),
      p_capture, 'hold:' || p_hold.id::text, coalesce(p_correlation_id, p_hold.correlation_id), null, p_metadata, null,
      p_hold.id, case when v_account.org_id is not null then p_hold.member_id end,
      null   -- what the hold reserved (the writer takes it)
    )::billing.transfer_spec, p_hold.id);
  if v_posted.result = 'insufficient' then
    perform billing.raise_error('INSUFFICIENT_CREDITS', v_posted.refusal || jsonb_build_object('debt', billing.in_debt(v_account)));
  end if;
  -- What a refund claimed of what it returned stays reserved (billing.keep_claims).
  v_kept := billing.keep_claims(p_hold, v_posted.transfer_id);
  v_account.held := v_account.held + v_kept;
  v_account.balance := coalesce(v_posted.from_balance, (select a.balance from billing.accounts a where a.id = v_account.id));
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held, v_account.auto_recharge_below);
  end if;
  v_hold.status := 'captured';
  v_hold.captured_amount := p_capture;
  v_hold.capture_transfer_id := v_posted.transfer_id;
  if v_account.caps > 0 then
    perform billing.return_hold_cap_room(v_hold, v_hold.amount - p_capture - v_kept);  -- the claims hold's comes back with it
  end if;
  return v_hold;
end;
$$;
comment on function billing.post_capture(p_hold billing.holds, p_capture numeric, p_correlation_id text, p_metadata jsonb) is 'Internal: posts an active hold for a checked amount under the caller''s account lock (the rest returned, its cap room given back); the hold as captured.';
revoke execute on function billing.post_capture(p_hold billing.holds, p_capture numeric, p_correlation_id text, p_metadata jsonb) from public;

create or replace function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric default null, p_correlation_id text default null,
  p_metadata jsonb default null) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
  v_capture numeric(38, 18);
begin
  v_capture := coalesce(p_amount, v_hold.amount);
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

  -- Two statements: the answer is read (a stable function, the caller's snapshot) after the capture.
  v_hold := billing.post_capture(v_hold, v_capture, p_correlation_id, p_metadata);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) is 'Spends all or part of an active hold and releases the rest; p_metadata (the gateway''s facts of a call, never a caller''s) goes on the capture. Capturing a captured hold again replays the result.';
revoke execute on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) from public;
grant execute on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) to service_role;

-- A release as the writer makes it (a void), under the caller's account lock, the account not
-- due (billing.lock_hold settles it; billing.lock_holder finds it so): what refunds claimed of it
-- stays reserved for their take-backs (billing.keep_claims), its cap room is given back and the
-- account watched.
create or replace function billing.void_hold(p_hold_id uuid) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
begin
  perform billing.end_holds(array[p_hold_id], 'released');
  select * into v_hold from billing.holds h where h.id = p_hold_id;
  -- What a refund claimed of it stays reserved (billing.keep_claims): that cap room comes back with it.
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - billing.keep_claims(v_hold, null));
  -- Credits given back never charge the card by themselves (docs/spend-controls.md): no recharge.
  perform billing.watch_account(a.id, a.balance - a.held, null) from billing.accounts a
  where a.id = v_hold.account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return v_hold;
end;
$$;
comment on function billing.void_hold(p_hold_id uuid) is 'Internal: releases an active hold under the caller''s account lock (what refunds claimed of it kept for their take-backs, its cap room given back).';
revoke execute on function billing.void_hold(p_hold_id uuid) from public;

create or replace function billing.release_hold(p_user uuid, p_hold_id uuid) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
begin
  if v_hold.status = 'captured' then
    perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id,
      'captured', trim_scale(v_hold.captured_amount)::text));
  end if;
  if v_hold.status <> 'active' then
    return billing.hold_result_of(v_hold, true); -- released or expired: nothing left to release
  end if;
  -- Two statements: the answer is read (a stable function, the caller's snapshot) after the void.
  v_hold := billing.void_hold(p_hold_id);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.release_hold(p_user uuid, p_hold_id uuid) is 'Releases an active hold in full. Releasing a released or expired hold is a no-op.';
revoke execute on function billing.release_hold(p_user uuid, p_hold_id uuid) from public;
grant execute on function billing.release_hold(p_user uuid, p_hold_id uuid) to service_role;

create or replace function billing.release_expired_holds(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_total integer := 0;
begin
  for v_account_id in
    select h.account_id from billing.holds h
    where h.status = 'active' and h.expires_at <= now() and h.purpose <> 'claims'
    order by 1 limit p_limit
  loop
    v_total := v_total + billing.expire_overdue_holds(v_account_id);
  end loop;
  return v_total;
end;
$$;
comment on function billing.release_expired_holds(p_limit integer) is 'pg_cron: releases holds past their TTL (what refunds claimed of them kept reserved), for at most p_limit accounts per run. Idempotent.';
revoke execute on function billing.release_expired_holds(p_limit integer) from public;
grant execute on function billing.release_expired_holds(p_limit integer) to service_role;


