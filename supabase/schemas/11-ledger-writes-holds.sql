-- The writer's operations and steps for holds and what they reserve (11-ledger-writer.sql): a hold
-- placed (place_hold), holds ended (end_holds), a capture's draw (capture_take, for
-- billing.post_debit), what holds give way to an excess (give_way_to_excess), and what holds
-- reserved of a lot that expires or rolls over, shed or carried. scripts/local/sql-shape.ts
-- counts them as the one writer.

-- A capture's draw (billing.post_debit): the hold's reservation returns to its lots, and the
-- capture takes p_amount of what it reserved, in the spending order of those lots. A capture is
-- never more than its hold (capture_hold refuses it; an excess is a charge of its own).
create or replace function billing.capture_take(p_hold_id uuid, p_amount numeric) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_take jsonb;
begin
  with back as (
    update billing.lots l set reserved = l.reserved - hl.amount
    from billing.hold_lots hl where hl.hold_id = p_hold_id and l.id = hl.lot_id
    returning l.id, hl.amount, l.spending_order
  ), ordered as (
    select b.id, b.amount, coalesce(sum(b.amount) over (order by b.spending_order
                                      rows between unbounded preceding and 1 preceding), 0) as before
    from back b
  )
  select jsonb_agg(jsonb_build_object('lot_id', o.id, 'amount', least(o.amount, p_amount - o.before))
                   order by o.before)
  into v_take from ordered o where o.before < p_amount;
  if (select coalesce(sum((x ->> 'amount')::numeric), 0) from jsonb_array_elements(v_take) x) <> p_amount then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a capture posts at most what its hold reserved"}');
  end if;
  return v_take;
end;
$$;
comment on function billing.capture_take(p_hold_id uuid, p_amount numeric) is 'Internal (the writer''s): returns a hold''s reservation to its lots and answers the lots its capture of p_amount takes, in spending order.';
revoke execute on function billing.capture_take(p_hold_id uuid, p_amount numeric) from public;

-- The writer's hold (TigerBeetle's pending transfer), on an account the caller locked, having
-- made the refusals only it can know: it reserves free credits of the lots that may pay for its
-- model (a student's own hold: lots for any model; a call's fallback models: lots that may pay
-- for each of them too), in spending order (billing.pick_lots). What may be held is what they
-- give, at most balance − held (a debt waits in front of credits for some models), and what its
-- caps leave (counted against them; a call's fallback models each count). Given a minimum, the
-- most that fits between it and p_amount: a refusal's figure (what the account has for the model,
-- or what its tightest cap leaves) is tried next, at most one try for the credits and one for a
-- cap. Given a step (the price of one more token of answer), that figure is rounded down to whole
-- steps above the minimum (and to the 18 decimals a hold keeps): the hold is then the price of
-- what it grants, never a figure of the account's own, which a school member may not learn of the
-- pool that pays. A platform account reserves nothing. Refused: INSUFFICIENT_CREDITS or
-- SPEND_CAP_REACHED, nothing written.
create or replace function billing.place_hold(
  p_account_id bigint,
  p_amount numeric,
  p_idempotency_key text,
  p_expires_at timestamptz,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_member uuid default null,
  p_min_amount numeric default null,             -- given, the most that fits between it and p_amount
  p_step numeric default null                    -- given, that most in whole steps above p_min_amount
) returns billing.holds
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_id uuid := gen_random_uuid();
  v_acct billing.accounts;
  v_hold billing.holds;
  v_refusal billing.posted_transfer;
  v_model text := case when p_purpose in ('ai', 'job') then p_metadata ->> 'model' end;
  v_fallbacks text[];
  v_pick_lots bigint[] := '{}'::bigint[];
  v_pick_parts numeric[] := '{}'::numeric[];
  v_fits numeric;
begin
  -- Fallback models (docs/ai-gateway.md § Fallback models): the test first, most calls name none.
  if p_purpose = 'ai' and p_metadata ? 'fallbacks' then
    v_fallbacks := array(select jsonb_array_elements_text(p_metadata -> 'fallbacks'));
  end if;
  select * into v_acct from billing.accounts a where a.id = p_account_id and a.code is null;
  loop
    exit when v_acct.id is null;
    select coalesce(array_agg(p.lot_id), '{}'::bigint[]), coalesce(array_agg(p.amount), '{}'::numeric[])
    into v_pick_lots, v_pick_parts from billing.pick_lots(v_acct.id, v_model, p_amount, v_fallbacks) p;
    v_refusal := billing.spend_refusal(v_acct.id, p_amount,
      least(v_acct.balance - v_acct.held, coalesce((select sum(x) from unnest(v_pick_parts) x), 0)), v_acct.caps > 0,
      p_metadata ->> 'model', p_member, v_fallbacks);
    v_fits := case v_refusal.result when 'insufficient' then (v_refusal.refusal ->> 'available')::numeric
      when 'capped' then (v_refusal.refusal ->> 'cap')::numeric - (v_refusal.refusal ->> 'spent')::numeric end;
    exit when p_min_amount is null or v_fits is null or v_fits < p_min_amount or v_fits >= p_amount;
    p_amount := case when p_step > 0 then trunc(p_min_amount + floor((v_fits - p_min_amount) / p_step) * p_step, 18)
      else v_fits end;
  end loop;
  if v_refusal.result = 'insufficient' then
    -- Credits for some models: which may not pay for the hold's model, and why (a pool's never told).
    -- What was needed: the least the hold may be, when it names one.
    perform billing.raise_error('INSUFFICIENT_CREDITS', v_refusal.refusal || jsonb_build_object('debt', billing.in_debt(v_acct))
      || case when p_min_amount is not null then jsonb_build_object('required', trim_scale(p_min_amount)::text)
              else '{}'::jsonb end
      || case when v_acct.restricted_lots and not (v_acct.org_id is not null and v_acct.member_id is null)
              then billing.model_refusal(v_acct, v_model) else '{}'::jsonb end);
  elsif v_refusal.result = 'capped' then
    perform billing.raise_error('SPEND_CAP_REACHED', v_refusal.refusal
      || case when p_min_amount is not null then jsonb_build_object('required', trim_scale(p_min_amount)::text)
              else '{}'::jsonb end);
  end if;
  insert into billing.holds (id, account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose, member_id)
  values (v_id, p_account_id, p_amount, p_idempotency_key, p_correlation_id, p_metadata, p_expires_at, p_purpose, p_member)
  returning * into v_hold;
  if cardinality(v_pick_lots) > 0 then
    insert into billing.hold_lots (hold_id, lot_id, amount)
    select v_id, x.lot_id, x.amount from unnest(v_pick_lots, v_pick_parts) x(lot_id, amount);
    update billing.lots l set reserved = l.reserved + x.amount
    from unnest(v_pick_lots, v_pick_parts) x(lot_id, amount) where l.id = x.lot_id;
    update billing.accounts a set held = a.held + p_amount, next_hold_expiry = least(a.next_hold_expiry, p_expires_at)
    where a.id = p_account_id
    returning * into v_acct;
    if v_acct.low_balance_threshold is not null or v_acct.auto_recharge_below is not null then
      perform billing.watch_account(v_acct.id, v_acct.balance - v_acct.held, v_acct.auto_recharge_below);
    end if;
  end if;
  return v_hold;
end;
$$;
comment on function billing.place_hold(p_account_id bigint, p_amount numeric, p_idempotency_key text, p_expires_at timestamp with time zone, p_purpose text, p_correlation_id text, p_metadata jsonb, p_member uuid, p_min_amount numeric, p_step numeric) is 'Internal: the writer''s hold: places a hold of a purpose on an account the caller has locked (the account''s held amount grows by it); given p_min_amount, the most that fits between it and p_amount (in whole p_steps above it, given one).';
revoke execute on function billing.place_hold(p_account_id bigint, p_amount numeric, p_idempotency_key text, p_expires_at timestamp with time zone, p_purpose text, p_correlation_id text, p_metadata jsonb, p_member uuid, p_min_amount numeric, p_step numeric) from public;

-- The writer's void (TigerBeetle's void_pending_transfer): active holds end unspent, `released`
-- or `expired`. Each keeps its amount (the record of what it held) and its hold_lots (what each
-- lot gave it, read by billing.hold_ended); their reservation returns to the lots and held drops
-- by them (what a refund claimed of it: billing.keep_claims). Under the caller's account lock.
create or replace function billing.end_holds(p_holds uuid[], p_status text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_ended integer;
begin
  if p_status not in ('released', 'expired') then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold ends released or expired"}');
  end if;
  with ended as (
    update billing.holds h set status = p_status, finished_at = now()
    where h.id = any(p_holds) and h.status = 'active'
    returning h.id, h.account_id, h.amount
  ), lots_back as (
    update billing.lots l set reserved = l.reserved - r.amount
    from (select hl.lot_id, sum(hl.amount) as amount from billing.hold_lots hl join ended x on x.id = hl.hold_id
          group by hl.lot_id) r
    where l.id = r.lot_id
  ), held as (
    update billing.accounts a set held = a.held - d.amount,
      next_hold_expiry = case when a.held = d.amount then null else a.next_hold_expiry end  -- none left to fall due
    from (select x.account_id, sum(x.amount) as amount from ended x group by x.account_id) d
    where a.id = d.account_id and a.code is null
  )
  select count(*) into v_ended from ended;
  if v_ended <> cardinality(p_holds) then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is voided only while active"}');
  end if;
end;
$$;
comment on function billing.end_holds(p_holds uuid[], p_status text) is 'Internal: the writer''s void: ends active holds unspent (released or expired), their reservations returned, under the caller''s account lock.';
revoke execute on function billing.end_holds(p_holds uuid[], p_status text) from public;

-- What a provider billed past a hold (billing.charge_hold_at) beyond the free credits that may pay
-- for its model: the account's live holds give up what they reserved of such lots, the newest hold
-- first and a reservation a refund claimed last, up to that much (a hold left with nothing ends
-- released; given_to_excess says how much it gave), so the charge draws them and no debt stands
-- beside credits a live hold reserved that could pay it. Under the caller's account lock. Returns
-- the holds that gave, as [{hold, given}], for their cap room.
create or replace function billing.give_way_to_excess(p_account_id bigint, p_model text, p_amount numeric)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_short numeric(38, 18);
  v_gave jsonb := '[]'::jsonb;
begin
  v_short := p_amount - coalesce((select sum(l.remaining - l.reserved) from billing.lots l
    where l.account_id = p_account_id and l.open and not l.frozen and l.remaining > l.reserved
      and not coalesce(l.expires_at <= now(), false)
      and (l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model))), 0);
  if v_short > 0 then
    with part as (
      select hl.hold_id, hl.lot_id, hl.amount,
        sum(hl.amount) over (order by t.claimed, h.created_at desc, h.id desc, hl.lot_id) as upto
      from billing.holds h join billing.hold_lots hl on hl.hold_id = h.id
      join billing.lots l on l.id = hl.lot_id and not coalesce(l.expires_at <= now(), false)
        and (l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model))
      cross join lateral (select exists (select 1 from billing.lot_take_backs x
                                         where x.hold_id = hl.hold_id and x.lot_id = hl.lot_id) as claimed) t
      where h.account_id = p_account_id and h.status = 'active' and h.purpose <> 'claims'  -- a refund's already
    ), given as (
      select part.hold_id, part.lot_id, part.amount as had, least(part.amount, v_short - (part.upto - part.amount)) as amount
      from part where part.upto - part.amount < v_short
    ), gone as (
      delete from billing.hold_lots hl using given g where hl.hold_id = g.hold_id and hl.lot_id = g.lot_id and g.amount = g.had
    ), kept as (
      update billing.hold_lots hl set amount = hl.amount - g.amount
      from given g where hl.hold_id = g.hold_id and hl.lot_id = g.lot_id and g.amount < g.had
    ), lots_back as (
      update billing.lots l set reserved = l.reserved - x.amount
      from (select g.lot_id, sum(g.amount) as amount from given g group by g.lot_id) x where l.id = x.lot_id
    ), shrunk as (
      update billing.holds h
      set amount = case when h.amount > x.amount then h.amount - x.amount else h.amount end,
        status = case when h.amount > x.amount then 'active' else 'released' end,
        finished_at = case when h.amount > x.amount then null else now() end,
        metadata = coalesce(h.metadata, '{}'::jsonb) || jsonb_build_object('given_to_excess',
          trim_scale(x.amount + coalesce((h.metadata ->> 'given_to_excess')::numeric, 0))::text)
      from (select g.hold_id, sum(g.amount) as amount from given g group by g.hold_id) x
      where h.id = x.hold_id
      returning h.*, x.amount as given
    ), held as (
      -- (A hold that ended with a refund's take-back pending on it leaves it to the tick,
      -- billing.take_back_claims.)
      update billing.accounts a set held = a.held - x.amount
      from (select sum(s.given) as amount from shrunk s) x
      where a.id = p_account_id and x.amount is not null
    )
    select coalesce(jsonb_agg(jsonb_build_object('hold', to_jsonb(s) - 'given', 'given', s.given)), '[]') into v_gave from shrunk s;
  end if;
  return v_gave;
end;
$$;
comment on function billing.give_way_to_excess(p_account_id bigint, p_model text, p_amount numeric) is 'Internal (the writer''s): for an excess of p_amount beyond the free credits that may pay for p_model, the account''s live holds give up their reservations of such lots, newest first (claimed last); the holds that gave, [{hold, given}].';
revoke execute on function billing.give_way_to_excess(p_account_id bigint, p_model text, p_amount numeric) from public;

-- A hold's end (a capture's rest, a release, its TTL) never takes back what a refund claimed of
-- its reservation (billing.lot_take_backs): no capture, release, finish or settle reaches refunds.
-- What it returned of a claimed lot, up to the claims, stays reserved, never free, in a hold of
-- its own (purpose 'claims'; the ended hold's account, member and model, and the start its cap
-- room was counted at, `cap_counted_at`, so that room comes back as the ended hold's would have;
-- its own created_at is now, as every reading of the past sees it; its expires_at when the hold
-- ended, its TTL or now: what it keeps was returned then), and the claims move onto it.
-- No settle ends it: the worker's tick does, within the minute, and takes the claims back
-- (billing.take_back_claims); it also takes what claims wait on an ended hold that returned none
-- of them. The writer's step, under the caller's account lock; returns what it kept reserved.
create or replace function billing.keep_claims(p_hold billing.holds, p_capture bigint)
returns numeric
language plpgsql
set search_path = ''
as $$
declare
  v_id uuid := gen_random_uuid();
  v_kept numeric(38, 18);
begin
  if not exists (select 1 from billing.lot_take_backs t where t.hold_id = p_hold.id) then
    return 0;
  end if;
  with kept as (
    -- Of each claimed lot still open: what the hold reserved, less what its capture took of it.
    select c.lot_id, least(c.amount, hl.amount - coalesce(la.amount, 0)) as amount
    from (select t.lot_id, sum(t.amount) as amount from billing.lot_take_backs t where t.hold_id = p_hold.id
          group by t.lot_id) c
    join billing.hold_lots hl on hl.hold_id = p_hold.id and hl.lot_id = c.lot_id
    join billing.lots l on l.id = c.lot_id and l.open
    left join billing.lot_allocations la on la.transfer_id = p_capture and la.lot_id = c.lot_id
  ), placed as (
    insert into billing.hold_lots (hold_id, lot_id, amount)
    select v_id, k.lot_id, k.amount from kept k where k.amount > 0
    returning lot_id, amount
  ), lots_kept as (
    update billing.lots l set reserved = l.reserved + p.amount from placed p where l.id = p.lot_id
  )
  select coalesce(sum(p.amount), 0) into v_kept from placed p;
  if v_kept > 0 then
    insert into billing.holds (id, account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose,
                               member_id)
    values (v_id, p_hold.account_id, v_kept, 'claims:' || p_hold.id, p_hold.correlation_id,
      coalesce(p_hold.metadata, '{}'::jsonb) || jsonb_build_object('claims_of', p_hold.id,
        'cap_counted_at', coalesce(p_hold.metadata -> 'cap_counted_at', to_jsonb(p_hold.created_at))),
      least(p_hold.expires_at, now()), 'claims', p_hold.member_id);  -- when the hold ended: its TTL, or now
    update billing.lot_take_backs t set hold_id = v_id where t.hold_id = p_hold.id;
  end if;
  update billing.accounts a set held = a.held + v_kept where a.id = p_hold.account_id and v_kept > 0;
  return v_kept;
end;
$$;
comment on function billing.keep_claims(p_hold billing.holds, p_capture bigint) is 'Internal (the writer''s): after a hold ended (captured by p_capture, or released), what it returned that refunds claimed stays reserved by a claims hold that takes them back when it ends; what it kept.';
revoke execute on function billing.keep_claims(p_hold billing.holds, p_capture bigint) from public;

-- A lot leaves by name with what holds reserved of it (billing.post_transfers: its expiry, a
-- plan's rollover out, `first`). What rolls over stays reserved: it is carried into the new lot
-- (billing.carry_reservations); by the rest the holds shrink, the newest first (given_to_expiry;
-- one left with nothing ends released, its amount kept as the record), and held drops with them.
-- What a claims hold keeps stays, neither carried nor shed (the refunds' since before the lot fell
-- due: an expiry or a rollover moves the rest). Returns the parts carried: [{hold_id, lot_id, amount}].
create or replace function billing.shed_reservations(p_transfers billing.transfer_spec[])
returns jsonb
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_kept jsonb;
begin
  with lot as (
    select (t.lots -> 'first' ->> 0)::bigint as id,
      coalesce(sum(t.amount) filter (where t.kind = 'plan_rollover'), 0) as roll
    from unnest(p_transfers) t
    where t.kind in ('expiry', 'plan_rollover') and t.lots ? 'first'
    group by 1
  ), part as (
    select hl.hold_id, hl.lot_id, hl.amount, lot.roll,
      sum(hl.amount) over (partition by hl.lot_id) as reserved,
      sum(hl.amount) over (partition by hl.lot_id order by h.created_at desc, h.id desc) as upto
    from lot join billing.lots l on l.id = lot.id and l.reserved > 0
    join billing.hold_lots hl on hl.lot_id = l.id join billing.holds h on h.id = hl.hold_id and h.status = 'active'
      and h.purpose <> 'claims'
  ), split as (
    select part.hold_id, part.lot_id, part.amount,
      least(part.amount, greatest(part.reserved - least(part.reserved, part.roll) - (part.upto - part.amount), 0)) as shed
    from part
  ), lifted as (
    delete from billing.hold_lots hl using split where hl.hold_id = split.hold_id and hl.lot_id = split.lot_id
    returning split.hold_id, split.lot_id, split.amount, split.shed
  ), lots_back as (
    update billing.lots l set reserved = l.reserved - x.amount
    from (select lifted.lot_id, sum(lifted.amount) as amount from lifted group by lifted.lot_id) x where l.id = x.lot_id
  ), shrunk as (
    update billing.holds h
    set amount = case when h.amount > x.amount then h.amount - x.amount else h.amount end,
      status = case when h.amount > x.amount then 'active' else 'released' end,
      finished_at = case when h.amount > x.amount then null else now() end,
      metadata = coalesce(h.metadata, '{}'::jsonb) || jsonb_build_object('given_to_expiry', true,
        'given_amount', trim_scale(x.amount + coalesce((h.metadata ->> 'given_amount')::numeric, 0))::text)
    from (select lifted.hold_id, sum(lifted.shed) as amount from lifted where lifted.shed > 0 group by lifted.hold_id) x
    where h.id = x.hold_id
    returning h.account_id, x.amount
  ), held as (
    update billing.accounts a set held = a.held - x.amount
    from (select shrunk.account_id, sum(shrunk.amount) as amount from shrunk group by shrunk.account_id) x
    where a.id = x.account_id
  )
  select coalesce(jsonb_agg(jsonb_build_object('hold_id', lifted.hold_id, 'lot_id', lifted.lot_id,
      'amount', lifted.amount - lifted.shed)) filter (where lifted.amount > lifted.shed), '[]'::jsonb)
  into v_kept from lifted;
  return v_kept;
end;
$$;
comment on function billing.shed_reservations(p_transfers billing.transfer_spec[]) is 'Internal (the writer''s): the holds that reserved the lots an expiry or a rollover out names keep what rolls over and shrink, newest first, by the rest (released at nothing); returns the parts to carry into the new lots.';
revoke execute on function billing.shed_reservations(p_transfers billing.transfer_spec[]) from public;

-- What rolled over stays reserved: each part shed_reservations lifted goes onto the lot its
-- rollover in (moved_from the old lot) opened.
create or replace function billing.carry_reservations(p_posting billing.posting, p_kept jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_transfers billing.transfer_spec[] := p_posting.transfers;
  v_ids bigint[] := p_posting.ids;
begin
  with k as (
    select (x ->> 'hold_id')::uuid as hold_id, nl.id as lot_id, (x ->> 'amount')::numeric as amount
    from jsonb_array_elements(p_kept) x
    join generate_subscripts(v_transfers, 1) o on (v_transfers[o]).kind = 'plan_rollover'
      and ((v_transfers[o]).lots ->> 'moved_from')::bigint = (x ->> 'lot_id')::bigint
    join billing.lots nl on nl.grant_transfer_id = v_ids[o]
  ), placed as (
    insert into billing.hold_lots (hold_id, lot_id, amount) select k.hold_id, k.lot_id, k.amount from k
    returning lot_id, amount
  )
  update billing.lots l set reserved = l.reserved + x.amount
  from (select placed.lot_id, sum(placed.amount) as amount from placed group by placed.lot_id) x where l.id = x.lot_id;
  if (select coalesce(sum((x ->> 'amount')::numeric), 0) from jsonb_array_elements(p_kept) x)
     <> (select coalesce(sum(hl.amount), 0) from billing.hold_lots hl join billing.lots l on l.id = hl.lot_id
         join generate_subscripts(v_transfers, 1) o on l.grant_transfer_id = v_ids[o]
         where (v_transfers[o]).kind = 'plan_rollover' and (v_transfers[o]).lots ? 'moved_from') then
    perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "what rolls over carries what holds reserved of it"}');
  end if;
end;
$$;
comment on function billing.carry_reservations(p_posting billing.posting, p_kept jsonb) is 'Internal (the writer''s): puts what holds kept of a rolled-over lot onto the lot its rollover opened.';
revoke execute on function billing.carry_reservations(p_posting billing.posting, p_kept jsonb) from public;
