-- API shapes (#32): a member's ledger shows what their organisation paid for them, a usage
-- answer says who paid, and an organisation's usage report names each member.

-- ============================================================================
-- A member's ledger: their own entries and their organisations' spending for them
-- ============================================================================

drop function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz);

/**
 * A user's ledger, newest first, keyset-paginated by entry id: every entry of the user's own
 * account, and every charge an organisation paid for them (a transfer with member_id = the
 * user, debiting the organisation's wallet or the user's allowance). Those carry paid_by_org
 * and no balance_after: the balance after is the organisation's, never shown to a member.
 */
create function billing.get_ledger(
  p_user uuid, p_before_id bigint default null, p_limit integer default 50,
  p_from timestamptz default null, p_to timestamptz default null
) returns table (id bigint, created_at timestamptz, kind billing.transfer_kind, amount numeric,
                 balance_after numeric, correlation_id text, reference text, lots jsonb, paid_by_org uuid)
language sql
stable
security definer
set search_path = ''
as $$
  select x.id, x.created_at, x.kind, x.amount, x.balance_after, x.correlation_id, x.reference, x.lots, x.paid_by_org
  from (
    select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference,
      -- The lot a grant created, or the lots a debit drew from.
      coalesce(g.lots, x.lots, '[]') as lots, null::uuid as paid_by_org
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
    select e.id, e.created_at, t.kind, e.amount, null, t.correlation_id, t.reference, '[]'::jsonb, a.org_id
    from billing.transfers t
    join billing.entries e on e.transfer_id = t.id and e.amount < 0
    join billing.accounts a on a.id = e.account_id and a.org_id is not null
    where t.member_id = p_user and t.kind in ('usage', 'debit', 'hold_capture')
      and (p_before_id is null or e.id < p_before_id)
      and (p_from is null or e.created_at >= p_from)
      and (p_to is null or e.created_at < p_to)
  ) x
  order by x.id desc
  limit least(greatest(p_limit, 1), 1000)
$$;
comment on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz)
  is 'A user''s entries in [p_from, p_to), newest first, keyset-paginated by entry id, each with the lots it created or drew from; charges an organisation paid for the user are included with paid_by_org and no balance_after.';
revoke execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) from public, anon, authenticated;
grant execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) to service_role;

-- ============================================================================
-- Who paid a usage charge
-- ============================================================================

/** The organisation whose account a transfer debited, or null when the user's own account paid. */
create function billing.transfer_paid_by_org(p_transfer bigint) returns uuid
language sql
stable
set search_path = ''
as $$
  select a.org_id from billing.entries e join billing.accounts a on a.id = e.account_id
  where e.transfer_id = p_transfer and e.amount < 0 and a.org_id is not null
  limit 1
$$;
comment on function billing.transfer_paid_by_org(bigint)
  is 'Internal: the organisation whose wallet or allowance a transfer debited (null: the user''s own account).';
revoke execute on function billing.transfer_paid_by_org(bigint) from public, anon, authenticated;

create or replace function billing.perform_money_action(p_user uuid, p_action text, p_args jsonb, p_key text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  u billing.usage_result;
  t billing.transfer_result;
  h billing.hold_result;
  v_org uuid;
begin
  case p_action
  when 'credits.usage' then
    u := billing.charge_usage(p_user, p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
      (p_args ->> 'output_tokens')::bigint, p_key, p_args ->> 'correlation_id', p_args -> 'metadata');
    v_org := billing.transfer_paid_by_org(u.transfer_id);
    -- Who paid, and never a pool's balance (as_seen_by).
    return billing.as_seen_by(p_user, (select x.from_account_id from billing.transfers x where x.id = u.transfer_id),
      jsonb_build_object('transfer_id', u.transfer_id::text, 'charged', trim_scale(u.charged)::text,
        'balance', trim_scale(u.balance)::text, 'available', trim_scale(u.available)::text,
        'rate_card_version', u.rate_card_version,
        'paid_by', case when v_org is null then to_jsonb('self'::text) else jsonb_build_object('org_id', v_org) end));
  when 'credits.holds' then
    h := billing.reserve_credits(p_user, (p_args ->> 'amount')::numeric, p_key,
      coalesce((p_args ->> 'ttl_seconds')::integer, 900), p_args ->> 'correlation_id', null);
  when 'credits.holds.capture' then
    h := billing.capture_hold(p_user, (p_args ->> 'hold_id')::uuid, (p_args ->> 'amount')::numeric, null);
  when 'credits.holds.release' then
    h := billing.release_hold(p_user, (p_args ->> 'hold_id')::uuid);
  when 'credits.grants' then
    t := billing.grant_credits((p_args ->> 'user_id')::uuid, (p_args ->> 'amount')::numeric,
      (p_args ->> 'kind')::billing.transfer_kind, p_key, null, null,
      jsonb_build_object('reason', p_args ->> 'reason', 'granted_by', p_user), p_args -> 'lot');
    return jsonb_build_object('transfer_id', t.transfer_id::text, 'amount', trim_scale(t.amount)::text,
      'balance', trim_scale(t.balance)::text,
      'lot_id', (select l.id::text from billing.lots l where l.grant_transfer_id = t.transfer_id));
  end case;
  return billing.as_seen_by(p_user, (select x.account_id from billing.holds x where x.id = h.hold_id), billing.hold_json(h));
end;
$$;

-- ============================================================================
-- An organisation's usage report names each member
-- ============================================================================

create or replace function billing.org_usage(p_user uuid, p_org uuid, p_from timestamptz, p_to timestamptz, p_period text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
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
      select t.member_id, coalesce(t.metadata ->> 'model', h.metadata ->> 'model') as model,
        date_trunc(p_period, e.created_at, 'UTC') as starts, -sum(e.amount) as credits, count(*) as charges
      from billing.accounts a
      join billing.entries e on e.account_id = a.id and e.balance_after is not null and e.amount < 0
      join billing.transfers t on t.id = e.transfer_id
      left join billing.holds h on h.id = t.hold_id
      where a.org_id = p_org and e.created_at >= p_from and e.created_at < p_to
        and t.kind in ('usage', 'debit', 'hold_capture') and t.member_id is not null
        and (v_admin or t.member_id = p_user)
      group by 1, 2, 3
    ) r
    left join auth.users u on u.id = r.member_id), '[]');
end;
$$;

-- ============================================================================
-- An organisation's ledger: up to 1,000 rows, so a route can ask one past its page
-- ============================================================================

create or replace function billing.org_ledger(p_user uuid, p_org uuid, p_before_id bigint, p_limit integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return coalesce((
    select jsonb_agg(jsonb_build_object('id', x.id::text, 'kind', x.kind, 'amount', trim_scale(x.amount)::text,
      'balance_after', trim_scale(x.balance_after)::text, 'member_id', x.member_id, 'created_at', billing.json_time(x.created_at))
      order by x.id desc)
    from (
      select e.id, t.kind, e.amount, e.balance_after, t.member_id, e.created_at
      from billing.entries e join billing.transfers t on t.id = e.transfer_id
      where e.account_id = billing.org_wallet_id(p_org) and e.balance_after is not null
        and (p_before_id is null or e.id < p_before_id)
      order by e.id desc limit least(greatest(p_limit, 1), 1000)
    ) x), '[]');
end;
$$;

-- ============================================================================
-- A provider's payments and payouts: one row past a page of 100, so the route knows another follows
-- ============================================================================

create or replace function billing.list_provider_payments(p_provider uuid, p_limit integer, p_before timestamptz default null)
returns setof billing.provider_payments
language sql
stable
security definer
set search_path = ''
as $$
  select * from billing.provider_payments x
  where x.provider_id = p_provider and (p_before is null or x.created_at < p_before)
  order by x.created_at desc limit least(greatest(p_limit, 1), 101)
$$;

create or replace function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamptz default null)
returns setof billing.provider_payouts
language sql
stable
security definer
set search_path = ''
as $$
  select * from billing.provider_payouts x
  where x.provider_id = p_provider and (p_before is null or x.stripe_created_at < p_before)
  order by x.stripe_created_at desc limit least(greatest(p_limit, 1), 101)
$$;

-- ============================================================================
-- An invitation's card before signing in: which organisation it is from
-- ============================================================================

/**
 * What the holder of an invitation link may know before signing in: the organisation's name,
 * the role offered, and whether it can still be answered. The token is 256 random bits, so
 * holding it is the proof; nothing about the invitee or the inviter is answered.
 */
create function billing.preview_invitation(p_token_hash text) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_preview jsonb;
begin
  select jsonb_build_object('org_name', o.name, 'role', i.role,
      'status', case when i.status = 'pending' and i.expires_at <= now() then 'expired' else i.status end,
      'expires_at', billing.json_time(i.expires_at))
  into v_preview
  from billing.org_invitations i join billing.orgs o on o.id = i.org_id
  where i.token_hash = p_token_hash;
  if v_preview is null then
    perform billing.raise_error('INVITATION_NOT_FOUND', '{}');
  end if;
  return v_preview;
end;
$$;
comment on function billing.preview_invitation(text)
  is 'The organisation''s name, role and status of the invitation whose link carries the token (hashed); for the page before sign-in.';
revoke execute on function billing.preview_invitation(text) from public, anon, authenticated;
grant execute on function billing.preview_invitation(text) to service_role;
