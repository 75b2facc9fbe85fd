-- The ledger's writer, step by step: billing.post_transfers (11-ledger-writer.sql) is a run of
-- checks and these steps, each a function of its own (TigerBeetle's create_transfer reads as a
-- run of early returns, then one apply): a batch's refusals and its writes, the draws from lots,
-- the credits into lots, and the tails (the holds' steps: 11-ledger-writes-holds.sql). They are
-- the writer's own: only billing.post_transfers calls them (scripts/local/sql-shape.ts counts
-- them as the one writer).

-- A batch's spending (billing.post_transfers), account by account in batch order: the places of
-- the movements that do not fit what their account has left (or their caps), and the answers.
create or replace function billing.batch_refusals(p_transfers billing.transfer_spec[], out v_refused integer[], out v_refusals billing.posted_transfer[])
returns record
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  c record;
  v_spender bigint;
  v_room numeric;
  v_refusal billing.posted_transfer;
begin
  -- Spending, account by account in batch order: each debit fits what its account has left after
  -- the ones before it (what the batch credits the account is not counted), then its caps; one
  -- that does not is refused and the rest go on. A replay (its key written) spends nothing: it
  -- is answered below. The written are the batch from here on. One by one only when one might
  -- not fit or has caps to count: the common batch fits whole, told in one statement.
  if exists (select 1 from (
               select t.kind, a.caps, case when a.reads_lots
                   then least(a.balance - a.held, billing.free_credits(a.id, null, true)) else a.balance - a.held end
                 - sum(t.amount) over (partition by t.from_account_id order by t.ord) as left_after
               from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
               join billing.accounts a on a.id = t.from_account_id and a.code is null
               where t.kind = any(billing.spending_kinds())) x
             where x.left_after < 0 or (x.caps > 0 and x.kind = 'usage')) then
    for c in
      select t.ord::integer as ord, t.from_account_id, t.amount, t.kind, t.member_id,
        t.metadata ->> 'model' as model, a.caps, case when a.reads_lots
          then least(a.balance - a.held, billing.free_credits(a.id, null, true)) else a.balance - a.held end as room
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
  end if;
end;
$$;
comment on function billing.batch_refusals(p_transfers billing.transfer_spec[], out v_refused integer[], out v_refusals billing.posted_transfer[]) is 'Internal (the writer''s): which of a batch''s spending movements do not fit (by place) and the refusals.';
revoke execute on function billing.batch_refusals(p_transfers billing.transfer_spec[], out v_refused integer[], out v_refusals billing.posted_transfer[]) from public;

-- A batch's movements written (billing.post_transfers): transfers with ids in batch order, the
-- replays found, balances and versions, one entry per tracked side numbered back from them, and
-- the report's tail.
create or replace function billing.write_batch(p_transfers billing.transfer_spec[])
returns billing.posting
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_ids bigint[];
  v_new bigint[];
  v_existing bigint[];
  v_legs billing.leg[];
  v_restricted boolean := false;
  v_fresh bigint[];
  v_reused text;
  v_day timestamptz := date_trunc('day', now(), 'UTC');
begin
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
      returning a.id, a.balance, a.version, a.restricted_lots, a.active_from = now() as fresh
    ), e as (
      insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
      select v_ids[l.ord], l.account_id, l.delta,
        u.balance - (sum(l.delta) over later - l.delta), u.version - (row_number() over later - 1)
      from legs l join u on u.id = l.account_id
      window later as (partition by l.account_id order by l.ord desc)
      order by l.ord, l.delta                     -- entry ids in batch order, as readers page them
      returning transfer_id, account_id, balance_after
    )
    select array_agg((l.ord, l.account_id, l.delta, e.balance_after)::billing.leg order by l.ord, l.delta),
      (select coalesce(bool_or(u.restricted_lots), false) from u),
      (select array_agg(u.id) from u where u.fresh)
    into v_legs, v_restricted, v_fresh
    from e join legs l on v_ids[l.ord] = e.transfer_id and l.account_id = e.account_id;
    insert into billing.ledger_tail as x (at, backend, kind, rate_card_id, amount, events, credit_change)
    select date_trunc('second', now()), pg_backend_pid(), t.kind, t.rate_card_id, sum(t.amount), count(*),
      coalesce(sum(m.change), 0)
    from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
    left join (select d.ord, sum(d.delta) as change from unnest(v_legs) d group by d.ord) m on m.ord = t.ord
    where v_ids[t.ord] = any(v_new)
    group by t.kind, t.rate_card_id
    on conflict (at, backend, kind, rate_card_id) do update
    set amount = x.amount + excluded.amount, events = x.events + excluded.events,
      credit_change = x.credit_change + excluded.credit_change;
  end if;
  return (p_transfers, v_ids, v_new, v_existing, v_legs, v_restricted, v_fresh)::billing.posting;
end;
$$;
comment on function billing.write_batch(p_transfers billing.transfer_spec[]) is 'Internal (the writer''s): writes a batch''s transfers, balances and entries; answers what it wrote.';
revoke execute on function billing.write_batch(p_transfers billing.transfer_spec[]) from public;

-- Debits draw from lots (billing.post_transfers): free credits only, in spending order (`first`
-- before it; a charge for its model; a reversal only `first` and lots for any model), or the
-- lots a movement names (`take`).
create or replace function billing.draw_lots(p_posting billing.posting)
returns void
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_transfers billing.transfer_spec[] := p_posting.transfers;
  v_ids bigint[] := p_posting.ids;
  v_legs billing.leg[] := p_posting.legs;
  v_one billing.leg := p_posting.legs[1];               -- a debit alone's leg
  v_for text;
  v_by_model boolean;
  v_drawn integer;
  v_first bigint[];
  v_reversal boolean;
  v_owe boolean;
  v_kinds billing.transfer_kind[];
  v_takes boolean[];
begin
  -- Debits draw from lots. The common one, alone and with nothing to draw first, in one
  -- statement: the first lot in spending order covers it.
  v_for := case when cardinality(v_transfers) = 1 then (v_transfers[1]).lots ->> 'for' end;
  -- A charge alone draws only lots that may pay for its model ('for'; none named: lots for any
  -- model). A movement alone is read directly; only a batch is scanned (no query on the hot path).
  v_by_model := cardinality(v_transfers) = 1 and (v_transfers[1]).kind = 'usage';
  if cardinality(v_transfers) > 1 then
    if exists (select 1 from unnest(v_transfers) t where t.lots ? 'for') then
      perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a draw for a model is a movement alone"}');
    end if;
  end if;
  if cardinality(v_legs) = 1 and v_one.delta < 0
     and ((v_transfers[v_one.ord]).lots is null or (v_transfers[v_one.ord]).lots - 'for' = '{}'::jsonb) then
    with drawn as (
      update billing.lots l set remaining = l.remaining + v_one.delta
      where l.id = (select x.id from billing.lots x where x.account_id = v_one.account_id and x.open
                      and x.free > 0 and not coalesce(x.expires_at <= now(), false)
                      and (not v_by_model or x.applies_to is null or billing.lot_pays_for(x.applies_to, v_for))
                      -- A reversal takes no credits for some models (below), whoever asks.
                      and (x.applies_to is null
                           or (v_transfers[v_one.ord]).kind not in ('refund_reversal', 'dispute_reversal'))
                    order by x.spending_order
                    limit 1)
        and l.remaining - l.reserved >= -v_one.delta
      returning l.id, l.cost_cents * (-v_one.delta)::numeric(38, 18) / l.amount as cents, l.currency, l.category, l.origin
    ), allocated as (
      insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
      select v_ids[v_one.ord], drawn.id, (v_transfers[v_one.ord]).kind, -v_one.delta, drawn.cents from drawn
    )
    -- The report's tail (lots_tail, below), from the lot in hand.
    insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
    select date_trunc('second', now()), pg_backend_pid(), drawn.currency, drawn.category, (v_transfers[v_one.ord]).kind,
      drawn.origin, -v_one.delta, drawn.cents
    from drawn
    on conflict (at, backend, currency, category, kind, origin) do update
    set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents;
    get diagnostics v_drawn = row_count;
  end if;
  -- Every other draw: what the one-lot statement above did not cover.
  if v_drawn is distinct from 1 then
    -- Debits told what to draw (`take`): exactly those lots of the debited account, exactly the amount.
    if exists (select 1 from unnest(v_transfers) t where t.lots ? 'take') then
      if exists (select 1 from unnest(v_legs) d
                 left join lateral jsonb_array_elements((v_transfers[d.ord]).lots -> 'take') r on true
                 where d.delta < 0 and (v_transfers[d.ord]).lots ? 'take'
                 group by d.ord having sum((r ->> 'amount')::numeric) is distinct from -min(d.delta)
                   or bool_or(((r ->> 'amount')::numeric > 0) is not true)) then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit takes positive parts of lots, of exactly its amount"}');
      end if;
      with x as (
        select d.ord, d.account_id, (r ->> 'lot_id')::bigint as lot_id, (r ->> 'amount')::numeric as part
        from unnest(v_legs) d
        cross join lateral jsonb_array_elements((v_transfers[d.ord]).lots -> 'take') r
        where d.delta < 0 and (v_transfers[d.ord]).lots ? 'take'
      ), ins as (
        -- Each lot read by its key: the planner guesses 100 parts (a join scanned every lot).
        insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
        select v_ids[x.ord], x.lot_id, (v_transfers[x.ord]).kind, x.part, l.cost_cents * x.part::numeric(38, 18) / l.amount
        from x cross join lateral (select y.cost_cents, y.amount from billing.lots y where y.id = x.lot_id limit 1) l
      ), upd as (
        update billing.lots l
        set remaining = l.remaining - (select sum(x.part) from x where x.lot_id = l.id and x.account_id = l.account_id)
        where l.id = any (array(select x.lot_id from x))
          and exists (select 1 from x where x.lot_id = l.id and x.account_id = l.account_id)
        returning l.id
      )
      select (select count(*) from upd) - (select count(distinct (x.lot_id, x.account_id)) from x) into v_drawn;
      if v_drawn <> 0 then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a debit takes only its own account''s lots"}');
      end if;
      v_drawn := null;
    end if;
    -- Each movement's kind and whether it was told what to take, by place: an element of an
    -- array of composites is found by walking the array, so v_transfers[ord] per row made a
    -- batch's draw quadratic.
    v_kinds := array(select t.kind from unnest(v_transfers) t);
    v_takes := array(select coalesce(t.lots ? 'take', false) from unnest(v_transfers) t);
    if exists (select 1 from unnest(v_legs) d where d.delta < 0 and not v_takes[d.ord]) then
      v_first := array(select jsonb_array_elements_text(t.lots -> 'first')::bigint
                       from unnest(v_transfers) t where t.lots ? 'first');
      -- A reversal (refund, lost dispute) takes back money paid for anything: the lots it names
      -- (its purchase's or plan's, whatever they pay for), then only credits for any model; what
      -- they lack is debt, never credits someone gave for some models only.
      v_reversal := exists (select 1 from unnest(v_transfers) t where t.kind in ('refund_reversal', 'dispute_reversal'));
      -- What a provider billed past a hold (`owe`, a movement alone) takes frozen credits after
      -- the free ones (billing.owe), before any debt.
      v_owe := coalesce((v_transfers[1]).lots ? 'owe', false);
      with d as (
        select x.ord, x.account_id, -x.delta as amount,
          sum(-x.delta) over (partition by x.account_id order by x.ord) as hi
        from unnest(v_legs) x
        where x.delta < 0 and not v_takes[x.ord]
      ), l as (
        -- Free credits only; a lot named first (a reversal of its own purchase, its expiry) gives
        -- what no hold reserved even when it has none free.
        select l.id, l.account_id, l.remaining - l.reserved as remaining, l.cost_cents, l.amount as lot_amount, l.currency,
          l.category, l.origin,
          sum(l.remaining - l.reserved) over (partition by l.account_id order by array_position(v_first, l.id) nulls last,
            l.free = 0, l.spending_order) as hi
        from billing.lots l
        where l.account_id in (select d.account_id from d) and l.open and l.remaining > l.reserved
          and (l.free > 0 or l.id = any(v_first) or v_owe)
          -- A lot past its expiry is the expiry's: drawn only by name (its expiry, a take-back).
          and (l.id = any(v_first) or not coalesce(l.expires_at <= now(), false))
          and (not v_reversal or l.applies_to is null or l.id = any(v_first))
          and (not v_by_model or l.applies_to is null or billing.lot_pays_for(l.applies_to, v_for))
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
      -- A charge is covered whole by lots that may pay for its model (the room said so); what a
      -- provider billed past a hold (`owe`) takes what they have, the rest is debt.
      if v_by_model and not coalesce((v_transfers[1]).lots ? 'owe', false) and (select coalesce(sum(a.amount), 0) from billing.lot_allocations a
                                where a.transfer_id = v_ids[1]) <> -v_one.delta then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a draw for a model is covered by lots that may pay for it"}');
      end if;
    end if;
  end if;
end;
$$;
comment on function billing.draw_lots(p_posting billing.posting) is 'Internal (the writer''s): what the debits written draw from lots, with their allocations and the report''s tail.';
revoke execute on function billing.draw_lots(p_posting billing.posting) from public;

-- The lots a posting opened, for the report's tail (billing.credit_lots).
create or replace function billing.opened_lots_tail(v_new bigint[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- The lots this posting opened, for the report's tail (as billing.ledger_parts reads them
  -- from the rows): a grant net of the debt it settled on arrival; a move only that debt.
  insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
  select date_trunc('second', now()), pg_backend_pid(), l.currency, l.category, g.kind, l.origin, sum(g.credits),
    sum(l.cost_cents * g.credits / l.amount)
  from unnest(v_new) t(id)
  join billing.lots l on l.grant_transfer_id = t.id
  cross join lateral (select case when l.moved_from is null then 'granted' else 'debt_settled_by_move' end as kind,
                        case when l.moved_from is null then l.amount - l.debt_settled else l.debt_settled end as credits) g
  where l.moved_from is null or l.debt_settled > 0
  group by l.currency, l.category, g.kind, l.origin
  on conflict (at, backend, currency, category, kind, origin) do update
  set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents;
end;
$$;
comment on function billing.opened_lots_tail(v_new bigint[]) is 'Internal (the writer''s): the lots a posting opened, summed into the report''s tail.';
revoke execute on function billing.opened_lots_tail(v_new bigint[]) from public;

-- Credits into lots (billing.post_transfers): a move arrives as the lots its debit drew, a return
-- goes back into its lots, a grant opens a lot; the first part for any model settles a debt.
-- True when a lot for some models arrived (its sub-account follows).
create or replace function billing.credit_lots(p_posting billing.posting, out v_restricted boolean)
returns boolean
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_transfers billing.transfer_spec[] := p_posting.transfers;
  v_ids bigint[] := p_posting.ids;
  v_legs billing.leg[] := p_posting.legs;
  c record;
  v_lot jsonb;
  v_settled numeric;
  v_category text;
  v_policy billing.credit_expiry_policy;
  v_list text[];
begin
  v_restricted := false;
  -- Credits into lots (the writer calls this only when a tracked side was credited).
  for c in
    select x.ord, x.account_id, x.delta as amount, x.after, v_transfers[x.ord] as t, y.ord is not null as moved
    from unnest(v_legs) x
    left join unnest(v_legs) y on y.ord = x.ord and y.delta < 0
    where x.delta > 0
    order by x.ord
  loop
    -- What of this credit may pay a debt the account is in: the debt, at most the credit. In
    -- the balance alone, unless the account holds credits for some models: a reversal left
    -- those whole, so the debt is what its lots hold beyond its balance (debits later in this
    -- batch are drawn already, not yet in the balance). Only credits for any model pay it
    -- (below): a debt is owed in money paid for anything.
    v_settled := least(c.amount, greatest(c.amount - c.after, 0));
    -- (What live holds reserved stays beside a debt too: such an account is read the same way.)
    if exists (select 1 from billing.accounts a where a.id = c.account_id and (a.restricted_lots or a.held > 0)) then
      v_settled := least(c.amount, greatest(
        coalesce((select sum(l.remaining) from billing.lots l where l.account_id = c.account_id and l.open), 0)
        + coalesce((select sum(-d.delta) from unnest(v_legs) d
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
  perform billing.opened_lots_tail(p_posting.written);
end;
$$;
comment on function billing.credit_lots(p_posting billing.posting, out v_restricted boolean) is 'Internal (the writer''s): the credits written into lots; whether a lot for some models arrived.';
revoke execute on function billing.credit_lots(p_posting billing.posting, out v_restricted boolean) from public;

-- After the lots moved (billing.post_transfers): sub-accounts follow them, and what the named
-- lots gave and took is summed for the report's tail.
create or replace function billing.lot_tails(p_posting billing.posting)
returns void
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_transfers billing.transfer_spec[] := p_posting.transfers;
  v_ids bigint[] := p_posting.ids;
  v_new bigint[] := p_posting.written;
begin
  -- Sub-accounts (credits for some models) follow the lots this call moved: a new lot brings
  -- what it opened with, an allocation takes what it drew (a give-back returns what did not pay
  -- a debt). Only a tracked side holding such credits has any; a list's first lot opens its
  -- sub-account (not an upsert: it would test the row it proposes, a draw's negative change,
  -- against the balance's check).
  if p_posting.restricted then
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
  if cardinality(v_transfers) > 1 or coalesce((v_transfers[1]).lots ?| array['take', 'return_to'], false) then
    if exists (select 1 from unnest(v_transfers) t where t.lots ? 'take' or t.lots ? 'return_to') then
      insert into billing.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
      select date_trunc('second', now()), pg_backend_pid(), l.currency, l.category, p.kind, l.origin, sum(p.credits), sum(p.cents)
      -- One index probe per such movement (`transfer_id = any(…)` is planned for hundreds of rows:
      -- a hash join over every lot).
      from unnest(v_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
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
end;
$$;
comment on function billing.lot_tails(p_posting billing.posting) is 'Internal (the writer''s): sub-accounts follow the lots a posting moved; the named lots'' parts go to the report''s tail.';
revoke execute on function billing.lot_tails(p_posting billing.posting) from public;
