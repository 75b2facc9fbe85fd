-- The ledger's writer: billing.post_transfers alone inserts transfers, entries, lots and
-- allocations and changes balances, held amounts and versions
-- (scripts/local/sql-shape.ts parses supabase/schemas to prove it). Every feature
-- decides what moves and calls it; the functions here are the common road to it: one user's
-- movement against a platform account (post_user_transfer, and its faces grant_credits and
-- reverse_credits), a move between two tracked accounts (move_credits), and the
-- account that pays a member's charge (lock_spending_source).
--
-- Concurrency: a user account row is locked (FOR UPDATE) before its balance is read, so
-- parallel debits serialise per account and can never overdraw. When a function needs an
-- account and one of its holds, it locks the account first, then the hold; no function locks
-- two user accounts, and if one ever must, it locks them in ascending id order. Idempotency
-- keys are checked again after the lock, so N parallel identical calls make one transfer.
--
-- Over 600 lines on purpose: post_transfers is one function (about 290 lines), and the road to it
-- is read beside it. So is what every posting checks and sets off under the account lock, in
-- sections of their own below: lots and holds falling due, which restricted lots may pay, the
-- spend caps' room, the low-balance alert and auto-recharge. They are the core's (calls point
-- down: nothing here calls a feature); the features that own them (30-lots, 31-lot-applicability,
-- 40-caps-alerts, 55-auto-recharge) keep their tables and the rest.

-- ============================================================ types

-- One movement for billing.post_transfers, the ledger's one writer. `lots` says how the tracked
-- sides' lots move; null for the usual: a debit draws from its lots in spending order, a credit
-- from a platform account opens a new lot, a credit from a tracked account (a move) arrives as
-- the lots its debit drew, each with its provenance (`applies_to` given: narrowed to it). Otherwise, any of:
--   first       lot ids drawn before the spending order (a reversal takes its purchase's lots first)
--   take        [{lot_id, amount}]: the debit draws exactly these, of exactly the amount (an account
--               with restricted lots, billing.plan_lot_draw)
--   for         a model: the debit (a movement alone) draws in spending order only from lots that
--               may pay for it (an account with restricted lots and no live hold to keep payable);
--               they must cover it
--   return_to   [{lot_id, amount}]: the credit goes back into these lots (a void, a rollover's
--               credits brought back from breakage): negative allocations, no new lot; what of
--               it pays a debt is the allocation's debt_settled, not the lot's
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

-- A pending transfer's step for billing.post_transfers (TigerBeetle's pending, post and void). A
-- hold is a pending transfer: it reserves credits of an account (the account's `held`) and moves
-- nothing until it is posted. Whatever ends a hold, its whole amount stops counting.
--   place   a new hold: hold_id (the caller's choice, so it knows the row), account_id, amount and
--           the hold's fields; held grows by the amount
--   resize  an active hold grows (amount > 0) or gives way (amount < 0, `note` joining its
--           metadata); given way whole, it ends released, its amount kept as the record of it
--   post    an active hold is captured for `amount` by the batch's one movement naming it
--           (its hold_id), in that movement's own account write; or, `transfer_id` given, by a
--           movement written before (a replay that finds the capture written)
--   void    an active hold ends unspent: `status` released or expired
create type billing.hold_step as (
  op text,
  hold_id uuid,
  amount numeric,
  status text,
  transfer_id bigint,
  note jsonb,
  account_id bigint,
  idempotency_key text,
  correlation_id text,
  metadata jsonb,
  expires_at timestamptz,
  purpose text,
  member_id uuid
);
comment on type billing.hold_step is 'A pending transfer (hold) placed, resized, posted or voided by billing.post_transfers (see the comment above it).';

create type billing.posted_transfer as (
  transfer_id bigint,                             -- null when refused
  replayed boolean,                               -- a transfer with this key and kind was already written
  from_balance numeric(38, 18),                   -- the tracked sides' balances after it; null for a platform side, a replay or a refusal
  to_balance numeric(38, 18),
  result text,                                    -- applied, exists (a replay), insufficient or capped (nothing written)
  refusal jsonb                                   -- insufficient: {required, available}; capped: the cap's figures (take_cap_room)
);
comment on type billing.posted_transfer is 'What billing.post_transfers answers for each movement, in order.';

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
  p_model text, p_member uuid) returns billing.posted_transfer
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
    v_cap := billing.take_cap_room(p_account_id, p_amount, p_model, p_member);
    if v_cap is not null then
      return (null, false, null, null, 'capped', v_cap)::billing.posted_transfer;
    end if;
  end if;
  return null;
end;
$$;
comment on function billing.spend_refusal(p_account_id bigint, p_amount numeric, p_room numeric, p_caps boolean, p_model text, p_member uuid) is 'Internal: null when a spending movement or a hold fits what its account has and (p_caps) what its caps leave, counted against them; else the writer''s refusal (insufficient, capped).';
revoke execute on function billing.spend_refusal(p_account_id bigint, p_amount numeric, p_room numeric, p_caps boolean, p_model text, p_member uuid) from public;

-- Credits for some models (31-lot-applicability.sql): whether a lot may pay for a model, here
-- because the writer draws by it. The writer's draws for a model and lock_spending_source's
-- cover test write this test out in their queries instead of calling it: a function with its
-- own search_path is never inlined, and called once per lot it took half a restricted charge's
-- extra cost (568 against 403 µs a charge; 435 written out). Keep the copies the same.
create or replace function billing.lot_pays_for(p_applies_to text[], p_model text) returns boolean
language sql immutable
set search_path = ''
as $$
  select p_applies_to is null or (p_model is not null and exists (
    select 1 from unnest(p_applies_to) p
    where p = p_model or (right(p, 1) = '*' and starts_with(p_model, left(p, -1)))))
$$;
comment on function billing.lot_pays_for(p_applies_to text[], p_model text) is 'Whether a lot with this applies_to may pay for a charge of this model (null model: only a lot for anything).';
revoke execute on function billing.lot_pays_for(p_applies_to text[], p_model text) from public;

-- The ledger's one writer (TigerBeetle's create_transfers): a batch of movements in, one result
-- per movement out, in order, and the changes of what holds reserve. Only this function inserts
-- transfers, entries, lots and lot allocations and changes balances, held amounts and versions
-- (scripts/local/sql-shape.ts parses supabase/schemas to prove it). Features decide what moves:
-- callers lock the tracked accounts first (ascending id order when there are several) and settle
-- them (billing.settle_account). The writer answers what the account has: a debit of a spending
-- kind (billing.spending_kinds) takes at most the account's balance − held (a capture, posting
-- its hold: the balance), and a usage charge not under a hold at most what its spend caps leave
-- (counted against them here); a movement that does not fit writes nothing and is answered
-- `insufficient` {required, available} or `capped` (the cap's figures), and the rest of a batch
-- goes on. Callers make the refusals only they can know (standing, which wallet, credits for
-- some models, a dispute's freeze) before calling it. It checks what must hold
-- for every movement and raises LEDGER_INVARIANT, a server error, when a caller got it wrong:
-- amounts positive, below 1e20, at most 18 places, between two accounts; no tracked balance
-- below zero except through a refund or dispute reversal (debt), or an expiry or rollover of
-- credits for some models kept beside a debt; a return to lots of exactly the amount; a lot's
-- remaining never below zero (lots_remaining_within).
--
-- Each tracked side gets an entry with its balance and version after the movement, in batch
-- order. Debits draw from lots (spending order, `first` before it; a reversal only `first` and
-- lots for any model) before credits open or refill lots; a credit for any model that pays a debt
-- the account is in records that part as settled, not remaining (credits for some models never
-- pay a debt: it is owed in money paid for anything). Debt = Σ remaining − balance (≥ 0).
-- A movement whose (idempotency_key, kind) is already written is a replay: nothing is written
-- for it; another movement under the same key and kind is refused (IDEMPOTENCY_KEY_REUSED).
create or replace function billing.post_transfers(p_transfers billing.transfer_spec[],
  p_holds billing.hold_step[] default '{}'::billing.hold_step[])
returns billing.posted_transfer[]
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_one billing.transfer_spec;
  v_id bigint;
  v_written billing.transfers;
  v_balance numeric;
  v_version bigint;
  v_versions bigint[];
  v_ids bigint[];
  v_new bigint[];
  v_existing bigint[];
  v_reused text;
  v_ord integer[];
  v_account bigint[];
  v_delta numeric[];
  v_after numeric[];
  v_first bigint[];
  v_reversal boolean;
  v_drawn integer;
  c record;
  v_lot jsonb;
  v_settled numeric;
  v_category text;
  v_policy billing.credit_expiry_policy;
  v_list text[];                                  -- a credit's list of models, when its lot options give one
  v_post billing.hold_step;                       -- a hold the one movement posts: its held change goes with its balance
  v_held_account bigint;
  v_held_delta numeric;
  v_hold_accounts bigint[];
  v_hold_deltas numeric[];
  v_for text;                                     -- the model a movement alone draws for (lots 'for')
  v_day timestamptz := date_trunc('day', now(), 'UTC');  -- accounts.active_from: today's first write
  v_room numeric;                                 -- what a spending movement's account has for it
  v_spender bigint;
  v_refusal billing.posted_transfer;              -- billing.spend_refusal's answer
  v_capped boolean := false;                      -- this movement's amount was counted against caps
  v_refused integer[];                            -- a batch's refused movements, by place, and their answers
  v_refusals billing.posted_transfer[];
  v_kept integer[];                               -- a batch's movements written, by place (null: all)
  v_restricted boolean := false;                  -- a tracked side holds credits for some models: its sub-accounts follow
  v_kinds billing.transfer_kind[];                -- the draw's: each movement's kind, by place
  v_takes boolean[];                              -- and whether it names the lots it takes
  v_flag boolean;
  v_out billing.posted_transfer[];
begin
  -- Pending transfers (holds). A hold posted by the batch's one movement is ended with it below,
  -- its release in that movement's account write: one account write, not two. Every other step
  -- here: the hold rows, then each account's held, one row written for one step.
  if cardinality(p_holds) = 1 and (p_holds[1]).op = 'post' and (p_holds[1]).transfer_id is null then
    v_post := p_holds[1];
    if cardinality(p_transfers) <> 1 or (p_transfers[1]).hold_id is distinct from v_post.hold_id
       or (p_transfers[1]).amount is distinct from v_post.amount then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is posted by the one movement naming it, for its amount"}');
    end if;
  elsif cardinality(p_holds) = 1 and (p_holds[1]).op = 'place' then
    if cardinality(p_transfers) > 0 then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is placed alone"}');
    end if;
    -- What may be held: what the account has, and what its caps leave (counted against them); a
    -- dispute's freeze holds what is there, whatever else is held.
    if (p_holds[1]).purpose <> 'dispute' then
      v_refusal := (select billing.spend_refusal(a.id, (p_holds[1]).amount, a.balance - a.held, a.caps > 0,
                      (p_holds[1]).metadata ->> 'model', (p_holds[1]).member_id)
                    from billing.accounts a where a.id = (p_holds[1]).account_id and a.code is null);
      if v_refusal.result is not null then
        return array[v_refusal];
      end if;
    end if;
    insert into billing.holds (id, account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose, member_id)
    select s.hold_id, s.account_id, s.amount, s.idempotency_key, s.correlation_id, s.metadata, s.expires_at, s.purpose, s.member_id
    from unnest(p_holds) s;
    update billing.accounts a set held = a.held + (p_holds[1]).amount where a.id = (p_holds[1]).account_id and a.code is null;
  elsif cardinality(p_holds) > 0 then
    if exists (select 1 from unnest(p_holds) s where s.op = 'place') then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is placed alone"}');
    end if;
    -- What ends a hold keeps its amount (the record of what it held); a resize changes it.
    with stepped as (
      update billing.holds h
      set amount = case when s.op = 'resize' and h.amount + s.amount > 0 then h.amount + s.amount else h.amount end,
          status = case when s.op = 'post' then 'captured' when s.op = 'void' then s.status
                        when h.amount + s.amount > 0 then 'active' else 'released' end,
          captured_amount = case when s.op = 'post' then s.amount end,
          capture_transfer_id = case when s.op = 'post' then s.transfer_id end,
          finished_at = case when s.op = 'resize' and h.amount + s.amount > 0 then null else now() end,
          metadata = case when s.note is null then h.metadata else coalesce(h.metadata, '{}'::jsonb) || s.note end
      from unnest(p_holds) s
      where h.id = s.hold_id and h.status = 'active'
        and (s.op <> 'post' or s.transfer_id is not null) and (s.op <> 'void' or s.status in ('released', 'expired'))
      returning h.account_id, case when h.status = 'active' then s.amount else -h.amount end as delta
    )
    select array_agg(x.account_id), array_agg(x.delta) into v_hold_accounts, v_hold_deltas from stepped x;
    if coalesce(cardinality(v_hold_accounts), 0) <> cardinality(p_holds) then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is resized, posted or voided only while active"}');
    end if;
    update billing.accounts a set held = a.held + d.delta
    from (select x.account_id, sum(x.delta) as delta from unnest(v_hold_accounts, v_hold_deltas) x(account_id, delta)
          group by x.account_id) d
    where a.id = d.account_id and a.code is null;
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
    -- Spending: what the account has for it (null: a platform account, never refused).
    if v_one.kind = any(billing.spending_kinds()) then
      select a.balance - case when v_post.hold_id is null then a.held else 0 end,
        a.caps > 0 and v_one.kind = 'usage' and v_post.hold_id is null
      into v_room, v_capped
      from billing.accounts a where a.id = v_one.from_account_id and a.code is null;
      v_refusal := billing.spend_refusal(v_one.from_account_id, v_one.amount, v_room, v_capped, v_one.metadata ->> 'model',
        v_one.member_id);
      v_capped := v_capped and v_refusal.result is null;   -- counted against the caps: a replay gives it back
      -- A replay is answered as one below, whatever the account has now. (Conditions that hold a
      -- query are nested under the plain ones here and below: PL/pgSQL runs any expression with a
      -- subquery through the executor, whatever its other operands say.)
      if v_refusal.result is not null then
        if not exists (select 1 from billing.transfers x where x.idempotency_key = v_one.idempotency_key and x.kind = v_one.kind) then
          return array[v_refusal];
        end if;
      end if;
    end if;
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id, member_id)
    values (v_one.kind, v_one.from_account_id, v_one.to_account_id, v_one.amount, v_one.idempotency_key, v_one.correlation_id, v_one.reference,
            v_one.metadata, v_one.rate_card_id, v_one.hold_id, v_one.member_id)
    on conflict (idempotency_key, kind) do nothing
    returning id into v_id;
    if v_id is null then
      select * into v_written from billing.transfers x where x.idempotency_key = v_one.idempotency_key and x.kind = v_one.kind;
      if v_written.amount <> v_one.amount or v_written.from_account_id <> v_one.from_account_id
         or v_written.to_account_id <> v_one.to_account_id then
        perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', v_one.kind));
      end if;
      if v_post.hold_id is not null then            -- the capture was written: its hold ends now
        v_post.transfer_id := v_written.id;
        perform billing.post_transfers('{}', array[v_post]);
      end if;
      if v_capped then                              -- a replay spends nothing: its room goes back
        perform billing.return_cap_room(v_one.from_account_id, v_one.amount, v_one.metadata ->> 'model', now(), v_one.member_id);
      end if;
      return array[(v_written.id, true, null, null, 'exists', null)::billing.posted_transfer];
    end if;
    v_ids := array[v_id];
    v_new := v_ids;
    if v_post.hold_id is not null then
      update billing.holds h set status = 'captured', captured_amount = v_one.amount, capture_transfer_id = v_id,
        finished_at = now()
      where h.id = v_post.hold_id and h.status = 'active'
      returning h.account_id, -h.amount into v_held_account, v_held_delta;
      if not found then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is resized, posted or voided only while active"}');
      end if;
    end if;
    -- Each tracked side (a platform account is never updated: the filter finds no row).
    update billing.accounts a set balance = a.balance - v_one.amount, version = a.version + 1,
      held = a.held + case when a.id = v_held_account then v_held_delta else 0 end,
      active_from = case when a.active_from >= v_day then a.active_from else now() end
    where a.id = v_one.from_account_id and a.code is null
    returning a.balance, a.version, a.restricted_lots into v_balance, v_version, v_flag;
    if found then
      v_restricted := v_flag;
      v_ord := array[1]; v_account := array[v_one.from_account_id]; v_delta := array[-v_one.amount]; v_after := array[v_balance];
      v_versions := array[v_version];
    else
      v_ord := '{}'::integer[]; v_account := '{}'::bigint[]; v_delta := '{}'::numeric[]; v_after := '{}'::numeric[];
      v_versions := '{}'::bigint[];
    end if;
    update billing.accounts a set balance = a.balance + v_one.amount, version = a.version + 1,
      held = a.held + case when a.id = v_held_account then v_held_delta else 0 end,
      active_from = case when a.active_from >= v_day then a.active_from else now() end
    where a.id = v_one.to_account_id and a.code is null
    returning a.balance, a.version, a.restricted_lots into v_balance, v_version, v_flag;
    if found then
      v_restricted := v_restricted or v_flag;
      v_ord := v_ord || 1; v_account := v_account || v_one.to_account_id; v_delta := v_delta || v_one.amount;
      v_after := v_after || v_balance; v_versions := v_versions || v_version;
    end if;
    insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
    select v_id, e.account_id, e.delta, e.after, e.version
    from unnest(v_account, v_delta, v_after, v_versions) with ordinality e(account_id, delta, after, version, n)
    order by e.n;
    insert into billing.ledger_tail as x (at, backend, kind, rate_card_id, amount, events, credit_change)
    values (date_trunc('second', now()), pg_backend_pid(), v_one.kind, v_one.rate_card_id, v_one.amount, 1,
      coalesce((select sum(d) from unnest(v_delta) d), 0))
    on conflict (at, backend, kind, rate_card_id) do update
    set amount = x.amount + excluded.amount, events = x.events + 1, credit_change = x.credit_change + excluded.credit_change;
  else
    if exists (select 1 from unnest(p_transfers) t
               where t.amount is null or t.amount <= 0 or scale(t.amount) > 18 or t.amount >= 1e20
                 or t.from_account_id is not distinct from t.to_account_id) then
      perform billing.raise_error('LEDGER_INVARIANT',
        '{"rule": "a positive amount below 1e20 with at most 18 places, between two accounts"}');
    end if;
    -- Spending, account by account in batch order: each debit fits what its account has left after
    -- the ones before it (what the batch credits the account is not counted), then its caps; one
    -- that does not is refused and the rest go on. A replay (its key written) spends nothing: it
    -- is answered below. The written are the batch from here on. One by one only when one might
    -- not fit or has caps to count: the common batch fits whole, told in one statement.
    if exists (select 1 from (
                 select t.kind, a.caps, a.balance - a.held
                   - sum(t.amount) over (partition by t.from_account_id order by t.ord) as left_after
                 from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
                 join billing.accounts a on a.id = t.from_account_id and a.code is null
                 where t.kind = any(billing.spending_kinds())) x
               where x.left_after < 0 or (x.caps > 0 and x.kind = 'usage')) then
      for c in
        select t.ord::integer as ord, t.from_account_id, t.amount, t.kind, t.member_id,
          t.metadata ->> 'model' as model, a.balance - a.held as room, a.caps
        from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
        join billing.accounts a on a.id = t.from_account_id and a.code is null
        where t.kind = any(billing.spending_kinds())
          and not exists (select 1 from billing.transfers x where x.idempotency_key = t.idempotency_key and x.kind = t.kind)
        order by t.from_account_id, t.ord
      loop
        if v_spender is distinct from c.from_account_id then
          v_spender := c.from_account_id;
          v_room := c.room;
        end if;
        v_refusal := billing.spend_refusal(c.from_account_id, c.amount, v_room, c.caps > 0 and c.kind = 'usage', c.model,
          c.member_id);
        if v_refusal.result is null then
          v_room := v_room - c.amount;
        else
          v_refused := v_refused || c.ord;
          v_refusals := v_refusals || v_refusal;
        end if;
      end loop;
      if v_refused is not null then
        v_kept := array(select o from generate_subscripts(p_transfers, 1) o where o <> all(v_refused) order by o);
        p_transfers := array(select p_transfers[o] from unnest(v_kept) o);
        if cardinality(p_transfers) = 0 then
          return array(select v_refusals[r.i] from unnest(v_refused) with ordinality r(n, i) order by r.n);
        end if;
      end if;
    end if;
    -- Ids in batch order, so transfer ids order the batch.
    v_ids := array(select nextval('billing.transfers_id_seq') from generate_subscripts(p_transfers, 1));
    with ins as (
      insert into billing.transfers (id, kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                     reference, metadata, rate_card_id, hold_id, member_id)
      overriding system value
      select v_ids[t.ord], t.kind, t.from_account_id, t.to_account_id, t.amount, t.idempotency_key, t.correlation_id,
        t.reference, t.metadata, t.rate_card_id, t.hold_id, t.member_id
      from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
      order by t.ord
      on conflict (idempotency_key, kind) do nothing
      returning id
    )
    select array_agg(ins.id) into v_new from ins;

    if cardinality(v_new) is distinct from cardinality(p_transfers) then
      select array_agg(case when v_ids[t.ord] = any(coalesce(v_new, '{}')) then null else x.id end order by t.ord),
        min(t.kind::text) filter (where v_ids[t.ord] <> all(coalesce(v_new, '{}'))
          and (x.amount <> t.amount or x.from_account_id <> t.from_account_id or x.to_account_id <> t.to_account_id))
      into v_existing, v_reused
      from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
      join billing.transfers x on x.idempotency_key = t.idempotency_key and x.kind = t.kind;
      if v_reused is not null then
        perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', v_reused));
      end if;
    end if;

    if v_new is not null then
      -- Balances and versions, then one entry per tracked side numbered back from them.
      with t as (
        select * from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord) where v_ids[t.ord] = any(v_new)
      ), legs as (
        select t.ord, t.from_account_id as account_id, -t.amount as delta from t
        union all
        select t.ord, t.to_account_id, t.amount from t
      ), u as (
        update billing.accounts a set balance = a.balance + d.delta, version = a.version + d.n,
          active_from = case when a.active_from >= v_day then a.active_from else now() end
        from (select l.account_id, sum(l.delta) as delta, count(*) as n from legs l group by l.account_id) d
        where a.id = d.account_id and a.code is null
        returning a.id, a.balance, a.version, a.restricted_lots
      ), e as (
        insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
        select v_ids[l.ord], l.account_id, l.delta,
          u.balance - (sum(l.delta) over later - l.delta), u.version - (row_number() over later - 1)
        from legs l join u on u.id = l.account_id
        window later as (partition by l.account_id order by l.ord desc)
        order by l.ord, l.delta                     -- entry ids in batch order, as readers page them
        returning transfer_id, account_id, balance_after
      )
      select array_agg(l.ord order by l.ord, l.delta), array_agg(l.account_id order by l.ord, l.delta),
        array_agg(l.delta order by l.ord, l.delta), array_agg(e.balance_after order by l.ord, l.delta),
        (select coalesce(bool_or(u.restricted_lots), false) from u)
      into v_ord, v_account, v_delta, v_after, v_restricted
      from e join legs l on v_ids[l.ord] = e.transfer_id and l.account_id = e.account_id;
      insert into billing.ledger_tail as x (at, backend, kind, rate_card_id, amount, events, credit_change)
      select date_trunc('second', now()), pg_backend_pid(), t.kind, t.rate_card_id, sum(t.amount), count(*),
        coalesce(sum(m.change), 0)
      from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
      left join (select d.ord, sum(d.delta) as change from unnest(v_ord, v_delta) d(ord, delta) group by d.ord) m on m.ord = t.ord
      where v_ids[t.ord] = any(v_new)
      group by t.kind, t.rate_card_id
      on conflict (at, backend, kind, rate_card_id) do update
      set amount = x.amount + excluded.amount, events = x.events + excluded.events,
        credit_change = x.credit_change + excluded.credit_change;
    end if;
  end if;

  if v_new is not null then
    -- Looked at one by one only when some balance went below zero (a batch of a thousand rarely does).
    for i in 1 .. case when 0 > any(v_after) then cardinality(v_ord) else 0 end loop
      -- A debt beside credits for some models (a reversal takes none of them) is in the balance
      -- already: what leaves those lots by name (their expiry, a plan's rollover out) may then
      -- take the balance below zero too.
      if v_delta[i] < 0 and v_after[i] < 0 and (p_transfers[v_ord[i]]).kind not in ('refund_reversal', 'dispute_reversal')
         and not ((p_transfers[v_ord[i]]).kind in ('expiry', 'plan_rollover')
                  and exists (select 1 from billing.accounts a where a.id = v_account[i] and a.restricted_lots)) then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "only a refund or dispute reversal may leave a balance below zero"}');
      end if;
    end loop;

    -- Debits draw from lots. The common one, alone and with nothing to draw first, in one
    -- statement: the first lot in spending order covers it.
    v_for := case when cardinality(p_transfers) = 1 then (p_transfers[1]).lots ->> 'for' end;
    -- A movement alone is read directly; only a batch is scanned (no query on the hot path).
    if v_for is null and cardinality(p_transfers) = 1 and coalesce((p_transfers[1]).lots ? 'for', false) then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a draw for a model is a movement alone"}');
    elsif cardinality(p_transfers) > 1 then
      if exists (select 1 from unnest(p_transfers) t where t.lots ? 'for') then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a draw for a model is a movement alone"}');
      end if;
    end if;
    if cardinality(v_ord) = 1 and v_delta[1] < 0
       and ((p_transfers[v_ord[1]]).lots is null or (p_transfers[v_ord[1]]).lots - 'for' = '{}'::jsonb) then
      with drawn as (
        update billing.lots l set remaining = l.remaining + v_delta[1]
        where l.id = (select x.id from billing.lots x where x.account_id = v_account[1] and x.open
                        and (v_for is null or x.applies_to is null or exists (select 1 from unnest(x.applies_to) p
                               where p = v_for or (right(p, 1) = '*' and starts_with(v_for, left(p, -1)))))
                        -- A reversal takes no credits for some models (below), whoever asks.
                        and (x.applies_to is null
                             or (p_transfers[v_ord[1]]).kind not in ('refund_reversal', 'dispute_reversal'))
                      order by x.frozen, x.priority, x.expires_at nulls last, x.granted_at, x.id
                      limit 1)
          and l.remaining >= -v_delta[1]
        returning l.id, l.cost_cents * (-v_delta[1])::numeric(38, 18) / l.amount as cents, l.currency, l.category, l.origin
      ), allocated as (
        insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
        select v_ids[v_ord[1]], drawn.id, (p_transfers[v_ord[1]]).kind, -v_delta[1], drawn.cents from drawn
      )
      -- The report's tail (lots_tail, below), from the lot in hand.
      insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
      select date_trunc('second', now()), pg_backend_pid(), drawn.currency, drawn.category, (p_transfers[v_ord[1]]).kind,
        drawn.origin, -v_delta[1], drawn.cents
      from drawn
      on conflict (at, backend, currency, category, kind, origin) do update
      set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents;
      get diagnostics v_drawn = row_count;
    end if;
    -- Every other draw: what the one-lot statement above did not cover.
    if v_drawn is distinct from 1 then
      -- Debits told what to draw (`take`): exactly those lots of the debited account, exactly the amount.
      if exists (select 1 from unnest(p_transfers) t where t.lots ? 'take') then
        if exists (select 1 from unnest(v_ord, v_delta) d(ord, delta)
                   left join lateral jsonb_array_elements((p_transfers[d.ord]).lots -> 'take') r on true
                   where d.delta < 0 and (p_transfers[d.ord]).lots ? 'take'
                   group by d.ord having sum((r ->> 'amount')::numeric) is distinct from -min(d.delta)
                     or bool_or(((r ->> 'amount')::numeric > 0) is not true)) then
          perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit takes positive parts of lots, of exactly its amount"}');
        end if;
        with x as (
          select d.ord, d.account_id, (r ->> 'lot_id')::bigint as lot_id, (r ->> 'amount')::numeric as part
          from unnest(v_ord, v_account, v_delta) d(ord, account_id, delta)
          cross join lateral jsonb_array_elements((p_transfers[d.ord]).lots -> 'take') r
          where d.delta < 0 and (p_transfers[d.ord]).lots ? 'take'
        ), ins as (
          insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
          select v_ids[x.ord], x.lot_id, (p_transfers[x.ord]).kind, x.part, l.cost_cents * x.part::numeric(38, 18) / l.amount
          from x join billing.lots l on l.id = x.lot_id
        ), upd as (
          update billing.lots l set remaining = l.remaining - s.total
          from (select x.lot_id, x.account_id, sum(x.part) as total from x group by x.lot_id, x.account_id) s
          where l.id = s.lot_id and l.account_id = s.account_id
          returning l.id
        )
        select (select count(*) from upd) - (select count(distinct (x.lot_id, x.account_id)) from x) into v_drawn;
        if v_drawn <> 0 then
          perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit takes only its own account''s lots"}');
        end if;
        v_drawn := null;
      end if;
      -- Each movement's kind and whether it was told what to take, by place: an element of an
      -- array of composites is found by walking the array, so p_transfers[ord] per row made a
      -- batch's draw quadratic.
      v_kinds := array(select t.kind from unnest(p_transfers) t);
      v_takes := array(select coalesce(t.lots ? 'take', false) from unnest(p_transfers) t);
      if exists (select 1 from unnest(v_ord, v_delta) d(ord, delta) where d.delta < 0 and not v_takes[d.ord]) then
        v_first := array(select jsonb_array_elements_text(t.lots -> 'first')::bigint
                         from unnest(p_transfers) t where t.lots ? 'first');
        -- A reversal (refund, lost dispute) takes back money paid for anything: the lots it names
        -- (its purchase's or plan's, whatever they pay for), then only credits for any model; what
        -- they lack is debt, never credits someone gave for some models only.
        v_reversal := exists (select 1 from unnest(p_transfers) t where t.kind in ('refund_reversal', 'dispute_reversal'));
        with d as (
          select x.ord, x.account_id, -x.delta as amount,
            sum(-x.delta) over (partition by x.account_id order by x.ord) as hi
          from unnest(v_ord, v_account, v_delta) x(ord, account_id, delta)
          where x.delta < 0 and not v_takes[x.ord]
        ), l as (
          select l.id, l.account_id, l.remaining, l.cost_cents, l.amount as lot_amount, l.currency, l.category, l.origin,
            sum(l.remaining) over (partition by l.account_id order by array_position(v_first, l.id) nulls last,
              l.frozen, l.priority, l.expires_at nulls last, l.granted_at, l.id) as hi
          from billing.lots l
          where l.account_id in (select d.account_id from d) and l.open
            and (not v_reversal or l.applies_to is null or l.id = any(v_first))
            and (v_for is null or l.applies_to is null or exists (select 1 from unnest(l.applies_to) p
                   where p = v_for or (right(p, 1) = '*' and starts_with(v_for, left(p, -1)))))
        ), p as (
          select d.ord, l.id as lot_id, l.cost_cents, l.lot_amount, l.currency, l.category, l.origin,
            least(d.hi, l.hi) - greatest(d.hi - d.amount, l.hi - l.remaining) as amount
          from d join l on l.account_id = d.account_id and l.hi - l.remaining < d.hi and d.hi - d.amount < l.hi
        ), a as (
          select p.*, p.cost_cents * p.amount::numeric(38, 18) / p.lot_amount as cents from p
        ), ins as (
          insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
          select v_ids[a.ord], a.lot_id, v_kinds[a.ord], a.amount, a.cents from a
          returning lot_id, amount
        ), tail as (
          -- The report's tail (lots_tail, below), from the lots in hand.
          insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
          select date_trunc('second', now()), pg_backend_pid(), a.currency, a.category, v_kinds[a.ord], a.origin,
            sum(a.amount), sum(a.cents)
          from a group by a.currency, a.category, v_kinds[a.ord], a.origin
          on conflict (at, backend, currency, category, kind, origin) do update
          set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents
        )
        update billing.lots x set remaining = x.remaining - s.total
        from (select ins.lot_id, sum(ins.amount) as total from ins group by ins.lot_id) s
        where x.id = s.lot_id;
        -- Lots that may pay for the model must cover it whole (the caller summed them).
        if v_for is not null and (select coalesce(sum(a.amount), 0) from billing.lot_allocations a
                                  where a.transfer_id = v_ids[1]) <> -v_delta[1] then
          perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a draw for a model is covered by lots that may pay for it"}');
        end if;
      end if;
    end if;

    -- Credits: into lots.
    if 0 < any(v_delta) then
      for c in
        select x.ord, x.account_id, x.delta as amount, x.after, p_transfers[x.ord] as t, y.ord is not null as moved
        from unnest(v_ord, v_account, v_delta, v_after) x(ord, account_id, delta, after)
        left join unnest(v_ord, v_delta) y(ord, delta) on y.ord = x.ord and y.delta < 0
        where x.delta > 0
        order by x.ord
      loop
        -- What of this credit may pay a debt the account is in: the debt, at most the credit. In
        -- the balance alone, unless the account holds credits for some models: a reversal left
        -- those whole, so the debt is what its lots hold beyond its balance (debits later in this
        -- batch are drawn already, not yet in the balance). Only credits for any model pay it
        -- (below): a debt is owed in money paid for anything.
        v_settled := least(c.amount, greatest(c.amount - c.after, 0));
        if exists (select 1 from billing.accounts a where a.id = c.account_id and a.restricted_lots) then
          v_settled := least(c.amount, greatest(
            coalesce((select sum(l.remaining) from billing.lots l where l.account_id = c.account_id and l.open), 0)
            + coalesce((select sum(-d.delta) from unnest(v_ord, v_account, v_delta) d(ord, account_id, delta)
                        where d.account_id = c.account_id and d.ord > c.ord and d.delta < 0), 0)
            - (c.after - c.amount), 0));
        end if;
        v_lot := coalesce((c.t).lots, '{}');
        v_list := billing.applies_to_of(v_lot);
        if c.moved then
          -- Each source lot's part arrives as its own lot, as it was: purchase, category, priority,
          -- expiry, frozen, and its share of the cost basis; the first parts settle a debt.
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, frozen, expires_at, moved_from, applies_to)
          select c.account_id, v_ids[c.ord], l.purchase_id, l.category, l.priority, l.cost_cents * p.amount / l.amount,
            l.currency, p.amount, p.settled, p.amount - p.settled, l.frozen, l.expires_at, l.id, p.applies_to
          from (select x.lot_id, x.amount, x.applies_to,
                  -- The first parts for any model settle a debt; parts for some models never do.
                  case when x.applies_to is null then least(x.amount, greatest(v_settled - coalesce(sum(x.amount)
                    filter (where x.applies_to is null) over (order by x.lot_id
                    rows between unbounded preceding and 1 preceding), 0), 0)) else 0 end as settled
                from (select y.lot_id, y.amount,
                        -- Credits given back to the account they came from (an allowance swept, a code
                        -- returned) are for what they paid for there; others keep their list, narrowed
                        -- to the one given.
                        case when (c.t).kind in ('allowance_sweep', 'code_return') and s.account_id = c.account_id
                             then s.applies_to else billing.narrow_applies_to(l.applies_to, v_list) end as applies_to
                      from billing.lot_allocations y
                      join billing.lots l on l.id = y.lot_id
                      left join billing.lots s on s.id = l.moved_from
                      where y.transfer_id = v_ids[c.ord]) x) p
          join billing.lots l on l.id = p.lot_id
          order by p.lot_id;
          if v_list is not null and exists (select 1 from billing.lots l where l.grant_transfer_id = v_ids[c.ord] and l.applies_to = '{}') then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'applies_to',
              'rule', 'some of these credits may pay for none of the models named'));
          end if;
        elsif v_lot ? 'return_to' then
          -- Back into the lots it came from: negative allocations, as a void gives back.
          if (select sum((r ->> 'amount')::numeric) from jsonb_array_elements(v_lot -> 'return_to') r) <> c.amount then
            perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a return to lots is of exactly the amount"}');
          end if;
          with r as (
            select (x ->> 'lot_id')::bigint as lot_id, (x ->> 'amount')::numeric as amount, l.applies_to is null as any_model,
              l.cost_cents, l.amount as lot_amount
            from jsonb_array_elements(v_lot -> 'return_to') x left join billing.lots l on l.id = (x ->> 'lot_id')::bigint
          ), p as (
            -- As a move's parts: what returns to a lot for any model settles a debt first.
            select r.lot_id, r.amount, r.cost_cents * (-r.amount)::numeric(38, 18) / r.lot_amount as cents,
              case when r.any_model then least(r.amount, greatest(v_settled - coalesce(sum(r.amount) filter (where r.any_model)
                over (order by r.lot_id rows between unbounded preceding and 1 preceding), 0), 0)) else 0 end as settled
            from r
          ), ins as (
            -- The part that paid a debt is the allocation's, dated by it: the lot's grant stays as it was.
            insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, debt_settled, cents)
            select v_ids[c.ord], p.lot_id, (c.t).kind, -p.amount, p.settled, p.cents from p
          )
          update billing.lots l set remaining = l.remaining + p.amount - p.settled
          from p where l.id = p.lot_id and l.account_id = c.account_id;
          continue;
        elsif v_lot ? 'moved_from' then
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, expires_at, moved_from, applies_to, origin)
          select c.account_id, v_ids[c.ord], l.purchase_id, l.category, l.priority, l.cost_cents * c.amount / l.amount,
            l.currency, c.amount, x.settled, c.amount - x.settled, (v_lot ->> 'expires_at')::timestamptz, l.id, l.applies_to,
            l.origin
          from billing.lots l
          cross join lateral (select case when l.applies_to is null then v_settled else 0 end as settled) x
          where l.id = (v_lot ->> 'moved_from')::bigint;
        else
          v_category := coalesce(v_lot ->> 'category', case (c.t).kind when 'purchase' then 'paid' else 'promotional' end);
          select * into v_policy from billing.credit_expiry_policy p where p.category = v_category;
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
          elsif v_lot ->> 'origin' not in ('plan', 'promo_code') then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'origin', 'rule', 'plan or promo_code'));
          end if;
          if v_list is not null then
            v_settled := 0;
          end if;
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, applies_to, origin, expires_at)
          values (c.account_id, v_ids[c.ord], (v_lot ->> 'purchase_id')::uuid, v_category,
            coalesce((v_lot ->> 'priority')::integer, v_policy.priority), coalesce((v_lot ->> 'cost_cents')::numeric, 0),
            coalesce(v_lot ->> 'currency', 'usd'), c.amount, v_settled, c.amount - v_settled, v_list, v_lot ->> 'origin',
            -- A support adjustment does not expire unless the admin says so: a correction that
            -- quietly vanishes would need correcting again.
            case when v_lot ? 'expires_at' then (v_lot ->> 'expires_at')::timestamptz
                 when (c.t).kind <> 'adjustment' then now() + v_policy.expires_after end);
        end if;
        update billing.accounts a
        set next_expiry = least(a.next_expiry, (select min(l.expires_at) from billing.lots l where l.grant_transfer_id = v_ids[c.ord]))
        where a.id = c.account_id
          and exists (select 1 from billing.lots l where l.grant_transfer_id = v_ids[c.ord] and l.expires_at is not null);
        if exists (select 1 from billing.lots l where l.grant_transfer_id = v_ids[c.ord] and l.applies_to is not null) then
          update billing.accounts a set restricted_lots = true where a.id = c.account_id and not a.restricted_lots;
          v_restricted := true;
        end if;
      end loop;
    end if;

    -- Sub-accounts (credits for some models) follow the lots this call moved: a new lot brings
    -- what it opened with, an allocation takes what it drew (a give-back returns what did not pay
    -- a debt). Only a tracked side holding such credits has any; a list's first lot opens its
    -- sub-account (not an upsert: it would test the row it proposes, a draw's negative change,
    -- against the balance's check).
    if v_restricted then
      with d as (
        select l.account_id, l.applies_to, sum(m.change) as change
        from (select n.id, n.amount - n.debt_settled as change
              from unnest(v_new) t(id) join billing.lots n on n.grant_transfer_id = t.id
              union all
              select x.lot_id, -(x.amount + x.debt_settled)
              from unnest(v_new) t(id) join billing.lot_allocations x on x.transfer_id = t.id) m
        join billing.lots l on l.id = m.id
        where l.applies_to is not null
        group by l.account_id, l.applies_to
      ), kept as (
        update billing.sub_accounts s set balance = s.balance + d.change
        from d where s.account_id = d.account_id and s.applies_to = d.applies_to
        returning s.account_id, s.applies_to
      )
      insert into billing.sub_accounts (account_id, applies_to, balance)
      select d.account_id, d.applies_to, d.change from d
      where not exists (select 1 from kept k where k.account_id = d.account_id and k.applies_to = d.applies_to);
    end if;

    -- What this posting drew from lots and gave back to them, summed for the report's tail as
    -- ledger_tail is (billing.ledger_parts): each allocation's cost basis as it keeps it; of a
    -- give-back, the part that paid a debt, at the lot's cost basis, is its own kind. The draws in
    -- spending order (one lot or many) kept their own above; here the lots a movement named (its
    -- `take`, or a give-back's `return_to`).
    if cardinality(p_transfers) > 1 or coalesce((p_transfers[1]).lots ?| array['take', 'return_to'], false) then
      if exists (select 1 from unnest(p_transfers) t where t.lots ? 'take' or t.lots ? 'return_to') then
        insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
        select date_trunc('second', now()), pg_backend_pid(), l.currency, l.category, p.kind, l.origin, sum(p.credits), sum(p.cents)
        -- One index probe per such movement (`transfer_id = any(…)` is planned for hundreds of rows:
        -- a hash join over every lot).
        from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
        join billing.lot_allocations a on a.transfer_id = v_ids[t.ord]
        join billing.lots l on l.id = a.lot_id
        cross join lateral (select a.kind::text, a.amount, coalesce(a.cents, l.cost_cents * a.amount / l.amount)
                            union all
                            select 'debt_settled_by_return', a.debt_settled, l.cost_cents * a.debt_settled / l.amount
                            where a.debt_settled > 0) p(kind, credits, cents)
        where (t.lots ? 'take' or t.lots ? 'return_to') and v_ids[t.ord] = any(v_new)
        group by l.currency, l.category, p.kind, l.origin
        on conflict (at, backend, currency, category, kind, origin) do update
        set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents;
      end if;
    end if;
  end if;

  if cardinality(p_transfers) = 1 and v_kept is null then
    return array[(coalesce(v_existing[1], v_ids[1]), v_existing[1] is not null,
      case when v_delta[1] < 0 then v_after[1] when v_delta[2] < 0 then v_after[2] end,
      case when v_delta[1] > 0 then v_after[1] when v_delta[2] > 0 then v_after[2] end,
      case when v_existing[1] is null then 'applied' else 'exists' end, null)::billing.posted_transfer];
  end if;
  -- Joined, not looked up per movement: a batch of a thousand would scan its legs a million times.
  v_out := array(
    select row(coalesce(v_existing[o.n], v_ids[o.n]), v_existing[o.n] is not null, f.after, t.after,
      case when v_existing[o.n] is null then 'applied' else 'exists' end, null)::billing.posted_transfer
    from generate_subscripts(p_transfers, 1) o(n)
    left join unnest(v_ord, v_delta, v_after) f(ord, delta, after) on f.ord = o.n and f.delta < 0
    left join unnest(v_ord, v_delta, v_after) t(ord, delta, after) on t.ord = o.n and t.delta > 0
    order by o.n);
  if v_kept is null then
    return v_out;
  end if;
  -- Refusals back in their places among the written.
  return array(
    select x.p from (select k.n, v_out[k.i] as p from unnest(v_kept) with ordinality k(n, i)
                     union all select r.n, v_refusals[r.i] from unnest(v_refused) with ordinality r(n, i)) x
    order by x.n);
end;
$$;
comment on function billing.post_transfers(p_transfers billing.transfer_spec[], p_holds billing.hold_step[]) is 'Internal: the ledger''s one writer. Writes a batch of movements (transfers, entries, balances, versions, lots, allocations) and pending transfers (holds placed, resized, posted, voided, and the held amounts) under the caller''s account locks; one result per movement, replays answered.';
revoke execute on function billing.post_transfers(p_transfers billing.transfer_spec[], p_holds billing.hold_step[]) from public;

-- Whether an account is in debt, the rule every refusal's `debt` states: its balance is below
-- what its open lots hold (debt = Σ remaining − balance, billing.post_transfers). Credits for some
-- models stay beside a debt (it is owed in money paid for anything), so only an account holding
-- them can owe with a balance of zero or more; any other is in debt exactly when its balance is
-- below zero, and is answered without reading its lots.
create or replace function billing.in_debt(p_account billing.accounts) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  if not p_account.restricted_lots or p_account.balance < 0 then
    return p_account.balance < 0;
  end if;
  -- Below its open lots' sum exactly when below its credits for some models (the lots for any
  -- model hold what is beyond them): its sub-accounts.
  return p_account.balance < (select coalesce(sum(s.balance), 0) from billing.sub_accounts s where s.account_id = p_account.id);
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

  -- The lots drawn arrive on the receiving side as they were (billing.post_transfers), restricted
  -- ones still restricted; what stays behind must still pay the source's live holds.
  v_posted := billing.post_transfers(array[(p_kind, p_from, p_to, p_amount, p_key, null, null,
    case when p_applies_to is null then p_metadata
         else coalesce(p_metadata, '{}') || jsonb_build_object('applies_to', p_applies_to) end, null, null, p_member, nullif(coalesce(case when v_from.restricted_lots then billing.restricted_draw(v_from, null, p_amount, true) end, '{}')
      || jsonb_strip_nulls(jsonb_build_object('applies_to', p_applies_to)), '{}'))::billing.transfer_spec]);
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

create or replace function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind)
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
    v_account := billing.settled(v_account);
    if v_account.id = p_own.id then
      p_own := v_account;                             -- settled: the refusal's debt is read from it
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_account.restricted_lots then
      v_available := least(v_available, (billing.plan_lot_draw(v_account.id, p_model, p_amount) ->> 'found')::numeric);
    end if;
    if v_available >= p_amount then
      if v_account.org_id is null then
        return v_account;                                 -- the member's own caps: the writer's, as for anyone
      end if;
      -- Asked, not counted: what spends counts it (the writer, or reserve_hold for a hold).
      v_cap := case when v_account.caps > 0 then billing.take_cap_room(v_account.id, p_amount, p_model, p_user, false) end;
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
comment on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind) is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';
revoke execute on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind) from public;

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
  -- Credits for some models only: the charge draws what may pay for its model (the rate card's,
  -- or the gateway's facts on a capture), leaving every other live hold payable.
  if v_account.restricted_lots and p_mode in ('spend', 'capture') then
    v_model := coalesce((select r.model from billing.rate_cards r where r.id = p_rate_card_id), p_metadata ->> 'model');
    -- No live hold to keep payable (settled above), and lots that may pay for the model cover
    -- it: the writer draws them in spending order. Otherwise the plan, or the refusal that says why.
    if p_mode = 'spend' and v_account.held = 0 and v_model is not null
       and (select coalesce(sum(l.remaining) filter (where l.applies_to is null or exists (select 1 from unnest(l.applies_to) p
                     where p = v_model or (right(p, 1) = '*' and starts_with(v_model, left(p, -1))))), 0) >= p_amount
            from billing.lots l where l.account_id = v_account_id and l.open) then
      p_lot := jsonb_build_object('for', v_model);
    else
      p_lot := billing.restricted_draw(v_account, v_model, p_amount);
    end if;
  end if;

  v_posted := (billing.post_transfers(array[(p_kind,
    case when p_direction > 0 then v_platform_id else v_account_id end,
    case when p_direction > 0 then v_account_id else v_platform_id end,
    p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, null, v_member,
    p_lot)::billing.transfer_spec]))[1];
  -- What the account has, and its caps (a member's on a school's account among them): the writer's.
  if v_posted.result = 'insufficient' then
    -- A pooled wallet's figures are never told (a member may be the one refused: restricted_draw).
    perform billing.raise_error('INSUFFICIENT_CREDITS', case when v_account.org_id is not null and v_account.member_id is null
      then v_posted.refusal - 'available' else v_posted.refusal || jsonb_build_object('debt', billing.in_debt(v_account)) end);
  elsif v_posted.result = 'capped' then
    perform billing.raise_error('SPEND_CAP_REACHED', v_posted.refusal);
  end if;
  v_account.balance := coalesce(v_posted.from_balance, v_posted.to_balance);
  v_account.version := v_account.version + 1;
  v_transfer_id := v_posted.transfer_id;

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
$$;
comment on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_lot jsonb, p_account_id bigint) is 'Internal: moves credits between a user''s account (or, for a member, the organisation wallet that pays; or p_account_id) and a platform account, under the account lock.';
revoke execute on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_lot jsonb, p_account_id bigint) from public;

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

create or replace function billing.settle_account(p_account_id bigint)
returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(p_account_id);
  end if;
  if v_account.next_expiry <= now() then
    perform billing.expire_due_lots(p_account_id);
  end if;
  select * into v_account from billing.accounts a where a.id = p_account_id;
  return v_account;
end;
$$;
comment on function billing.settle_account(p_account_id bigint) is 'Internal: locks the account, ends its overdue holds and expires its due lots; returns it as it now is. billing.settled calls it when something fell due.';
revoke execute on function billing.settle_account(p_account_id bigint) from public;

-- The account as it is once what fell due is ended (billing.settle_account), or as it is when
-- nothing did: the one place that says when an account must be settled before anything reads what
-- it has. Every path that spends, holds or moves credits calls it on the row it locked.
create or replace function billing.settled(p_account billing.accounts) returns billing.accounts
language plpgsql
set search_path = ''
as $$
begin
  if p_account.held > 0 or p_account.next_expiry <= now() then
    return billing.settle_account(p_account.id);
  end if;
  return p_account;
end;
$$;
comment on function billing.settled(p_account billing.accounts) is 'Internal: a locked account settled when something fell due (a hold past its TTL, a lot past its expiry), else as it is.';
revoke execute on function billing.settled(p_account billing.accounts) from public;

-- ============================================================ what falls due: lots past their expiry, holds past their TTL

-- An expiry's key: the lot and what it held when it expired, so a rerun finds the transfer; after
-- the lot's first expiry, also how many it has had, so credits that came back into it since (a
-- void, a rollover brought back from breakage) expire under a key of their own, never replaying
-- the first expiry and staying spendable.
create or replace function billing.expiry_key(p_lot_id bigint, p_amount numeric) returns text
language plpgsql stable
set search_path = ''
as $$
declare
  v_before integer := (select count(*) from billing.lot_allocations a
                       where a.lot_id = p_lot_id and a.kind = 'expiry' and a.amount > 0);
begin
  return 'expiry:' || p_lot_id || ':' || trim_scale(p_amount) || case when v_before > 0 then ':' || v_before else '' end;
end
$$;
comment on function billing.expiry_key(p_lot_id bigint, p_amount numeric) is 'Internal: the idempotency key of a lot''s expiry of p_amount (the count of its earlier expiries after the first).';
revoke execute on function billing.expiry_key(p_lot_id bigint, p_amount numeric) from public;

create or replace function billing.expire_due_lots(p_account_id bigint) returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_lot record;
  v_count integer := 0;
  v_expired numeric := 0;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  -- Holds past their TTL end first: only live holds give way to what expires (fit_holds would
  -- count an overdue one and release a live one in its place).
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(p_account_id);
  end if;
  -- A disputed purchase's lots wait for the dispute: won, they expire; lost, they are reversed.
  for v_lot in
    select l.id, l.remaining, l.category from billing.lots l
    where l.account_id = p_account_id and l.open and not l.frozen and l.expires_at <= now()
    order by l.expires_at, l.id
  loop
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.post_user_transfer(coalesce(v_account.user_id, v_account.member_id), -1, 'reverse', v_lot.remaining,
      'expiry', 'expired', billing.expiry_key(v_lot.id, v_lot.remaining), null, null,
      jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)), p_account_id);
    v_count := v_count + 1;
    v_expired := v_expired + v_lot.remaining;
  end loop;
  update billing.accounts a
  set next_expiry = (select min(l.expires_at) from billing.lots l where l.account_id = a.id and l.open)
  where a.id = p_account_id returning * into v_account;
  -- Held credits expire too: holds that reserve more than is left give way, newest first.
  perform billing.fit_holds(p_account_id, jsonb_build_object('given_to_expiry', true), v_expired);
  return v_count;
end;
$$;
comment on function billing.expire_due_lots(p_account_id bigint) is 'Internal: expires every lot of the account whose expires_at has passed (held credits too; holds give way), then makes next_expiry exact.';
revoke execute on function billing.expire_due_lots(p_account_id bigint) from public;

create or replace function billing.expire_overdue_holds(p_account_id bigint, p_disputed_work boolean default false)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_count integer;
  v_steps billing.hold_step[];
  v_caps integer;
  v_expired jsonb;
begin
  -- The account is locked first, as everywhere else; the writer voids its overdue holds.
  select a.caps into v_caps from billing.accounts a where a.id = p_account_id for update;
  select count(*), array_agg(('void', h.id, null, 'expired', null, null, null, null, null, null, null, null, null)::billing.hold_step),
         jsonb_agg(jsonb_build_object('amount', h.amount, 'model', h.metadata ->> 'model', 'at', h.created_at,
                                      'member', h.member_id))
           filter (where h.purpose <> 'dispute')
    into v_count, v_steps, v_expired
  from billing.holds h where h.account_id = p_account_id and h.status = 'active' and h.expires_at <= now()
    and (p_disputed_work or not (h.purpose in ('job', 'ai') and billing.work_waits_for_dispute(p_account_id)));
  if v_count > 0 then
    perform billing.post_transfers('{}', v_steps);
    perform billing.on_available_change(a) from billing.accounts a
    where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
    if v_caps > 0 then
      -- A member's hold on a school's wallet counted against the member's own cap too.
      perform billing.return_cap_room(p_account_id, (x ->> 'amount')::numeric, x ->> 'model', (x ->> 'at')::timestamptz,
        (x ->> 'member')::uuid)
      from jsonb_array_elements(coalesce(v_expired, '[]')) x;
    end if;
  end if;
  return v_count;
end;
$$;
comment on function billing.expire_overdue_holds(p_account_id bigint, p_disputed_work boolean) is 'Releases one account''s holds whose TTL has passed (job and gateway holds where a dispute holds credits only with p_disputed_work: billing.work_waits_for_dispute). Used by the spend path and the pg_cron sweeps.';
revoke execute on function billing.expire_overdue_holds(p_account_id bigint, p_disputed_work boolean) from public;

-- A live hold gives p_amount way (the writer resizes it; the cap room it held comes back).
create or replace function billing.give_way(p_hold billing.holds, p_amount numeric, p_note jsonb) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform billing.post_transfers('{}', array[('resize', p_hold.id, -p_amount, null, null,
    p_note || jsonb_build_object('given_amount', trim_scale(p_amount)::text), null, null, null, null, null, null,
    null)::billing.hold_step]);
  perform billing.return_hold_cap_room(p_hold, p_amount);
end;
$$;
comment on function billing.give_way(p_hold billing.holds, p_amount numeric, p_note jsonb) is 'Internal: shrinks a live hold by p_amount (p_note says why), giving back the cap room it held.';
revoke execute on function billing.give_way(p_hold billing.holds, p_amount numeric, p_note jsonb) from public;

create or replace function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb)
returns numeric
language plpgsql
set search_path = ''
as $$
declare
  h billing.holds;
  v_take numeric(38, 18);
  v_left numeric(38, 18) := p_short;
  v_held numeric(38, 18);
begin
  -- The caller holds the account lock. Holds past their TTL end first (as the sweep would end
  -- them): they reserve nothing, so what they held counts as room made, and a live hold never
  -- gives way in their place. Then the newest holds give way first.
  if exists (select 1 from billing.holds x
             where x.account_id = p_account_id and x.status = 'active' and x.expires_at <= now()) then
    select a.held into v_held from billing.accounts a where a.id = p_account_id;
    perform billing.expire_overdue_holds(p_account_id);
    v_left := v_left - (v_held - (select a.held from billing.accounts a where a.id = p_account_id));
  end if;
  for h in
    select * from billing.holds x
    where x.account_id = p_account_id and x.status = 'active' and x.purpose = any(p_purposes)
    order by x.created_at desc, x.id
    for update
  loop
    exit when v_left <= 0;
    v_take := least(h.amount, v_left);
    perform billing.give_way(h, v_take, p_note);
    v_left := v_left - v_take;
  end loop;
  return p_short - v_left;
end;
$$;
comment on function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb) is 'Internal: takes p_short from the account''s active holds of the given purposes, newest first (cap room given back); returns what it took.';
revoke execute on function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb) from public;

-- What no lot left may pay of an account's user, job and gateway holds gives way (the newest
-- holds carrying it first, each by what its removal would spare: billing.hold_deficit), by at
-- most p_max; returns what gave way. Disputes' holds never give way, and each hold is weighed
-- beside the disputes it ranks below: every dispute for a student's own hold (it gave way to
-- the dispute when it came), only the older ones for a job's or a gateway call's (work under way
-- when a dispute came keeps its hold, billing.hold_classes). Only accounts with credits for some
-- models need it: elsewhere any lot pays any hold.
create or replace function billing.give_way_unpayable(p_account_id bigint, p_note jsonb, p_max numeric)
returns numeric
language plpgsql
set search_path = ''
as $$
declare
  v_keys text[];
  v_credits numeric[];
  v_classes jsonb[] := '{}'::jsonb[];             -- each class's model (null: a student's own hold)
  v_reserved numeric[] := '{}'::numeric[];
  v_payable boolean[] := '{}'::boolean[];
  v_disputes numeric[];                           -- the disputes the hold in hand ranks below, as classes
  v_dispute_payable boolean[];
  v_class record;
  v_lack numeric;
  v_give numeric;
  v_left numeric := p_max;
  j integer;
  h billing.holds;
begin
  select array_agg(g.key order by g.key), array_agg(g.credits order by g.key) into v_keys, v_credits
  from (select coalesce(array_to_string(l.applies_to, ','), '') as key, sum(l.remaining) as credits from billing.lots l
        where l.account_id = p_account_id and l.open group by 1) g;
  v_keys := coalesce(v_keys, '{}'::text[]);
  v_credits := coalesce(v_credits, '{}'::numeric[]);
  for v_class in select * from billing.hold_classes(p_account_id, v_keys) c where c.covers is null loop
    v_classes := v_classes || to_jsonb(v_class.model);
    v_reserved := v_reserved || v_class.amount;
    v_payable := v_payable || v_class.payable;
  end loop;
  for h in
    select * from billing.holds x
    where x.account_id = p_account_id and x.status = 'active' and x.purpose in ('user', 'job', 'ai')
    order by x.created_at desc, x.id
  loop
    exit when v_left <= 0;
    v_disputes := '{}';
    v_dispute_payable := '{}';
    for v_class in
      select * from billing.hold_classes(p_account_id, v_keys, case when h.purpose <> 'user' then h.id end) c
      where c.covers is not null
    loop
      v_disputes := v_disputes || v_class.amount;
      v_dispute_payable := v_dispute_payable || v_class.payable;
    end loop;
    v_lack := billing.hold_deficit(v_credits, v_reserved || v_disputes, v_payable || v_dispute_payable);
    continue when v_lack <= 0;
    j := array_position(v_classes, to_jsonb(case when h.purpose in ('ai', 'job') then h.metadata ->> 'model' end));
    v_reserved[j] := v_reserved[j] - h.amount;
    v_give := least(h.amount, v_lack - billing.hold_deficit(v_credits, v_reserved || v_disputes, v_payable || v_dispute_payable),
      v_left);
    v_reserved[j] := v_reserved[j] + h.amount - v_give;
    if v_give > 0 then
      perform billing.give_way(h, v_give, p_note);
      v_left := v_left - v_give;
    end if;
  end loop;
  return p_max - v_left;
end;
$$;
comment on function billing.give_way_unpayable(p_account_id bigint, p_note jsonb, p_max numeric) is 'Internal: an account''s user, job and gateway holds give way, newest first, by what no lot left may pay of them (disputes'' holds not counted), at most p_max; returns what gave way.';
revoke execute on function billing.give_way_unpayable(p_account_id bigint, p_note jsonb, p_max numeric) from public;

-- p_taken: what the balance just lost (credits expired or taken back). Holds give way by at most
-- that much, never by all that is above the balance: a job's or an AI call's hold that a dispute left above the
-- balance (work under way, place_dispute_hold) is not given away by an unrelated expiry. On an
-- account with credits for some models, what no lot left may pay of the holds gives way first
-- (billing.give_way_unpayable), so a hold that can never be paid (a student's own hold over
-- credits for one model) does not keep them while a hold they could pay gives way in its place.
create or replace function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_short numeric;
  v_left numeric;
begin
  -- The caller holds the account lock. A dispute's own hold stays: it is what gives way last.
  select * into v_account from billing.accounts a where a.id = p_account_id;
  v_left := p_taken;
  if v_account.restricted_lots and v_account.held > 0 and v_left > 0 then
    v_left := v_left - billing.give_way_unpayable(p_account_id, p_note, v_left);
    select * into v_account from billing.accounts a where a.id = p_account_id;
  end if;
  v_short := least(v_account.held - greatest(v_account.balance, 0), v_left);
  if v_short > 0 then
    perform billing.shrink_holds(p_account_id, v_short, array['user', 'job', 'ai'], p_note);
  end if;
end;
$$;
comment on function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric) is 'Internal: when an account''s holds reserve more than its balance, or (credits for some models) more than the lots that may pay them (credits expired or taken back), its user, job and gateway holds give way, newest first, until they fit, by at most p_taken (what the balance just lost).';
revoke execute on function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric) from public;

-- ============================================================ restricted lots: which of an account's lots may pay for a charge

-- A lot option's applies_to as stored: null, or 1 to 20 distinct names, sorted.
create or replace function billing.applies_to_of(p_lot jsonb) returns text[]
language plpgsql stable
set search_path = ''
as $$
declare
  v_list text[];
begin
  if p_lot is null or p_lot -> 'applies_to' is null or jsonb_typeof(p_lot -> 'applies_to') = 'null' then
    return null;
  end if;
  if jsonb_typeof(p_lot -> 'applies_to') <> 'array'
     or jsonb_array_length(p_lot -> 'applies_to') not between 1 and 20
     or exists (select 1 from jsonb_array_elements(p_lot -> 'applies_to') x
                where jsonb_typeof(x) <> 'string' or x #>> '{}' !~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}[*]?$') then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'applies_to',
      'rule', '1 to 20 model names or families (a family ends in *), letters, digits and ._:/-'));
  end if;
  select array_agg(distinct x order by x) into v_list from jsonb_array_elements_text(p_lot -> 'applies_to') x;
  -- A typo would make credits that pay for nothing: each name must be a model on the rate card.
  if exists (select 1 from unnest(v_list) x
             where not exists (select 1 from billing.rate_cards r where billing.lot_pays_for(array[x], r.model))) then
    perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'applies_to',
      'rule', 'each name a model on the rate card, or a family of at least one'));
  end if;
  return v_list;
end;
$$;
comment on function billing.applies_to_of(p_lot jsonb) is 'Internal: the applies_to of a new lot''s options, validated (INVALID_LOT); null for a lot that pays for anything.';
revoke execute on function billing.applies_to_of(p_lot jsonb) from public;

-- Credits moved with a list of their own (an allowance or a sponsor code for some models): what
-- both lists allow. A family covers the names and narrower families it starts; null allows all.
create or replace function billing.narrow_applies_to(p_have text[], p_given text[]) returns text[]
language sql immutable
set search_path = ''
as $$
  select case when p_given is null then p_have when p_have is null then p_given else coalesce((
    select array_agg(distinct n order by n) from (
      select case when h = g or (right(h, 1) = '*' and starts_with(g, left(h, -1))) then g
                  when right(g, 1) = '*' and starts_with(h, left(g, -1)) then h end as n
      from unnest(p_have) h cross join unnest(p_given) g) x
    where n is not null), '{}') end
$$;
comment on function billing.narrow_applies_to(p_have text[], p_given text[]) is 'Internal: the models both lists allow (null: any); empty when none.';
revoke execute on function billing.narrow_applies_to(p_have text[], p_given text[]) from public;

-- What groups of credits cannot pay of the holds on them: the reserves less the most of them the
-- groups can pay together (a maximum flow from the holds' classes to the groups). Groups 1..k
-- have p_credits; hold class j reserves p_reserved[j] and may be paid by group i when
-- p_payable[(j - 1) * k + i]. Work of the order of classes × groups per path found.
create or replace function billing.hold_deficit(p_credits numeric[], p_reserved numeric[], p_payable boolean[])
returns numeric
language plpgsql immutable
set search_path = ''
as $$
declare
  k integer := cardinality(p_credits);
  d integer := coalesce(cardinality(p_reserved), 0);
  v_room numeric[] := p_credits;                  -- what each group has left to pay with
  v_due numeric[] := p_reserved;                  -- what each class still needs
  v_flow numeric[] := array_fill(0::numeric, array[greatest(d * k, 1)]);   -- class j paid by group i, at (j - 1) * k + i
  v_paid numeric := 0;
  v_class_from integer[];                         -- a class reached: the group whose payment it may move (0: it is due)
  v_group_from integer[];                         -- a group reached: the class that may pay with it
  v_queue integer[];
  v_head integer;
  v_end integer;
  v_push numeric;
  i integer;
  j integer;
begin
  -- Each class paid by the first groups that may, then paths that move payments to make room.
  for c in 1 .. d loop
    for g in 1 .. k loop
      exit when v_due[c] = 0;
      if p_payable[(c - 1) * k + g] and v_room[g] > 0 then
        v_push := least(v_due[c], v_room[g]);
        v_flow[(c - 1) * k + g] := v_flow[(c - 1) * k + g] + v_push;
        v_room[g] := v_room[g] - v_push;
        v_due[c] := v_due[c] - v_push;
        v_paid := v_paid + v_push;
      end if;
    end loop;
  end loop;
  loop
    v_class_from := array_fill(-1, array[greatest(d, 1)]);
    v_group_from := array_fill(-1, array[k]);
    v_queue := '{}';
    for c in 1 .. d loop
      if v_due[c] > 0 then
        v_class_from[c] := 0;
        v_queue := v_queue || c;
      end if;
    end loop;
    v_head := 1;
    v_end := 0;
    while v_head <= cardinality(v_queue) and v_end = 0 loop
      j := v_queue[v_head];
      v_head := v_head + 1;
      for g in 1 .. k loop
        if p_payable[(j - 1) * k + g] and v_group_from[g] = -1 then
          v_group_from[g] := j;
          if v_room[g] > 0 then
            v_end := g;
            exit;
          end if;
          for c in 1 .. d loop
            if v_class_from[c] = -1 and v_flow[(c - 1) * k + g] > 0 then
              v_class_from[c] := g;
              v_queue := v_queue || c;
            end if;
          end loop;
        end if;
      end loop;
    end loop;
    exit when v_end = 0;
    -- The path back from the group with room: each class it passes pays with the next group,
    -- less with the one before; as much as the room, the payments moved and the first class's due allow.
    v_push := v_room[v_end];
    i := v_end;
    loop
      j := v_group_from[i];
      exit when v_class_from[j] = 0;
      i := v_class_from[j];
      v_push := least(v_push, v_flow[(j - 1) * k + i]);
    end loop;
    v_push := least(v_push, v_due[j]);
    v_room[v_end] := v_room[v_end] - v_push;
    i := v_end;
    loop
      j := v_group_from[i];
      v_flow[(j - 1) * k + i] := v_flow[(j - 1) * k + i] + v_push;
      exit when v_class_from[j] = 0;
      i := v_class_from[j];
      v_flow[(j - 1) * k + i] := v_flow[(j - 1) * k + i] - v_push;
    end loop;
    v_due[j] := v_due[j] - v_push;
    v_paid := v_paid + v_push;
  end loop;
  return (select coalesce(sum(x), 0) from unnest(p_reserved) x) - v_paid;
end;
$$;
comment on function billing.hold_deficit(p_credits numeric[], p_reserved numeric[], p_payable boolean[]) is 'Internal: what groups of credits cannot pay together of the holds'' classes that may draw on them (the reserves less one bipartite maximum flow); 0 when the holds fit.';
revoke execute on function billing.hold_deficit(p_credits numeric[], p_reserved numeric[], p_payable boolean[]) from public;

-- The live holds on an account, by what may pay them (a gateway call's or a job's: the groups for
-- its model; a dispute's: those for anything and the lists of the lots it freezes; any other:
-- those for anything), one row per model or dispute freeze: its reserve and, for each of the
-- account's groups p_keys (one per list, '' for anything), whether it may pay. p_except_hold is
-- left out (the hold being captured); a job's or a gateway call's capture is work already done
-- when a dispute came after its hold, so, as on any account (a capture checks the balance, not
-- what disputes hold), no such dispute stops it (unless p_all_disputes: the plan asks first what
-- it can take leaving every dispute whole). A dispute older than the call or job counts: the
-- call was held beside it, so its capture draws what the dispute leaves, never its cover.
create or replace function billing.hold_classes(p_account_id bigint, p_keys text[], p_except_hold uuid default null,
  p_all_disputes boolean default false)
returns table (covers jsonb, model text, amount numeric, payable boolean[])
language plpgsql stable
set search_path = ''
as $$
declare
  v_except billing.holds;
begin
  select * into v_except from billing.holds h where h.id = p_except_hold;
  return query
  -- billing.lot_pays_for written out: called here for every group and hold class, its SET clause
  -- (a function that cannot be inlined) cost more than the test.
  select h.covers, h.model, h.amount,
    array(select g.list is null
                 or (h.model is not null and exists (select 1 from unnest(g.list) p where p = h.model
                       or (right(p, 1) = '*' and starts_with(h.model, left(p, -1)))))
                 or (h.covers is not null and g.list is not null
                     and exists (select 1 from jsonb_array_elements(h.covers) x where x = to_jsonb(g.list)))
          from (select i, case when p_keys[i] = '' then null else string_to_array(p_keys[i], ',') end as list
                from generate_subscripts(p_keys, 1) i) g
          order by g.i)
  from (select case when y.purpose = 'dispute' then coalesce(y.metadata -> 'covers', '[]') end as covers,
          case when y.purpose in ('ai', 'job') then y.metadata ->> 'model' end as model, sum(y.amount) as amount
        from billing.holds y
        where y.account_id = p_account_id and y.status = 'active' and y.id is distinct from p_except_hold
          and (y.purpose <> 'dispute' or p_all_disputes or coalesce(v_except.purpose, '') not in ('job', 'ai')
               or y.created_at < v_except.created_at)
        group by 1, 2) h;
end;
$$;
comment on function billing.hold_classes(p_account_id bigint, p_keys text[], p_except_hold uuid, p_all_disputes boolean) is 'Internal: an account''s live holds summed by model or dispute freeze, each with the groups of lists (p_keys) that may pay it.';
revoke execute on function billing.hold_classes(p_account_id bigint, p_keys text[], p_except_hold uuid, p_all_disputes boolean) from public;

-- What a new commitment for p_model (p_any: for any lot, a move) can draw from an account with
-- restricted lots without leaving a live hold unpayable, in spending order: `take` ([{lot_id,
-- amount}], at most p_amount in all, for the writer), `found` (its total) and `unusable` (the
-- credits that may not pay for p_model). The caller holds the account lock.
--
-- The account's open lots fall into groups, one per list (null: for anything), as many as it
-- holds. Each live hold can be paid by some groups: a gateway call's or a job's by those for its
-- model, a dispute's by those for anything and those whose lists it freezes (metadata.covers:
-- its reversal takes its own lots whatever they pay for, then only lots for anything), any other
-- by those for anything. The holds fit while, for every set T of groups, slack(T) = T's credits −
-- what the holds that only T can pay reserve ≥ 0 (Hall). Each lot, in spending order, gives the
-- most that keeps them all ≥ 0: the least slack over the sets holding its group, a minimum cut,
-- so its group's credits less what the other groups cannot pay of the holds
-- (billing.hold_deficit, a maximum flow). Taken in any order, this reaches the largest total that
-- fits (the sets form a polymatroid), so `found` < p_amount means no draw could pay it. When the
-- holds already do not fit (credits expired or taken back under them), a lot gives what leaves
-- what they lack as it was: never worse, and lists no short hold may use stay spendable. Groups
-- that share no hold (the lists of different models' holds) do not limit each other: each flow is
-- over the lot's part of the account only. A job's or a gateway call's capture that a dispute
-- came after may reach that dispute's cover (work under way), but only for what the lots that
-- leave every dispute whole cannot pay: the plan runs first with every dispute counted, then, for
-- the rest, without the later ones, taking first the lots no later dispute may be paid from, and
-- of those first the lists the fewest other holds may use (other work under way can leave the
-- first pass short, and then it takes nothing).
create or replace function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null)
returns jsonb
language plpgsql
set search_path = ''
-- The planner prices unnest and generate_subscripts at 100 to 1,000 rows, so the live holds'
-- sums looked like hundreds of thousands of cost units and were compiled by JIT on every charge:
-- 29 ms of a 0.1 ms query on an account with live holds (bench ledger's crowded cell).
set jit to 'off'
as $$
declare
  v_keys text[];
  v_credits numeric[];
  v_pays boolean[];
  v_reserved numeric[] := '{}'::numeric[];
  v_payable boolean[] := '{}'::boolean[];
  v_class record;
  v_reserves numeric;                             -- what the live holds reserve in all
  v_part integer[];                               -- per group: its part (the groups linked to it by holds), or 1 for all
  v_spare numeric[] := '{}'::numeric[];           -- per group: what it may give when last found
  v_mark numeric[] := '{}'::numeric[];            -- per group: v_taken of its part then
  v_taken numeric[] := '{}'::numeric[];           -- per part: what this plan has taken from it so far
  v_in integer[];                                 -- a part's groups
  v_of integer[];                                 -- a part's classes
  v_sub_reserved numeric[];                       -- their reserves
  v_sub_payable boolean[];                        -- which of the part's groups may pay each
  v_lack numeric[] := '{}'::numeric[];            -- per part: what its groups cannot pay of its holds
  v_lots bigint[] := '{}'::bigint[];
  v_amounts numeric[] := '{}'::numeric[];
  v_need numeric := p_amount;
  v_take jsonb;
  v_t numeric;
  v_lot record;
  v_tier integer := 0;                            -- 1: every dispute counted; 2: those after the captured hold not
  v_cover boolean[];                              -- per group: a dispute the second pass leaves out may be paid from it
  v_users integer[];                              -- per group: how many classes of other holds it may pay
begin
  -- No live hold to keep payable (nearly every charge): the draw is the spending order of the
  -- lots that may pay, in one statement; the same answer the plan below gives with no holds.
  if not exists (select 1 from billing.holds x where x.account_id = p_account_id and x.status = 'active'
                 and x.id is distinct from p_except_hold) then
    return (
      select jsonb_build_object(
        'take', coalesce(jsonb_agg(jsonb_build_object('lot_id', d.id, 'amount', least(d.remaining, p_amount - d.before))
                                   order by d.n) filter (where d.pays and d.before < p_amount), '[]'::jsonb),
        'found', trim_scale(least(p_amount, coalesce(sum(d.remaining) filter (where d.pays), 0)))::text,
        'unusable', trim_scale(coalesce(sum(d.remaining) filter (where not d.pays), 0))::text)
      from (select y.*, coalesce(sum(y.remaining) filter (where y.pays)
                                   over (order by y.n rows between unbounded preceding and 1 preceding), 0) as before
            from (select l.id, l.remaining, p_any or billing.lot_pays_for(l.applies_to, p_model) as pays,
                    row_number() over (order by l.frozen, l.priority, l.expires_at nulls last, l.granted_at, l.id) as n
                  from billing.lots l where l.account_id = p_account_id and l.open) y) d);
  end if;
  -- The groups, by list ('' for anything: the writer keeps lists sorted, so equal lists have one
  -- key), their credits, and whether they may pay for this commitment: per group, not per lot.
  select array_agg(g.key order by g.key), array_agg(g.credits order by g.key),
    array_agg(p_any or billing.lot_pays_for(case when g.key = '' then null else string_to_array(g.key, ',') end, p_model)
      order by g.key)
  into v_keys, v_credits, v_pays
  from (select coalesce(array_to_string(l.applies_to, ','), '') as key, sum(l.remaining) as credits from billing.lots l
        where l.account_id = p_account_id and l.open group by 1) g;

  <<tiers>>
  loop
    v_tier := v_tier + 1;
    if v_tier = 2 then
      v_cover := array(
        select exists (select 1 from billing.holds e join billing.holds y on y.account_id = e.account_id
                       where e.id = p_except_hold and e.purpose in ('job', 'ai') and y.status = 'active'
                         and y.purpose = 'dispute' and y.created_at >= e.created_at
                         and (g.key = '' or exists (select 1 from jsonb_array_elements(y.metadata -> 'covers') x
                                                    where x = to_jsonb(string_to_array(g.key, ',')))))
        from unnest(v_keys) with ordinality g(key, i) order by g.i);
    end if;
    exit tiers when v_tier > 2 or v_need <= 0 or (v_tier = 2 and true <> all(v_cover));
    v_reserved := '{}'; v_payable := '{}'; v_spare := '{}'; v_mark := '{}'; v_taken := '{}'; v_lack := '{}';
    -- What the live holds reserve, one class per set of groups that may pay them, however many
    -- holds; a hold no group can pay any more (credits expired or taken back under it) constrains nothing.
    for v_class in
      select c.payable, sum(c.amount) as amount from billing.hold_classes(p_account_id, v_keys, p_except_hold, v_tier = 1) c
      where true = any(c.payable)
      group by 1
    loop
      v_reserved := v_reserved || v_class.amount;
      v_payable := v_payable || v_class.payable;      -- class j's row of k flags, one after another
    end loop;
    v_reserves := (select coalesce(sum(x), 0) from unnest(v_reserved) x);
    if v_tier = 2 then  -- only the second tier orders by it
      v_users := array(select (select count(*) from generate_subscripts(v_reserved, 1) c
                               where v_payable[(c - 1) * cardinality(v_keys) + i])
                       from generate_subscripts(v_keys, 1) i order by i);
    end if;
    -- The parts: groups linked by a class both may pay (each group first its own part, then each
    -- class's groups joined under the lowest). What the holds lack is the sum of what each part's
    -- lack, so a take from one part changes nothing in another.
    v_part := array(select i from generate_subscripts(v_keys, 1) i order by i);
    for c in 1 .. cardinality(v_reserved) loop
      v_in := array(select distinct v_part[i] from generate_subscripts(v_keys, 1) i
                    where v_payable[(c - 1) * cardinality(v_keys) + i]);
      if cardinality(v_in) > 1 then
        v_part := array(select case when v_part[i] = any(v_in) then (select min(x) from unnest(v_in) x) else v_part[i] end
                        from generate_subscripts(v_keys, 1) i order by i);
      end if;
    end loop;

    for v_lot in
      select x.id, case when v_tier = 1 then x.remaining   -- the second tier: what the first left of each lot
                        else x.remaining - coalesce((select sum(t.amount) from unnest(v_lots, v_amounts) t(lot_id, amount)
                                                     where t.lot_id = x.id), 0) end as remaining, x.grp from (
        select l.id, l.remaining, l.frozen, l.priority, l.expires_at, l.granted_at,
          array_position(v_keys, coalesce(array_to_string(l.applies_to, ','), '')) as grp
        from billing.lots l where l.account_id = p_account_id and l.open) x
      where v_pays[x.grp]
      order by v_tier = 2 and v_cover[x.grp], case when v_tier = 2 then v_users[x.grp] end, x.frozen, x.priority,
        x.expires_at nulls last, x.granted_at, x.id
    loop
      exit when v_need <= 0;
      v_t := least(v_lot.remaining, v_need);
      -- What the lot's group may give is at least its credits less every reserve, and at least what
      -- it was found to be less all taken from its part since (a take lowers no set's slack by more
      -- than itself): the flow runs only when the lot asks for more than both, so a run of small
      -- lots costs a flow per list, not per lot. It is over the lot's part: its groups (the lot's
      -- counted as empty) and the classes they may pay.
      if cardinality(v_reserved) > 0
         and v_t > greatest(v_credits[v_lot.grp] - v_reserves,
                            coalesce(v_spare[v_lot.grp] - (coalesce(v_taken[v_part[v_lot.grp]], 0) - v_mark[v_lot.grp]), 0)) then
        v_in := array(select i from generate_subscripts(v_keys, 1) i where v_part[i] = v_part[v_lot.grp] order by i);
        v_of := array(select c from generate_subscripts(v_reserved, 1) c
                      where exists (select 1 from unnest(v_in) i where v_payable[(c - 1) * cardinality(v_keys) + i]) order by c);
        v_sub_reserved := array(select v_reserved[c] from unnest(v_of) with ordinality x(c, n) order by n);
        v_sub_payable := array(select v_payable[(c - 1) * cardinality(v_keys) + i]
                               from unnest(v_of) with ordinality x(c, n), unnest(v_in) with ordinality y(i, m) order by n, m);
        -- What the part lacks stays as it is through the plan: no take makes it larger.
        if v_lack[v_part[v_lot.grp]] is null then
          v_lack[v_part[v_lot.grp]] := billing.hold_deficit(
            array(select v_credits[i] from unnest(v_in) with ordinality x(i, n) order by n), v_sub_reserved, v_sub_payable);
        end if;
        v_spare[v_lot.grp] := v_credits[v_lot.grp] - (billing.hold_deficit(
            array(select case when i = v_lot.grp then 0 else v_credits[i] end from unnest(v_in) with ordinality x(i, n) order by n),
            v_sub_reserved, v_sub_payable) - v_lack[v_part[v_lot.grp]]);
        v_mark[v_lot.grp] := coalesce(v_taken[v_part[v_lot.grp]], 0);
        v_t := least(v_t, v_spare[v_lot.grp]);
      end if;
      if v_t > 0 then
        v_lots := v_lots || v_lot.id;
        v_amounts := v_amounts || v_t;
        v_need := v_need - v_t;
        v_taken[v_part[v_lot.grp]] := coalesce(v_taken[v_part[v_lot.grp]], 0) + v_t;
        v_credits[v_lot.grp] := v_credits[v_lot.grp] - v_t;
      end if;
    end loop;
  end loop tiers;
  -- A lot both tiers took from is one take.
  v_take := coalesce((select jsonb_agg(jsonb_build_object('lot_id', x.lot_id, 'amount', x.amount) order by x.n)
                      from (select t.lot_id, sum(t.amount) as amount, min(t.n) as n
                            from unnest(v_lots, v_amounts) with ordinality t(lot_id, amount, n) group by t.lot_id) x),
                     '[]'::jsonb);
  return jsonb_build_object('take', v_take, 'found', trim_scale(p_amount - v_need)::text,
    'unusable', trim_scale(coalesce((select sum(v_credits[i]) from generate_subscripts(v_keys, 1) i where not v_pays[i]), 0))::text);
end;
$$;
comment on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) is 'Internal: for an account with restricted lots, what a charge for p_model (or a move, p_any) may draw, in spending order, keeping every live hold payable: {take, found, unusable}.';
revoke execute on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) from public;

-- A charge, hold or move on an account with restricted lots: the lots it draws ({take} for the
-- writer), or INSUFFICIENT_CREDITS naming what could not be used and why. A pooled wallet's
-- figures are never in the refusal (a member may be the one refused).
create or replace function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_plan jsonb := billing.plan_lot_draw(p_account.id, p_model, p_amount, p_any, p_except_hold);
  v_pool boolean := p_account.org_id is not null and p_account.member_id is null;
begin
  if (v_plan ->> 'found')::numeric < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_strip_nulls(jsonb_build_object(
      'required', trim_scale(p_amount)::text,
      'available', case when not v_pool then
        trim_scale(least((v_plan ->> 'found')::numeric, greatest(p_account.balance - p_account.held, 0)))::text end,
      'debt', case when not v_pool then billing.in_debt(p_account) end,
      'model', p_model,
      -- Credits that exist but may not pay for this model.
      'restricted', case when not v_pool then v_plan ->> 'unusable' end,
      'reason', case when v_pool then null
                     when (v_plan ->> 'unusable')::numeric > 0 then 'some credits may only pay for other models'
                     else 'credits are held for other models' end)));
  end if;
  return jsonb_build_object('take', v_plan -> 'take');
end;
$$;
comment on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) is 'Internal: the lots a movement on an account with restricted lots draws, or INSUFFICIENT_CREDITS (402) with the credits that could not pay for the model (restricted) and why.';
revoke execute on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) from public;

-- ============================================================ spend caps: the room a posting takes and gives back

create or replace function billing.cap_period(p_period text, p_time_zone text, p_at timestamptz, out starts timestamptz, out resets timestamptz)
language plpgsql stable
set search_path = ''
as $$
begin
  -- A term has no calendar: its start is on the cap row, its end on the organisation.
  if p_period <> 'term' then
    starts := date_trunc(p_period, p_at at time zone p_time_zone) at time zone p_time_zone;
    resets := (date_trunc(p_period, p_at at time zone p_time_zone) + ('1 ' || p_period)::interval) at time zone p_time_zone;
  end if;
end
$$;
comment on function billing.cap_period(p_period text, p_time_zone text, p_at timestamp with time zone, out starts timestamp with time zone, out resets timestamp with time zone) is 'Internal: the cap period containing p_at (local midnight, ISO week from Monday, month), and when the next starts.';
revoke execute on function billing.cap_period(p_period text, p_time_zone text, p_at timestamp with time zone, out starts timestamp with time zone, out resets timestamp with time zone) from public;

-- A cap's percent alerts, after its period's spending moved (p_cap is the row as updated): each
-- percent fires once per period when reached, and re-arms when spending falls back below it
-- (a hold released) or a new period starts. No statement runs unless something changes.
create or replace function billing.cap_alerts_after(p_cap billing.spend_caps) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_starts timestamptz := date_trunc(p_cap.period, now() at time zone p_cap.time_zone) at time zone p_cap.time_zone;
  v_spent numeric(38, 18) := case when p_cap.period_start = v_starts then p_cap.spent else 0 end;
  v_fired integer[] := case when p_cap.alerts_period = v_starts then p_cap.alerts_fired else '{}' end;
  v_reached integer[] := '{}'::integer[];
  v_pct integer;
  v_user uuid;
begin
  -- Plain expressions, no query: this runs on every capped debit of an account with cap alerts.
  foreach v_pct in array p_cap.alert_percents loop
    if v_spent * 100 >= p_cap.amount * v_pct then
      v_reached := v_reached || v_pct;
    end if;
  end loop;
  if v_reached = v_fired and p_cap.alerts_period = v_starts then
    return;
  end if;
  update billing.spend_caps x set alerts_fired = v_reached, alerts_period = v_starts where x.id = p_cap.id;
  if exists (select 1 from unnest(v_reached) pct where not pct = any (v_fired)) then
    select a.user_id into v_user from billing.accounts a where a.id = p_cap.account_id;
    -- Keyed by the transaction's time too: a percent re-armed and reached again fires again.
    perform billing.queue_user_alert(v_user, 'cap:' || p_cap.id || ':' || pct || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'cap_used', 'percent', pct, 'period', p_cap.period, 'model', p_cap.model,
        'cap', trim_scale(p_cap.amount)::text, 'spent', trim_scale(v_spent)::text))
    from unnest(v_reached) pct where not pct = any (v_fired);
  end if;
end;
$$;
comment on function billing.cap_alerts_after(p_cap billing.spend_caps) is 'Internal: fires (once per period and crossing) or re-arms the percent alerts of a cap whose spending moved.';
revoke execute on function billing.cap_alerts_after(p_cap billing.spend_caps) from public;

create or replace function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid default null,
  p_count boolean default true)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  c billing.spend_caps;
  v_counted boolean := false;
begin
  for c in
    with x as (
      select x.id, x.amount,
        case when x.period = 'term' or x.period_start = date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone
             then x.spent else 0 end + p_amount as spent_now,
        case when x.period = 'term' then x.period_start
             else date_trunc(x.period, now() at time zone x.time_zone) at time zone x.time_zone end as starts
      from billing.spend_caps x
      where x.account_id = p_account_id and (x.model is null or x.model = p_model)
        and (x.member_id is null or x.member_id = p_member)
    ), fits as (
      select x.*, bool_and(x.spent_now <= x.amount) over () as all_fit from x
    )
    update billing.spend_caps s set period_start = f.starts, spent = f.spent_now
    from fits f where s.id = f.id and f.all_fit and p_count
    returning s.*
  loop
    v_counted := true;
    if c.alert_percents <> '{}' then
      perform billing.cap_alerts_after(c);
    end if;
  end loop;
  if v_counted then
    return null;
  end if;
  return (select jsonb_build_object('cap_id', x.id::text, 'period', x.period, 'time_zone', x.time_zone, 'model', x.model,
      'cap', trim_scale(x.amount)::text, 'spent', trim_scale(case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end)::text,
      'required', trim_scale(p_amount)::text, 'resets_at', billing.json_time(coalesce(p.resets,
        (select o.term_ends_at from billing.accounts a join billing.orgs o on o.id = a.org_id where a.id = x.account_id))))
    from billing.spend_caps x cross join lateral billing.cap_period(x.period, x.time_zone, now()) p
    where x.account_id = p_account_id and (x.model is null or x.model = p_model)
      and (x.member_id is null or x.member_id = p_member)
      and case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end + p_amount > x.amount
    order by x.amount - case when x.period = 'term' or x.period_start = p.starts then x.spent else 0 end, x.id
    limit 1);
end;
$$;
comment on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid, p_count boolean) is 'Internal: counts an amount against the applicable caps (the account''s, and the member''s on a pooled wallet) if all have room (p_count false: only asks); else returns the cap it would exceed.';
revoke execute on function billing.take_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_member uuid, p_count boolean) from public;

create or replace function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamptz,
  p_member uuid default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  c billing.spend_caps;
begin
  for c in
    update billing.spend_caps x set spent = greatest(x.spent - p_amount, 0)
    where p_amount > 0 and x.account_id = p_account_id and (x.model is null or x.model = p_model)
      and (x.member_id is null or x.member_id = p_member) and x.created_at <= p_placed_at
      and case when x.period = 'term' then x.period_start <= p_placed_at
               else x.period_start = date_trunc(x.period, p_placed_at at time zone x.time_zone) at time zone x.time_zone end
    returning x.*
  loop
    if c.alert_percents <> '{}' then
      perform billing.cap_alerts_after(c);
    end if;
  end loop;
end;
$$;
comment on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid) is 'Internal: gives back what a hold counted against caps and did not spend, in the period it was placed.';
revoke execute on function billing.return_cap_room(p_account_id bigint, p_amount numeric, p_model text, p_placed_at timestamp with time zone, p_member uuid) from public;

create or replace function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_hold.purpose <> 'dispute' and p_unspent > 0
     and (select a.caps from billing.accounts a where a.id = p_hold.account_id) > 0 then
    perform billing.return_cap_room(p_hold.account_id, p_unspent, p_hold.metadata ->> 'model', p_hold.created_at,
      p_hold.member_id);
  end if;
end;
$$;
comment on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) is 'Internal: returns a finished hold''s unspent amount to its caps.';
revoke execute on function billing.return_hold_cap_room(p_hold billing.holds, p_unspent numeric) from public;

-- ============================================================ what a posting sets off: the low-balance alert and auto-recharge

-- The low-balance alert of a locked account, after its balance or held amount moved: fires on
-- the way down through the threshold, re-arms on the way back up.
create or replace function billing.check_low_balance(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_available numeric(38, 18) := a.balance - a.held;
begin
  if a.low_balance_threshold is null then
    return;
  end if;
  if v_available < a.low_balance_threshold and not a.low_balance_fired then
    update billing.accounts x set low_balance_fired = true where x.id = a.id;
    -- The runway (days left at the last 7 days' pace) is read only when the alert fires.
    perform billing.queue_user_alert(a.user_id, 'low-balance:' || a.id || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'balance_below', 'threshold', trim_scale(a.low_balance_threshold)::text,
        'available', trim_scale(v_available)::text, 'runway_days', (billing.runway(a.id) ->> 'days')::bigint));
  elsif v_available >= a.low_balance_threshold and a.low_balance_fired then
    update billing.accounts x set low_balance_fired = false where x.id = a.id;
  end if;
end;
$$;
comment on function billing.check_low_balance(a billing.accounts) is 'Internal: fires (once per crossing) or re-arms the low-balance alert of a locked account.';
revoke execute on function billing.check_low_balance(a billing.accounts) from public;

-- After a locked account's available amount moved: below the threshold and armed → one
-- recharge (disarmed until available is back at or above it); the monthly limits apply.
create or replace function billing.check_auto_recharge(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
declare
  s billing.auto_recharge;
  v_month timestamptz := date_trunc('month', now());
  v_count integer;
  v_cents bigint;
  v_price integer;
begin
  if a.auto_recharge_below is null then
    return;
  elsif a.balance - a.held >= a.auto_recharge_below then
    if not a.auto_recharge_armed then
      update billing.accounts x set auto_recharge_armed = true where x.id = a.id;
    end if;
    return;
  elsif not a.auto_recharge_armed then
    return; -- this crossing has its recharge already
  end if;
  update billing.accounts x set auto_recharge_armed = false where x.id = a.id;
  select * into s from billing.auto_recharge r where r.user_id = a.user_id;
  select k.price_cents into v_price from billing.credit_packages k where k.id = s.package_id and k.active;
  if not found then
    -- A retired package sells to no one, this student's recharges included.
    insert into billing.auto_recharge_audit (user_id, actor, change)
    values (a.user_id, null, jsonb_build_object('skipped', 'package_retired', 'package_id', s.package_id));
    return;
  end if;
  select count(*), coalesce(sum(r.price_cents), 0) into v_count, v_cents from billing.recharges r
  where r.user_id = a.user_id and r.created_at >= v_month and r.status <> 'failed';
  if v_count + 1 > s.monthly_max_count or v_cents + v_price > s.monthly_max_cents then
    insert into billing.auto_recharge_audit (user_id, actor, change)
    values (a.user_id, null, jsonb_build_object('skipped', 'monthly_limit', 'count', v_count, 'cents', v_cents));
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('auto_recharge', a.user_id, 'recharge-limit:' || a.user_id || ':' || billing.json_time(v_month),
      jsonb_build_object('event', 'monthly_limit', 'count', v_count, 'cents', v_cents))
    on conflict (dedupe_key) do nothing;
    return;
  end if;
  insert into billing.recharges (user_id, package_id, package_version, price_cents, currency)
  select a.user_id, k.id, k.version, k.price_cents, k.currency from billing.credit_packages k where k.id = s.package_id
  on conflict do nothing; -- one in flight already
end;
$$;
comment on function billing.check_auto_recharge(a billing.accounts) is 'Internal: queues one recharge when a locked account''s available amount crosses below its threshold.';
revoke execute on function billing.check_auto_recharge(a billing.accounts) from public;

-- Everything that watches a locked account's available amount, after it moved.
-- (a is the locked row as it is now: no need to read it again.)
create or replace function billing.on_available_change(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform billing.check_low_balance(a);
  perform billing.check_auto_recharge(a);
end;
$$;
comment on function billing.on_available_change(a billing.accounts) is 'Internal: the low-balance alert and auto-recharge of a locked account whose available amount moved.';
revoke execute on function billing.on_available_change(a billing.accounts) from public;
