-- The writer's steps for holds and what they reserve (billing.post_transfers, 11-ledger-writer.sql):
-- holds placed, posted or voided with their reservations (post_holds, capture_take), and what
-- holds reserved of a lot that expires or rolls over, shed or carried. Only billing.post_transfers calls them (scripts/local/sql-shape.ts counts them as the
-- one writer).

-- A capture's draw (billing.post_transfers): the hold's reservation returns to its lots, and the
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

-- The writer's pending transfers (billing.post_transfers), every step but a capture posted by its
-- movement: a hold placed (its reservation picked, or the refusal answered), posted by a
-- movement written before, or voided (its reservation returned). Null, or the refusal of a place.
create or replace function billing.post_holds(p_transfers billing.transfer_spec[], p_holds billing.hold_step[])
returns billing.posted_transfer
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_refusal billing.posted_transfer;
  v_step billing.hold_step;
  v_acct billing.accounts;
  v_pick_lots bigint[];
  v_pick_parts numeric[];
  v_hold_accounts bigint[];
  v_hold_deltas numeric[];
  v_ended uuid[];
  v_fallbacks text[];
begin
  if cardinality(p_holds) = 1 and (p_holds[1]).op = 'place' then
    if cardinality(p_transfers) > 0 then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is placed alone"}');
    end if;
    -- A hold reserves free credits of the lots that may pay for its model (a student's own hold:
    -- lots for any model), in spending order (billing.pick_lots); what may be held is what they
    -- give, at most balance − held (a debt waits in front of credits for some models), and what
    -- its caps leave (counted against them). A platform account reserves nothing.
    v_step := p_holds[1];
    -- A call naming fallback models (docs/ai-gateway.md § Fallback models) reserves lots that may
    -- pay for each of them, and counts against each one's caps (the test first: most calls name
    -- none, and a plain condition costs no query).
    if v_step.purpose = 'ai' and v_step.metadata ? 'fallbacks' then
      v_fallbacks := array(select jsonb_array_elements_text(v_step.metadata -> 'fallbacks'));
    end if;
    select * into v_acct from billing.accounts a where a.id = v_step.account_id and a.code is null;
    if found then
      select coalesce(array_agg(p.lot_id), '{}'), coalesce(array_agg(p.amount), '{}') into v_pick_lots, v_pick_parts
      from billing.pick_lots(v_acct.id, case when v_step.purpose in ('ai', 'job') then v_step.metadata ->> 'model' end,
        v_step.amount, v_fallbacks) p;
      v_refusal := billing.spend_refusal(v_acct.id, v_step.amount,
        least(v_acct.balance - v_acct.held, coalesce((select sum(x) from unnest(v_pick_parts) x), 0)), v_acct.caps > 0,
        v_step.metadata ->> 'model', v_step.member_id, v_fallbacks);
      if v_refusal.result is not null then
        return v_refusal;
      end if;
    end if;
    insert into billing.holds (id, account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose, member_id)
    values (v_step.hold_id, v_step.account_id, v_step.amount, v_step.idempotency_key, v_step.correlation_id, v_step.metadata,
      v_step.expires_at, v_step.purpose, v_step.member_id);
    if cardinality(v_pick_lots) > 0 then
      insert into billing.hold_lots (hold_id, lot_id, amount)
      select v_step.hold_id, x.lot_id, x.amount from unnest(v_pick_lots, v_pick_parts) x(lot_id, amount);
      update billing.lots l set reserved = l.reserved + x.amount
      from unnest(v_pick_lots, v_pick_parts) x(lot_id, amount) where l.id = x.lot_id;
      update billing.accounts a set held = a.held + v_step.amount,
        next_hold_expiry = least(a.next_hold_expiry, v_step.expires_at)
      where a.id = v_step.account_id;
    end if;
  elsif cardinality(p_holds) > 0 then
    if exists (select 1 from unnest(p_holds) s where s.op = 'place') then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is placed alone"}');
    end if;
    -- What ends a hold keeps its amount (the record of what it held).
    with stepped as (
      update billing.holds h
      set status = case when s.op = 'post' then 'captured' else s.status end,
          captured_amount = case when s.op = 'post' then s.amount end,
          capture_transfer_id = case when s.op = 'post' then s.transfer_id end,
          finished_at = now(),
          metadata = case when s.note is null then h.metadata else coalesce(h.metadata, '{}'::jsonb) || s.note end
      from unnest(p_holds) s
      where h.id = s.hold_id and h.status = 'active'
        and ((s.op = 'post' and s.transfer_id is not null) or (s.op = 'void' and s.status in ('released', 'expired')))
      returning h.id, h.account_id, h.amount
    )
    select array_agg(x.account_id), array_agg(-x.amount), array_agg(x.id) into v_hold_accounts, v_hold_deltas, v_ended
    from stepped x;
    if coalesce(cardinality(v_hold_accounts), 0) <> cardinality(p_holds) then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a hold is posted or voided only while active"}');
    end if;
    -- Ended holds return their reservation (their hold_lots stay: the record of what each lot
    -- gave them, read by billing.hold_ended).
    update billing.lots l set reserved = l.reserved - r.amount
    from (select hl.lot_id, sum(hl.amount) as amount from billing.hold_lots hl where hl.hold_id = any(v_ended)
          group by hl.lot_id) r
    where l.id = r.lot_id;
    update billing.accounts a set held = a.held + d.delta
    from (select x.account_id, sum(x.delta) as delta from unnest(v_hold_accounts, v_hold_deltas) x(account_id, delta)
          group by x.account_id) d
    where a.id = d.account_id and a.code is null;
  end if;
  return null;
end;
$$;
comment on function billing.post_holds(p_transfers billing.transfer_spec[], p_holds billing.hold_step[]) is 'Internal (the writer''s): places, posts (written before) or voids holds and their reservations; a place''s refusal, else null.';
revoke execute on function billing.post_holds(p_transfers billing.transfer_spec[], p_holds billing.hold_step[]) from public;

-- A lot leaves by name with what holds reserved of it (billing.post_transfers: its expiry, a
-- plan's rollover out, `first`). What rolls over stays reserved: it is carried into the new lot
-- (billing.carry_reservations); by the rest the holds shrink, the newest first (given_to_expiry;
-- one left with nothing ends released, its amount kept as the record), and held drops with them.
-- Returns the parts carried: [{hold_id, lot_id, amount}].
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
    select hl.hold_id, hl.lot_id, hl.amount, lot.roll, l.reserved,
      sum(hl.amount) over (partition by hl.lot_id order by h.created_at desc, h.id desc) as upto
    from lot join billing.lots l on l.id = lot.id and l.reserved > 0
    join billing.hold_lots hl on hl.lot_id = l.id join billing.holds h on h.id = hl.hold_id and h.status = 'active'
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
