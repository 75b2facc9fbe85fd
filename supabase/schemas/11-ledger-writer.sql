-- The ledger's writer, one operation each: a debit (billing.post_debit: a charge, a capture, a
-- reversal, an expiry), grants, moves and batches (billing.post_transfers), a hold placed
-- (billing.place_hold) and holds ended (billing.end_holds). They alone insert transfers, entries,
-- lots and allocations and change balances, held amounts and versions (scripts/local/sql-shape.ts
-- parses supabase/schemas to prove it). Here: the types they take and answer, what they check a
-- movement against (spending kinds, what fits, which lots may pay, the one picker of what a hold
-- reserves), the debit and post_transfers (the hold steps: 11-ledger-writes-holds.sql). The road to it is in
-- 11-ledger-road.sql, what falls due in 11-ledger-due.sql, lists of models in
-- 11-ledger-lists.sql, spend caps and what a posting sets off in 11-ledger-caps.sql (one layer:
-- the core's; calls point down, nothing here calls a feature).
--
-- Concurrency: a user account row is locked (FOR UPDATE) before its balance is read, so
-- parallel debits serialise per account and can never overdraw. When a function needs an
-- account and one of its holds, it locks the account first, then the hold; no function locks
-- two user accounts, and if one ever must, it locks them in ascending id order. Idempotency
-- keys are checked again after the lock, so N parallel identical calls make one transfer.

-- ============================================================ types

-- One movement for billing.post_transfers, the ledger's one writer. `lots` says how the tracked
-- sides' lots move; null for the usual: a debit draws from its lots in spending order, a credit
-- from a platform account opens a new lot, a credit from a tracked account (a move) arrives as
-- the lots its debit drew, each with its provenance (`applies_to` given: narrowed to it). Otherwise, any of:
--   first       lot ids drawn before the spending order (a reversal takes its purchase's lots first)
--   take        [{lot_id, amount}]: the debit draws exactly these, of exactly the amount (a capture:
--               what its hold reserved, billing.capture_take)
--   for         a model (null: none): a usage charge alone draws in spending order only the free
--               credits of lots that may pay for it (any usage charge alone does; without `for`,
--               only lots for any model); they must cover it
--   return_to   [{lot_id, amount}]: the credit goes back into these lots (a void, a rollover's
--               credits brought back from breakage): negative allocations, no new lot; what of
--               it pays a debt is the allocation's debt_settled, not the lot's
--   owe         a usage charge of what a provider billed past a hold (billing.charge_hold_at; a
--               usage take-back written before, billing.owe): it takes
--               `first`, then the free credits that may pay for its model, and the rest is debt;
--               never refused by a cap (billing.charge_hold_at counted it against them when billed)
--   moved_from  the credit opens a lot with this lot's provenance and its share of the cost (a plan rollover)
--   category, priority, cost_cents, currency, purchase_id, expires_at, applies_to, origin: the new
--               lot's, over the defaults (billing.credit_expiry_policy; an adjustment never expires
--               unless told; applies_to null: pays for any model; origin: what reports break it down
--               by, 'plan' or 'promo_code')
create type billing.transfer_spec as (
  kind billing.transfer_kind,
  from_account_id bigint,
  to_account_id bigint,
  amount numeric,
  idempotency_key text,
  correlation_id text,
  reference text,
  metadata jsonb,
  rate_card_id bigint,
  hold_id uuid,
  member_id uuid,
  lots jsonb
);
comment on type billing.transfer_spec is 'A movement billing.post_transfers is asked to make (see the comment above it for lots).';

create type billing.posted_transfer as (
  transfer_id bigint,                             -- null when refused
  replayed boolean,                               -- a transfer with this key and kind was already written
  from_balance numeric(38, 18),                   -- the tracked sides' balances after it; null for a platform side, a replay or a refusal
  to_balance numeric(38, 18),
  result text,                                    -- applied, exists (a replay), insufficient or capped (nothing written)
  refusal jsonb                                   -- insufficient: {required, available}; capped: the cap's figures (take_cap_room)
);
comment on type billing.posted_transfer is 'What billing.post_transfers answers for each movement, in order.';

-- What the writer wrote, passed from step to step (billing.post_transfers): one record, not
-- parallel arrays. A leg is a tracked side of a movement written: its place in the batch, the
-- account, its change and the balance after it.
create type billing.leg as (
  ord integer,
  account_id bigint,
  delta numeric,
  after numeric
);
comment on type billing.leg is 'A tracked side of a movement billing.post_transfers wrote: place, account, change, balance after.';

create type billing.posting as (
  transfers billing.transfer_spec[],              -- the movements written or replayed, in order (a batch's refused taken out)
  ids bigint[],                                   -- by place, the id each is written under (a replay's goes unused)
  written bigint[],                               -- the ids written now (a replay's not); null: none
  existing bigint[],                              -- by place, a replay's transfer id (null: written now); null: none replayed
  legs billing.leg[],                             -- the tracked sides' changes, in batch order
  restricted boolean,                             -- a tracked side holds credits for some models: its sub-accounts follow
  fresh bigint[]                                  -- accounts whose first entry of the day this posting wrote
);
comment on type billing.posting is 'What billing.post_transfers wrote, handed to its steps.';

-- ============================================================ functions

-- What spends an account's credits (a usage charge, a capture, a move to another account): the
-- writer lets such a debit take only what the account has for it (post_transfers). The rest may
-- take more: a reversal goes into debt; an expiry, a rollover or a void moves credits named by lot.
create or replace function billing.spending_kinds() returns billing.transfer_kind[]
language sql immutable
set search_path = ''
as $$
  select array['usage', 'hold_capture', 'allowance', 'allowance_sweep', 'code_escrow', 'code_redemption',
    'code_return']::billing.transfer_kind[]
$$;
comment on function billing.spending_kinds() is 'Internal: the transfer kinds whose debit must fit what the account has (balance − held; a capture: the balance).';
revoke execute on function billing.spending_kinds() from public;

-- Whether a spending movement or a hold fits (the writer's one answer for both): what the account
-- has for it (p_room; null: a platform account, never refused), then, when p_caps, what its spend
-- caps leave, counting it against them. Null when it fits; else the refusal the writer returns.
create or replace function billing.spend_refusal(p_account_id bigint, p_amount numeric, p_room numeric, p_caps boolean,
  p_model text, p_member uuid, p_also text[] default null) returns billing.posted_transfer
language plpgsql
set search_path = ''
as $$
declare
  v_cap jsonb;
begin
  if p_room < p_amount then
    return (null, false, null, null, 'insufficient', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(p_room, 0))::text))::billing.posted_transfer;
  elsif p_caps then
    v_cap := billing.take_cap_room(p_account_id, p_amount, p_model, p_member, p_also => p_also);
    if v_cap is not null then
      return (null, false, null, null, 'capped', v_cap)::billing.posted_transfer;
    end if;
  end if;
  return null;
end;
$$;
comment on function billing.spend_refusal(p_account_id bigint, p_amount numeric, p_room numeric, p_caps boolean, p_model text, p_member uuid, p_also text[]) is 'Internal: null when a spending movement or a hold fits what its account has and (p_caps) what its caps leave, counted against them; else the writer''s refusal (insufficient, capped).';
revoke execute on function billing.spend_refusal(p_account_id bigint, p_amount numeric, p_room numeric, p_caps boolean, p_model text, p_member uuid, p_also text[]) from public;

-- Credits for some models (31-lot-applicability.sql): whether a lot may pay for a model, here
-- because the writer draws by it; the one statement of that test. A function with its own
-- search_path is never inlined, so callers test `applies_to is null` first: a lot for any model
-- (nearly every lot) costs no call.
create or replace function billing.lot_pays_for(p_applies_to text[], p_model text, p_also text[] default null)
returns boolean
language sql immutable
set search_path = ''
as $$
  select p_applies_to is null or (p_model is not null and not exists (
    select 1 from unnest(p_model || coalesce(p_also, '{}')) m
    where not exists (select 1 from unnest(p_applies_to) p
                      where p = m or (right(p, 1) = '*' and starts_with(m, left(p, -1))))))
$$;
comment on function billing.lot_pays_for(p_applies_to text[], p_model text, p_also text[]) is 'Whether a lot with this applies_to may pay for a charge of this model (null model: only a lot for anything), and of each of p_also (a call''s fallback models).';
revoke execute on function billing.lot_pays_for(p_applies_to text[], p_model text, p_also text[]) from public;

-- Reservations (issue #77, rules § spending 3–4): a lot's free credits are remaining − reserved,
-- or none while it is frozen; a hold for a model reserves free credits of the lots that may pay
-- for it, in spending order (priority, soonest expiry, oldest grant, id), until its amount. This
-- is the one picker: the parts to reserve, each lot's up to what it has free; fewer than the
-- amount when the free credits do not reach it (the caller refuses the hold then). A null model
-- picks lots for any model only (billing.lot_pays_for); `p_also`, a call's fallback models: only
-- lots that may pay for each of them too. Read under the account lock.
create or replace function billing.pick_lots(p_account_id bigint, p_model text, p_amount numeric, p_also text[] default null)
returns table (lot_id bigint, amount numeric)
language plpgsql stable
set search_path = ''
as $$
begin
  return query
  with free as (
    select l.id, l.free,
      sum(l.free) over (order by l.spending_order) as hi
    from billing.lots l
    where l.account_id = p_account_id and l.open and l.free > 0
      and (l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model, p_also))
  )
  select f.id, least(f.free, p_amount - (f.hi - f.free))
  from free f
  where f.hi - f.free < p_amount
  order by f.hi;
end;
$$;
comment on function billing.pick_lots(p_account_id bigint, p_model text, p_amount numeric, p_also text[]) is 'Internal: the free credits of lots that may pay for p_model (and each of p_also) a hold of p_amount reserves, in spending order; Σ < p_amount when they do not reach it.';
revoke execute on function billing.pick_lots(p_account_id bigint, p_model text, p_amount numeric, p_also text[]) from public;

-- What an account may spend from its lots (their free credits, billing.lots.free): for a model
-- (p_model; null: lots for any model only), or for a move (p_any: any lot, its list travels
-- with it). Read only for an account that reads its lots (billing.accounts.reads_lots);
-- elsewhere its free credits are balance − held.
create or replace function billing.free_credits(p_account_id bigint, p_model text, p_any boolean,
  p_also text[] default null)
returns numeric
language sql stable
set search_path = ''
as $$
  select coalesce(sum(l.free), 0) from billing.lots l
  where l.account_id = p_account_id and l.open and l.free > 0
    and (p_any or l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model, p_also))
$$;
comment on function billing.free_credits(p_account_id bigint, p_model text, p_any boolean, p_also text[]) is 'Internal: an account''s free credits that may pay for p_model (null: lots for any model; and each of p_also), or any of them (p_any, a move).';
revoke execute on function billing.free_credits(p_account_id bigint, p_model text, p_any boolean, p_also text[]) from public;

-- Whether a spending movement alone fits (billing.post_transfers): what its account has for it
-- (null: a platform account, never refused), then what its caps leave, counted against them.
-- A capture (p_posts: its hold) spends what its hold reserved, never refused here.
create type billing.spending_check as (
  refusal billing.posted_transfer,                -- its result null when the movement fits
  capped boolean                                  -- its amount was counted against the caps
);
comment on type billing.spending_check is 'What billing.spending_refusal answers.';

create or replace function billing.spending_refusal(v_one billing.transfer_spec, p_posts uuid)
returns billing.spending_check
language plpgsql
set search_path = ''
as $$
declare
  v_refusal billing.posted_transfer;
  v_capped boolean;
  v_room numeric;
  v_slow boolean;
begin
  select case when p_posts is null then a.balance - a.held else v_one.amount end,
    a.caps > 0 and v_one.kind = 'usage' and p_posts is null, a.reads_lots
  into v_room, v_capped, v_slow
  from billing.accounts a where a.id = v_one.from_account_id and a.code is null;
  -- Only free credits are spent: an account with credits for some models or frozen lots
  -- counts them (a charge: those that may pay for its model; a move: any); elsewhere they
  -- are balance − held. A capture spends what its hold reserved (below).
  if v_one.lots ? 'owe' then
    -- What a provider billed past a hold (billing.owe): owed whatever the account has; its caps
    -- counted all of it when it was billed (billing.charge_hold_at).
    return (null, false)::billing.spending_check;
  end if;
  if v_slow and p_posts is null then
    v_room := least(v_room, billing.free_credits(v_one.from_account_id,
      case when v_one.kind = 'usage' then v_one.lots ->> 'for' end, v_one.kind <> 'usage'));
  end if;
  v_refusal := billing.spend_refusal(v_one.from_account_id, v_one.amount, v_room, v_capped, v_one.metadata ->> 'model',
    v_one.member_id);
  -- Counted against the caps: a replay gives it back.
  return (v_refusal, v_capped and v_refusal.result is null)::billing.spending_check;
end;
$$;
comment on function billing.spending_refusal(v_one billing.transfer_spec, p_posts uuid) is 'Internal (the writer''s): a spending movement alone''s refusal (insufficient, capped) or null, and whether caps counted it.';
revoke execute on function billing.spending_refusal(v_one billing.transfer_spec, p_posts uuid) from public;

-- A movement alone written (billing.post_transfers): each tracked side's balance and version (a
-- platform account is never updated: the filter finds no row; a capture's hold leaves held in the
-- same write, and with nothing left held no hold can fall due: next_hold_expiry is exact, so the
-- next AI call's begin is not sent to settle), one entry per side, and the report's tail.
create or replace function billing.write_one(v_one billing.transfer_spec, v_id bigint, v_held_account bigint, v_held_delta numeric)
returns billing.posting
language plpgsql
set search_path = ''
as $$
declare
  v_p billing.posting := (array[v_one], array[v_id], array[v_id], null, '{}'::billing.leg[], false, '{}'::bigint[])::billing.posting;
  v_balance numeric;
  v_version bigint;
  v_versions bigint[] := '{}'::bigint[];
  v_flag boolean;
  v_today bigint;
  v_day timestamptz := date_trunc('day', now(), 'UTC');
begin
  update billing.accounts a set balance = a.balance - v_one.amount, version = a.version + 1,
    held = a.held + case when a.id = v_held_account then v_held_delta else 0 end,
    next_hold_expiry = case when a.id = v_held_account and a.held + v_held_delta = 0 then null else a.next_hold_expiry end,
    active_from = case when a.active_from >= v_day then a.active_from else now() end
  where a.id = v_one.from_account_id and a.code is null
  returning a.balance, a.version, a.restricted_lots, case when a.active_from = now() then a.id end
  into v_balance, v_version, v_flag, v_today;
  if found then
    v_p.restricted := v_flag;
    v_p.fresh := array_remove(array[v_today], null);
    v_p.legs := array[(1, v_one.from_account_id, -v_one.amount, v_balance)::billing.leg];
    v_versions := array[v_version];
  end if;
  update billing.accounts a set balance = a.balance + v_one.amount, version = a.version + 1,
    held = a.held + case when a.id = v_held_account then v_held_delta else 0 end,
    next_hold_expiry = case when a.id = v_held_account and a.held + v_held_delta = 0 then null else a.next_hold_expiry end,
    active_from = case when a.active_from >= v_day then a.active_from else now() end
  where a.id = v_one.to_account_id and a.code is null
  returning a.balance, a.version, a.restricted_lots, case when a.active_from = now() then a.id end
  into v_balance, v_version, v_flag, v_today;
  if found then
    v_p.restricted := v_p.restricted or v_flag;
    v_p.fresh := array_remove(v_p.fresh || v_today, null);
    v_p.legs := v_p.legs || (1, v_one.to_account_id, v_one.amount, v_balance)::billing.leg;
    v_versions := v_versions || v_version;
  end if;
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
  select v_id, e.account_id, e.delta, e.after, v.version
  from unnest(v_p.legs) with ordinality e(ord, account_id, delta, after, n)
  join unnest(v_versions) with ordinality v(version, n) on v.n = e.n
  order by e.n;
  insert into billing.ledger_tail as x (at, backend, kind, rate_card_id, amount, events, credit_change)
  values (date_trunc('second', now()), pg_backend_pid(), v_one.kind, v_one.rate_card_id, v_one.amount, 1,
    coalesce((select sum(l.delta) from unnest(v_p.legs) l), 0))
  on conflict (at, backend, kind, rate_card_id) do update
  set amount = x.amount + excluded.amount, events = x.events + 1, credit_change = x.credit_change + excluded.credit_change;
  return v_p;
end;
$$;
comment on function billing.write_one(v_one billing.transfer_spec, v_id bigint, v_held_account bigint, v_held_delta numeric) is 'Internal (the writer''s): a movement alone''s balances, versions, entries and tail; what it wrote.';
revoke execute on function billing.write_one(v_one billing.transfer_spec, v_id bigint, v_held_account bigint, v_held_delta numeric) from public;

-- The writer's answers (billing.post_transfers): one per movement, in order: written, a replay,
-- or refused, with the tracked sides' balances after it.
create or replace function billing.posted_answers(p_posting billing.posting, p_refused integer[], p_refusals billing.posted_transfer[])
returns billing.posted_transfer[]
language plpgsql
stable
set search_path = ''
as $$
declare
  v_out billing.posted_transfer[];
  v_a billing.leg;                                -- a movement alone's legs
  v_b billing.leg;
  v_existing bigint[] := p_posting.existing;      -- a local array is read by place in constant time
begin
  if cardinality(p_posting.transfers) = 1 and p_refused is null then
    v_a := p_posting.legs[1];
    v_b := p_posting.legs[2];
    return array[(coalesce(v_existing[1], p_posting.ids[1]), v_existing[1] is not null,
      case when v_a.delta < 0 then v_a.after when v_b.delta < 0 then v_b.after end,
      case when v_a.delta > 0 then v_a.after when v_b.delta > 0 then v_b.after end,
      case when v_existing[1] is null then 'applied' else 'exists' end, null)::billing.posted_transfer];
  end if;
  -- Joined, not looked up per movement: a batch of a thousand would scan its legs a million times.
  v_out := array(
    select row(coalesce(v_existing[o.n], p_posting.ids[o.n]), v_existing[o.n] is not null, f.after, t.after,
      case when v_existing[o.n] is null then 'applied' else 'exists' end, null)::billing.posted_transfer
    from generate_subscripts(p_posting.transfers, 1) o(n)
    left join unnest(p_posting.legs) f on f.ord = o.n and f.delta < 0
    left join unnest(p_posting.legs) t on t.ord = o.n and t.delta > 0
    order by o.n);
  if p_refused is null then
    return v_out;
  end if;
  -- Refusals back in their places among the written (those not refused, in order).
  return array(
    select x.p from (select k.n, v_out[k.i] as p
                     from (select o.n, row_number() over (order by o.n) as i
                           from generate_series(1, cardinality(v_out) + cardinality(p_refused)) o(n)
                           where o.n <> all(p_refused)) k
                     union all select r.n, p_refusals[r.i] from unnest(p_refused) with ordinality r(n, i)) x
    order by x.n);
end;
$$;
comment on function billing.posted_answers(p_posting billing.posting, p_refused integer[], p_refusals billing.posted_transfer[]) is 'Internal (the writer''s): one answer per movement, refusals (by place) back in their places.';
revoke execute on function billing.posted_answers(p_posting billing.posting, p_refused integer[], p_refusals billing.posted_transfer[]) from public;

-- What every posting checks and records once its balances are written (billing.post_transfers):
-- the day's first entries for the report, and no balance below zero but where a debt may be.
create or replace function billing.after_balances(p_posting billing.posting)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_leg billing.leg;
  v_below boolean := false;
begin
  -- Accounts whose first entry of their UTC day this transaction wrote: the report's active
  -- accounts not rolled up yet (billing.active_tail), once each.
  if cardinality(p_posting.fresh) > 0 then
    insert into billing.active_tail (at, account_id)
    select date_trunc('second', now()), x.id from unnest(p_posting.fresh) x(id)
    on conflict do nothing;
  end if;
  -- A debt beside credits a reversal does not take (credits for some models, what live holds
  -- reserved) is in the balance already: what leaves those lots by name (their expiry, a plan's
  -- rollover out, a capture of what its hold reserved) may then take it below zero too. A
  -- movement alone is read directly; a batch (no tracked side: no legs) joined by place.
  if cardinality(p_posting.transfers) = 1 then
    foreach v_leg in array coalesce(p_posting.legs, '{}'::billing.leg[]) loop
      if v_leg.after < 0 and v_leg.delta < 0 then
        if (p_posting.transfers[1]).kind not in ('refund_reversal', 'dispute_reversal', 'hold_capture', 'expiry',
              'plan_rollover') and not coalesce((p_posting.transfers[1]).lots ? 'owe', false) then
          v_below := true;
        end if;
      end if;
    end loop;
  else
    v_below := exists (select 1 from unnest(p_posting.legs) l
                       join unnest(p_posting.transfers) with ordinality t(kind, from_account_id, to_account_id, amount,
                         idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
                         on t.ord = l.ord
                       where l.after < 0 and l.delta < 0
                         and t.kind not in ('refund_reversal', 'dispute_reversal', 'hold_capture', 'expiry', 'plan_rollover')
                         and not coalesce(t.lots ? 'owe', false));
  end if;
  if v_below then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "only a reversal or what a provider billed past a hold may leave a balance below zero"}');
  end if;
end;
$$;
comment on function billing.after_balances(p_posting billing.posting) is 'Internal (the writer''s): the active accounts'' tail, and LEDGER_INVARIANT for a balance below zero no debt explains.';
revoke execute on function billing.after_balances(p_posting billing.posting) from public;

-- A movement alone's transfer row (the writer's, billing.post_transfers and billing.post_charge),
-- given its spending check (null: not spending): inserted, answered `applied` with its id; or,
-- its (idempotency_key, kind) written before, a replay, whatever the account has now: the same
-- movement is answered `exists` (the cap room it took goes back: a replay spends nothing), another
-- under that key is IDEMPOTENCY_KEY_REUSED; else the check's refusal, nothing written.
create or replace function billing.insert_transfer(p_transfer billing.transfer_spec, p_check billing.spending_check)
returns billing.posted_transfer
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
  v_written billing.transfers;
begin
  if (p_check.refusal).result is null then
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id, member_id)
    values (p_transfer.kind, p_transfer.from_account_id, p_transfer.to_account_id, p_transfer.amount,
            p_transfer.idempotency_key, p_transfer.correlation_id, p_transfer.reference, p_transfer.metadata,
            p_transfer.rate_card_id, p_transfer.hold_id, p_transfer.member_id)
    on conflict (idempotency_key, kind) do nothing
    returning id into v_id;
    if v_id is not null then
      return (v_id, false, null, null, 'applied', null)::billing.posted_transfer;
    end if;
  end if;
  select * into v_written from billing.transfers x
  where x.idempotency_key = p_transfer.idempotency_key and x.kind = p_transfer.kind;
  if not found then
    return p_check.refusal;
  end if;
  if v_written.amount <> p_transfer.amount or v_written.from_account_id <> p_transfer.from_account_id
     or v_written.to_account_id <> p_transfer.to_account_id then
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_transfer.kind));
  end if;
  perform billing.return_cap_room(p_transfer.from_account_id, p_transfer.amount, p_transfer.metadata ->> 'model',
    now(), p_transfer.member_id)
  where p_check.capped;
  return (v_written.id, true, null, null, 'exists', null)::billing.posted_transfer;
end;
$$;
comment on function billing.insert_transfer(p_transfer billing.transfer_spec, p_check billing.spending_check) is 'Internal (the writer''s): a movement alone''s transfer row inserted (applied, its id), its replay''s answer (IDEMPOTENCY_KEY_REUSED for another movement under the key), or its spending check''s refusal.';
revoke execute on function billing.insert_transfer(p_transfer billing.transfer_spec, p_check billing.spending_check) from public;

-- The writer's debit (TigerBeetle's one transfer): a movement alone from a tracked account to a
-- platform account. A usage charge (a usage request's fast path, billing.run_usage_request), a
-- hold's capture (p_hold: the hold it posts, TigerBeetle's post_pending_transfer), a reversal, an
-- expiry, what is owed (billing.take_credits). The same checks and steps billing.post_transfers
-- makes for a movement, and only them: nothing here grants, moves, places holds or batches, so a
-- reader of a charge or a capture holds none of that. The caller locks the account and finds
-- nothing due on it (billing.falls_due; billing.settled otherwise). Answered as post_transfers
-- answers one movement.
create or replace function billing.post_debit(p_transfer billing.transfer_spec, p_hold uuid default null)
returns billing.posted_transfer
language plpgsql
set search_path = ''
as $$
declare
  v_written billing.posted_transfer;
  v_p billing.posting;
  v_held_account bigint;
  v_held_delta numeric;
begin
  if (p_transfer.amount > 0 and scale(p_transfer.amount) <= 18 and p_transfer.amount < 1e20
      and p_transfer.from_account_id <> p_transfer.to_account_id
      and p_transfer.hold_id is not distinct from p_hold
      and (p_hold is null or (p_transfer.kind = 'hold_capture' and p_transfer.lots is null))) is not true then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit of a positive amount below 1e20 with at most 18 places; a capture names its hold"}');
  end if;
  -- Spending: what the account has for it, and its caps (billing.spending_refusal); a refusal or
  -- a replay is answered without writing (billing.insert_transfer).
  v_written := billing.insert_transfer(p_transfer, case when p_transfer.kind = any(billing.spending_kinds())
    then billing.spending_refusal(p_transfer, p_hold) end);
  if v_written.result <> 'applied' then
    if v_written.replayed and p_hold is not null then
      -- A capture is written with its hold's end, under the lock its caller found the hold active in.
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "an active hold has no capture written"}');
    end if;
    return v_written;
  end if;
  if p_hold is not null then
    -- A capture draws what its hold reserved, in the spending order of those lots, and returns
    -- the rest (the hold's reservation ends with it, its release in the capture's account write).
    p_transfer.lots := jsonb_build_object('take', billing.capture_take(p_hold, p_transfer.amount));
    update billing.holds h set status = 'captured', captured_amount = p_transfer.amount,
      capture_transfer_id = v_written.transfer_id, finished_at = now()
    where h.id = p_hold and h.status = 'active' and h.amount >= p_transfer.amount
    returning h.account_id, -h.amount into v_held_account, v_held_delta;
    if not found then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is posted only while active, for at most its amount"}');
    end if;
  elsif p_transfer.kind = 'expiry' then
    perform billing.shed_reservations(array[p_transfer]);
  end if;
  v_p := billing.write_one(p_transfer, v_written.transfer_id, v_held_account, v_held_delta);
  if cardinality(v_p.legs) <> 1 or (v_p.legs[1]).delta > 0 then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit takes from a tracked account to a platform account"}');
  end if;
  perform billing.after_balances(v_p);
  perform billing.draw_lots(v_p);
  perform billing.lot_tails(v_p);
  return (billing.posted_answers(v_p, null, null))[1];
end;
$$;
comment on function billing.post_debit(p_transfer billing.transfer_spec, p_hold uuid) is 'Internal: the writer''s debit: a movement alone from a tracked account to a platform account (a charge, a hold''s capture, a reversal, an expiry, what is owed), under the caller''s account lock; answered as billing.post_transfers answers one movement.';
revoke execute on function billing.post_debit(p_transfer billing.transfer_spec, p_hold uuid) from public;

-- The ledger's writer of grants, moves and batches (TigerBeetle's create_transfers): a batch of
-- movements in, one result per movement out, in order. It is one of the writer's operations,
-- beside the debit (billing.post_debit: a charge, a capture, a reversal, an expiry), the hold
-- (billing.place_hold) and the void (billing.end_holds); only they and the steps they share
-- insert transfers, entries, lots and lot allocations and change balances, held amounts and
-- versions (scripts/local/sql-shape.ts parses supabase/schemas to prove it). Features decide what moves:
-- callers lock the tracked accounts first (ascending id order when there are several) and settle
-- them (billing.settled). The writer answers what the account has: a debit of a spending
-- kind (billing.spending_kinds) takes only free credits (remaining − reserved, none of a frozen
-- lot): at most balance − held, and on an account with credits for some models or frozen lots
-- at most the free credits that may pay for it (billing.free_credits). A usage charge not under a hold takes at most what its spend caps leave
-- (counted against them here); a movement that does not fit writes nothing and is answered
-- `insufficient` {required, available} or `capped` (the cap's figures), and the rest of a batch
-- goes on. Callers make the refusals only they can know (standing, which wallet) before calling
-- it. It checks what must hold
-- for every movement and raises LEDGER_INVARIANT, a server error, when a caller got it wrong:
-- amounts positive, below 1e20, at most 18 places, between two accounts; no tracked balance
-- below zero except through a refund or dispute reversal (debt), or what leaves lots a debt
-- stood beside (an expiry, a rollover, a capture of what its hold reserved); a return to lots of
-- exactly the amount; a lot's remaining never below zero nor below what holds reserved of it.
--
-- Each tracked side gets an entry with its balance and version after the movement, in batch
-- order. Debits draw from lots (spending order, `first` before it; a reversal only `first` and
-- lots for any model) before credits open or refill lots; a credit for any model that pays a debt
-- the account is in records that part as settled, not remaining (credits for some models never
-- pay a debt: it is owed in money paid for anything). Debt = Σ remaining − balance (≥ 0).
-- A movement whose (idempotency_key, kind) is already written is a replay: nothing is written
-- for it; another movement under the same key and kind is refused (IDEMPOTENCY_KEY_REUSED).
create or replace function billing.post_transfers(p_transfers billing.transfer_spec[])
returns billing.posted_transfer[]
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_one billing.transfer_spec;                    -- a movement alone
  v_id bigint;
  v_written billing.posted_transfer;              -- a movement alone's row: written now, or a replay's answer
  v_p billing.posting;                            -- what was written: transfers, replays, and the tracked sides' legs
  v_checked billing.spending_check;
  v_refused integer[];                            -- a batch's refused movements, by place (null: none), and their answers
  v_refusals billing.posted_transfer[];
  v_carry jsonb := '[]'::jsonb;                   -- what holds keep of rolled-over lots (billing.carry_reservations)
begin
  -- A capture is the debit's (billing.post_debit): a batch never posts a hold.
  if exists (select 1 from unnest(p_transfers) t where t.hold_id is not null) then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is posted by billing.post_debit"}');
  end if;
  if cardinality(p_transfers) = 0 then
    return '{}'::billing.posted_transfer[];
  end if;

  -- A movement alone (nearly every call): its statements written for one row.
  if cardinality(p_transfers) = 1 then
    v_one := p_transfers[1];
    if (v_one.amount > 0 and scale(v_one.amount) <= 18 and v_one.amount < 1e20 and v_one.from_account_id <> v_one.to_account_id) is not true then
      perform billing.raise_error('LEDGER_INVARIANT',
        '{"rule": "a positive amount below 1e20 with at most 18 places, between two accounts"}');
    end if;
    -- Spending: what the account has for it, and its caps (billing.spending_refusal); a refusal
    -- or a replay is answered without writing (billing.insert_transfer).
    if v_one.kind = any(billing.spending_kinds()) then
      v_checked := billing.spending_refusal(v_one, null);
    end if;
    v_written := billing.insert_transfer(v_one, v_checked);
    if v_written.result <> 'applied' then
      return array[v_written];
    end if;
    v_id := v_written.transfer_id;
    if v_one.kind = 'expiry' then
      perform billing.shed_reservations(p_transfers);
    end if;
    -- Each tracked side: balance, version, an entry, the report's tail (billing.write_one).
    v_p := billing.write_one(v_one, v_id, null, null);
  else
    if exists (select 1 from unnest(p_transfers) t
               where t.amount is null or t.amount <= 0 or scale(t.amount) > 18 or t.amount >= 1e20
                 or t.from_account_id is not distinct from t.to_account_id) then
      perform billing.raise_error('LEDGER_INVARIANT',
        '{"rule": "a positive amount below 1e20 with at most 18 places, between two accounts"}');
    end if;
    -- Spending, account by account in batch order: each debit fits what its account has left after
    -- the ones before it, then its caps; one that does not is refused and the rest go on
    -- (billing.batch_refusals). The written are the batch from here on.
    select * into v_refused, v_refusals from billing.batch_refusals(p_transfers);
    if v_refused is not null then
      p_transfers := array(select p_transfers[o] from generate_subscripts(p_transfers, 1) o where o <> all(v_refused) order by o);
      if cardinality(p_transfers) = 0 then
        return array(select v_refusals[r.i] from unnest(v_refused) with ordinality r(n, i) order by r.n);
      end if;
    end if;
    v_p := billing.write_batch(p_transfers);
    -- An expiry or a rollover out sheds (or lifts, to carry) what holds reserved of the lot it
    -- names before the lot is drawn.
    if exists (select 1 from unnest(p_transfers) t where t.kind in ('expiry', 'plan_rollover')) then
      v_carry := billing.shed_reservations(array(select p_transfers[o] from generate_subscripts(p_transfers, 1) o
                                                 where v_p.ids[o] = any(v_p.written)));
    end if;
  end if;

  if v_p.written is not null then
    perform billing.after_balances(v_p);
    perform billing.draw_lots(v_p);
    -- A tracked side credited (alone: its last leg, the to side's) opens or refills lots.
    if cardinality(v_p.transfers) = 1 then
      if (v_p.legs[cardinality(v_p.legs)]).delta > 0 then
        v_p.restricted := billing.credit_lots(v_p) or v_p.restricted;
      end if;
    elsif exists (select 1 from unnest(v_p.legs) l where l.delta > 0) then
      v_p.restricted := billing.credit_lots(v_p) or v_p.restricted;
    end if;
    perform billing.carry_reservations(v_p, v_carry) where v_carry <> '[]';
    perform billing.lot_tails(v_p);
  end if;

  return billing.posted_answers(v_p, v_refused, v_refusals);
end;
$$;
comment on function billing.post_transfers(p_transfers billing.transfer_spec[]) is 'Internal: the ledger''s writer of grants, moves and batches: writes movements (transfers, entries, balances, versions, lots, allocations) under the caller''s account locks; one result per movement, replays answered.';
revoke execute on function billing.post_transfers(p_transfers billing.transfer_spec[]) from public;
