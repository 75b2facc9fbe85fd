-- Credits for a purpose (docs/credit-lots.md § Credits for some models): a lot may name the
-- models it can pay for (`applies_to`: model names and families, `gpt-4o*` being every model whose
-- name starts with gpt-4o; null: any). A charge for a model draws, in spending order, only from
-- lots that may pay for it; a movement with no model (a plain debit, a user's own hold) only from
-- lots that pay for anything. Refunds, disputes and expiry take the lots they name whatever they
-- may pay for, and moves (allowances, codes) carry each lot's list with its provenance.
--
-- Holds stay account-wide (accounts.held), so an account with restricted lots
-- (accounts.restricted_lots) must also keep every live hold payable: a hold for a model (a gateway
-- call's, a job's) can be paid only by lots for that model, any other hold only by lots for
-- anything. For such accounts, billing.plan_lot_draw chooses what a debit draws so that the holds
-- still fit (Hall's condition over the holds' models), and the writer draws exactly that (`take`).
-- Accounts without restricted lots never come here: their path is unchanged.

-- ============================================================ functions

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
grant execute on function billing.lot_pays_for(p_applies_to text[], p_model text) to service_role;

-- A lot option's applies_to as stored: null, or 1 to 20 distinct names, sorted.
create or replace function billing.applies_to_of(p_lot jsonb) returns text[]
language plpgsql immutable
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

-- The model a live hold is for, when it has one the ledger trusts: a gateway call's (its rate
-- card's model) and a job's. A user's own hold and a dispute's have none.
create or replace function billing.hold_model(p_hold billing.holds) returns text
language sql immutable
set search_path = ''
as $$
  select case when p_hold.purpose in ('ai', 'job') then p_hold.metadata ->> 'model' end
$$;
comment on function billing.hold_model(p_hold billing.holds) is 'Internal: the model a hold may be paid for (null: only by credits for anything).';
revoke execute on function billing.hold_model(p_hold billing.holds) from public;

-- What a new commitment for p_model (p_any: for any lot, a move) can draw from an account with
-- restricted lots without leaving a live hold unpayable, in spending order: `take` ([{lot_id,
-- amount}], at most p_amount in all, for the writer), `found` (its total) and `unusable` (the
-- credits that may not pay for p_model). The caller holds the account lock.
--
-- Each hold model is a class; for every set S of classes, slack(S) = the credits of the lots that
-- may pay for some class in S − what S's holds reserve (Hall: the holds fit while every slack ≥ 0).
-- Taking t from a lot lowers the slack of each set it serves, so each lot gives the most that
-- keeps them all ≥ 0; taken in any order this reaches the largest total that fits (the sets form a
-- polymatroid), so `found` < p_amount means no draw could pay it.
create or replace function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_classes text[];
  v_reserved numeric[];
  v_sets integer;
  v_slack numeric[];
  v_need numeric := p_amount;
  v_take jsonb := '[]'::jsonb;
  v_t numeric;
  v_lot record;
begin
  select array_agg(c.model order by c.model nulls first), array_agg(c.reserved order by c.model nulls first)
  into v_classes, v_reserved
  from (select billing.hold_model(h) as model, sum(h.amount) as reserved from billing.holds h
        where h.account_id = p_account_id and h.status = 'active' and h.id is distinct from p_except_hold
        group by 1) c;
  if cardinality(v_classes) > 8 then
    -- 2^8 sets per lot is the most this walks; so many models held at once is refused, not planned.
    return jsonb_build_object('take', '[]'::jsonb, 'found', '0', 'unusable', '0', 'rule', 'at most 8 models held at once');
  end if;
  v_sets := (1 << coalesce(cardinality(v_classes), 0)) - 1;

  -- slack(S) for every non-empty set S (bit i: class i).
  v_slack := array(
    select coalesce((select sum(l.remaining) from billing.lots l
                     where l.account_id = p_account_id and l.open
                       and exists (select 1 from generate_subscripts(v_classes, 1) i
                                   where s & (1 << (i - 1)) <> 0 and billing.lot_pays_for(l.applies_to, v_classes[i]))), 0)
      - coalesce((select sum(v_reserved[i]) from generate_subscripts(v_classes, 1) i where s & (1 << (i - 1)) <> 0), 0)
    from generate_series(1, v_sets) s order by s);

  for v_lot in
    select x.id, x.remaining,
      coalesce((select sum(1 << (i - 1)) from generate_subscripts(v_classes, 1) i
                where billing.lot_pays_for(x.applies_to, v_classes[i])), 0)::integer as serves
    from billing.lots x
    where x.account_id = p_account_id and x.open and (p_any or billing.lot_pays_for(x.applies_to, p_model))
    order by x.frozen, x.priority, x.expires_at nulls last, x.granted_at, x.id
  loop
    exit when v_need <= 0;
    v_t := least(v_lot.remaining, v_need);
    for v_set in 1 .. v_sets loop
      if v_set & v_lot.serves <> 0 then
        v_t := least(v_t, v_slack[v_set]);
      end if;
    end loop;
    if v_t > 0 then
      v_take := v_take || jsonb_build_object('lot_id', v_lot.id, 'amount', v_t);
      v_need := v_need - v_t;
      for v_set in 1 .. v_sets loop
        if v_set & v_lot.serves <> 0 then
          v_slack[v_set] := v_slack[v_set] - v_t;
        end if;
      end loop;
    end if;
  end loop;
  return jsonb_build_object('take', v_take, 'found', trim_scale(p_amount - v_need)::text,
    'unusable', trim_scale(coalesce((select sum(x.remaining) from billing.lots x
      where x.account_id = p_account_id and x.open and not (p_any or billing.lot_pays_for(x.applies_to, p_model))), 0))::text);
end;
$$;
comment on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) is 'Internal: for an account with restricted lots, what a charge for p_model (or a move, p_any) may draw, in spending order, keeping every live hold payable: {take, found, unusable}.';
revoke execute on function billing.plan_lot_draw(p_account_id bigint, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) from public;

-- A charge, hold or move on an account with restricted lots: the lots it draws ({take} for the
-- writer), or INSUFFICIENT_CREDITS naming what could not be used and why.
create or replace function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric,
  p_any boolean default false, p_except_hold uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_plan jsonb := billing.plan_lot_draw(p_account.id, p_model, p_amount, p_any, p_except_hold);
begin
  if (v_plan ->> 'found')::numeric < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_strip_nulls(jsonb_build_object(
      'required', trim_scale(p_amount)::text,
      'available', trim_scale(least((v_plan ->> 'found')::numeric, greatest(p_account.balance - p_account.held, 0)))::text,
      'debt', p_account.balance < 0, 'model', p_model,
      -- Credits that exist but may not pay for this model, or are kept for a live hold's.
      'restricted', v_plan ->> 'unusable',
      'reason', coalesce(v_plan ->> 'rule', case when (v_plan ->> 'unusable')::numeric > 0
        then 'some credits may only pay for other models' else 'credits are held for other models' end))));
  end if;
  return jsonb_build_object('take', v_plan -> 'take');
end;
$$;
comment on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) is 'Internal: the lots a movement on an account with restricted lots draws, or INSUFFICIENT_CREDITS (402) with the credits that could not pay for the model (restricted) and why.';
revoke execute on function billing.restricted_draw(p_account billing.accounts, p_model text, p_amount numeric, p_any boolean, p_except_hold uuid) from public;
