-- Credit lots over time (the lots themselves and how debits draw from them are in the ledger
-- migrations): expiry into the breakage account, warnings before it, the caller's lots, the
-- daily proof that lots and allocations agree (and so deferred revenue, to the cent), and the
-- one-off migration of balances that predate lots.

create index lots_account on billing.lots (account_id, id desc);

-- ============================================================ expiry

-- Expires what is left of each lot past its expires_at: an `expiry` transfer to the `expired`
-- platform account that draws from that lot only. Credits a hold has reserved are not taken
-- (the balance must keep covering active holds); they stay in the lot, which spending draws
-- first once overdue, and whatever is still there when the hold ends goes at the next run.
create function billing.expire_lots(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_lot billing.lots;
  v_account billing.accounts;
  v_take numeric(38, 18);
  v_count integer := 0;
begin
  for v_lot in
    select l.* from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.open and l.expires_at <= now() and a.balance > a.held
    order by l.expires_at, l.id limit p_limit
  loop
    -- The account first, as everywhere; then the lot as it is now.
    select * into v_account from billing.accounts a where a.id = v_lot.account_id for update;
    if v_account.held > 0 then
      perform billing.expire_overdue_holds(v_account.id);
      select * into v_account from billing.accounts a where a.id = v_account.id;
    end if;
    select * into v_lot from billing.lots l where l.id = v_lot.id;
    v_take := least(v_lot.remaining, greatest(v_account.balance - v_account.held, 0));
    continue when v_take <= 0;
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.post_user_transfer(v_account.user_id, -1, 'reverse', v_take, 'expiry', 'expired',
      'expiry:' || v_lot.id || ':' || trim_scale(v_lot.remaining), null, null,
      jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null, null,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)));
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
comment on function billing.expire_lots(integer)
  is 'pg_cron: expires lots past their expires_at into the breakage account, never what active holds reserve. Idempotent.';

-- One warning per lot and threshold (30 days, then 7), through the outbox. A lot granted with
-- less than 7 days to live gets only the 7-day warning.
create function billing.queue_expiry_warnings(p_limit integer default 1000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with due as (
    select l.id, a.user_id, l.remaining, l.expires_at,
      case when l.expires_at <= now() + interval '7 days' then 7 else 30 end as days
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.open and l.expires_at > now() and l.expires_at <= now() + interval '30 days'
      and not (case when l.expires_at <= now() + interval '7 days' then 7 else 30 end) = any (l.warned_days)
    order by l.expires_at, l.id limit p_limit
  ), marked as (
    update billing.lots l set warned_days = case when due.days = 7 then '{30,7}'::integer[] else '{30}'::integer[] end
    from due where l.id = due.id
  )
  insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
  select 'credits_expiring', due.user_id, 'expiry-warning:' || due.id || ':' || due.days,
    jsonb_build_object('lot_id', due.id::text, 'amount', trim_scale(due.remaining)::text,
      'expires_at', billing.json_time(due.expires_at), 'days', due.days)
  from due
  on conflict (dedupe_key) do nothing;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.queue_expiry_warnings(integer)
  is 'pg_cron: queues a credits_expiring email 30 and 7 days before a lot expires, once each.';

-- ============================================================ reads

create function billing.get_lots(p_user uuid, p_before_id bigint default null, p_limit integer default 50)
returns table (id bigint, source billing.transfer_kind, category text, priority integer, amount numeric(38, 18),
               remaining numeric(38, 18), granted_at timestamptz, expires_at timestamptz, frozen boolean, purchase_id uuid)
language sql stable
security definer
set search_path = ''
as $$
  select l.id, t.kind, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen, l.purchase_id
  from billing.accounts a
  join billing.lots l on l.account_id = a.id
  join billing.transfers t on t.id = l.grant_transfer_id
  where a.user_id = p_user and (p_before_id is null or l.id < p_before_id)
  order by l.id desc
  limit least(greatest(p_limit, 1), 1000)
$$;
comment on function billing.get_lots(uuid, bigint, integer) is 'A user''s lots, newest first, keyset-paginated by lot id.';

create view billing_api.lots with (security_invoker = true) as
  select l.id, t.kind as source, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen
  from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id;
comment on view billing_api.lots is 'The signed-in user''s credit lots: where each credit came from, what is left, when it expires.';
revoke all on billing_api.lots from public, anon, authenticated, service_role;
grant select on billing_api.lots to authenticated, service_role;

-- ============================================================ integrity and deferred revenue

-- Three ways the books can disagree, each a list (empty when all is well):
--   lots:      remaining + debt_settled + Σ allocations ≠ amount
--   accounts:  Σ remaining ≠ the balance when it is not negative (0 in debt)
--   transfers: a debiting transfer drew more from lots than its amount
-- and deferred revenue (paid credits not yet spent, at cost) computed from the lots' remaining
-- and from the flows (cost of what was granted, less what was drawn): equal to the cent when
-- the lists are empty.
create function billing.check_lots() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  with drawn as (
    select la.lot_id, sum(la.amount) as total from billing.lot_allocations la group by la.lot_id
  ), bad_lots as (
    select l.id from billing.lots l left join drawn d on d.lot_id = l.id
    where l.remaining + l.debt_settled + coalesce(d.total, 0) <> l.amount
  ), bad_accounts as (
    select a.id from billing.accounts a left join billing.lots l on l.account_id = a.id
    where a.user_id is not null group by a.id, a.balance
    having coalesce(sum(l.remaining), 0) <> greatest(a.balance, 0)
  ), bad_transfers as (
    select la.transfer_id from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    group by la.transfer_id, t.amount having sum(la.amount) > t.amount
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
    'deferred_revenue_cents', coalesce((select jsonb_object_agg(currency, jsonb_build_object(
      'from_lots', from_lots, 'from_flows', from_flows)) from deferred), '{}'))
$$;
comment on function billing.check_lots() is 'Proves lots, allocations and balances agree, and deferred revenue two ways. Empty lists when all is well.';

create function billing.reconcile_lots() returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_check jsonb := billing.check_lots();
  v_bad boolean := jsonb_array_length(v_check -> 'lots') + jsonb_array_length(v_check -> 'accounts')
    + jsonb_array_length(v_check -> 'transfers') > 0
    or exists (select 1 from jsonb_each(v_check -> 'deferred_revenue_cents') c
               where c.value -> 'from_lots' <> c.value -> 'from_flows');
begin
  perform billing.set_alert('lots_disagree', v_bad, 'Credit lots disagree with the ledger: run billing.check_lots()',
    v_check);
  return v_check;
end;
$$;
comment on function billing.reconcile_lots() is 'pg_cron, daily: runs check_lots and opens (or resolves) the lots_disagree alert.';

-- ============================================================ balances that predate lots

-- Gives every account with a positive balance and no lots the lots that reproduce it exactly:
-- its credits are attributed to its most recent grants (spending drew the older ones first),
-- each lot keeping its grant's category, purchase and cost. Run once by this migration; a
-- no-op where every account already has lots.
create function billing.backfill_lots() returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_grant record;
  v_left numeric(38, 18);
  v_take numeric(38, 18);
  v_count integer := 0;
begin
  for v_account in
    select a.* from billing.accounts a
    where a.user_id is not null and a.balance > 0 and not exists (select 1 from billing.lots l where l.account_id = a.id)
    order by a.id for update
  loop
    v_left := v_account.balance;
    for v_grant in
      select t.id, t.kind, t.amount, t.created_at, p.id as purchase_id, p.price_cents, p.currency, p.credits
      from billing.transfers t
      left join billing.purchases p on t.kind = 'purchase' and t.idempotency_key = 'purchase:' || p.id
      where t.to_account_id = v_account.id and t.kind in ('purchase', 'promo_grant', 'adjustment')
      order by t.id desc
    loop
      exit when v_left <= 0;
      v_take := least(v_grant.amount, v_left);
      insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                amount, debt_settled, remaining, granted_at)
      select v_account.id, v_grant.id, v_grant.purchase_id, c.category, c.priority,
        case when c.category = 'paid' then coalesce(v_grant.price_cents * v_grant.amount / v_grant.credits, 0) else 0 end,
        coalesce(v_grant.currency, 'usd'), v_take, 0, v_take, v_grant.created_at
      from billing.credit_expiry_policy c
      where c.category = case when v_grant.kind = 'purchase' then 'paid' else 'promotional' end;
      v_left := v_left - v_take;
      v_count := v_count + 1;
    end loop;
    if v_left > 0 then
      perform billing.raise_error('LOTS_BACKFILL_SHORT', jsonb_build_object('account_id', v_account.id, 'left', v_left::text));
    end if;
  end loop;
  return v_count;
end;
$$;
comment on function billing.backfill_lots() is 'Migration: lots for balances that predate lots, reproducing each balance exactly (newest grants first).';
select billing.backfill_lots();

-- ============================================================ grants and schedules

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function
  billing.expire_lots(integer),
  billing.queue_expiry_warnings(integer),
  billing.get_lots(uuid, bigint, integer),
  billing.check_lots(),
  billing.reconcile_lots()
to service_role;

select cron.schedule('billing-expire-lots', '* * * * *', $$select billing.expire_lots(500)$$);
select cron.schedule('billing-expiry-warnings', '23 * * * *', $$select billing.queue_expiry_warnings(1000)$$);
select cron.schedule('billing-reconcile-lots', '45 0 * * *', $$select billing.reconcile_lots()$$);
