-- Credits for a purpose (docs/credit-lots.md § Credits for some models): a lot may name the
-- models it can pay for (`applies_to`: model names and families, `gpt-4o*` being every model whose
-- name starts with gpt-4o; null: any). A charge for a model draws, in spending order, only from
-- lots that may pay for it; a movement with no model (a user's own hold) only from
-- lots that pay for anything. Refunds, disputes and expiry take the lots they name whatever they
-- may pay for, then (refunds, disputes) only lots for anything: what those lack is a debt, which
-- credits for some models never pay (11-ledger-writer.sql); moves (allowances, codes) carry each
-- lot's list with its provenance.
--
-- Holds stay account-wide (accounts.held), so an account with restricted lots
-- (accounts.restricted_lots) must also keep every live hold payable: a hold for a model (a gateway
-- call's, a job's) can be paid only by lots for that model, a dispute's only by lots for anything
-- and the lots it freezes (their lists: metadata.covers), any other hold only by lots for anything. For such accounts, billing.plan_lot_draw chooses what a debit
-- draws so that the holds still fit (Hall's condition over the sets of the account's lists), and
-- the writer draws exactly that (`take`). Accounts without restricted lots never come here: their
-- path is unchanged.

-- ============================================================ functions

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

-- What a new commitment for p_model (p_any: for any lot, a move) can draw from an account with
-- restricted lots without leaving a live hold unpayable, in spending order: `take` ([{lot_id,
-- amount}], at most p_amount in all, for the writer), `found` (its total) and `unusable` (the
-- credits that may not pay for p_model). The caller holds the account lock.
--
-- The account's open lots fall into groups, one per list (null: for anything; the writer allows at
-- most 8 lists per account). Each live hold can be paid by some groups: a gateway call's or a
-- job's by those for its model, a dispute's by those for anything and those whose lists it
-- freezes (metadata.covers: its reversal takes its own lots whatever they pay for, then only lots
-- for anything), any other by those for anything. The holds fit while, for every set T
-- of groups, slack(T) = T's credits − what the holds that only T can pay reserve ≥ 0 (Hall).
-- Taking t from a lot lowers the slack of every set holding its group, so each lot gives the
-- most that keeps them all ≥ 0; taken in any order, this reaches the largest total that fits
-- (the sets form a polymatroid), so `found` < p_amount means no draw could pay it. Past 10 lists
-- (credits given back to an old lot can reopen one) it plans without the holds: `unprotected`.
create or replace function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_keys text[];
  v_credits numeric[];
  v_pays boolean[];
  v_sets integer;
  v_paid_by integer[];
  v_reserved numeric[];
  v_slack numeric[];
  v_need numeric := p_amount;
  v_take jsonb := '[]'::jsonb;
  v_t numeric;
  v_lot record;
  v_except_purpose text := (select h.purpose from billing.holds h where h.id = p_except_hold);
begin
  -- No live hold to keep payable (nearly every charge): the draw is the spending order of the
  -- lots that may pay, in one statement; the same answer the plan below gives with no holds.
  if not exists (select 1 from billing.holds x where x.account_id = p_account_id and x.status = 'active'
                 and x.id is distinct from p_except_hold) then
    return (
      select jsonb_strip_nulls(jsonb_build_object(
        'take', coalesce(jsonb_agg(jsonb_build_object('lot_id', d.id, 'amount', least(d.remaining, p_amount - d.before))
                                   order by d.n) filter (where d.pays and d.before < p_amount), '[]'::jsonb),
        'found', trim_scale(least(p_amount, coalesce(sum(d.remaining) filter (where d.pays), 0)))::text,
        'unusable', trim_scale(coalesce(sum(d.remaining) filter (where not d.pays), 0))::text,
        'unprotected', case when count(distinct coalesce(array_to_string(d.applies_to, ','), '')) > 10 then true end))
      from (select y.*, coalesce(sum(y.remaining) filter (where y.pays)
                                   over (order by y.n rows between unbounded preceding and 1 preceding), 0) as before
            from (select l.id, l.remaining, l.applies_to, p_any or billing.lot_pays_for(l.applies_to, p_model) as pays,
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
  v_sets := case when cardinality(v_keys) <= 10 then (1 << cardinality(v_keys)) - 1 else 0 end;

  -- What the live holds reserve, summed by which groups may pay them (a gateway call's or a job's:
  -- those for its model; a dispute's: those for anything and the lists of the lots it freezes;
  -- any other: those for anything): at most one sum per set of groups, however many holds; a hold
  -- no group can pay any more (credits expired or taken back under it) constrains nothing.
  select coalesce(array_agg(m.paid_by), '{}'), coalesce(array_agg(m.amount), '{}') into v_paid_by, v_reserved
  from (select c.paid_by, sum(c.amount) as amount
        from (select (select coalesce(sum(1 << (i - 1)), 0) from generate_subscripts(v_keys, 1) i
                      where billing.lot_pays_for(
                        case when v_keys[i] = '' then null else string_to_array(v_keys[i], ',') end, h.model)
                        or (v_keys[i] <> '' and exists (select 1 from jsonb_array_elements(h.covers) c
                                                        where c = to_jsonb(string_to_array(v_keys[i], ',')))))::integer
                  as paid_by,
                h.amount
              from (select case when x.purpose = 'dispute' then coalesce(x.metadata -> 'covers', '[]') end as covers,
                      case when x.purpose in ('ai', 'job') then x.metadata ->> 'model' end as model, sum(x.amount) as amount
                    from billing.holds x
                    where x.account_id = p_account_id and x.status = 'active' and x.id is distinct from p_except_hold
                      -- A job's or a gateway call's capture is work already done: as on any account
                      -- (a capture checks the balance, not what disputes hold), no dispute stops it.
                      and (x.purpose <> 'dispute' or coalesce(v_except_purpose, '') not in ('job', 'ai'))
                    group by 1, 2) h) c
        where c.paid_by <> 0 group by c.paid_by) m;

  -- slack(T) for every non-empty set T of groups (bit i: group i).
  v_slack := array(
    select (select coalesce(sum(v_credits[i]), 0) from generate_subscripts(v_keys, 1) i where t & (1 << (i - 1)) <> 0)
      - (select coalesce(sum(r.amount), 0) from unnest(v_paid_by, v_reserved) r(paid_by, amount) where r.paid_by & ~t = 0)
    from generate_series(1, v_sets) t order by t);

  for v_lot in
    select x.id, x.remaining, x.grp from (
      select l.id, l.remaining, l.frozen, l.priority, l.expires_at, l.granted_at,
        array_position(v_keys, coalesce(array_to_string(l.applies_to, ','), '')) as grp
      from billing.lots l where l.account_id = p_account_id and l.open) x
    where v_pays[x.grp]
    order by x.frozen, x.priority, x.expires_at nulls last, x.granted_at, x.id
  loop
    exit when v_need <= 0;
    v_t := least(v_lot.remaining, v_need);
    for v_set in 1 .. v_sets loop
      if v_set & (1 << (v_lot.grp - 1)) <> 0 then
        v_t := least(v_t, v_slack[v_set]);
      end if;
    end loop;
    if v_t > 0 then
      v_take := v_take || jsonb_build_object('lot_id', v_lot.id, 'amount', v_t);
      v_need := v_need - v_t;
      for v_set in 1 .. v_sets loop
        if v_set & (1 << (v_lot.grp - 1)) <> 0 then
          v_slack[v_set] := v_slack[v_set] - v_t;
        end if;
      end loop;
    end if;
  end loop;
  return jsonb_strip_nulls(jsonb_build_object('take', v_take, 'found', trim_scale(p_amount - v_need)::text,
    'unusable', trim_scale(coalesce((select sum(v_credits[i]) from generate_subscripts(v_keys, 1) i where not v_pays[i]), 0))::text,
    'unprotected', case when cardinality(v_keys) > 10 then true end));
end;
$$;
comment on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) is 'Internal: for an account with restricted lots, what a charge for p_model (or a move, p_any) may draw, in spending order, keeping every live hold payable: {take, found, unusable, unprotected?}.';
revoke execute on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) from public;

-- A dispute's hold is paid, should the dispute be lost, by the lots it freezes (whatever they pay
-- for) and then by credits for anything, never by other credits for some models: the lists of the
-- lots it freezes are its cover (metadata.covers, read by billing.plan_lot_draw).
create or replace function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) returns void
language sql
set search_path = ''
as $$
  update billing.holds h
  set metadata = coalesce(h.metadata, '{}') || jsonb_build_object('covers', c.lists)
  from (select x.id, (select jsonb_agg(distinct to_jsonb(l.applies_to)) from billing.lots l
                      where l.id = any(p_lots) and l.account_id = x.account_id and l.applies_to is not null) as lists
        from billing.holds x where x.id = p_hold_id) c
  where h.id = c.id and c.lists is not null and h.metadata -> 'covers' is distinct from c.lists
$$;
comment on function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) is 'Internal: records on a dispute''s hold the lists of the lots (of p_lots, in its account) it freezes: besides credits for any model, only those may cover it.';
revoke execute on function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) from public;

-- A charge, hold or move on an account with restricted lots: the lots it draws ({take} for the
-- writer), or INSUFFICIENT_CREDITS naming what could not be used and why. A capture (p_capture:
-- work done under a hold) may draw without the other holds' protection when there are too many
-- lists to plan it; nothing else may. A pooled wallet's figures are never in the refusal (a member
-- may be the one refused).
create or replace function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null, p_capture boolean default false)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_plan jsonb := billing.plan_lot_draw(p_account.id, p_model, p_amount, p_any, p_except_hold);
  v_pool boolean := p_account.org_id is not null and p_account.member_id is null;
begin
  if (v_plan ->> 'found')::numeric < p_amount or (v_plan ? 'unprotected' and not p_capture) then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_strip_nulls(jsonb_build_object(
      'required', trim_scale(p_amount)::text,
      'available', case when not v_pool then
        trim_scale(least((v_plan ->> 'found')::numeric, greatest(p_account.balance - p_account.held, 0)))::text end,
      'debt', case when not v_pool then billing.in_debt(p_account) end,
      'model', p_model,
      -- Credits that exist but may not pay for this model.
      'restricted', case when not v_pool then v_plan ->> 'unusable' end,
      'reason', case when v_pool then null
                     when v_plan ? 'unprotected' then 'credits under more than 10 model lists'
                     when (v_plan ->> 'unusable')::numeric > 0 then 'some credits may only pay for other models'
                     else 'credits are held for other models' end)));
  end if;
  return jsonb_build_object('take', v_plan -> 'take');
end;
$$;
comment on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid, p_capture boolean) is 'Internal: the lots a movement on an account with restricted lots draws, or INSUFFICIENT_CREDITS (402) with the credits that could not pay for the model (restricted) and why.';
revoke execute on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid, p_capture boolean) from public;
