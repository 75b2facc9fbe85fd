-- An account as its readers see it: the ledger page by page (get_ledger), usage charges over a
-- period (usage_charges, per member and organisation), and how long the credits last (runway).
-- Reads only; the ledger's tables are in 10-ledger.sql.

create or replace function billing.get_ledger(
  p_user uuid, p_before_id bigint default null, p_limit integer default 50,
  p_from timestamptz default null, p_to timestamptz default null
) returns table (id bigint, created_at timestamptz, kind billing.transfer_kind, amount numeric,
                 balance_after numeric, correlation_id text, reference text, lots jsonb, paid_by_org uuid, model text)
language sql
stable
security definer
set search_path = ''
as $$
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
$$;
comment on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz)
  is 'A user''s entries in [p_from, p_to), newest first, keyset-paginated by entry id, each with the lots it created or drew from and, for a charge, the model it paid for; charges an organisation paid for the user are included with paid_by_org and no balance_after.';
revoke execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) from public, anon, authenticated;
grant execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) to service_role;

-- Whether a charge's token counts are the ledger's own, the ones summaries add up: a usage
-- charge's (the ledger writes them over the caller's metadata), a gateway call's capture's
-- (finish_ai_call writes them) and a void's (copied from its charge only when that charge's
-- count). Not the excess a call charged beyond its hold when the hold captured part of the price:
-- it carries the same counts as that capture. Any other capture's metadata is its caller's.
create or replace function billing.charge_counts_tokens(p_kind billing.transfer_kind, p_amount numeric, p_metadata jsonb)
returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call, and the
  -- summaries and the roll-up ask once per charge.
  -- An excess written before the one debt records what it left `unbilled`; one since, none.
  return case p_kind
    when 'usage' then not (p_metadata ? 'reserved'
      and (p_metadata ->> 'priced')::numeric - p_amount - coalesce((p_metadata ->> 'unbilled')::numeric, 0) > 0)
    when 'hold_capture' then p_metadata ? 'ai_call_id'
    when 'void' then true
    else false end;
end
$$;
comment on function billing.charge_counts_tokens(p_kind billing.transfer_kind, p_amount numeric, p_metadata jsonb) is 'Internal: whether a charge''s token counts are the ledger''s own (usage, a gateway call''s capture, a void of either; not an excess beyond a hold that captured part of the price).';
revoke execute on function billing.charge_counts_tokens(p_kind billing.transfer_kind, p_amount numeric, p_metadata jsonb) from public;

-- An account's charges in [from, to), and those a school paid for a member (transfers naming
-- them as member; of one organisation when p_org is given), as rows. The account's entries are
-- read through entries_user_account from an entry written an hour before `from` (ids and
-- times agree to within the longest transaction), found newest first: only the range and what
-- came after it, which for the days after the roll-up is today and yesterday.
create or replace function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamptz, p_to timestamptz)
returns table (created_at timestamptz, model text, credits numeric, input_tokens bigint, output_tokens bigint, school boolean,
  requests integer, cached_input_tokens bigint, reasoning_tokens bigint, images bigint, audio_seconds bigint)
language plpgsql stable
set search_path = ''
as $$
declare
  v_floor bigint := 0;
begin
  if p_account is not null then
    v_floor := coalesce((
      select e.id from billing.entries e
      where e.account_id = p_account and e.balance_after is not null and e.created_at < p_from - interval '1 hour'
      order by e.id desc limit 1), 0);
  end if;
  -- Token counts read inline, not through a helper per kind: a SQL function with a SET clause is
  -- never inlined, and two such calls a row were half of a summary's time. Whose counts count is
  -- one call a row (billing.charge_counts_tokens, PL/pgSQL).
  return query
    select case when t.kind = 'void' then (t.metadata ->> 'charged_at')::timestamptz else x.at end,
      coalesce(t.metadata ->> 'model', (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)),
      x.credits,
      case when n.counted and jsonb_typeof(t.metadata -> 'input_tokens') = 'number'
        then (t.metadata ->> 'input_tokens')::bigint * x.sign end,
      case when n.counted and jsonb_typeof(t.metadata -> 'output_tokens') = 'number'
        then (t.metadata ->> 'output_tokens')::bigint * x.sign end,
      x.school,
      x.sign,
      case when n.counted and jsonb_typeof(t.metadata -> 'cached_input_tokens') = 'number'
        then (t.metadata ->> 'cached_input_tokens')::bigint * x.sign end,
      case when n.counted and jsonb_typeof(t.metadata -> 'reasoning_tokens') = 'number'
        then (t.metadata ->> 'reasoning_tokens')::bigint * x.sign end,
      case when n.counted and jsonb_typeof(t.metadata -> 'images') = 'number'
        then (t.metadata ->> 'images')::bigint * x.sign end,
      case when n.counted and jsonb_typeof(t.metadata -> 'audio_seconds') = 'number'
        then (t.metadata ->> 'audio_seconds')::bigint * x.sign end
    from (
      select e.transfer_id, e.created_at as at, -e.amount as credits, false as school,
        case when t.kind = 'void' then -1 else 1 end as sign
      from billing.entries e
      join billing.transfers t on t.id = e.transfer_id
      where p_account is not null and e.account_id = p_account and e.balance_after is not null and e.id > v_floor
        and e.created_at >= p_from and e.created_at < p_to
        and ((e.amount < 0 and t.kind in ('usage', 'hold_capture')) or (e.amount > 0 and t.kind = 'void'))
      union all
      select t.id, t.created_at, case when t.kind = 'void' then -t.amount else t.amount end, true,
        case when t.kind = 'void' then -1 else 1 end
      from billing.transfers t
      where p_member is not null and t.member_id = p_member and t.created_at >= p_from and t.created_at < p_to
        and t.kind in ('usage', 'hold_capture', 'void')
        and (p_org is null or case when t.kind = 'void' then t.to_account_id else t.from_account_id end
                               in (select a.id from billing.accounts a where a.org_id = p_org))
    ) x
    join billing.transfers t on t.id = x.transfer_id
    cross join lateral (select billing.charge_counts_tokens(t.kind, t.amount, t.metadata) as counted) n;
end;
$$;
comment on function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: the charges of an account (and those paid for a member by a school) in [from, to), and the voids made then (negative, dated by their charge).';
revoke execute on function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- How long `p_account`'s available credits last at the pace of its charges over the last 7
-- days (7 × 24 hours, live): null when it charged nothing then (no pace), 0 days when nothing
-- is available.
create or replace function billing.runway(p_account bigint) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_spent numeric;
  v_available numeric;
  v_pace numeric;
begin
  if p_account is null then
    return null;
  end if;
  select coalesce(sum(c.credits), 0) into v_spent
  from billing.usage_charges(p_account, null, null, now() - interval '7 days', now() + interval '1 hour') c;
  if v_spent = 0 then
    return null;
  end if;
  v_available := greatest((billing.balance_of(p_account)).available, 0);
  v_pace := round(v_spent::numeric(38, 18) / 7, 18); -- scale 18 in, so 18 digits out
  if v_pace = 0 then
    return null; -- under 1e-18 a day: no pace
  end if;
  return jsonb_build_object(
    'days', least(floor(v_available / v_pace), 36500)::bigint, -- a century at most: a pace of dust lasts forever
    'pace_per_day', trim_scale(v_pace)::text,
    'available', trim_scale(v_available)::text,
    'basis_days', 7);
end;
$$;
comment on function billing.runway(p_account bigint) is 'Internal: days the account''s available credits last at its last 7 days'' pace (null without a pace).';
revoke execute on function billing.runway(p_account bigint) from public;
