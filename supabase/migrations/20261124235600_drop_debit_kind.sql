-- The `debit` transfer kind and billing.debit_credits go: no route used them (a charge is
-- priced usage, an AI call's capture, or a job's capture). Postgres cannot drop an enum value,
-- so the type is made anew without it: the old one renamed, the new one created, the columns
-- cast through text (a rewrite of transfers and lot_allocations under an exclusive lock: run it
-- in a quiet window), and what names the type (two views, a partial index, a check, the
-- composite transfer_spec, twelve functions' signatures) dropped and made again as
-- supabase/schemas says. Hand-written: ./scripts/db-diff cannot order these steps.

-- A debit ever written would be lost or relabelled by the cast: refuse, saying what to do.
do $$
declare
  v_transfers bigint := (select count(*) from billing.transfers t where t.kind = 'debit');
  v_allocations bigint := (select count(*) from billing.lot_allocations a where a.kind = 'debit');
begin
  if v_transfers > 0 or v_allocations > 0 then
    raise exception using errcode = 'P0001', message = 'DEBIT_KIND_IN_USE',
      detail = json_build_object('transfers', v_transfers, 'lot_allocations', v_allocations)::text,
      hint = 'transfers of kind debit exist; this migration drops the kind and would lose them. Decide what they are (e.g. usage) and relabel them in a migration before this one.';
  end if;
end
$$;

drop function if exists billing.debit_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb);

alter type billing.transfer_kind rename to transfer_kind_with_debit;

create type billing.transfer_kind as enum (
  'purchase', 'promo_grant', 'adjustment', 'usage', 'hold_capture', 'refund_reversal', 'dispute_reversal', 'expiry',
  'allowance', 'allowance_sweep', 'code_escrow', 'code_redemption', 'code_return', 'plan_grant', 'plan_rollover', 'void'
);
comment on type billing.transfer_kind is 'Why money moved. Every transfer has exactly one.';

-- Nothing stores a transfer_spec: only function arguments and variables use it.
alter type billing.transfer_spec alter attribute kind type billing.transfer_kind;

-- What names the old type in its definition, made again after the columns change.
drop view billing_api.ledger_entries;
drop view billing_api.lots;
drop index billing.lot_allocations_expiry;
alter table billing.lot_allocations drop constraint lot_allocations_amount_positive;
drop function billing.charge_cost(billing.transfer_kind_with_debit,text,timestamp with time zone,numeric,jsonb);
drop function billing.get_ledger(uuid,bigint,integer,timestamp with time zone,timestamp with time zone);
drop function billing.get_lots(uuid,bigint,integer);
drop function billing.grant_credits(uuid,numeric,billing.transfer_kind_with_debit,text,text,text,jsonb,jsonb,bigint);
drop function billing.grant_org_credits(uuid,numeric,billing.transfer_kind_with_debit,text,text,uuid,text[]);
drop function billing.lock_spending_source(billing.accounts,uuid,numeric,text,text,billing.transfer_kind_with_debit);
drop function billing.lots_as_of(bigint,timestamp with time zone,bigint,integer);
drop function billing.move_credits(bigint,bigint,numeric,billing.transfer_kind_with_debit,text,uuid,jsonb,text[]);
drop function billing.post_user_transfer(uuid,integer,text,numeric,billing.transfer_kind_with_debit,text,text,text,text,jsonb,bigint,uuid,jsonb,bigint,numeric);
drop function billing.reverse_credits(uuid,numeric,billing.transfer_kind_with_debit,text,text,text,jsonb,bigint[],bigint);
drop function billing.take_back_plan_credits(billing.plan_grants,uuid,numeric,billing.transfer_kind_with_debit,text);
drop function billing.take_back_purchase(billing.purchases,numeric,text,billing.transfer_kind_with_debit,text,text);

alter table billing.transfers alter column kind type billing.transfer_kind using kind::text::billing.transfer_kind;
alter table billing.lot_allocations alter column kind type billing.transfer_kind using kind::text::billing.transfer_kind;

drop type billing.transfer_kind_with_debit;

alter table billing.lot_allocations add constraint lot_allocations_amount_positive
  check (amount > 0 or (kind in ('void', 'expiry') and amount < 0));
create index lot_allocations_expiry on billing.lot_allocations (lot_id) where kind = 'expiry';

create view billing_api.ledger_entries with (security_invoker = true) as
  select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference
  from billing.entries e
  join billing.transfers t on t.id = e.transfer_id
  join billing.accounts a on a.id = e.account_id
  where a.user_id is not null;
comment on view billing_api.ledger_entries is 'The signed-in user''s ledger entries.';
grant select on table billing_api.ledger_entries to authenticated;
grant select on table billing_api.ledger_entries to service_role;

create view billing_api.lots with (security_invoker = true) as
  select l.id, t.kind as source, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen
  from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id;
comment on view billing_api.lots is 'The signed-in user''s credit lots: where each credit came from, what is left, when it expires.';
grant select on table billing_api.lots to authenticated;
grant select on table billing_api.lots to service_role;

set check_function_bodies = off;

-- The functions whose signatures name the type.
CREATE OR REPLACE FUNCTION billing.charge_cost(p_kind billing.transfer_kind, p_model text, p_at timestamp with time zone, p_amount numeric, p_metadata jsonb)
 RETURNS numeric
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select billing.provider_cost(p_model, p_at, case
    when p_kind = 'usage' and p_metadata ? 'reserved'
      and (p_metadata ->> 'priced')::numeric - p_amount - coalesce((p_metadata ->> 'unbilled')::numeric, 0) > 0 then '{}'
    when p_kind = 'usage' or (p_kind = 'hold_capture' and p_metadata ? 'ai_call_id') then p_metadata
    else '{}' end)
$function$;
comment on function billing.charge_cost(billing.transfer_kind,text,timestamp with time zone,numeric,jsonb) is 'Internal: a charge''s provider cost in USD from the ledger''s own counts (null: its model had no provider price then).';
revoke execute on function billing.charge_cost(billing.transfer_kind,text,timestamp with time zone,numeric,jsonb) from public;

CREATE OR REPLACE FUNCTION billing.get_ledger(p_user uuid, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50, p_from timestamp with time zone DEFAULT NULL::timestamp with time zone, p_to timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS TABLE(id bigint, created_at timestamp with time zone, kind billing.transfer_kind, amount numeric, balance_after numeric, correlation_id text, reference text, lots jsonb, paid_by_org uuid, model text)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
AS $function$
  select x.id, x.created_at, x.kind, x.amount, x.balance_after, x.correlation_id, x.reference, x.lots, x.paid_by_org,
    x.model
  from (
    select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference,
      -- The lot a grant created, or the lots a debit drew from.
      coalesce(g.lots, x.lots, '[]') as lots, null::uuid as paid_by_org,
      -- What a charge paid for: the model the ledger recorded (usage, a gateway call, a job's hold).
      case when t.kind in ('usage', 'hold_capture') then coalesce(t.metadata ->> 'model',
        (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)) end as model
    from billing.accounts a
    join billing.entries e on e.account_id = a.id
    join billing.transfers t on t.id = e.transfer_id
    left join lateral (select jsonb_build_array(jsonb_build_object('lot_id', l.id::text, 'amount', trim_scale(l.amount)::text)) as lots
                       from billing.lots l where l.grant_transfer_id = t.id) g on e.amount > 0
    left join lateral (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id::text, 'amount', trim_scale(la.amount)::text)
                                        order by la.lot_id) as lots
                       from billing.lot_allocations la where la.transfer_id = t.id) x on e.amount < 0
    where a.user_id = p_user
      and e.balance_after is not null -- always true for user entries; lets the partial index serve
      and (p_before_id is null or e.id < p_before_id)
      and (p_from is null or e.created_at >= p_from)
      and (p_to is null or e.created_at < p_to)
    union all
    -- Spending an organisation paid for the member (transfers_org_member serves member_id).
    select e.id, e.created_at, t.kind, e.amount, null, t.correlation_id, t.reference, '[]'::jsonb, a.org_id,
      case when t.kind in ('usage', 'hold_capture') then coalesce(t.metadata ->> 'model',
        (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)) end
    from billing.transfers t
    join billing.entries e on e.transfer_id = t.id and e.amount < 0
    join billing.accounts a on a.id = e.account_id and a.org_id is not null
    where t.member_id = p_user and t.kind in ('usage', 'hold_capture')
      and (p_before_id is null or e.id < p_before_id)
      and (p_from is null or e.created_at >= p_from)
      and (p_to is null or e.created_at < p_to)
  ) x
  order by x.id desc
  limit least(greatest(p_limit, 1), 1000)
$function$;
comment on function billing.get_ledger(uuid,bigint,integer,timestamp with time zone,timestamp with time zone) is 'A user''s entries in [p_from, p_to), newest first, keyset-paginated by entry id, each with the lots it created or drew from and, for a charge, the model it paid for; charges an organisation paid for the user are included with paid_by_org and no balance_after.';
revoke execute on function billing.get_ledger(uuid,bigint,integer,timestamp with time zone,timestamp with time zone) from public;
grant execute on function billing.get_ledger(uuid,bigint,integer,timestamp with time zone,timestamp with time zone) to service_role;

CREATE OR REPLACE FUNCTION billing.get_lots(p_user uuid, p_before_id bigint DEFAULT NULL::bigint, p_limit integer DEFAULT 50)
 RETURNS TABLE(id bigint, source billing.transfer_kind, category text, priority integer, amount numeric, remaining numeric, granted_at timestamp with time zone, expires_at timestamp with time zone, frozen boolean, purchase_id uuid, applies_to text[])
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO ''
AS $function$
  select l.id, t.kind, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen, l.purchase_id,
    l.applies_to
  from billing.accounts a
  join billing.lots l on l.account_id = a.id
  join billing.transfers t on t.id = l.grant_transfer_id
  where a.user_id = p_user and (p_before_id is null or l.id < p_before_id)
  order by l.id desc
  limit least(greatest(p_limit, 1), 1000)
$function$;
comment on function billing.get_lots(uuid,bigint,integer) is 'A user''s lots, newest first, keyset-paginated by lot id.';
revoke execute on function billing.get_lots(uuid,bigint,integer) from public;
grant execute on function billing.get_lots(uuid,bigint,integer) to service_role;

CREATE OR REPLACE FUNCTION billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text DEFAULT NULL::text, p_correlation_id text DEFAULT NULL::text, p_metadata jsonb DEFAULT NULL::jsonb, p_lot jsonb DEFAULT NULL::jsonb, p_account_id bigint DEFAULT NULL::bigint)
 RETURNS billing.transfer_result
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
begin
  if p_kind not in ('purchase', 'promo_grant', 'adjustment') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'purchase, promo_grant, adjustment'));
  end if;
  return billing.post_user_transfer(p_user, 1, 'credit', p_amount, p_kind,
    case p_kind when 'purchase' then 'purchases' when 'promo_grant' then 'promotions' else 'adjustments' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null, p_lot, p_account_id);
end;
$function$;
comment on function billing.grant_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,jsonb,bigint) is 'Adds credits to a user (or the account p_account_id) as a new lot (p_lot: the lot''s options, see billing.transfer_spec): a purchase, a promotion, or a support adjustment. Idempotent by (key, kind).';
revoke execute on function billing.grant_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,jsonb,bigint) from public;
grant execute on function billing.grant_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,jsonb,bigint) to service_role;

CREATE OR REPLACE FUNCTION billing.grant_org_credits(p_org uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reason text, p_admin uuid, p_applies_to text[] DEFAULT NULL::text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_result billing.transfer_result;
begin
  if not exists (select 1 from billing.orgs o where o.id = p_org) then
    perform billing.raise_error('ORG_NOT_FOUND', jsonb_build_object('org_id', p_org));
  end if;
  if p_kind not in ('promo_grant', 'adjustment') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind));
  end if;
  v_result := billing.post_user_transfer(null, 1, 'credit', p_amount, p_kind,
    case p_kind when 'promo_grant' then 'promotions' else 'adjustments' end, p_key, null, null,
    jsonb_build_object('reason', p_reason, 'admin', p_admin, 'org_id', p_org),
    p_lot => jsonb_strip_nulls(jsonb_build_object('applies_to', p_applies_to)), p_account_id => billing.org_wallet_id(p_org));
  return jsonb_build_object('transfer_id', v_result.transfer_id::text, 'amount', trim_scale(v_result.amount)::text,
    'wallet', billing.wallet_json(billing.org_wallet_id(p_org)), 'replayed', v_result.replayed);
end;
$function$;
comment on function billing.grant_org_credits(uuid,numeric,billing.transfer_kind,text,text,uuid,text[]) is 'A platform admin''s grant (or adjustment) of credits to an organisation''s wallet, for the models p_applies_to names (null: any); idempotent by key.';
revoke execute on function billing.grant_org_credits(uuid,numeric,billing.transfer_kind,text,text,uuid,text[]) from public;
grant execute on function billing.grant_org_credits(uuid,numeric,billing.transfer_kind,text,text,uuid,text[]) to service_role;

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
    if v_account.id = p_own.id then
      p_own := v_account;                             -- settled: the refusal's debt is read from it
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_account.restricted_lots then
      v_available := least(v_available, (billing.plan_lot_draw(v_account.id, p_model, p_amount) ->> 'found')::numeric);
    end if;
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
    'available', trim_scale(v_best)::text, 'debt', billing.in_debt(p_own), 'wallets', v_wallets));
  return null;                                      -- not reached: raise_error raised
end;
$function$;
comment on function billing.lock_spending_source(billing.accounts,uuid,numeric,text,text,billing.transfer_kind) is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';
revoke execute on function billing.lock_spending_source(billing.accounts,uuid,numeric,text,text,billing.transfer_kind) from public;

CREATE OR REPLACE FUNCTION billing.lots_as_of(p_account_id bigint, p_at timestamp with time zone, p_before_id bigint, p_limit integer)
 RETURNS TABLE(id bigint, source billing.transfer_kind, category text, priority integer, amount numeric, remaining numeric, granted_at timestamp with time zone, expires_at timestamp with time zone, frozen boolean, purchase_id uuid, applies_to text[])
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
declare
  v_page bigint[] := array(select l.id from billing.lots l
    where l.account_id = p_account_id and l.granted_at <= p_at and (p_before_id is null or l.id < p_before_id)
    order by l.id desc limit case when p_limit is not null then least(greatest(p_limit, 1), 1000) end);
begin
  return query
  select l.id, t.kind, l.category, l.priority, l.amount, r.remaining,
    l.granted_at, case when c.id is null then l.expires_at else c.expires_at_before end, coalesce(c.frozen_before, l.frozen),
    l.purchase_id, l.applies_to
  from billing.lots l
  join billing.transfers t on t.id = l.grant_transfer_id
  join billing.lots_remaining_as_of(p_account_id, p_at, v_page) r on r.lot_id = l.id
  -- The first change after p_at holds the values the lot had at p_at.
  left join lateral (select x.id, x.expires_at_before, x.frozen_before from billing.lot_changes x
                     where x.lot_id = l.id and x.changed_at > p_at order by x.changed_at, x.id limit 1) c on true
  where l.id = any (v_page)
  order by l.id desc;
end;
$function$;
comment on function billing.lots_as_of(bigint,timestamp with time zone,bigint,integer) is 'Internal: an account''s lots as they stood at an instant (granted by then; remaining, expiry and frozen then), newest first.';
revoke execute on function billing.lots_as_of(bigint,timestamp with time zone,bigint,integer) from public;

CREATE OR REPLACE FUNCTION billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid, p_metadata jsonb DEFAULT NULL::jsonb, p_applies_to text[] DEFAULT NULL::text[])
 RETURNS billing.transfers
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
  if v_from.held > 0 or v_from.next_expiry <= now() then
    v_from := billing.settle_account(p_from);
  end if;
  if v_from.balance - v_from.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(v_from.balance - v_from.held, 0))::text, 'debt', billing.in_debt(v_from),
      'wallet', 'organisation'));
  end if;

  -- The lots drawn arrive on the receiving side as they were (billing.post_transfers), restricted
  -- ones still restricted; what stays behind must still pay the source's live holds.
  v_posted := billing.post_transfers(array[(p_kind, p_from, p_to, p_amount, p_key, null, null,
    case when p_applies_to is null then p_metadata
         else coalesce(p_metadata, '{}') || jsonb_build_object('applies_to', p_applies_to) end, null, null, p_member, nullif(coalesce(case when v_from.restricted_lots then billing.restricted_draw(v_from, null, p_amount, true) end, '{}')
      || jsonb_strip_nulls(jsonb_build_object('applies_to', p_applies_to)), '{}'))::billing.transfer_spec]);
  select * into v_transfer from billing.transfers t where t.id = (v_posted[1]).transfer_id;
  return v_transfer;
end;
$function$;
comment on function billing.move_credits(bigint,bigint,numeric,billing.transfer_kind,text,uuid,jsonb,text[]) is 'Internal: a transfer between two tracked accounts (wallet ↔ allowance), the lots drawn mirrored on the receiving side (narrowed to p_applies_to when given).';
revoke execute on function billing.move_credits(bigint,bigint,numeric,billing.transfer_kind,text,uuid,jsonb,text[]) from public;

CREATE OR REPLACE FUNCTION billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text DEFAULT NULL::text, p_reference text DEFAULT NULL::text, p_metadata jsonb DEFAULT NULL::jsonb, p_rate_card_id bigint DEFAULT NULL::bigint, p_hold_id uuid DEFAULT NULL::uuid, p_lot jsonb DEFAULT NULL::jsonb, p_account_id bigint DEFAULT NULL::bigint, p_release numeric DEFAULT NULL::numeric)
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
  v_posted billing.posted_transfer;
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
  -- A capture's hold stops counting first, so the capture spends the reserved credits.
  v_account.held := v_account.held - coalesce(p_release, 0);

  -- A replay finds the transfer written before: a concurrent call with the same key has
  -- committed by now (its account lock was ours to wait for).
  select * into v_existing from billing.transfers t where t.idempotency_key = p_idempotency_key and t.kind = p_kind;
  if found then
    if v_existing.amount <> p_amount
      or (p_direction > 0 and v_existing.to_account_id <> v_account_id)
      or (p_direction < 0 and v_existing.from_account_id <> v_account_id) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    if p_release is not null then
      perform billing.post_transfers('{}', array[('post', p_hold_id, p_amount, null, v_existing.id, null, null, null, null,
        null, null, null, null)::billing.hold_step]);
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
        'debt', billing.in_debt(v_account)));
    end if;
    if v_account.caps > 0 and v_account.org_id is null then  -- a pooled wallet's were counted choosing it
      perform billing.charge_caps(v_account_id, p_amount, p_metadata ->> 'model');
    end if;
  elsif p_mode = 'capture' and v_account.balance < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance, 0))::text, 'debt', billing.in_debt(v_account)));
  end if;
  -- Credits for some models only: the charge draws what may pay for its model (the rate card's,
  -- or the gateway's facts on a capture), leaving every other live hold payable.
  if v_account.restricted_lots and p_mode in ('spend', 'capture') then
    p_lot := billing.restricted_draw(v_account,
      coalesce((select r.model from billing.rate_cards r where r.id = p_rate_card_id), p_metadata ->> 'model'),
      p_amount, false, p_hold_id, p_mode = 'capture');
  end if;

  v_posted := (billing.post_transfers(array[(p_kind,
    case when p_direction > 0 then v_platform_id else v_account_id end,
    case when p_direction > 0 then v_account_id else v_platform_id end,
    p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, p_hold_id, v_member,
    p_lot)::billing.transfer_spec],
    case when p_release is not null then array[('post', p_hold_id, p_amount, null, null, null, null, null, null, null, null,
      null, null)::billing.hold_step] else '{}'::billing.hold_step[] end))[1];
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
$function$;
comment on function billing.post_user_transfer(uuid,integer,text,numeric,billing.transfer_kind,text,text,text,text,jsonb,bigint,uuid,jsonb,bigint,numeric) is 'Internal: moves credits between a user''s account (or, for a member, the organisation wallet that pays; or p_account_id) and a platform account, under the account lock; p_release: what the hold p_hold_id holds, posted by this movement (a capture), its release in the same account write.';
revoke execute on function billing.post_user_transfer(uuid,integer,text,numeric,billing.transfer_kind,text,text,text,text,jsonb,bigint,uuid,jsonb,bigint,numeric) from public;

CREATE OR REPLACE FUNCTION billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text DEFAULT NULL::text, p_correlation_id text DEFAULT NULL::text, p_metadata jsonb DEFAULT NULL::jsonb, p_first_lots bigint[] DEFAULT NULL::bigint[], p_account_id bigint DEFAULT NULL::bigint)
 RETURNS billing.transfer_result
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
begin
  if p_kind not in ('refund_reversal', 'dispute_reversal', 'expiry') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'refund_reversal, dispute_reversal, expiry'));
  end if;
  return billing.post_user_transfer(p_user, -1, 'reverse', p_amount, p_kind,
    case p_kind when 'refund_reversal' then 'refunds' when 'dispute_reversal' then 'disputes' else 'expired' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null,
    jsonb_build_object('first', to_jsonb(coalesce(p_first_lots, '{}'))), p_account_id);
end;
$function$;
comment on function billing.reverse_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,bigint[],bigint) is 'Takes credits back after a refund, a lost dispute or an expiry, from p_first_lots first. The only path that may make a balance negative (debt).';
revoke execute on function billing.reverse_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,bigint[],bigint) from public;
grant execute on function billing.reverse_credits(uuid,numeric,billing.transfer_kind,text,text,text,jsonb,bigint[],bigint) to service_role;

CREATE OR REPLACE FUNCTION billing.take_back_plan_credits(p_grant billing.plan_grants, p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_lots bigint[];
  v_account bigint := billing.ensure_user_account(p_user);
  v_beyond numeric(38, 18);
  v_forgive numeric(38, 18);
begin
  if p_amount <= 0 then
    return;
  end if;
  perform 1 from billing.accounts a where a.id = v_account for update;
  -- The lots after the lock: a renewal that held it may have rolled the grant into a new one.
  v_lots := billing.plan_grant_lots(p_grant);
  -- As for a package (take_back_purchase): the grant's own lots first, rollovers included; of
  -- what they lack, what expired is forgiven (it left as breakage already), what was spent is
  -- owed (other credits, then debt).
  v_beyond := p_amount - coalesce((select sum(l.remaining) from billing.lots l where l.id = any(v_lots) and l.open), 0);
  if v_beyond > 0 then
    v_forgive := least(v_beyond, coalesce((select sum(a.amount) from billing.lot_allocations a
                                           where a.lot_id = any(v_lots) and a.kind = 'expiry'), 0) - p_grant.expiry_forgiven);
    if v_forgive > 0 then
      update billing.plan_grants g set expiry_forgiven = g.expiry_forgiven + v_forgive where g.invoice_id = p_grant.invoice_id;
      p_amount := p_amount - v_forgive;
    end if;
  end if;
  if p_amount > 0 then
    perform billing.reverse_credits(p_user, p_amount, p_kind, p_key, p_grant.stripe_charge_id, p_grant.subscription_id::text,
      jsonb_build_object('plan_id', p_grant.plan_id, 'invoice_id', p_grant.invoice_id), v_lots, v_account);
  end if;
  perform billing.fit_holds(v_account, jsonb_build_object('given_to', p_kind));
end;
$function$;
comment on function billing.take_back_plan_credits(billing.plan_grants,uuid,numeric,billing.transfer_kind,text) is 'Internal: reverses p_amount of a plan grant''s credits, from its lots (rollovers included) first; what expired is forgiven, what was spent is owed.';
revoke execute on function billing.take_back_plan_credits(billing.plan_grants,uuid,numeric,billing.transfer_kind,text) from public;

CREATE OR REPLACE FUNCTION billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_wallet bigint := case when p_purchase.org_id is not null then billing.org_wallet_id(p_purchase.org_id) end;
  v_buyer bigint := coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p_purchase.user_id));
  v_lots bigint[] := billing.purchase_lots(p_purchase.id, p_category);
  v_beyond numeric(38, 18);
  v_take numeric(38, 18);
  v_forgive numeric(38, 18);
  v_paid numeric(38, 18);
  r record;
begin
  if p_amount <= 0 then
    return;
  end if;
  -- Every account involved, in id order (as everywhere), before anything moves. A move of the
  -- purchase's credits that committed while we waited (a gift redeemed, an allowance funded)
  -- made lots we had not seen: lock their accounts too, until the list stands still.
  loop
    perform 1 from billing.accounts a
    where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots) and l.open)
    order by a.id for update;
    exit when v_lots = billing.purchase_lots(p_purchase.id, p_category);
    v_lots := billing.purchase_lots(p_purchase.id, p_category);
  end loop;
  -- The buyer's own lots of the purchase come first; what is beyond them comes from the lots its
  -- credits were moved into; the rest from the buyer: other credits for any model (the writer's
  -- reversal draws no credits someone gave for some models only), then debt.
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
  -- What the purchase's lots lack (v_beyond) left them by expiry or by spending. Expired credits
  -- already left the account as breakage: they are forgiven, not taken a second time from other
  -- credits or as debt; only what was spent is owed. Expired before spent, so a refund ends the
  -- same whether the expiry ran before it or after (a due lot not yet swept is taken back).
  if v_beyond > 0 then
    v_forgive := least(v_beyond, billing.purchase_expiry_unforgiven(p_purchase.id, p_category));
    if v_forgive > 0 then
      v_paid := case p_category when 'paid' then v_forgive when 'promotional' then 0
                  else least(v_forgive, billing.purchase_expiry_unforgiven(p_purchase.id, 'paid')) end;
      update billing.purchases x
      set credits_expiry_forgiven = x.credits_expiry_forgiven + v_paid,
          bonus_expiry_forgiven = x.bonus_expiry_forgiven + (v_forgive - v_paid)
      where x.id = p_purchase.id;
      p_amount := p_amount - v_forgive;
    end if;
  end if;
  if p_amount > 0 then
    perform billing.reverse_credits(case when v_wallet is null then p_purchase.user_id end, p_amount, p_kind, p_key,
      p_reference, null, billing.purchase_metadata(p_purchase), v_lots, v_wallet);
  end if;
  -- Credits taken back from under a hold: the hold gives way, as it does to expiry, so it never
  -- reserves more than the account has (a job's capture would fail and run again unbilled).
  perform billing.fit_holds(a.id, jsonb_build_object('given_to', p_kind))
  from billing.accounts a
  where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots))
  order by a.id;
end;
$function$;
comment on function billing.take_back_purchase(billing.purchases,numeric,text,billing.transfer_kind,text,text) is 'Internal: reverses p_amount of a purchase''s credits: its lots in the buyer''s account, then in every account they were moved to; of the rest, what expired is forgiven (recorded on the purchase), what was spent comes from the buyer''s other credits for any model (never credits for some models only) or is debt.';
revoke execute on function billing.take_back_purchase(billing.purchases,numeric,text,billing.transfer_kind,text,text) from public;

-- Readers of kinds that named 'debit'.
CREATE OR REPLACE FUNCTION billing.codes_report(p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select billing.codes_activity(p_from, p_to) || jsonb_build_object('promo_credits_used',
    trim_scale(coalesce((select sum(a.amount) from billing.code_redemptions r
      join billing.codes c on c.id = r.code_id and c.kind = 'promo'
      join billing.lots l on l.grant_transfer_id = r.transfer_id and l.moved_from is null
      join billing.lot_allocations a on a.lot_id = l.id and a.kind in ('usage', 'hold_capture')
      where a.created_at >= p_from and a.created_at < p_to), 0))::text)
$function$
;

CREATE OR REPLACE FUNCTION billing.correction_charges(p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean)
 RETURNS TABLE(charge_id bigint, account_id bigint, amount numeric, user_id uuid, org_id uuid)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
declare
  v_revenue bigint := billing.platform_account_id('usage_revenue');
begin
  -- transfers_created_brin finds the range. A failed charge is one the gateway recorded as failed
  -- (finish_ai_call writes "failed_by"); no caller can write that key (charge_usage strips it).
  return query
    select t.id, t.from_account_id, t.amount, coalesce(t.member_id, a.user_id), a.org_id
    from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    left join billing.holds h on h.id = t.hold_id
    where t.created_at >= p_from and t.created_at < p_to and t.kind in ('usage', 'hold_capture')
      and t.to_account_id = v_revenue
      and coalesce(t.metadata ->> 'model', h.metadata ->> 'model') = p_model
      and (not p_failed_only or t.metadata @> '{"failed_by": "gateway"}')
      and not exists (select 1 from billing.charge_voids v where v.charge_id = t.id);
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.journal_lines(p_from date, p_to date, p_currency text)
 RETURNS TABLE(day date, currency text, account text, source text, amount numeric)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
declare
  v_from timestamptz := p_from::timestamp at time zone 'UTC';
  v_to timestamptz := p_to::timestamp at time zone 'UTC';
begin
  return query
  with money as (
    select (t.occurred_at at time zone 'UTC')::date as day, e.currency, billing.journal_money_account(t.kind, e.account) as account,
      t.kind as source, sum(case when t.kind = 'stripe_fee' then e.amount_cents else -e.amount_cents end)::numeric as amount
    from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
    where t.occurred_at >= v_from and t.occurred_at < v_to and (p_currency is null or e.currency = p_currency)
    group by 1, 2, 3, 4
  ), flows as (
    -- Paid credits granted, net of a debt they paid on arrival (as revenue_metrics counts them) ...
    select (l.granted_at at time zone 'UTC')::date as day, l.currency, 'credits_granted' as source,
      sum(l.cost_cents * (l.amount - l.debt_settled) / l.amount) as cents
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is null
      and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... the debt they paid: credits spent before, taken back by a refund or dispute, paid now ...
    select (l.granted_at at time zone 'UTC')::date, l.currency, 'debt_settled', sum(l.cost_cents * l.debt_settled / l.amount)
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is null and l.debt_settled > 0
      and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... moved credits (a gift, an allowance swept back, a rollover) that paid a debt on arrival:
    -- already in deferred revenue, now spent on what the debt was for ...
    select (l.granted_at at time zone 'UTC')::date, l.currency, 'credits_used', sum(l.cost_cents * l.debt_settled / l.amount)
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is not null
      and l.debt_settled > 0 and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... and what each kind of transfer drew from them (a void's draw is negative: it gives back;
    -- so is a rollover's return from breakage), and of what was given back, the part that paid a
    -- debt then: credits used that day.
    select (a.created_at at time zone 'UTC')::date, l.currency, x.source, sum(l.cost_cents * x.credits / l.amount)
    from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
    cross join lateral (values
      (case when a.kind in ('usage', 'hold_capture', 'void') then 'credits_used' when a.kind = 'expiry' then 'credits_expired'
         when a.kind = 'refund_reversal' then 'credits_refunded' else 'credits_disputed' end, a.amount),
      ('credits_used', a.debt_settled)) x(source, credits)
    where a.created_at >= v_from and a.created_at < v_to and l.category = 'paid'
      and a.kind in ('usage', 'hold_capture', 'void', 'expiry', 'refund_reversal', 'dispute_reversal')
      and x.credits <> 0 and (p_currency is null or l.currency = p_currency)
    group by 1, 2, 3
  ), pairs as (
    select f.day, f.currency, f.source, round(sum(f.cents)) as cents from flows f group by 1, 2, 3
  )
  select m.day, m.currency, m.account, m.source, m.amount from money m where m.amount <> 0
  union all
  select p.day, p.currency, x.account, p.source, x.sign * p.cents
  from pairs p
  cross join lateral (values
    (case p.source when 'credits_granted' then 'credit_sales_clearing' when 'debt_settled' then 'credit_sales_clearing'
       else 'deferred_revenue' end, 1),
    (case p.source when 'credits_granted' then 'deferred_revenue' when 'debt_settled' then 'revenue_usage'
       when 'credits_used' then 'revenue_usage' when 'credits_expired' then 'revenue_breakage'
       when 'credits_refunded' then 'refunds' else 'disputes' end, -1)) x(account, sign)
  where p.cents <> 0;
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.margin_charges(p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS TABLE(user_id uuid, org_id uuid, day date, model text, credits numeric, cost_usd numeric)
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
    (t.created_at at time zone 'UTC')::date, m.model, t.amount,
    billing.charge_cost(t.kind, m.model, t.created_at, t.amount, t.metadata)
  from billing.transfers t
  join billing.accounts a on a.id = t.from_account_id
  cross join lateral (select coalesce(t.metadata ->> 'model',
    (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id), 'other') as model) m
  where t.created_at >= p_from and t.created_at < p_to
    and t.kind in ('usage', 'hold_capture') and (t.member_id is not null or a.user_id is not null)
  union all
  select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
    ((t.metadata ->> 'charged_at')::timestamptz at time zone 'UTC')::date, coalesce(t.metadata ->> 'model', 'other'),
    -t.amount, -billing.provider_cost(coalesce(t.metadata ->> 'model', 'other'), (t.metadata ->> 'charged_at')::timestamptz,
      t.metadata)
  from billing.transfers t
  join billing.accounts a on a.id = t.to_account_id
  where t.created_at >= p_from and t.created_at < p_to
    and t.kind = 'void' and (t.member_id is not null or a.user_id is not null);
$function$
;

CREATE OR REPLACE FUNCTION billing.metric_credit_lots(p_parts billing.metric_part[])
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  lot_flows as (
    select x.currency, x.category, x.kind, sum(x.credits) as credits, sum(x.cents) as cents
    from parts p cross join lateral jsonb_to_recordset(p.lots) x(currency text, category text, kind text, credits numeric, cents numeric)
    group by 1, 2, 3
  ),
  -- A void's allocations are negative (45-corrections.sql): it un-recognises what its charge did,
  -- in the period the void is made. Moved credits that paid a debt on arrival are spent then, and
  -- credits given back (a void, a rollover's return from breakage) that paid a debt when they came back.
  lot_lines as (
    select f.currency,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'granted'), 0)) as deferred_in,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid'
        and f.kind in ('usage', 'hold_capture', 'void', 'debt_settled_by_move', 'debt_settled_by_return')), 0)) as recognised,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'expiry'), 0)) as breakage,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind in ('refund_reversal', 'dispute_reversal')), 0)) as reversed,
      coalesce(sum(f.credits) filter (where f.category = 'promotional' and f.kind = 'granted'), 0) as promo_granted,
      coalesce(sum(f.credits) filter (where f.category = 'promotional'
        and f.kind in ('usage', 'hold_capture', 'void', 'debt_settled_by_move', 'debt_settled_by_return')), 0) as promo_spent,
      coalesce(sum(f.credits) filter (where f.category = 'promotional' and f.kind = 'expiry'), 0) as promo_expired
    from lot_flows f group by f.currency
  )
  select coalesce((select jsonb_agg(jsonb_build_object('currency', x.currency,
        'paid_granted_cents', x.deferred_in, 'recognised_revenue_cents', x.recognised, 'breakage_revenue_cents', x.breakage,
        'paid_reversed_cents', x.reversed,
        'promotional_credits', jsonb_build_object('granted', trim_scale(x.promo_granted)::text,
          'spent', trim_scale(x.promo_spent)::text, 'expired', trim_scale(x.promo_expired)::text))
      order by x.currency) from lot_lines x), '[]'::jsonb));
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.metric_credits(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  stored as (select p.* from parts p where p.stored),
  live as (select p.* from parts p where not p.stored),
  by_kind as (
    select x.kind, x.model, sum(x.amount) as amount, sum(x.events) as events
    from parts p cross join lateral jsonb_to_recordset(p.credits) x(kind text, model text, amount numeric, events bigint)
    group by x.kind, x.model
  ),
  credits as (
    select
      coalesce(sum(k.amount) filter (where k.kind = 'purchase'), 0) as purchased,
      coalesce(sum(k.amount) filter (where k.kind = 'promo_grant'), 0) as bonus,
      coalesce(sum(k.amount) filter (where k.kind in ('usage', 'hold_capture')), 0)
        - coalesce(sum(k.amount) filter (where k.kind = 'void'), 0) as spent,
      coalesce(sum(k.amount) filter (where k.kind in ('refund_reversal', 'dispute_reversal')), 0) as reversed
    from by_kind k
  ),
  usage as (select k.model, k.amount as credits, k.events from by_kind k where k.kind = 'usage' and k.model is not null),
  -- The unspent liability at the end of the period (every user balance then): the running total
  -- of the latest credit ledger roll-up ending by then (a whole day, or a stored part of the range), plus the
  -- user entries after it: the live pieces from there on, and any gap before from.
  carried as (
    select c.ledger_until as since, c.outstanding_credits from (
      (select r.ledger_until, r.outstanding_credits from billing.revenue_rollup r
       where p_use_rollup and r.day < (p_to at time zone 'UTC')::date
         and r.ledger_until = (r.day + 1)::timestamp at time zone 'UTC' and r.ledger_until <= p_to
       order by r.day desc limit 1)
      union all
      select s.hi, s.outstanding_credits from stored s where s.outstanding_credits is not null
    ) c
    order by c.ledger_until desc limit 1
  ),
  outstanding as (
    select coalesce(c.outstanding_credits, 0)
      + coalesce((select sum(l.user_credit_change) from live l where l.lo >= coalesce(c.since, '-infinity')), 0)
      + billing.user_credit_change(coalesce(c.since, '-infinity'), p_from) as credits
    from (select 1) one left join carried c on true
  )
  select (select jsonb_build_object('purchased', trim_scale(c.purchased)::text, 'bonus', trim_scale(c.bonus)::text,
        'spent', trim_scale(c.spent)::text, 'reversed', trim_scale(c.reversed)::text,
        'outstanding', (select trim_scale(o.credits)::text from outstanding o),
        'usage_by_model', coalesce((select jsonb_agg(jsonb_build_object('model', x.model, 'credits', trim_scale(x.credits)::text,
          'events', x.events) order by x.model) from usage x), '[]'::jsonb))
      from credits c));
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.metrics_of(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
 SET plan_cache_mode TO 'force_generic_plan'
 SET jit TO 'off'
 SET max_parallel_workers_per_gather TO '0'
AS $function$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  stored as (select p.* from parts p where p.stored),
  live as (select p.* from parts p where not p.stored),
  -- Distinct users: the union of the stored days' bitmaps and the live pieces' ids.
  users as (
    select
      billing.count_accounts(array(select s.active_bitmap from stored s where s.active_bitmap is not null),
        array(select x from live l cross join lateral unnest(l.active_accounts) x)) as active,
      billing.count_accounts(array(select s.paying_bitmap from stored s where s.paying_bitmap is not null),
        array(select x from live l cross join lateral unnest(l.paying_accounts) x)) as paying,
      (select coalesce(sum(p.first_time_purchasers), 0) from parts p) as first_time
  ),
  checkouts as (
    select coalesce(sum(p.checkouts_created), 0) as created, coalesce(sum(p.checkouts_paid), 0) as paid from parts p
  ),
  webhooks as (
    select coalesce(sum(p.webhooks_received), 0) as received, coalesce(sum(p.webhooks_ok), 0) as ok from parts p
  ),
  -- What plan and promo code lots drew (a row per source, zeros when they drew nothing).
  source_lots as (
    select s.source, coalesce(sum(x.credits) filter (where x.kind in ('usage', 'hold_capture')), 0) as used,
      coalesce(sum(x.credits) filter (where x.kind = 'expiry'), 0) as expired
    from (values ('plan'), ('promo_code')) s(source)
    left join (parts p cross join lateral jsonb_to_recordset(p.lots) x(kind text, source text, credits numeric))
      on x.source = s.source
    group by s.source
  )
  select jsonb_build_object(
    'from', p_from, 'to', p_to,
    'by_currency', (select billing.metric_by_currency(p_parts, u.active, u.paying) from users u),
    'users', (select jsonb_build_object('active', u.active, 'paying', u.paying, 'first_time_purchasers', u.first_time) from users u),
    'conversion', (select jsonb_build_object('checkouts_created', c.created, 'checkouts_paid', c.paid,
        'checkout_rate', case when c.created > 0 then round(c.paid::numeric / c.created, 6) end,
        'first_purchase_rate', case when u.active > 0 then round(u.first_time::numeric / u.active, 6) end)
      from checkouts c, users u),
    'credits', billing.metric_credits(p_parts, p_from, p_to, p_use_rollup),
    'credit_lots', billing.metric_credit_lots(p_parts),
    'webhooks', (select jsonb_build_object('received', w.received, 'processed', w.ok,
        'success_rate', case when w.received > 0 then round(w.ok::numeric / w.received, 6) end) from webhooks w),
    -- Read from the rows for every period: an organisation's purchases and spending are few.
    'organisations', billing.org_revenue(p_from, p_to),
    -- Promo, gift and sponsor codes, from their rows too (75-codes.sql): few, and indexed by time;
    -- what promo codes' lots paid for, from the parts (the allocations are many).
    'codes', billing.codes_activity(p_from, p_to) || (select jsonb_build_object('promo_credits_used', trim_scale(s.used)::text)
      from source_lots s where s.source = 'promo_code'),
    -- Plans, from the paid invoices (56-plans.sql): subscribers and MRR at the end, churn, plan
    -- credits granted; what plan lots drew, from the parts.
    'plans', billing.plan_standing(p_from, p_to) || (select jsonb_build_object('credits_used', trim_scale(s.used)::text,
      'credits_expired', trim_scale(s.expired)::text) from source_lots s where s.source = 'plan')
  ));
end;
$function$
;

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
        coalesce(sum(e.amount_cents) filter (where t.kind = 'credit_purchase' and p.origin = 'invoice'), 0) as invoiced,
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
      -- A void (45-corrections.sql) gives a charge back: netted here, by when it was made.
      select a.org_id, count(distinct t.member_id) filter (where t.kind <> 'void') as active_members,
        sum(case when t.kind = 'void' then -t.amount else t.amount end) as credits
      from billing.transfers t
      join billing.accounts a on a.id = case when t.kind = 'void' then t.to_account_id else t.from_account_id end
      where t.member_id is not null and t.created_at >= p_from and t.created_at < p_to
        and a.org_id is not null and t.kind in ('usage', 'hold_capture', 'void')
      group by 1
    )
    select coalesce(jsonb_agg(jsonb_build_object('org_id', o.id, 'name', o.name, 'funding', o.funding,
        'members', (select count(*) from billing.org_members m where m.org_id = o.id and m.active and m.role = 'member'),
        'active_members', coalesce(s.active_members, 0), 'credits_spent', trim_scale(coalesce(s.credits, 0))::text,
        'currency', m.currency, 'gmv_cents', coalesce(m.gmv, 0), 'invoiced_cents', coalesce(m.invoiced, 0),
        'refunds_cents', coalesce(m.refunds, 0),
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
$function$
;

CREATE OR REPLACE FUNCTION billing.org_usage(p_user uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_period text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_admin boolean;
begin
  perform billing.require_org_role(p_org, p_user, false);
  v_admin := exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active
                     and m.role in ('owner', 'admin'));
  if p_period not in ('day', 'week', 'month') then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'period', 'rule', 'day, week or month'));
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object('member_id', r.member_id, 'member_email', u.email, 'model', r.model,
      'period_start', billing.json_time(r.starts), 'credits', trim_scale(r.credits)::text, 'charges', r.charges)
      order by r.starts, r.member_id, r.model)
    from (
      -- A void (45-corrections.sql) nets against its charge's model and period.
      select t.member_id, coalesce(t.metadata ->> 'model', h.metadata ->> 'model') as model,
        date_trunc(p_period, case when t.kind = 'void' then (t.metadata ->> 'charged_at')::timestamptz else e.created_at end,
          'UTC') as starts,
        -sum(e.amount) as credits, sum(case when t.kind = 'void' then -1 else 1 end) as charges
      from billing.accounts a
      join billing.entries e on e.account_id = a.id and e.balance_after is not null
      join billing.transfers t on t.id = e.transfer_id
      left join billing.holds h on h.id = t.hold_id
      where a.org_id = p_org and e.created_at >= p_from and e.created_at < p_to
        and ((e.amount < 0 and t.kind in ('usage', 'hold_capture')) or (e.amount > 0 and t.kind = 'void'))
        and t.member_id is not null
        and (v_admin or t.member_id = p_user)
      group by 1, 2, 3
    ) r
    left join auth.users u on u.id = r.member_id), '[]');
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.plan_metrics(p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  select billing.plan_standing(p_from, p_to) || jsonb_build_object(
    'credits_used', trim_scale(coalesce(sum(a.amount) filter (where a.kind in ('usage', 'hold_capture')), 0))::text,
    'credits_expired', trim_scale(coalesce(sum(a.amount) filter (where a.kind = 'expiry'), 0))::text)
  from billing.plan_lots pl join billing.lot_allocations a on a.lot_id = pl.lot_id
  where a.created_at >= p_from and a.created_at < p_to
$function$
;

CREATE OR REPLACE FUNCTION billing.roll_up_usage(p_days integer)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_last date := ((now() - interval '1 hour') at time zone 'UTC')::date - 1; -- closed for an hour
  v_day date;
  v_rolled integer := 0;
begin
  insert into billing.usage_rollup (rolled_through)
    select coalesce((select (t.created_at at time zone 'UTC')::date from billing.transfers t order by t.id limit 1),
      v_last + 1) - 1
  on conflict do nothing;
  select u.rolled_through + 1 into v_day from billing.usage_rollup u for update;
  while v_day <= v_last and v_rolled < p_days loop
    insert into billing.usage_daily (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens,
      cached_input_tokens, reasoning_tokens, images, audio_seconds, cost_usd, uncosted_credits)
    select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end, v_day, m.model,
      sum(t.amount), count(*),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'input_tokens') = 'number'
        then (t.metadata ->> 'input_tokens')::bigint end), 0),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'output_tokens') = 'number'
        then (t.metadata ->> 'output_tokens')::bigint end), 0),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'cached_input_tokens') = 'number'
        then (t.metadata ->> 'cached_input_tokens')::bigint end), 0),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'reasoning_tokens') = 'number'
        then (t.metadata ->> 'reasoning_tokens')::bigint end), 0),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'images') = 'number'
        then (t.metadata ->> 'images')::bigint end), 0),
      coalesce(sum(case when t.kind = 'usage' and jsonb_typeof(t.metadata -> 'audio_seconds') = 'number'
        then (t.metadata ->> 'audio_seconds')::bigint end), 0),
      coalesce(sum(c.cost), 0), coalesce(sum(t.amount) filter (where c.cost is null), 0)
    from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    cross join lateral (select coalesce(t.metadata ->> 'model',
      (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id), 'other') as model) m
    cross join lateral (select billing.charge_cost(t.kind, m.model, t.created_at, t.amount, t.metadata) as cost) c
    where t.created_at >= v_day::timestamp at time zone 'UTC' and t.created_at < (v_day + 1)::timestamp at time zone 'UTC'
      and t.kind in ('usage', 'hold_capture') and (t.member_id is not null or a.user_id is not null)
    group by 1, 2, 4;
    -- The voids made that day, netted into their charges' days (earlier days' rows, or this one's).
    insert into billing.usage_daily as d (user_id, org_id, day, model, credits, requests, input_tokens, output_tokens,
      cached_input_tokens, reasoning_tokens, images, audio_seconds, cost_usd, uncosted_credits)
    select coalesce(t.member_id, a.user_id), case when t.member_id is not null then a.org_id end,
      ((t.metadata ->> 'charged_at')::timestamptz at time zone 'UTC')::date, coalesce(t.metadata ->> 'model', 'other'),
      -sum(t.amount), -count(*), -coalesce(sum((t.metadata ->> 'input_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'output_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'cached_input_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'reasoning_tokens')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'images')::bigint), 0),
      -coalesce(sum((t.metadata ->> 'audio_seconds')::bigint), 0),
      -coalesce(sum(c.cost), 0), -coalesce(sum(t.amount) filter (where c.cost is null), 0)
    from billing.transfers t
    join billing.accounts a on a.id = t.to_account_id
    cross join lateral (select billing.provider_cost(coalesce(t.metadata ->> 'model', 'other'),
      (t.metadata ->> 'charged_at')::timestamptz, t.metadata) as cost) c
    where t.created_at >= v_day::timestamp at time zone 'UTC' and t.created_at < (v_day + 1)::timestamp at time zone 'UTC'
      and t.kind = 'void' and (t.member_id is not null or a.user_id is not null)
    group by 1, 2, 3, 4
    on conflict on constraint usage_daily_key do update
      set credits = d.credits + excluded.credits, requests = d.requests + excluded.requests,
          input_tokens = d.input_tokens + excluded.input_tokens, output_tokens = d.output_tokens + excluded.output_tokens,
          cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
          reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens, images = d.images + excluded.images,
          audio_seconds = d.audio_seconds + excluded.audio_seconds, cost_usd = d.cost_usd + excluded.cost_usd,
          uncosted_credits = d.uncosted_credits + excluded.uncosted_credits;
    update billing.usage_rollup set rolled_through = v_day;
    v_day := v_day + 1;
    v_rolled := v_rolled + 1;
  end loop;
  return v_rolled;
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone)
 RETURNS TABLE(created_at timestamp with time zone, model text, credits numeric, input_tokens bigint, output_tokens bigint, school boolean, requests integer, cached_input_tokens bigint, reasoning_tokens bigint, images bigint, audio_seconds bigint)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO ''
AS $function$
declare
  v_floor bigint := 0;
begin
  if p_account is not null then
    v_floor := coalesce((
      select e.id from billing.entries e
      where e.account_id = p_account and e.balance_after is not null and e.created_at < p_from - interval '1 hour'
      order by e.id desc limit 1), 0);
  end if;
  -- Token counts inline, not through a helper: a SQL function with a SET clause is never
  -- inlined, and two such calls a row were half of a summary's time.
  -- A void's metadata is the ledger's own (charged_at, model, tokens): see the header.
  return query
    select case when t.kind = 'void' then (t.metadata ->> 'charged_at')::timestamptz else e.created_at end,
      coalesce(t.metadata ->> 'model', (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)),
      -e.amount,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'input_tokens') = 'number'
        then (t.metadata ->> 'input_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'output_tokens') = 'number'
        then (t.metadata ->> 'output_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      false,
      case when t.kind = 'void' then -1 else 1 end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'cached_input_tokens') = 'number'
        then (t.metadata ->> 'cached_input_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'reasoning_tokens') = 'number'
        then (t.metadata ->> 'reasoning_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'images') = 'number'
        then (t.metadata ->> 'images')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'audio_seconds') = 'number'
        then (t.metadata ->> 'audio_seconds')::bigint * case when t.kind = 'void' then -1 else 1 end end
    from billing.entries e
    join billing.transfers t on t.id = e.transfer_id
    where p_account is not null and e.account_id = p_account and e.balance_after is not null and e.id > v_floor
      and e.created_at >= p_from and e.created_at < p_to
      and ((e.amount < 0 and t.kind in ('usage', 'hold_capture')) or (e.amount > 0 and t.kind = 'void'))
    union all
    select case when t.kind = 'void' then (t.metadata ->> 'charged_at')::timestamptz else t.created_at end,
      coalesce(t.metadata ->> 'model', (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)),
      case when t.kind = 'void' then -t.amount else t.amount end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'input_tokens') = 'number'
        then (t.metadata ->> 'input_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'output_tokens') = 'number'
        then (t.metadata ->> 'output_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      true,
      case when t.kind = 'void' then -1 else 1 end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'cached_input_tokens') = 'number'
        then (t.metadata ->> 'cached_input_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'reasoning_tokens') = 'number'
        then (t.metadata ->> 'reasoning_tokens')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'images') = 'number'
        then (t.metadata ->> 'images')::bigint * case when t.kind = 'void' then -1 else 1 end end,
      case when t.kind in ('usage', 'void') and jsonb_typeof(t.metadata -> 'audio_seconds') = 'number'
        then (t.metadata ->> 'audio_seconds')::bigint * case when t.kind = 'void' then -1 else 1 end end
    from billing.transfers t
    where p_member is not null and t.member_id = p_member and t.created_at >= p_from and t.created_at < p_to
      and t.kind in ('usage', 'hold_capture', 'void')
      and (p_org is null or case when t.kind = 'void' then t.to_account_id else t.from_account_id end
                             in (select a.id from billing.accounts a where a.org_id = p_org));
end;
$function$
;

CREATE OR REPLACE FUNCTION billing.void_charge_internal(p_charge_id bigint, p_actor uuid, p_reason text, p_run_id uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_charge billing.transfers;
  v_hold billing.holds;
  v_account billing.accounts;
  v_void billing.transfers;
  v_row billing.charge_voids;
  v_model text;
  v_drawn numeric(38, 18);
  v_posted billing.posted_transfer[];
begin
  select * into v_charge from billing.transfers t where t.id = p_charge_id;
  if not found or v_charge.kind not in ('usage', 'hold_capture')
     or v_charge.to_account_id <> billing.platform_account_id('usage_revenue') then
    perform billing.raise_error('CHARGE_NOT_FOUND', jsonb_build_object('charge_id', p_charge_id::text));
  end if;
  -- The paying account's lock first, as every path that moves its credits; then the void is
  -- looked up: a concurrent void of the same charge has committed by now and is answered.
  select * into v_account from billing.accounts a where a.id = v_charge.from_account_id for update;
  select * into v_row from billing.charge_voids v where v.charge_id = p_charge_id;
  if found then
    return billing.void_json(v_row, true);
  end if;
  -- Settled first, as every path that moves credits: what is due expires in full (holds give way)
  -- before anything comes back, so below only the returned share of an expired lot expires again.
  if v_account.held > 0 or v_account.next_expiry <= now() then
    v_account := billing.settle_account(v_account.id);
  end if;
  select coalesce(sum(la.amount), 0) into v_drawn from billing.lot_allocations la where la.transfer_id = p_charge_id;
  if v_drawn <> v_charge.amount then
    -- A charge older than lots (or one that drew less than it cost) cannot go back into them.
    perform billing.raise_error('CHARGE_NOT_VOIDABLE', jsonb_build_object('charge_id', p_charge_id::text,
      'rule', 'the charge must have drawn its whole amount from lots'));
  end if;
  if v_charge.hold_id is not null then
    select * into v_hold from billing.holds h where h.id = v_charge.hold_id;
  end if;
  v_model := coalesce(v_charge.metadata ->> 'model', v_hold.metadata ->> 'model');

  -- The credits go back into the lots the charge drew (what pays a debt the account is in is
  -- settled, not remaining).
  v_posted := billing.post_transfers(array[('void', v_charge.to_account_id, v_charge.from_account_id, v_charge.amount,
    'void:' || p_charge_id, v_charge.correlation_id, p_charge_id::text,
    -- What the summaries net the void against: the charge's model, day and tokens.
    jsonb_strip_nulls(jsonb_build_object('charge_id', p_charge_id::text, 'charge_kind', v_charge.kind,
      'charged_at', v_charge.created_at, 'model', v_model, 'reason', p_reason, 'run_id', p_run_id))
      || case when v_charge.kind = 'usage' then (
        select coalesce(jsonb_object_agg(k, v_charge.metadata -> k), '{}') from unnest(array['input_tokens',
          'output_tokens', 'cached_input_tokens', 'reasoning_tokens', 'images', 'audio_seconds']) k
        where jsonb_typeof(v_charge.metadata -> k) = 'number') else '{}' end,
    v_charge.rate_card_id, null, v_charge.member_id,
    jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
                                     from billing.lot_allocations la where la.transfer_id = p_charge_id))
  )::billing.transfer_spec]);
  select * into v_void from billing.transfers t where t.id = (v_posted[1]).transfer_id;
  select * into v_account from billing.accounts a where a.id = v_account.id;

  perform billing.expire_voided_lots(v_account, v_void.id);
  perform billing.freeze_voided_credits(v_account.id, v_void.id);
  select * into v_account from billing.accounts a where a.id = v_account.id;

  if v_account.caps > 0 then
    -- A capture counted its hold when the hold was placed (and a job's overage not at all).
    perform billing.return_cap_room(v_account.id, least(v_charge.amount, coalesce(v_hold.amount, v_charge.amount)), v_model,
      coalesce(v_hold.created_at, v_charge.created_at), v_charge.member_id);
  end if;
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;

  insert into billing.charge_voids (charge_id, void_transfer_id, account_id, member_id, amount, reason, voided_by, run_id)
  values (p_charge_id, v_void.id, v_account.id, v_charge.member_id, v_charge.amount, p_reason, p_actor, p_run_id)
  returning * into v_row;
  return billing.void_json(v_row, false);
end;
$function$
;
