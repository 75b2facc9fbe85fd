-- Organisations in the platform's numbers (B2B2C): what each organisation paid through Checkout
-- in a period (GMV, refunds, lost disputes, Stripe's fees, net revenue), how many of its members
-- spent its credits, what they spent, and net revenue per active member (ARPU). Part of
-- revenue_metrics (`organisations`), so the dashboard, the daily report and the API read one
-- definition. Computed from the raw rows: an organisation's purchases are few (found through
-- their Stripe ids), and its members' spending is found through transfers.member_id (indexed
-- where set).

create index money_transfers_credit_stripe on billing.money_transfers (stripe_id)
  where kind in ('credit_purchase', 'credit_refund', 'credit_dispute_lost', 'stripe_fee');

create function billing.org_revenue(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
set search_path = ''
as $$
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
      and a.org_id is not null and t.kind not in ('allowance', 'allowance_sweep')
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
$$;
comment on function billing.org_revenue(timestamptz, timestamptz)
  is 'Internal: per organisation with activity in [from, to): Checkout money (GMV, refunds, disputes, fees, net), members who spent its credits, credits spent, ARPU per active member.';

create or replace function billing.revenue_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.compute_revenue_metrics(p_from, p_to, true) || jsonb_build_object('organisations', billing.org_revenue(p_from, p_to)) $$;

create or replace function billing.revenue_metrics_live(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.compute_revenue_metrics(p_from, p_to, false) || jsonb_build_object('organisations', billing.org_revenue(p_from, p_to)) $$;

-- What the people on call look at, now with the organisations' standing.
create or replace function billing.ops_overview() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'reconciliation', coalesce((
      select jsonb_agg(jsonb_build_object('provider_id', p.id, 'name', p.name, 'last_day', r.last_day,
          'mismatches', coalesce(m.n, 0), 'kinds', coalesce(m.kinds, '[]'::jsonb)) order by coalesce(m.n, 0) desc, p.name)
      from billing.providers p
      cross join (select max(day) as last_day from billing.reconciliation_runs) r
      left join lateral (select count(*) as n, jsonb_agg(distinct x.kind) as kinds from billing.reconciliation_mismatches x
                         where x.provider_id = p.id and x.day = r.last_day) m on true
      where p.stripe_account_id is not null), '[]'::jsonb),
    -- The balance sheet of credits now: deferred revenue (paid credits not yet spent, at cost)
    -- and what is outstanding of each category.
    'credit_lots', coalesce((select jsonb_agg(jsonb_build_object('currency', d.currency, 'deferred_revenue_cents', d.cents,
        'paid_credits', trim_scale(d.paid)::text, 'promotional_credits', trim_scale(d.promo)::text) order by d.currency)
      from (select l.currency, round(coalesce(sum(l.cost_cents * l.remaining / l.amount) filter (where l.category = 'paid'), 0)) as cents,
                   coalesce(sum(l.remaining) filter (where l.category = 'paid'), 0) as paid,
                   coalesce(sum(l.remaining) filter (where l.category = 'promotional'), 0) as promo
            from billing.lots l where l.open group by l.currency) d), '[]'::jsonb),
    -- Organisations now: how many, their members, and the credits in their wallets and allowances.
    'organisations', (select jsonb_build_object('count', (select count(*) from billing.orgs),
        'members', (select count(*) from billing.org_members m where m.active and m.role = 'member'),
        'wallet_credits', trim_scale(coalesce(sum(a.balance) filter (where a.member_id is null), 0))::text,
        'allowance_credits', trim_scale(coalesce(sum(a.balance) filter (where a.member_id is not null), 0))::text)
      from billing.accounts a where a.org_id is not null),
    'alerts', coalesce((select jsonb_agg(jsonb_build_object('condition', a.condition, 'summary', a.summary,
        'opened_at', a.opened_at, 'last_seen_at', a.last_seen_at) order by a.opened_at)
      from billing.alerts a where a.status = 'open'), '[]'::jsonb),
    'webhooks_24h', (select jsonb_build_object('received', count(*), 'processed', count(*) filter (where e.status = 'processed'),
        'ignored', count(*) filter (where e.status = 'ignored'), 'failed', count(*) filter (where e.status = 'failed'),
        'success_rate', case when count(*) > 0 then round(count(*) filter (where e.status <> 'failed')::numeric / count(*), 6) end)
      from billing.stripe_events e where e.received_at > now() - interval '24 hours'))
$$;
comment on function billing.ops_overview() is 'Reconciliation status per provider (latest run), deferred revenue and outstanding credits by lot category, organisations, open alerts and the last 24 hours of webhooks.';

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
