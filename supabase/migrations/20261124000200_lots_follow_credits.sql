-- Credits keep where they came from wherever they go. A move (allowances, sweeps) carries each
-- source lot's part as its own lot (purchase, category, priority, expiry, cost basis kept), so a
-- refund or dispute of a purchase reaches its credits in every account, and reports do not count
-- a move as new money. Credits of an expired lot are not spendable after expires_at, held or not:
-- an account whose first expiry has passed expires those lots before anything is spent, held or
-- moved, and holds give way to what expired.

-- ============================================================ columns
alter table billing.accounts add column next_expiry timestamptz;
comment on column billing.accounts.next_expiry is
  'No later than the earliest expires_at of the account''s open lots (a lower bound, exact after each expiry run): spending expires due lots first when it has passed.';
update billing.accounts a set next_expiry = x.first
from (select l.account_id, min(l.expires_at) as first from billing.lots l where l.open group by l.account_id) x
where x.account_id = a.id;

alter table billing.lots add column moved_from bigint references billing.lots (id);
comment on column billing.lots.moved_from is
  'The lot these credits were moved out of (allowance, sweep): its provenance is this lot''s; null for a grant.';
-- Lots made by earlier moves point at the first lot they drew (they were one lot per move then).
update billing.lots l set moved_from = x.lot_id
from (select la.transfer_id, min(la.lot_id) as lot_id from billing.lot_allocations la
      where la.kind in ('allowance', 'allowance_sweep') group by la.transfer_id) x
where x.transfer_id = l.grant_transfer_id;
create index lots_moved_from on billing.lots (moved_from) where moved_from is not null;
-- One lot per grant, and per source lot of a move.
alter table billing.lots drop constraint lots_grant_transfer_id_key;
alter table billing.lots add constraint lots_one_per_grant unique nulls not distinct (grant_transfer_id, moved_from);

-- ============================================================ holds give way
create function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb)
returns numeric
language plpgsql
set search_path = ''
as $$
declare
  h billing.holds;
  v_take numeric(38, 18);
  v_left numeric(38, 18) := p_short;
begin
  -- The caller holds the account lock. The newest holds give way first.
  for h in
    select * from billing.holds x
    where x.account_id = p_account_id and x.status = 'active' and x.purpose = any(p_purposes)
    order by x.created_at desc, x.id
    for update
  loop
    exit when v_left <= 0;
    v_take := least(h.amount, v_left);
    update billing.holds x
    set amount = x.amount - case when v_take < x.amount then v_take else 0 end,
        status = case when v_take < x.amount then x.status else 'released' end,
        finished_at = case when v_take < x.amount then null else now() end,
        metadata = coalesce(x.metadata, '{}'::jsonb) || p_note || jsonb_build_object('given_amount', trim_scale(v_take)::text)
    where x.id = h.id;
    update billing.accounts a set held = a.held - v_take where a.id = p_account_id;
    perform billing.return_hold_cap_room(h, v_take);
    v_left := v_left - v_take;
  end loop;
  return p_short - v_left;
end;
$$;
comment on function billing.shrink_holds(bigint, numeric, text[], jsonb) is
  'Internal: takes p_short from the account''s active holds of the given purposes, newest first (cap room given back); returns what it took.';
revoke execute on function billing.shrink_holds(bigint, numeric, text[], jsonb) from public, anon, authenticated;

-- ============================================================ expiry before spending
create function billing.expire_due_lots(p_account_id bigint)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_lot record;
  v_count integer := 0;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  -- A disputed purchase's lots wait for the dispute: won, they expire; lost, they are reversed.
  for v_lot in
    select l.id, l.remaining, l.category from billing.lots l
    where l.account_id = p_account_id and l.open and not l.frozen and l.expires_at <= now()
    order by l.expires_at, l.id
  loop
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.post_user_transfer(coalesce(v_account.user_id, v_account.member_id), -1, 'reverse', v_lot.remaining,
      'expiry', 'expired', 'expiry:' || v_lot.id || ':' || trim_scale(v_lot.remaining), null, null,
      jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null, null,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)), p_account_id);
    v_count := v_count + 1;
  end loop;
  update billing.accounts a
  set next_expiry = (select min(l.expires_at) from billing.lots l where l.account_id = a.id and l.open)
  where a.id = p_account_id returning * into v_account;
  -- Held credits expire too: holds that reserve more than is left give way, newest first.
  if v_account.held > greatest(v_account.balance, 0) then
    perform billing.shrink_holds(p_account_id, v_account.held - greatest(v_account.balance, 0), array['user', 'job'],
      jsonb_build_object('given_to_expiry', true));
  end if;
  return v_count;
end;
$$;
comment on function billing.expire_due_lots(bigint) is
  'Internal: expires every lot of the account whose expires_at has passed (held credits too; holds give way), then makes next_expiry exact.';
revoke execute on function billing.expire_due_lots(bigint) from public, anon, authenticated;

create function billing.settle_account(p_account_id bigint)
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
comment on function billing.settle_account(bigint) is
  'Internal: locks the account, ends its overdue holds and expires its due lots; returns it as it now is. Every path that spends, holds or moves credits calls it when held > 0 or next_expiry has passed.';
revoke execute on function billing.settle_account(bigint) from public, anon, authenticated;

create or replace function billing.expire_lots(p_limit integer default 500)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_count integer := 0;
begin
  -- Accounts nobody spends from still see their credits expire on time.
  for v_account_id in
    select l.account_id from billing.lots l
    where l.open and l.expires_at <= now() and not l.frozen
    group by l.account_id order by min(l.expires_at) limit p_limit
  loop
    perform 1 from billing.accounts a where a.id = v_account_id for update;
    perform billing.expire_overdue_holds(v_account_id);
    v_count := v_count + billing.expire_due_lots(v_account_id);
  end loop;
  return v_count;
end;
$$;
comment on function billing.expire_lots(integer) is
  'Expires due lots (held credits too) in up to p_limit accounts; returns how many lots. Scheduled every minute; spending expires an account''s due lots itself.';

-- ============================================================ a purchase's credits, wherever they are
create function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text,
                                           p_kind billing.transfer_kind, p_key text, p_reference text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_wallet bigint := case when p_purchase.org_id is not null then billing.org_wallet_id(p_purchase.org_id) end;
  v_buyer bigint := coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p_purchase.user_id));
  v_lots bigint[] := billing.purchase_lots(p_purchase.id, p_category);
  v_beyond numeric(38, 18);
  v_take numeric(38, 18);
  r record;
begin
  if p_amount <= 0 then
    return;
  end if;
  -- Every account involved, in id order (as everywhere), before anything moves.
  perform 1 from billing.accounts a
  where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots) and l.open)
  order by a.id for update;
  -- The buyer's own lots of the purchase come first; what is beyond them comes from the lots its
  -- credits were moved into; the rest from the buyer (other credits, then debt).
  v_beyond := p_amount - coalesce((select sum(l.remaining) from billing.lots l
                                   where l.id = any(v_lots) and l.account_id = v_buyer), 0);
  for r in
    select l.account_id, coalesce(a.user_id, a.member_id) as owner, sum(l.remaining) as remaining
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.id = any(v_lots) and l.open and l.account_id <> v_buyer
    group by l.account_id, a.user_id, a.member_id order by l.account_id
  loop
    exit when v_beyond <= 0;
    v_take := least(v_beyond, r.remaining);
    perform billing.reverse_credits(r.owner, v_take, p_kind, p_key || ':' || r.account_id, p_reference, null,
      billing.purchase_metadata(p_purchase), v_lots, r.account_id);
    v_beyond := v_beyond - v_take;
    p_amount := p_amount - v_take;
  end loop;
  if p_amount > 0 then
    perform billing.reverse_credits(case when v_wallet is null then p_purchase.user_id end, p_amount, p_kind, p_key,
      p_reference, null, billing.purchase_metadata(p_purchase), v_lots, v_wallet);
  end if;
end;
$$;
comment on function billing.take_back_purchase(billing.purchases, numeric, text, billing.transfer_kind, text, text) is
  'Internal: reverses p_amount of a purchase''s credits: its lots in the buyer''s account, then in every account they were moved to, then the buyer''s other credits or debt.';
revoke execute on function billing.take_back_purchase(billing.purchases, numeric, text, billing.transfer_kind, text, text)
  from public, anon, authenticated;

drop function billing.place_dispute_hold(bigint, numeric, text);
create function billing.place_dispute_hold(p_account_id bigint, p_amount numeric, p_dispute_id text, p_key text)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts := billing.settle_account(p_account_id);
  v_freeze numeric(38, 18);
  v_short numeric(38, 18);
  v_existing uuid;
begin
  if v_account.id is null then
    return null;
  end if;
  select h.id into v_existing from billing.holds h where h.idempotency_key = p_key;
  if found then
    return v_existing;
  end if;
  -- What is left of the balance once earlier disputes have frozen theirs.
  select least(p_amount, greatest(v_account.balance - coalesce(sum(h.amount), 0), 0)) into v_freeze
  from billing.holds h where h.account_id = v_account.id and h.status = 'active' and h.purpose = 'dispute';
  if v_freeze <= 0 then
    return null;
  end if;
  -- A student's own holds give way; a job's is work under way.
  v_short := v_freeze - greatest(v_account.balance - v_account.held, 0);
  if v_short > 0 then
    perform billing.shrink_holds(v_account.id, v_short, array['user'], jsonb_build_object('given_to_dispute', p_dispute_id));
  end if;
  return (billing.place_hold(v_account.id, v_freeze, p_key, 'infinity', 'dispute', p_dispute_id)).id;
end;
$$;
comment on function billing.place_dispute_hold(bigint, numeric, text, text) is
  'Internal: freezes up to p_amount of the account for a dispute (the student''s own holds give way); idempotent by p_key.';
revoke execute on function billing.place_dispute_hold(bigint, numeric, text, text) from public, anon, authenticated;

-- ============================================================ moves keep provenance
create or replace function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind,
                                                p_key text, p_member uuid, p_metadata jsonb default null)
returns billing.transfers
language plpgsql
set search_path = ''
as $$
declare
  v_from billing.accounts;
  v_to billing.accounts;
  v_transfer billing.transfers;
  v_debt numeric(38, 18);
begin
  perform billing.check_amount(p_amount);
  perform 1 from billing.accounts a where a.id in (p_from, p_to) order by a.id for update;
  select * into v_transfer from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
  if found then
    if v_transfer.amount <> p_amount or v_transfer.from_account_id <> p_from or v_transfer.to_account_id <> p_to then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    return v_transfer;
  end if;
  select * into v_from from billing.accounts a where a.id = p_from;
  if v_from.held > 0 or v_from.next_expiry <= now() then
    v_from := billing.settle_account(p_from);
  end if;
  if v_from.balance - v_from.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(v_from.balance - v_from.held, 0))::text, 'debt', v_from.balance < 0,
      'wallet', 'organisation'));
  end if;

  insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, member_id, metadata)
  values (p_kind, p_from, p_to, p_amount, p_key, p_member, p_metadata)
  returning * into v_transfer;
  perform billing.draw_lots(p_kind, array[v_transfer.id], array[p_from], array[p_amount]);
  update billing.accounts a set balance = a.balance - p_amount, version = a.version + 1 where a.id = p_from
  returning * into v_from;
  update billing.accounts a set balance = a.balance + p_amount, version = a.version + 1,
    next_expiry = least(a.next_expiry, (select min(l.expires_at) from billing.lot_allocations x
                                        join billing.lots l on l.id = x.lot_id where x.transfer_id = v_transfer.id))
  where a.id = p_to
  returning * into v_to;
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version) values
    (v_transfer.id, p_from, -p_amount, v_from.balance, v_from.version),
    (v_transfer.id, p_to, p_amount, v_to.balance, v_to.version);

  -- Each source lot's part arrives as its own lot, as it was: purchase, category, priority,
  -- expiry, frozen, and its share of the cost basis. A debt the receiving account was in is
  -- settled by the first parts, as any grant settles it.
  v_debt := greatest(p_amount - v_to.balance, 0);
  insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency, amount,
                            debt_settled, remaining, frozen, expires_at, moved_from)
  select p_to, v_transfer.id, l.purchase_id, l.category, l.priority, l.cost_cents * p.amount / l.amount, l.currency, p.amount,
    p.settled, p.amount - p.settled, l.frozen, l.expires_at, l.id
  from (select x.lot_id, x.amount,
          least(x.amount, greatest(v_debt - coalesce(sum(x.amount) over (order by x.lot_id rows between unbounded preceding
                                                                          and 1 preceding), 0), 0)) as settled
        from billing.lot_allocations x where x.transfer_id = v_transfer.id) p
  join billing.lots l on l.id = p.lot_id
  order by p.lot_id;
  return v_transfer;
end;
$$;
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

  -- Overdue holds and due lots were settled above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text DEFAULT NULL::text, p_metadata jsonb DEFAULT NULL::jsonb)
 RETURNS billing.hold_result
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
    if (v_hold.account_id <> v_account.id and v_hold.member_id is distinct from p_user) or v_hold.amount <> p_amount
       or v_hold.purpose <> p_purpose then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'hold'));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;

  if v_account.orgs > 0 then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, null);
  end if;
  if v_account.held > 0 or v_account.next_expiry <= now() then
    v_account := billing.settle_account(v_account.id);
  end if;
  if v_account.balance - v_account.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
      'debt', v_account.balance < 0));
  end if;

  if v_account.caps > 0 and v_account.org_id is null then
    perform billing.charge_caps(v_account.id, p_amount, p_metadata ->> 'model');
  end if;
  v_hold := billing.place_hold(v_account.id, p_amount, p_idempotency_key, now() + make_interval(secs => p_ttl_seconds),
    p_purpose, p_correlation_id, p_metadata, case when v_account.org_id is not null then p_user end);
  return billing.hold_result_of(v_hold, false);
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
  where not exists (select 1 from billing.transfers t where t.idempotency_key = 'allowance:' || p_key || ':' || x
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
      'allowance:' || p_key || ':' || m, m, jsonb_build_object('org_id', p_org, 'funded_by', p_user));
    v_results := v_results || jsonb_build_object('user_id', m, 'transfer_id', v_transfer.id::text,
      'amount', trim_scale(v_transfer.amount)::text);
  end loop;
  return jsonb_build_object('org_id', p_org, 'funded', v_results,
    'wallet', billing.wallet_json(v_wallet));
end;
$function$;

CREATE OR REPLACE FUNCTION billing.sweep_allowance(p_org uuid, p_member uuid, p_reason text)
 RETURNS numeric
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_wallet bigint := billing.org_wallet_id(p_org);
  v_account billing.accounts;
  v_take numeric(38, 18);
begin
  select * into v_account from billing.accounts a where a.org_id = p_org and a.member_id = p_member;
  if not found then
    return 0;
  end if;
  perform 1 from billing.accounts a where a.id in (v_wallet, v_account.id) order by a.id for update;
  v_account := billing.settle_account(v_account.id);
  v_take := v_account.balance - v_account.held;
  if v_take <= 0 then
    return 0;
  end if;
  perform billing.move_credits(v_account.id, v_wallet, v_take, 'allowance_sweep',
    'allowance-sweep:' || v_account.id || ':' || v_account.version, p_member,
    jsonb_build_object('org_id', p_org, 'reason', p_reason));
  return v_take;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric DEFAULT NULL::numeric, p_correlation_id text DEFAULT NULL::text)
 RETURNS billing.hold_result
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
  v_capture numeric(38, 18);
  v_transfer billing.transfer_result;
  v_user uuid;
  v_unfrozen numeric(38, 18);
begin
  -- Credits that expired under the hold are gone before it is captured (the hold gave way).
  if (select a.next_expiry <= now() from billing.accounts a where a.id = v_hold.account_id) then
    perform billing.expire_due_lots(v_hold.account_id);
    select * into v_hold from billing.holds h where h.id = p_hold_id;
  end if;
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
  v_transfer := billing.post_user_transfer(coalesce(v_user, v_hold.member_id), -1, 'capture', v_capture, 'hold_capture',
    'usage_revenue', 'hold:' || p_hold_id::text, coalesce(p_correlation_id, v_hold.correlation_id), null, null, null, p_hold_id,
    p_account_id => v_hold.account_id);
  update billing.holds h set status = 'captured', captured_amount = v_capture, capture_transfer_id = v_transfer.transfer_id,
    finished_at = now()
  where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - v_capture);
  return billing.hold_result_of(v_hold, false);
end;
$function$;

CREATE OR REPLACE FUNCTION billing.complete_job(p_job uuid, p_worker text, p_result jsonb, p_usage jsonb DEFAULT NULL::jsonb)
 RETURNS billing.jobs
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_job billing.jobs := billing.lock_leased_job(p_job, p_worker);
  v_price record;
  v_hold billing.holds;
  v_capture numeric(38, 18);
  v_after billing.hold_result;
  v_overage numeric(38, 18);
  v_available numeric(38, 18);
  v_priced numeric(38, 18);
begin
  if v_job.hold_id is not null then
    -- Settled first: a hold that gave way to expired credits captures only what it still holds.
    perform billing.settle_account(h.account_id) from billing.holds h where h.id = v_job.hold_id;
    select * into v_hold from billing.holds h where h.id = v_job.hold_id;
    v_capture := 0;
    v_priced := 0;
    if p_usage is not null then
      select * into v_price from billing.price_usage(p_usage ->> 'model', (p_usage ->> 'input_tokens')::bigint,
                                                     (p_usage ->> 'output_tokens')::bigint);
      v_priced := v_price.amount;
      v_capture := case when v_hold.status = 'active' then least(v_priced, v_hold.amount) else 0 end;
    end if;
    if v_capture > 0 or (v_priced > 0 and v_hold.status <> 'active') then
      if v_capture > 0 then
        v_after := billing.capture_hold(null, v_job.hold_id, v_capture, 'job:' || p_job);
        v_available := v_after.available;
      else
        v_available := (billing.balance_of(v_hold.account_id)).available;
      end if;
      -- The reserve is the worst case the provider can bill; should it ever bill more, the rest
      -- is charged from what is available, never into debt (what cannot be charged is recorded).
      v_overage := least(v_price.amount - v_capture, greatest(v_available, 0));
      if v_overage > 0 then
        -- Billed like a capture: work already done, counted against caps when its hold was placed.
        perform billing.post_user_transfer(v_job.user_id, -1, 'capture', v_overage, 'usage', 'usage_revenue',
          'job-overage:' || p_job, 'job:' || p_job, null,
          jsonb_build_object('job_id', p_job, 'model', p_usage ->> 'model', 'reserved', trim_scale(v_hold.amount)::text,
            'priced', trim_scale(v_price.amount)::text, 'unbilled', trim_scale(v_price.amount - v_capture - v_overage)::text),
          v_price.rate_card_id, p_account_id => v_hold.account_id);
      end if;
    else
      perform billing.release_hold(null, v_job.hold_id);
    end if;
  end if;
  update billing.jobs j
  set status = 'completed', progress = 100, result = p_result, completed_at = now(), locked_by = null, locked_until = null,
      error = null
  where j.id = p_job returning * into v_job;
  return v_job;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind)
 RETURNS billing.accounts
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_existing billing.transfers;
  v_sources record;
  v_account billing.accounts;
  v_available numeric(38, 18);
  v_cap jsonb;
  v_wallets jsonb := '[]';
  v_best numeric(38, 18) := 0;
  v_pool boolean;
  i integer;
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

  -- Organisations that pay first (0), the member's own account (1), those that pay after (2);
  -- by when the member joined. A member without an allowance account yet has nothing there.
  select array_agg(s.account_id order by s.rank, s.joined_at) as accounts, array_agg(s.org_id order by s.rank, s.joined_at) as orgs
  into v_sources
  from (
    select o.id as org_id, case when o.org_pays_first then 0 else 2 end as rank, m.joined_at,
      case when o.funding = 'allowance'
        then (select a.id from billing.accounts a where a.org_id = o.id and a.member_id = p_user)
        else (select a.id from billing.accounts a where a.org_id = o.id and a.member_id is null)
      end as account_id
    from billing.org_members m join billing.orgs o on o.id = m.org_id
    where m.user_id = p_user and m.active and m.role = 'member'
    union all
    select null, 1, null, p_own.id
  ) s where s.account_id is not null;
  perform 1 from billing.accounts a where a.id = any(v_sources.accounts) and a.id <> p_own.id order by a.id for update;

  for i in 1 .. array_length(v_sources.accounts, 1) loop
    select * into v_account from billing.accounts a where a.id = v_sources.accounts[i];
    if v_account.held > 0 or v_account.next_expiry <= now() then
      v_account := billing.settle_account(v_account.id);
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_available >= p_amount then
      if v_account.org_id is null then
        return v_account;                                 -- the member's own caps: the caller's, as for anyone
      end if;
      v_cap := case when v_account.caps > 0 then billing.take_cap_room(v_account.id, p_amount, p_model, p_user) end;
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
    'available', trim_scale(v_best)::text, 'debt', p_own.balance < 0, 'wallets', v_wallets));
end;
$function$;

CREATE OR REPLACE FUNCTION billing.charge_usage_batch(p_events jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_platform bigint := billing.platform_account_id('usage_revenue');
  v_count integer := jsonb_array_length(p_events);
  e record;
  v_user uuid;
  v_available numeric(38, 18);
  v_balance numeric(38, 18);
  v_version bigint;
  v_account bigint;
  v_outcomes jsonb[] := array_fill(null::jsonb, array[v_count]);
  -- accepted transfers, in order
  a_ord integer[] := '{}';
  a_id bigint[] := '{}';
  a_account bigint[] := '{}';
  a_amount numeric(38, 18)[] := '{}';
  a_balance numeric(38, 18)[] := '{}';
  a_version bigint[] := '{}';
  a_key text[] := '{}';
  a_card bigint[] := '{}';
  a_corr text[] := '{}';
  a_meta jsonb[] := '{}';
  v_id bigint;
  v_cap jsonb;
begin
  if v_count > 1000 then
    perform billing.raise_error('BATCH_TOO_LARGE', jsonb_build_object('max', 1000, 'given', v_count));
  end if;

  create temp table if not exists pg_temp.usage_batch (
    ord integer, event_id text, user_id uuid, model text, input_tokens bigint, output_tokens bigint,
    occurred_at timestamptz, correlation_id text, account_id bigint, amount numeric(38, 18), rate_card_id bigint,
    existing_transfer bigint, existing_amount numeric(38, 18), first_ord integer, member boolean not null default false
  ) on commit drop;
  truncate pg_temp.usage_batch;

  insert into pg_temp.usage_batch (ord, event_id, user_id, model, input_tokens, output_tokens, occurred_at, correlation_id)
  select x.ord::integer, x.ev ->> 'event_id', (x.ev ->> 'user_id')::uuid, x.ev ->> 'model',
         (x.ev ->> 'input_tokens')::bigint, (x.ev ->> 'output_tokens')::bigint,
         (x.ev ->> 'occurred_at')::timestamptz, x.ev ->> 'correlation_id'
  from jsonb_array_elements(p_events) with ordinality as x(ev, ord);

  -- Price every event from its model's current rate card, set-based.
  update pg_temp.usage_batch b set rate_card_id = r.id,
    amount = round((b.input_tokens * r.usd_per_million_input + b.output_tokens * r.usd_per_million_output) * r.markup / 1000, 18)
  from (select distinct on (rc.model) rc.* from billing.rate_cards rc where rc.effective_from <= now()
        order by rc.model, rc.effective_from desc, rc.version desc) r
  where r.model = b.model;

  update pg_temp.usage_batch b set account_id = a.id, member = a.orgs > 0 from billing.accounts a where a.user_id = b.user_id;

  -- One lock per account for the whole batch, in ascending id order (no deadlocks): the users'
  -- own accounts, then the organisation accounts that may pay for members (after, as everywhere).
  perform 1 from billing.accounts a where a.id in (select distinct b.account_id from pg_temp.usage_batch b) order by a.id for update;
  if exists (select 1 from pg_temp.usage_batch b where b.member) then
    perform 1 from billing.accounts a
    join billing.org_members m on m.org_id = a.org_id and m.active and m.role = 'member'
      and (a.member_id is null or a.member_id = m.user_id)
    where m.user_id in (select b.user_id from pg_temp.usage_batch b where b.member)
    order by a.id for update of a;
  end if;
  perform billing.settle_account(a.id) from billing.accounts a
  where a.id in (select distinct b.account_id from pg_temp.usage_batch b) and (a.held > 0 or a.next_expiry <= now());

  -- Replays, checked under the locks so a concurrent batch with the same events has committed:
  -- an earlier batch already applied this event id.
  update pg_temp.usage_batch b set existing_transfer = t.id, existing_amount = t.amount
  from billing.transfers t where t.idempotency_key = 'usage-event:' || b.event_id and t.kind = 'usage';
  -- Within the batch, only the first occurrence of an id counts.
  update pg_temp.usage_batch b set first_ord = f.first_ord
  from (select b2.event_id, min(b2.ord) as first_ord from pg_temp.usage_batch b2 group by b2.event_id) f
  where f.event_id = b.event_id;

  -- Greedy per user in event order: each event is applied if it still fits.
  for e in
    select b.*, a.balance as acct_balance, a.held as acct_held, a.version as acct_version, a.caps as acct_caps
    from pg_temp.usage_batch b left join billing.accounts a on a.id = b.account_id
    order by b.user_id, b.ord
  loop
    if v_user is distinct from e.user_id then
      v_user := e.user_id;
      v_available := coalesce(e.acct_balance - e.acct_held, 0);
      v_balance := e.acct_balance;
      v_version := e.acct_version;
    end if;
    if e.rate_card_id is null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', 'UNKNOWN_MODEL');
    elsif e.existing_transfer is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'duplicate',
        'transfer_id', e.existing_transfer::text, 'charged', trim_scale(e.existing_amount)::text);
    elsif e.ord <> e.first_ord then
      -- A repeat within the batch reports what its first occurrence did (sorted by user, then
      -- order, the first was handled already when both name the same user).
      v_outcomes[e.ord] := coalesce(v_outcomes[e.first_ord], '{}'::jsonb)
        || jsonb_build_object('event_id', e.event_id, 'status', 'duplicate');
    elsif e.amount = 0 then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'charged', '0', 'transfer_id', null);
    elsif e.member then
      -- A member of funding organisations: the spending order picks the wallet (the same path as
      -- /credits/usage, under the locks taken above).
      v_outcomes[e.ord] := billing.charge_member_event(e.user_id, e.model, e.input_tokens, e.output_tokens, e.event_id,
        e.correlation_id, e.occurred_at);
    elsif e.account_id is null or v_available < e.amount then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'insufficient',
        'required', trim_scale(e.amount)::text, 'available', trim_scale(greatest(coalesce(v_available, 0), 0))::text);
    else
      -- Over a cap: refused alone, like a short event (take_cap_room counted nothing then).
      v_cap := case when e.acct_caps > 0 then billing.take_cap_room(e.account_id, e.amount, e.model) end;
    end if;
    if v_cap is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'cap_reached', 'cap', v_cap);
      v_cap := null;
    elsif v_outcomes[e.ord] is null then
      v_id := nextval(pg_get_serial_sequence('billing.transfers', 'id'));
      v_available := v_available - e.amount;
      v_balance := v_balance - e.amount;
      v_version := v_version + 1;
      a_ord := a_ord || e.ord; a_id := a_id || v_id; a_account := a_account || e.account_id;
      a_amount := a_amount || e.amount; a_balance := a_balance || v_balance; a_version := a_version || v_version;
      a_key := a_key || ('usage-event:' || e.event_id); a_card := a_card || e.rate_card_id;
      a_corr := a_corr || e.correlation_id;
      a_meta := a_meta || jsonb_build_object('model', e.model, 'input_tokens', e.input_tokens,
        'output_tokens', e.output_tokens, 'occurred_at', e.occurred_at, 'event_id', e.event_id);
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'transfer_id', v_id::text,
        'charged', trim_scale(e.amount)::text, 'balance', trim_scale(v_balance)::text);
    end if;
  end loop;

  if array_length(a_id, 1) > 0 then
    insert into billing.transfers (id, kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, rate_card_id, metadata)
    overriding system value
    select t.id, 'usage', t.account, v_platform, t.amount, t.key, t.corr, t.card, t.meta
    from unnest(a_id, a_account, a_amount, a_key, a_corr, a_card, a_meta) as t(id, account, amount, key, corr, card, meta);

    insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
    select t.id, t.account, -t.amount, t.balance, t.version
    from unnest(a_id, a_account, a_amount, a_balance, a_version) as t(id, account, amount, balance, version)
    union all
    select t.id, v_platform, t.amount, null, null from unnest(a_id, a_amount) as t(id, amount);

    update billing.accounts a set balance = a.balance - d.total, version = a.version + d.n
    from (select t.account, sum(t.amount) as total, count(*) as n from unnest(a_account, a_amount) as t(account, amount) group by t.account) d
    where a.id = d.account;

    -- Each account's accepted events draw from its lots in event order.
    perform billing.draw_lots('usage', a_id, a_account, a_amount);
  end if;

  return to_jsonb(v_outcomes);
end;
$function$;

CREATE OR REPLACE FUNCTION billing.create_lot(p_account_id bigint, p_transfer_id bigint, p_kind billing.transfer_kind, p_amount numeric, p_balance_after numeric, p_lot jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_lot jsonb := coalesce(p_lot, '{}'::jsonb);
  v_category text := coalesce(v_lot ->> 'category', case p_kind when 'purchase' then 'paid' else 'promotional' end);
  v_policy billing.credit_expiry_policy;
  v_expires_at timestamptz;
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
               when p_kind <> 'adjustment' then now() + v_policy.expires_after end)
  returning expires_at into v_expires_at;
  if v_expires_at is not null then
    update billing.accounts a set next_expiry = least(a.next_expiry, v_expires_at) where a.id = p_account_id;
  end if;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.sync_purchase(p_state jsonb)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  p billing.purchases;
  v_refunded integer := coalesce((p_state ->> 'amount_refunded')::integer, 0);
  v_charge text := p_state ->> 'charge_id';
  v_dispute text := case
    when p_state ->> 'dispute_status' in ('won', 'warning_closed', 'prevented') then 'won'
    when p_state ->> 'dispute_status' = 'lost' then 'lost'
    when p_state ->> 'dispute_id' is not null then 'open' end;
  v_target_c numeric(38, 18);
  v_target_b numeric(38, 18);
  v_remaining numeric(38, 18);
  v_user uuid;        -- whose account the credits are in: the buyer's,
  v_wallet bigint;    -- or, for an organisation's purchase, its wallet
  v_buyer bigint;
  v_moved numeric(38, 18);
  v_elsewhere record;  -- an account the purchase's credits were moved to
begin
  -- A Checkout purchase by its session; an off-session recharge (no session) by its purchase id.
  if p_state ->> 'session_id' is not null then
    select * into p from billing.purchases x where x.stripe_session_id = p_state ->> 'session_id' for update;
  else
    select * into p from billing.purchases x
    where x.id = (p_state ->> 'purchase_id')::uuid and x.origin = 'auto_recharge' for update;
  end if;
  if not found then
    return 'unknown_purchase';
  end if;
  if p.org_id is not null then
    v_wallet := billing.org_wallet_id(p.org_id);
  else
    v_user := p.user_id;
  end if;

  -- 1. Payment.
  if p.status <> 'paid' and p_state ->> 'payment_status' = 'paid' then
    if (p_state ->> 'amount_total')::integer <> p.price_cents or lower(p_state ->> 'currency') <> p.currency then
      perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('purchase_id', p.id,
        'expected_cents', p.price_cents, 'paid_cents', p_state ->> 'amount_total', 'currency', p_state ->> 'currency'));
    end if;
    -- The credits are a paid lot whose cost is the price; the bonus a promotional lot.
    perform billing.grant_credits(v_user, p.credits, 'purchase', 'purchase:' || p.id, p.stripe_session_id, null,
      billing.purchase_metadata(p), jsonb_build_object('category', 'paid', 'cost_cents', p.price_cents, 'currency', p.currency,
        'purchase_id', p.id), v_wallet);
    if p.bonus_credits > 0 then
      perform billing.grant_credits(v_user, p.bonus_credits, 'promo_grant', 'purchase-bonus:' || p.id, p.stripe_session_id,
        null, billing.purchase_metadata(p), jsonb_build_object('category', 'promotional', 'currency', p.currency,
          'purchase_id', p.id), v_wallet);
    end if;
    update billing.purchases x set status = 'paid', paid_at = now(), updated_at = now() where x.id = p.id returning * into p;
    update billing.recharges r set status = 'succeeded', payment_intent_id = p_state ->> 'payment_intent', updated_at = now()
    where r.purchase_id = p.id;
    -- The card the student asked to keep, for auto-recharge (Stripe ids only).
    if p.save_card and p_state ->> 'customer' is not null and p_state ->> 'payment_method' is not null then
      insert into billing.saved_cards as c (user_id, customer_id, payment_method_id)
      values (p.user_id, p_state ->> 'customer', p_state ->> 'payment_method')
      on conflict (user_id) do update set customer_id = excluded.customer_id,
        payment_method_id = excluded.payment_method_id, saved_at = now();
    end if;
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('purchase_receipt', p.user_id, 'receipt:' || p.id, jsonb_build_object(
      'purchase_id', p.id, 'package_id', p.package_id, 'price_cents', p.price_cents, 'currency', p.currency,
      'credits', trim_scale(p.credits)::text, 'bonus_credits', trim_scale(p.bonus_credits)::text)
      || coalesce(billing.purchase_metadata(p), '{}'))
    on conflict (dedupe_key) do nothing;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'expired' then
    update billing.purchases x set status = 'expired', updated_at = now() where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'complete' and p_state ->> 'payment_status' = 'unpaid'
        and p_state ->> 'payment_intent_status' in ('requires_payment_method', 'canceled') then
    update billing.purchases x set status = 'failed', updated_at = now() where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p.origin = 'auto_recharge'
        and p_state ->> 'payment_intent_status' in ('requires_payment_method', 'requires_action', 'canceled') then
    -- The off-session charge failed (the worker may have recorded it already: this converges).
    perform billing.record_recharge(r.id, p_state ->> 'payment_intent', coalesce(p_state ->> 'failure_code', 'payment_failed'))
    from billing.recharges r where r.purchase_id = p.id;
    select * into p from billing.purchases x where x.id = p.id;
  end if;

  update billing.purchases x
  set stripe_payment_intent_id = coalesce(x.stripe_payment_intent_id, p_state ->> 'payment_intent'),
      stripe_charge_id = coalesce(x.stripe_charge_id, v_charge),
      stripe_fee_cents = coalesce(x.stripe_fee_cents, (p_state ->> 'stripe_fee')::integer)
  where x.id = p.id returning * into p;

  if p.status <> 'paid' then
    return p.status;
  end if;

  -- 2. Refunds: Stripe reports the cumulative amount, so the reversal converges on
  -- floor(credits × refunded / paid), for purchased and bonus credits alike.
  if v_refunded > p.amount_refunded_cents then
    v_target_c := floor(p.credits * v_refunded / p.price_cents);
    v_target_b := floor(p.bonus_credits * v_refunded / p.price_cents);
    -- Each reversal takes back its own lot first; what that lot no longer has was spent, and is
    -- owed like any debt (settled from whatever the account holds, or carried as debt).
    perform billing.take_back_purchase(p, v_target_c - p.credits_refund_reversed, 'paid', 'refund_reversal',
      'refund:' || p.id || ':' || v_refunded, v_charge);
    perform billing.take_back_purchase(p, v_target_b - p.bonus_refund_reversed, 'promotional', 'refund_reversal',
      'refund-bonus:' || p.id || ':' || v_refunded, v_charge);
    update billing.purchases x
    set amount_refunded_cents = v_refunded, credits_refund_reversed = greatest(v_target_c, x.credits_refund_reversed),
        bonus_refund_reversed = greatest(v_target_b, x.bonus_refund_reversed), updated_at = now()
    where x.id = p.id returning * into p;
  end if;

  -- 3. Disputes: open → hold what is left of the purchase, in every account its credits are in;
  -- won → release; lost → reverse it from wherever it is.
  if v_dispute is not null and coalesce(p.dispute_status, 'open') = 'open' then
    v_remaining := (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed);
    if v_dispute = 'open' then
      v_buyer := coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p.user_id));
      v_moved := 0;
      perform 1 from billing.accounts a
      where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.purchase_id = p.id and l.open)
      order by a.id for update;
      -- In id order, as every lock is taken; the buyer's account holds the rest of the purchase.
      for v_elsewhere in
        select l.account_id, sum(l.remaining) as remaining from billing.lots l
        where l.purchase_id = p.id and l.open and l.account_id <> v_buyer group by l.account_id order by l.account_id
      loop
        perform billing.place_dispute_hold(v_elsewhere.account_id, v_elsewhere.remaining, p_state ->> 'dispute_id',
          'dispute:' || (p_state ->> 'dispute_id') || ':' || v_elsewhere.account_id);
        v_moved := v_moved + v_elsewhere.remaining;
      end loop;
      if p.dispute_hold_id is null and v_remaining > v_moved then
        p.dispute_hold_id := billing.place_dispute_hold(v_buyer, v_remaining - v_moved, p_state ->> 'dispute_id',
          'dispute:' || (p_state ->> 'dispute_id'));
      end if;
    else
      perform billing.release_hold(null, h.id) from billing.holds h
      where h.purpose = 'dispute' and h.correlation_id = p_state ->> 'dispute_id' and h.status = 'active'
      order by h.account_id;
    end if;
    -- While disputed, the purchase's own lots are spent last (only a job's hold can reach them).
    update billing.lots l set frozen = (v_dispute = 'open') where l.purchase_id = p.id and l.frozen <> (v_dispute = 'open');
    if v_dispute = 'lost' then
      perform billing.take_back_purchase(p, v_remaining, null, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'),
        v_charge);
    end if;
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, dispute_hold_id = p.dispute_hold_id, updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$function$;

CREATE OR REPLACE FUNCTION billing.revenue_parts(p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS TABLE(money jsonb, credits jsonb, lots jsonb, active_accounts bigint[], user_credit_change numeric, paying_accounts bigint[], first_time_purchasers bigint, checkouts_created bigint, checkouts_paid bigint, webhooks_received bigint, webhooks_ok bigint)
 LANGUAGE plpgsql
 STABLE ROWS 1
 SET search_path TO ''
 SET plan_cache_mode TO 'force_custom_plan'
 SET jit TO 'off'
 SET max_parallel_workers_per_gather TO '0'
AS $function$
begin
  return query
  select
    (select coalesce(jsonb_agg(jsonb_build_object('kind', m.kind, 'account', m.account, 'currency', m.currency,
        'cents', m.cents)), '[]'::jsonb)
     from (select t.kind, case when e.account in ('payers', 'platform_fees', 'b2c_revenue', 'stripe_fees') then e.account
                              else 'other' end as account, e.currency, sum(e.amount_cents) as cents
           from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
           where t.occurred_at >= p_from and t.occurred_at < p_to
           group by 1, 2, 3) m),
    -- Grouped by rate card first, so the model lookup runs once per card, not per transfer.
    (select coalesce(jsonb_agg(jsonb_build_object('kind', c.kind, 'model', c.model, 'amount', c.amount, 'events', c.events)),
        '[]'::jsonb)
     from (select g.kind, r.model, sum(g.amount) as amount, sum(g.events) as events
           from (select t.kind, t.rate_card_id, sum(t.amount) as amount, count(*) as events from billing.transfers t
                 where t.created_at >= p_from and t.created_at < p_to group by 1, 2) g
           left join billing.rate_cards r on r.id = g.rate_card_id and g.kind = 'usage'
           group by 1, 2) c),
    -- Credits and their cost by lot category: granted (net of debt settled on arrival; a move is
    -- not a grant), and
    -- drawn by each kind of transfer (spent, expired, reversed), each at its lot's cost basis.
    (select coalesce(jsonb_agg(jsonb_build_object('currency', x.currency, 'category', x.category, 'kind', x.kind,
        'credits', x.credits, 'cents', x.cents)), '[]'::jsonb)
     from (select l.currency, l.category, 'granted' as kind, sum(l.amount - l.debt_settled) as credits,
                  sum(l.cost_cents * (l.amount - l.debt_settled) / l.amount) as cents
           from billing.lots l where l.granted_at >= p_from and l.granted_at < p_to and l.moved_from is null group by 1, 2
           union all
           select l.currency, l.category, a.kind::text, sum(a.amount), sum(l.cost_cents * a.amount / l.amount)
           from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
           where a.created_at >= p_from and a.created_at < p_to group by 1, 2, 3) x),
    u.accounts, u.credit_change,
    array(select distinct a.id from billing.purchases p join billing.accounts a on a.user_id = p.user_id
          where p.paid_at >= p_from and p.paid_at < p_to),
    -- A user's first paid purchase is in the period when one is and none came before it.
    (select count(distinct p.user_id) from billing.purchases p
     where p.status = 'paid' and p.paid_at >= p_from and p.paid_at < p_to
       and not exists (select 1 from billing.purchases q where q.user_id = p.user_id and q.status = 'paid' and q.paid_at < p_from)),
    k.created, k.paid, w.received, w.ok
  from
    -- One pass over the user entries: who was active, and (as user_credit_change) what moved.
    (select coalesce(array_agg(distinct e.account_id), '{}') as accounts, coalesce(sum(e.amount), 0) as credit_change
     from billing.entries e where e.balance_after is not null and e.created_at >= p_from and e.created_at < p_to) u,
    (select count(*) as created, count(*) filter (where p.status = 'paid') as paid from billing.purchases p
     where p.created_at >= p_from and p.created_at < p_to and p.stripe_session_id is not null) k,
    (select count(*) as received, count(*) filter (where e.status in ('processed', 'ignored')) as ok
     from billing.stripe_events e where e.received_at >= p_from and e.received_at < p_to) w;
end;
$function$;

create or replace function billing.balance_of(p_account_id bigint)
returns billing.balance
language sql
stable
set search_path = ''
as $$
  -- As settle_account would leave it: overdue holds ended, due lots expired, holds no larger
  -- than what is left.
  select b.balance, b.held, b.balance - b.held
  from (select a.balance - coalesce(x.due, 0) as balance,
          case when x.due > 0 then least(a.held - coalesce(o.overdue, 0), greatest(a.balance - x.due, 0))
               else a.held - coalesce(o.overdue, 0) end as held
        from billing.accounts a
        left join lateral (
          select sum(h.amount) as overdue from billing.holds h
          where h.account_id = a.id and h.status = 'active' and h.expires_at <= now()
        ) o on a.held > 0
        left join lateral (
          select sum(l.remaining) as due from billing.lots l
          where l.account_id = a.id and l.open and not l.frozen and l.expires_at <= now()
        ) x on a.next_expiry <= now()
        where a.id = p_account_id) b
$$;

CREATE OR REPLACE FUNCTION billing.check_lots()
 RETURNS jsonb
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
AS $function$
  with drawn as (
    select la.lot_id, sum(la.amount) as total from billing.lot_allocations la group by la.lot_id
  ), bad_lots as (
    select l.id from billing.lots l left join drawn d on d.lot_id = l.id
    where l.remaining + l.debt_settled + coalesce(d.total, 0) <> l.amount
  ), bad_accounts as (
    select a.id from billing.accounts a left join billing.lots l on l.account_id = a.id
    where a.code is null group by a.id, a.balance
    having coalesce(sum(l.remaining), 0) <> greatest(a.balance, 0)
  ), bad_transfers as (
    select la.transfer_id from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    group by la.transfer_id, t.amount having sum(la.amount) > t.amount
  ), bad_expiry as (
    -- next_expiry is a lower bound of every open lot's expiry.
    select a.id from billing.accounts a join billing.lots l on l.account_id = a.id
    where l.open and l.expires_at is not null and (a.next_expiry is null or l.expires_at < a.next_expiry)
    group by a.id
  ), deferred as (
    select l.currency,
      round(sum(l.cost_cents * l.remaining / l.amount)) as from_lots,
      round(sum(l.cost_cents * (l.amount - l.debt_settled - coalesce(d.total, 0)) / l.amount)) as from_flows
    from billing.lots l left join drawn d on d.lot_id = l.id
    where l.category = 'paid' group by l.currency
  )
  select jsonb_build_object(
    'lots', coalesce((select jsonb_agg(id) from bad_lots), '[]'),
    'accounts', coalesce((select jsonb_agg(id) from bad_accounts), '[]'),
    'transfers', coalesce((select jsonb_agg(transfer_id) from bad_transfers), '[]'),
    'expiry', coalesce((select jsonb_agg(id) from bad_expiry), '[]'),
    'deferred_revenue_cents', coalesce((select jsonb_object_agg(currency, jsonb_build_object(
      'from_lots', from_lots, 'from_flows', from_flows)) from deferred), '{}'))
$function$;

CREATE OR REPLACE FUNCTION billing.org_revenue(p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
begin
  return (
    with money as (
      -- Each organisation purchase's postings in the period: the payment by its key (posted before
      -- the charge id is known), refunds and fees by the charge, a lost dispute by the dispute.
      select p.org_id, t.currency,
        coalesce(sum(e.amount_cents) filter (where t.kind = 'credit_purchase'), 0) as gmv,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'credit_refund'), 0) as refunds,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'credit_dispute_lost'), 0) as disputes_lost,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'stripe_fee'), 0) as stripe_fees,
        coalesce(sum(e.amount_cents), 0) as net
      from billing.purchases p
      join billing.money_transfers t
        on (t.idempotency_key = 'credit-purchase:' || p.id or t.stripe_id in (p.stripe_charge_id, p.dispute_id))
        and t.kind in ('credit_purchase', 'credit_refund', 'credit_dispute_lost', 'stripe_fee')
      join billing.money_entries e on e.transfer_id = t.id and e.account = 'b2c_revenue'
      where p.org_id is not null and t.occurred_at >= p_from and t.occurred_at < p_to
      group by 1, 2
    ),
    spending as (
      -- Members' spending of the organisation's credits (from its wallet or their allowances).
      select a.org_id, count(distinct t.member_id) as active_members, sum(t.amount) as credits
      from billing.transfers t join billing.accounts a on a.id = t.from_account_id
      where t.member_id is not null and t.created_at >= p_from and t.created_at < p_to
        and a.org_id is not null and t.kind in ('usage', 'debit', 'hold_capture')
      group by 1
    )
    select coalesce(jsonb_agg(jsonb_build_object('org_id', o.id, 'name', o.name, 'funding', o.funding,
        'members', (select count(*) from billing.org_members m where m.org_id = o.id and m.active and m.role = 'member'),
        'active_members', coalesce(s.active_members, 0), 'credits_spent', trim_scale(coalesce(s.credits, 0))::text,
        'currency', m.currency, 'gmv_cents', coalesce(m.gmv, 0), 'refunds_cents', coalesce(m.refunds, 0),
        'disputes_lost_cents', coalesce(m.disputes_lost, 0), 'stripe_fees_cents', coalesce(m.stripe_fees, 0),
        'net_revenue_cents', coalesce(m.net, 0),
        'arpu_cents', case when s.active_members > 0 then round(coalesce(m.net, 0)::numeric / s.active_members, 2) end)
      order by coalesce(m.net, 0) desc, o.name, o.id), '[]'::jsonb)
    from billing.orgs o
    left join money m on m.org_id = o.id
    left join spending s on s.org_id = o.id
    where m.org_id is not null or s.org_id is not null
  );
end;
$function$;

CREATE OR REPLACE FUNCTION billing.get_ledger(p_user uuid, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50, p_from timestamp with time zone DEFAULT NULL::timestamp with time zone, p_to timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS TABLE(id bigint, created_at timestamp with time zone, kind billing.transfer_kind, amount numeric, balance_after numeric, correlation_id text, reference text, lots jsonb)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
AS $function$
  select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference,
    -- The lots a grant or a move created, or the lots a debit drew from.
    coalesce(g.lots, x.lots, '[]')
  from billing.accounts a
  join billing.entries e on e.account_id = a.id
  join billing.transfers t on t.id = e.transfer_id
  left join lateral (select jsonb_agg(jsonb_build_object('lot_id', l.id::text, 'amount', trim_scale(l.amount)::text)
                                      order by l.id) as lots
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
$function$;
