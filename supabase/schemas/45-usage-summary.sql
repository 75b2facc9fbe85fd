-- What a student's credits went on: usage per model over a range, in day or week buckets, and
-- how long the credits left will last at the recent pace. Read-only: nothing here moves money.
-- A charge is a debiting transfer of kind usage, debit or hold_capture; its model is the
-- transfer's (usage) or its hold's (a job's capture). Tokens are counted from the charges the
-- ledger priced itself (kind usage), so a debit's caller-supplied metadata never reaches them.

-- ============================================================ functions

-- A token count the ledger recorded when it priced a charge; null for anything else.
create or replace function billing.token_count(p_kind billing.transfer_kind, p_metadata jsonb, p_key text) returns bigint
language sql immutable
set search_path = ''
as $$
  select case when p_kind = 'usage' and jsonb_typeof(p_metadata -> p_key) = 'number'
    then (p_metadata ->> p_key)::bigint end
$$;
comment on function billing.token_count(p_kind billing.transfer_kind, p_metadata jsonb, p_key text) is 'Internal: a token count a usage charge recorded (null for other charges).';
revoke execute on function billing.token_count(p_kind billing.transfer_kind, p_metadata jsonb, p_key text) from public;

-- An account's charges in [from, to), and those a school paid for a member (transfers naming
-- them as member; of one organisation when p_org is given), as rows. The account's entries are read newest first through
-- entries_user_account down to an entry written an hour before `from` (a transaction's
-- timestamp is its start, so an entry's id and time agree to within the longest transaction):
-- a summary reads the range it covers and what came after it, never the account's whole life,
-- and adds no index to the money path.
create or replace function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamptz, p_to timestamptz)
returns table (created_at timestamptz, model text, credits numeric, input_tokens bigint, output_tokens bigint, school boolean)
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
  return query
    select e.created_at, coalesce(t.metadata ->> 'model', h.metadata ->> 'model'), -e.amount,
      billing.token_count(t.kind, t.metadata, 'input_tokens'), billing.token_count(t.kind, t.metadata, 'output_tokens'),
      false
    from billing.entries e
    join billing.transfers t on t.id = e.transfer_id
    left join billing.holds h on h.id = t.hold_id
    where p_account is not null and e.account_id = p_account and e.balance_after is not null and e.id > v_floor
      and e.amount < 0 and e.created_at >= p_from and e.created_at < p_to
      and t.kind in ('usage', 'debit', 'hold_capture')
    union all
    select t.created_at, coalesce(t.metadata ->> 'model', h.metadata ->> 'model'), t.amount,
      billing.token_count(t.kind, t.metadata, 'input_tokens'), billing.token_count(t.kind, t.metadata, 'output_tokens'),
      true
    from billing.transfers t
    left join billing.holds h on h.id = t.hold_id
    where p_member is not null and t.member_id = p_member and t.created_at >= p_from and t.created_at < p_to
      and t.kind in ('usage', 'debit', 'hold_capture')
      and (p_org is null or t.from_account_id in (select a.id from billing.accounts a where a.org_id = p_org));
end;
$$;
comment on function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: the charges of an account (and those paid for a member by a school) in [from, to).';
revoke execute on function billing.usage_charges(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- How long `p_account`'s available credits last at the pace of its last 7 days' charges:
-- null when it charged nothing in that week (no pace), 0 days when nothing is available.
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
  return jsonb_build_object(
    'days', floor(v_available / v_pace)::bigint,
    'pace_per_day', trim_scale(v_pace)::text,
    'available', trim_scale(v_available)::text,
    'basis_days', 7);
end;
$$;
comment on function billing.runway(p_account bigint) is 'Internal: days the account''s available credits last at its last 7 days'' pace (null without a pace).';
revoke execute on function billing.runway(p_account bigint) from public;

-- The summary of one account's (and one member's school-paid) charges: totals, per model, one
-- bucket per day or week of the range (empty ones too, so a chart draws them), and the runway
-- of `p_runway_account`.
create or replace function billing.summarize_usage(p_account bigint, p_member uuid, p_org uuid, p_from timestamptz,
  p_to timestamptz, p_granularity text, p_runway_account bigint)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  if p_granularity is null or p_granularity not in ('day', 'week') then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'granularity', 'rule', 'day or week'));
  end if;
  if p_from is null or p_to is null or p_from >= p_to or p_to - p_from > interval '366 days' then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'before to, at most 366 days'));
  end if;
  return (
    with charges as (
      select date_trunc(p_granularity, c.created_at, 'UTC') as starts, coalesce(c.model, 'other') as model, c.credits,
        c.input_tokens, c.output_tokens, c.school
      from billing.usage_charges(p_account, p_member, p_org, p_from, p_to) c
    ),
    per_model as (
      select c.model, sum(c.credits) as credits, count(*) as requests,
        coalesce(sum(c.input_tokens), 0) as input_tokens, coalesce(sum(c.output_tokens), 0) as output_tokens
      from charges c group by c.model
    ),
    per_bucket as (
      select c.starts, c.model, sum(c.credits) as credits, count(*) as requests
      from charges c group by c.starts, c.model
    ),
    buckets as (
      select s.starts from generate_series(date_trunc(p_granularity, p_from, 'UTC'), p_to - interval '1 microsecond',
        ('1 ' || p_granularity)::interval) s(starts)
    )
    select jsonb_build_object(
      'from', billing.json_time(p_from),
      'to', billing.json_time(p_to),
      'granularity', p_granularity,
      'totals', jsonb_build_object(
        'credits', trim_scale(coalesce((select sum(c.credits) from charges c), 0))::text,
        'school_funded', trim_scale(coalesce((select sum(c.credits) from charges c where c.school), 0))::text,
        'requests', (select count(*) from charges),
        'tokens', jsonb_build_object(
          'input', coalesce((select sum(m.input_tokens) from per_model m), 0),
          'output', coalesce((select sum(m.output_tokens) from per_model m), 0))),
      'models', coalesce((select jsonb_agg(jsonb_build_object('model', m.model, 'credits', trim_scale(m.credits)::text,
          'requests', m.requests, 'tokens', jsonb_build_object('input', m.input_tokens, 'output', m.output_tokens))
          order by m.credits desc, m.model) from per_model m), '[]'),
      'buckets', (select jsonb_agg(jsonb_build_object('start', billing.json_time(b.starts),
          'credits', trim_scale(coalesce((select sum(p.credits) from per_bucket p where p.starts = b.starts), 0))::text,
          'requests', coalesce((select sum(p.requests) from per_bucket p where p.starts = b.starts), 0),
          'models', coalesce((select jsonb_agg(jsonb_build_object('model', p.model, 'credits', trim_scale(p.credits)::text,
              'requests', p.requests) order by p.credits desc, p.model)
            from per_bucket p where p.starts = b.starts), '[]'))
          order by b.starts) from buckets b),
      'runway', billing.runway(p_runway_account)));
end;
$$;
comment on function billing.summarize_usage(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_granularity text, p_runway_account bigint) is 'Internal: the usage summary of an account and a member''s school-paid charges.';
revoke execute on function billing.summarize_usage(p_account bigint, p_member uuid, p_org uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_granularity text, p_runway_account bigint) from public;

-- GET /credits/usage/summary: the caller's own charges and those their schools paid for; the
-- runway is their own account's (a school's wallet is shared, so its pace is not theirs).
create or replace function billing.usage_summary(p_user uuid, p_from timestamptz, p_to timestamptz, p_granularity text)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_account bigint := (select a.id from billing.accounts a where a.user_id = p_user);
begin
  return billing.summarize_usage(v_account, p_user, null, p_from, p_to, p_granularity, v_account);
end;
$$;
comment on function billing.usage_summary(p_user uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_granularity text) is 'A user''s usage per model over [from, to) in day or week buckets, with their runway.';
revoke execute on function billing.usage_summary(p_user uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_granularity text) from public;
grant execute on function billing.usage_summary(p_user uuid, p_from timestamp with time zone, p_to timestamp with time zone, p_granularity text) to service_role;
