-- Two fixes to school wallets (#22), found by its benchmark:
--
-- * move_credits gave the receiving lot an expiry of "now + 1 second" when the credits drawn never
--   expire (greatest ignores a null), so an allowance funded from non-expiring credits was expired
--   by the next expire_lots run. A lot drawn only from non-expiring credits now never expires.
--   Lots already written that way and still open are repaired below: an allowance (or sweep) lot
--   whose expiry is its own grant time + 1 s and whose transfer drew only from non-expiring lots.
-- * lock_spending_source found the member's account with `member_id is not distinct from case …`,
--   which the planner cannot match to the accounts_org_member index; split into the two lookups
--   (an allowance account by member, a pooled wallet by member_id is null), each an index probe.

create or replace function billing.move_credits(
  p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid,
  p_metadata jsonb default null
) returns billing.transfers
language plpgsql
set search_path = ''
as $$
declare
  v_from billing.accounts;
  v_to billing.accounts;
  v_transfer billing.transfers;
  d record;
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
  if v_from.held > 0 then
    perform billing.expire_overdue_holds(p_from);
    select * into v_from from billing.accounts a where a.id = p_from;
  end if;
  if v_from.balance - v_from.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(v_from.balance - v_from.held, 0))::text, 'debt', v_from.balance < 0,
      'wallet', 'organisation'));
  end if;

  insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, member_id, metadata)
  values (p_kind, p_from, p_to, p_amount, p_key, p_member, p_metadata)
  returning * into v_transfer;
  update billing.accounts a set balance = a.balance - p_amount, version = a.version + 1 where a.id = p_from
  returning * into v_from;
  update billing.accounts a set balance = a.balance + p_amount, version = a.version + 1 where a.id = p_to
  returning * into v_to;
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version) values
    (v_transfer.id, p_from, -p_amount, v_from.balance, v_from.version),
    (v_transfer.id, p_to, p_amount, v_to.balance, v_to.version);

  perform billing.draw_lots(p_kind, array[v_transfer.id], array[p_from], array[p_amount]);
  -- One lot on the receiving side (a lot is one grant): its cost basis is exactly what the
  -- credits drawn cost; it is paid if any of them was; it expires when the first of them would
  -- (never later than a credit it came from; one already overdue expires at the next run; credits
  -- that never expire stay so).
  select coalesce(bool_or(l.category = 'paid'), false) as paid, sum(l.cost_cents * x.amount / l.amount) as cost,
    min(l.priority) as priority, min(l.expires_at) as expires_at, min(l.currency) as currency
  into d
  from billing.lot_allocations x join billing.lots l on l.id = x.lot_id where x.transfer_id = v_transfer.id;
  perform billing.create_lot(p_to, v_transfer.id, p_kind, p_amount, v_to.balance, jsonb_strip_nulls(jsonb_build_object(
    'category', case when d.paid then 'paid' else 'promotional' end,
    'cost_cents', case when d.paid then coalesce(d.cost, 0) else 0 end,
    'priority', d.priority, 'currency', d.currency))
    -- Kept when null: create_lot reads an explicit null as "never expires" (absent means the
    -- category's default expiry, which would give the moved credits a new life).
    || jsonb_build_object('expires_at',
         case when d.expires_at is not null then greatest(d.expires_at, now() + interval '1 second') end));
  return v_transfer;
end;
$$;
comment on function billing.move_credits(bigint, bigint, numeric, billing.transfer_kind, text, uuid, jsonb)
  is 'Internal: a transfer between two tracked accounts (wallet ↔ allowance), the lots drawn mirrored on the receiving side.';

create or replace function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text,
  p_key text, p_kind billing.transfer_kind) returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_existing billing.transfers;
  v_sources record;
  v_account billing.accounts;
  v_available numeric(38, 18);
  v_cap jsonb;
  v_wallets jsonb := '[]';
  v_best numeric(38, 18) := 0;
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
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account.id);
      select * into v_account from billing.accounts a where a.id = v_account.id;
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
    v_best := greatest(v_best, case when v_cap is null then v_available else 0 end);
    v_wallets := v_wallets || jsonb_strip_nulls(jsonb_build_object(
      'wallet', case when v_account.org_id is null then 'personal' else 'organisation' end,
      'org_id', v_sources.orgs[i], 'available', trim_scale(v_available)::text,
      'short_by', trim_scale(greatest(p_amount - v_available, 0))::text, 'cap', v_cap));
    v_cap := null;
  end loop;
  perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
    'available', trim_scale(v_best)::text, 'debt', p_own.balance < 0, 'wallets', v_wallets));
end;
$$;
comment on function billing.lock_spending_source(billing.accounts, uuid, numeric, text, text, billing.transfer_kind)
  is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';

-- Repair allowance lots written with the 1-second expiry (not yet expired: expire_lots may not have
-- run). Lots already expired that way were expired with a ledger entry; those are left to the
-- ledger (an admin grant restores them) rather than rewritten here.
update billing.lots l set expires_at = null
where l.expires_at is not null and l.remaining > 0
  and l.expires_at = l.granted_at + interval '1 second'
  and exists (select 1 from billing.transfers t where t.id = l.grant_transfer_id and t.kind in ('allowance', 'allowance_sweep'))
  and not exists (
    select 1 from billing.lot_allocations x join billing.lots s on s.id = x.lot_id
    where x.transfer_id = l.grant_transfer_id and s.expires_at is not null);
