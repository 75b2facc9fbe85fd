-- What falls due under the account lock, on the writer's road (11-ledger-road.sql settles an
-- account with these): lots past their expiry (expired whole; the holds that reserved them
-- shrink) and holds past their TTL.

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

-- Holds the writer shrank by what expired under them (an expiry, a renewal's rollover): the
-- cap room of what they gave comes back. (A refund's take-back pending on what a hold gave is
-- the tick's: billing.take_back_claims.) p_parts: [{hold_id, given}].
create or replace function billing.holds_gave_way(p_parts jsonb) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform billing.return_hold_cap_room(h, x.given)
  from jsonb_to_recordset(p_parts) x(hold_id uuid, given numeric)
  join billing.holds h on h.id = x.hold_id order by x.hold_id;
end;
$$;
comment on function billing.holds_gave_way(p_parts jsonb) is 'Internal: after holds shrank by what expired under them, returns their cap room.';
revoke execute on function billing.holds_gave_way(p_parts jsonb) from public;

-- A lot expires whole when due, reserved or not, frozen or not (docs/credit-lots.md § Spending
-- order 7): the writer's expiry of it shrinks the holds that reserved it by their part (released
-- when nothing is left); then billing.holds_gave_way.
create or replace function billing.expire_due_lots(p_account_id bigint) returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_due record;
  v_lot record;
  v_count integer := 0;
  v_parts jsonb := '[]'::jsonb;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  for v_due in
    select l.id, l.expires_at from billing.lots l
    where l.account_id = p_account_id and l.open and l.expires_at <= now()
    order by l.expires_at, l.id
  loop
    -- In the order things fell due: a hold whose TTL passed before the lot expired ends first
    -- (an expired lot shrinks live holds only); one still live then gives its part of the lot up,
    -- never returns it (a refund's claim on it would be paid with expired credits). What the
    -- ended holds gave back may have been taken back from the lot: it is read again.
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(p_account_id, v_due.expires_at);
    end if;
    -- What a claims hold keeps of it is the refunds' since before it fell due (a hold that ended
    -- first returned it live): it stays, reserved, for the tick to take back (billing.take_back_claims).
    select l.id, l.remaining - coalesce((select sum(hl.amount) from billing.hold_lots hl join billing.holds h
                                         on h.id = hl.hold_id and h.status = 'active' and h.purpose = 'claims'
                                         where hl.lot_id = l.id), 0) as remaining, l.category
      into v_lot from billing.lots l where l.id = v_due.id;
    continue when v_lot.remaining <= 0;
    -- The holds that reserved it, and their parts: the writer shrinks them with the expiry.
    v_parts := v_parts || (select coalesce(jsonb_agg(jsonb_build_object('hold_id', hl.hold_id, 'given', hl.amount)), '[]')
                           from billing.hold_lots hl join billing.holds h on h.id = hl.hold_id
                           where hl.lot_id = v_lot.id and h.status = 'active' and h.purpose <> 'claims');
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.take_credits(p_account_id, 'expiry', v_lot.remaining, billing.expiry_key(v_lot.id, v_lot.remaining),
      null, null, jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null, v_account.member_id,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)));
    v_count := v_count + 1;
  end loop;
  -- Their cap room, once every due lot expired.
  perform billing.holds_gave_way(v_parts);
  -- Overdue holds end, and next_hold_expiry is made exact, nothing held or not: settled, an
  -- account no longer falls due (billing.falls_due; a hold's road refuses one that does).
  perform billing.expire_overdue_holds(p_account_id, now());
  -- (A due lot left open holds only what claims holds keep: the tick's, not due again.)
  update billing.accounts a
  set next_expiry = (select min(l.expires_at) from billing.lots l where l.account_id = a.id and l.open
                       and (l.expires_at > now() or l.remaining > l.reserved))
  where a.id = p_account_id returning * into v_account;
  return v_count;
end;
$$;
comment on function billing.expire_due_lots(p_account_id bigint) is 'Internal: expires every lot of the account whose expires_at has passed (reserved credits too: the holds shrink), then makes next_expiry exact.';
revoke execute on function billing.expire_due_lots(p_account_id bigint) from public;

-- p_due_by: the holds whose TTL passed by then (billing.expire_due_lots, lot by lot); null: by
-- now, after the lots that expired before them (expire_due_lots ends those holds in order).
-- A hold's end never takes back what a refund claimed of it, so no settle reaches refunds: what
-- it returned of claimed lots stays reserved (billing.keep_claims) until the tick takes the claims
-- back (billing.take_back_claims). A claims hold is the tick's alone: a settle never ends it.
create or replace function billing.expire_overdue_holds(p_account_id bigint, p_due_by timestamptz default null)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_next_expiry timestamptz;
  h billing.holds;
  v_count integer := 0;
begin
  -- The account is locked first, as everywhere else; the writer voids its overdue holds.
  select a.next_expiry into v_next_expiry from billing.accounts a where a.id = p_account_id for update;
  if p_due_by is null and v_next_expiry <= now() then
    perform billing.expire_due_lots(p_account_id);
  end if;
  for h in
    select x.* from billing.holds x where x.account_id = p_account_id and x.status = 'active'
      and x.purpose <> 'claims' and x.expires_at <= coalesce(p_due_by, now())
    order by x.expires_at, x.id
  loop
    perform billing.end_holds(array[h.id], 'expired');
    -- A member's hold on a school's wallet counted against the member's own cap too.
    perform billing.return_hold_cap_room(h, h.amount - billing.keep_claims(h, null));
    v_count := v_count + 1;
  end loop;
  if v_count > 0 then
    -- Credits given back never charge the card by themselves (docs/spend-controls.md): no recharge.
    perform billing.watch_account(a.id, a.balance - a.held, null) from billing.accounts a
    where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  end if;
  -- Exact again once it has passed (holds ended meanwhile left it early: a lower bound).
  update billing.accounts a
  set next_hold_expiry = (select min(x.expires_at) from billing.holds x
                          where x.account_id = a.id and x.status = 'active' and x.purpose <> 'claims')
  where a.id = p_account_id and a.next_hold_expiry <= now();
  return v_count;
end;
$$;
comment on function billing.expire_overdue_holds(p_account_id bigint, p_due_by timestamptz) is 'Ends one account''s holds whose TTL passed by p_due_by (by now: after the lots that expired before them), one at a time, what refunds claimed of each kept reserved (billing.keep_claims). Used by the spend path and the pg_cron sweeps.';
revoke execute on function billing.expire_overdue_holds(p_account_id bigint, p_due_by timestamptz) from public;

