-- Credits for some models (31-lot-applicability.sql says the rule): a lot option's list as the
-- writer stores it, narrowing a list on a move, and what a refusal says of the credits that may
-- not pay for a model. Read by the writer on every posting, so in the core's layer.

-- ============================================================ model names

-- The model whose card a name calls: the card's model an alias names (billing.model_aliases,
-- 15-catalog.sql), else the name itself. An alias wins over earlier cards of its own name, which
-- stay as the record of what they charged. The one place a name becomes a card's model: a new
-- lot's list (here, in the core's layer, for that), the gateway's begin and refusals, a job's
-- route and hold, model lists, caps and every usage price read it.
create or replace function billing.card_model(p_model text) returns text
language plpgsql stable
set search_path = ''
as $$
begin
  -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call.
  return coalesce((select a.model from billing.model_aliases a where a.alias = p_model), p_model);
end;
$$;
comment on function billing.card_model(p_model text) is 'Internal: the card''s model a name calls (an alias''s card''s, else the name itself).';
revoke execute on function billing.card_model(p_model text) from public;
-- billing.price_usage and billing.ai_hold_amount (which the service role calls) run as their caller.
grant execute on function billing.card_model(p_model text) to service_role;

-- ============================================================ restricted lots: which of an account's lots may pay for a charge

-- A lot option's applies_to as stored: null, or 1 to 20 distinct names, sorted; an alias is
-- stored as its card's model (billing.card_model), the name its charges are recorded under.
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
  select array_agg(distinct billing.card_model(x) order by billing.card_model(x)) into v_list
  from jsonb_array_elements_text(p_lot -> 'applies_to') x;
  -- A typo would make credits that pay for nothing: each name must be a model on the rate card
  -- (an alias's own earlier cards are history: no call is priced by them).
  if exists (select 1 from unnest(v_list) x
             where not exists (select 1 from billing.rate_cards r where billing.lot_pays_for(array[x], r.model)
                               and not exists (select 1 from billing.model_aliases m where m.alias = r.model))) then
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


-- What a refusal on an account with credits for some models adds (a charge or hold for p_model the
-- free credits that may pay for it did not cover): the credits that may not pay for it and why.
create or replace function billing.model_refusal(p_account billing.accounts, p_model text) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object('model', p_model, 'restricted', trim_scale(x.unusable)::text,
    'reason', case when x.unusable > 0 then 'some credits may only pay for other models'
                   else 'credits are held for other models' end))
  from (select coalesce(sum(l.remaining) filter (where not billing.lot_pays_for(l.applies_to, p_model)), 0) as unusable
        from billing.lots l where l.account_id = p_account.id and l.open) x
$$;
comment on function billing.model_refusal(p_account billing.accounts, p_model text) is 'Internal: the details a refusal for p_model adds on an account with credits for some models: model, restricted (credits that may not pay for it), reason.';
revoke execute on function billing.model_refusal(p_account billing.accounts, p_model text) from public;
