-- GET /admin/metrics at scale (#18): billing.org_revenue was a SQL function, which Postgres plans
-- again on every call (1.2 ms here), and revenue_metrics calls it once for the range and once per
-- day of the series: ~36 ms of a 30-day request went to planning it (bench/README.md, reporting).
-- The same query in PL/pgSQL keeps its plan for the session (a generic plan: the query only
-- compares the period's bounds with indexed columns). Same answer, same callers.

create or replace function billing.org_revenue(p_from timestamptz, p_to timestamptz) returns jsonb
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
begin
  return (
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
  );
end;
$$;
