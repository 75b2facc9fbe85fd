-- Revenue metrics: GET /admin/metrics, the daily report and the ops overview, each metric
-- defined once (docs/metrics.md). A range is cut into parts (billing.metric_parts: rolled-up
-- halves from 90-reporting.sql where current, live pieces for the rest), and every metric is
-- built from the parts (billing.metrics_of), for the range and for each period of a series.

-- ============================================================ functions

-- revenue_metrics and revenue_metrics_live are the two ways to make a range's parts; what
-- compute_revenue_metrics did between them (and the organisations added after it) is metrics_of.
create or replace function billing.revenue_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.metrics_of(billing.metric_parts(p_from, p_to, true), p_from, p_to, true) $$;
comment on function billing.revenue_metrics(p_from timestamp with time zone, p_to timestamp with time zone) is 'Every revenue, user, conversion, credit and webhook metric for [from, to): rolled-up days from revenue_rollup, the rest live.';
revoke execute on function billing.revenue_metrics(p_from timestamp with time zone, p_to timestamp with time zone) from public;
grant execute on function billing.revenue_metrics(p_from timestamp with time zone, p_to timestamp with time zone) to service_role;

create or replace function billing.revenue_metrics_live(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.metrics_of(billing.metric_parts(p_from, p_to, false), p_from, p_to, false) $$;
comment on function billing.revenue_metrics_live(p_from timestamp with time zone, p_to timestamp with time zone) is 'revenue_metrics computed from the raw rows only (slow on long ranges): a check on the roll-up.';
revoke execute on function billing.revenue_metrics_live(p_from timestamp with time zone, p_to timestamp with time zone) from public;
grant execute on function billing.revenue_metrics_live(p_from timestamp with time zone, p_to timestamp with time zone) to service_role;

create or replace function billing.metrics_series(p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select billing.series_of(billing.metric_parts(p_from::timestamp at time zone 'UTC', p_to::timestamp at time zone 'UTC', true),
    p_from, p_to, p_granularity)
$$;
comment on function billing.metrics_series(p_from date, p_to date, p_granularity text) is 'revenue_metrics per day, week or month over [from, to).';
revoke execute on function billing.metrics_series(p_from date, p_to date, p_granularity text) from public;
grant execute on function billing.metrics_series(p_from date, p_to date, p_granularity text) to service_role;

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
revoke execute on function billing.ops_overview() from public;
grant execute on function billing.ops_overview() to service_role;

-- Called once per period of a report (31 times for 30 days by day), so its plan is generic and
-- kept for the session: planned while billing.transfers' statistics were stale (right after a
-- bulk write, before autovacuum analyzes it), it read every transfer of the table per call (4 ms
-- each after a school's onboarding, 190 ms of the report). The members' spending index
-- (transfers_org_spending) is always the way in: sequential scans are off for it.
create or replace function billing.org_revenue(p_from timestamp with time zone, p_to timestamp with time zone)
returns jsonb
language plpgsql
stable
set search_path = ''
set plan_cache_mode to 'force_generic_plan'
set enable_seqscan to 'off'
as $$
begin
  return (
    with money as (
      -- The period's credit postings first, each one's purchase looked up from it (never every
      -- organisation purchase ever walked per period): the payment by its key (posted before the
      -- charge id is known), refunds and fees by the charge, a lost dispute by the dispute.
      select p.org_id, t.currency,
        coalesce(sum(e.amount_cents) filter (where t.kind = 'credit_purchase'), 0) as gmv,
        coalesce(sum(e.amount_cents) filter (where t.kind = 'credit_purchase' and p.origin = 'invoice'), 0) as invoiced,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'credit_refund'), 0) as refunds,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'credit_dispute_lost'), 0) as disputes_lost,
        coalesce(-sum(e.amount_cents) filter (where t.kind = 'stripe_fee'), 0) as stripe_fees,
        coalesce(sum(e.amount_cents), 0) as net
      from billing.money_transfers t
      join billing.money_entries e on e.transfer_id = t.id and e.account = 'b2c_revenue'
      join lateral (
        select x.org_id, x.origin from billing.purchases x
        where x.id = case when t.idempotency_key ~ '^credit-purchase:[0-9a-f-]{36}$'
                          then substr(t.idempotency_key, 17)::uuid end
           or x.stripe_charge_id = t.stripe_id or x.dispute_id = t.stripe_id
      ) p on p.org_id is not null
      where t.occurred_at >= p_from and t.occurred_at < p_to
        and t.kind in ('credit_purchase', 'credit_refund', 'credit_dispute_lost', 'stripe_fee')
      group by 1, 2
    ),
    -- Members' spending of the organisation's credits (from its wallet or their allowances): the
    -- transfers first, each one's account looked up from it (never an organisation's every
    -- account walked per period). A void (53-corrections.sql) gives a charge back: netted here,
    -- by when it was made.
    spending as (
      select s.org_id, count(distinct s.member_id) filter (where s.kind <> 'void') as active_members,
        sum(case when s.kind = 'void' then -s.amount else s.amount end) as credits
      from (select t.member_id, t.kind, t.amount, (select a.org_id from billing.accounts a
              where a.id = case when t.kind = 'void' then t.to_account_id else t.from_account_id end) as org_id
            from billing.transfers t
            where t.member_id is not null and t.created_at >= p_from and t.created_at < p_to
              and t.kind in ('usage', 'hold_capture', 'void')) s
      where s.org_id is not null
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
$$;
comment on function billing.org_revenue(p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: per organisation with activity in [from, to): money (GMV and of it what invoices brought, refunds, disputes, fees, net), members who spent its credits, credits spent, ARPU per active member.';
revoke execute on function billing.org_revenue(p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- The parts of [p_from, p_to), each within one UTC day: with p_use_rollup, each day's credit
-- ledger half from revenue_rollup (always current: only ever added to) and its events half where
-- it still equals the rows; the rest of each day, at most one piece of each half, from the rows.
create or replace function billing.metric_parts(p_from timestamptz, p_to timestamptz, p_use_rollup boolean)
returns billing.metric_part[]
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
set jit = off
set max_parallel_workers_per_gather = 0
as $$
begin
  return array(
    with days as (
      select x::date as day, greatest(p_from, x::timestamp at time zone 'UTC') as lo,
             least(p_to, (x + interval '1 day')::timestamp at time zone 'UTC') as hi
      from generate_series(date_trunc('day', p_from at time zone 'UTC'), p_to at time zone 'UTC', interval '1 day') x
    ),
    rolled as (
      select r.* from billing.revenue_rollup r
      where p_use_rollup and r.day >= (p_from at time zone 'UTC')::date and r.day <= (p_to at time zone 'UTC')::date
        and r.day::timestamp at time zone 'UTC' >= p_from
    ),
    ledger as (
      select r.day, r.ledger_until, r.credits, r.lots, r.active_accounts, r.outstanding_credits from rolled r
      where r.ledger_until <= p_to and r.ledger_until > r.day::timestamp at time zone 'UTC'
    ),
    events as (
      select r.* from rolled r
      where r.covered_until <= p_to
        and billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
    )
    select u.part from (
      select row(l.day::timestamp at time zone 'UTC', l.ledger_until, true, '[]'::jsonb, l.credits, l.lots,
          l.active_accounts, null, null, null, 0, 0, 0, 0, 0, null, l.outstanding_credits)::billing.metric_part as part
      from ledger l
      union all
      select row(e.day::timestamp at time zone 'UTC', e.covered_until, true, e.money, '[]'::jsonb, '[]'::jsonb,
          null, e.paying_accounts, null, null, e.first_time_purchasers, e.checkouts_created,
          -- Today's row: its checkouts paid counted now (they are paid minutes after they open).
          case when e.covered_until < (e.day + 1)::timestamp at time zone 'UTC'
               then (select count(*) from billing.purchases p
                     where p.created_at >= e.day::timestamp at time zone 'UTC' and p.created_at < e.covered_until
                       and p.stripe_session_id is not null and p.status = 'paid')
               else e.checkouts_paid end,
          e.webhooks_received, e.webhooks_ok, null, null)::billing.metric_part
      from events e
      union all
      select row(g.lo, g.hi, false, '[]'::jsonb, p.credits, p.lots, null, null, p.active_accounts, null, 0, 0, 0, 0, 0,
          p.user_credit_change, null)::billing.metric_part
      -- whole_day: with the stored half before it, the parts hold the day from its start.
      from (select greatest(d.lo, coalesce(l.ledger_until, d.lo)) as lo, d.hi,
              l.day is not null or d.lo = d.day::timestamp at time zone 'UTC' as whole_day
            from days d left join ledger l on l.day = d.day) g
      cross join lateral billing.ledger_parts(g.lo, g.hi, p_use_rollup and g.whole_day) p
      where g.lo < g.hi
      union all
      select row(g.lo, g.hi, false, p.money, '[]'::jsonb, '[]'::jsonb, null, null, null, p.paying_accounts,
          p.first_time_purchasers, p.checkouts_created, p.checkouts_paid, p.webhooks_received, p.webhooks_ok,
          null, null)::billing.metric_part
      from (select greatest(d.lo, coalesce(e.covered_until, d.lo)) as lo, d.hi from days d left join events e on e.day = d.day) g
      cross join lateral billing.event_parts(g.lo, g.hi) p
      where g.lo < g.hi
    ) u
    order by (u.part).lo
  );
end;
$$;
comment on function billing.metric_parts(p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean) is 'Internal: the roll-up halves and live pieces [from, to) is made of; rolled-up halves from revenue_rollup when asked.';
revoke execute on function billing.metric_parts(p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean) from public;

-- What the range's credit lots did, per currency: paid credits granted into deferred revenue,
-- recognised when spent, breakage when they expire, taken back by refunds and disputes;
-- promotional credits (they cost nothing) counted in credits.
create or replace function billing.metric_credit_lots(p_parts billing.metric_part[]) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  lot_flows as (
    select x.currency, x.category, x.kind, sum(x.credits) as credits, sum(x.cents) as cents
    from parts p cross join lateral jsonb_to_recordset(p.lots) x(currency text, category text, kind text, credits numeric, cents numeric)
    group by 1, 2, 3
  ),
  -- A void's allocations are negative (53-corrections.sql): it un-recognises what its charge did,
  -- in the period the void is made. Moved credits that paid a debt on arrival are spent then, and
  -- credits given back (a void, a rollover's return from breakage) that paid a debt when they came back.
  lot_lines as (
    select f.currency,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'granted'), 0)) as deferred_in,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid'
        and f.kind in ('usage', 'hold_capture', 'void', 'debt_settled_by_move', 'debt_settled_by_return')), 0)) as recognised,
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'expiry'), 0)) as breakage,
      -- Refunds and lost disputes each rounded, as the journal books them (credits_refunded and
      -- credits_disputed apart), so the two agree to the cent.
      round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'refund_reversal'), 0))
        + round(coalesce(sum(f.cents) filter (where f.category = 'paid' and f.kind = 'dispute_reversal'), 0)) as reversed,
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
$$;
comment on function billing.metric_credit_lots(p_parts billing.metric_part[]) is 'Internal: the credit_lots metric (deferred, recognised, breakage, reversed; promotional credits) of a range''s parts, per currency.';
revoke execute on function billing.metric_credit_lots(p_parts billing.metric_part[]) from public, anon, authenticated;

-- What the range's money did, per currency: credit purchases (GMV, refunds, lost disputes,
-- Stripe's fees, tax), provider payments' platform fees, and revenue per active and paying user.
create or replace function billing.metric_by_currency(p_parts billing.metric_part[], p_active bigint, p_paying bigint) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return (
  with parts as (select p.* from unnest(p_parts) p),
  money as (
    select x.kind, x.account, x.currency, sum(x.cents) as cents
    from parts p cross join lateral jsonb_to_recordset(p.money) x(kind text, account text, currency text, cents bigint)
    group by x.kind, x.account, x.currency
  ),
  lines as (
    select currency,
      coalesce(sum(cents) filter (where kind = 'credit_purchase' and account = 'b2c_revenue'), 0) as b2c_gmv,
      coalesce(-sum(cents) filter (where kind = 'credit_refund' and account = 'b2c_revenue'), 0) as b2c_refunds,
      coalesce(-sum(cents) filter (where kind = 'credit_dispute_lost' and account = 'b2c_revenue'), 0) as b2c_disputes_lost,
      coalesce(sum(cents) filter (where kind = 'stripe_fee' and account = 'stripe_fees'), 0) as b2c_stripe_fees,
      -- Stripe Tax charged on top of prices (never in gmv or revenue), less what refunds and lost
      -- disputes gave back.
      coalesce(sum(cents) filter (where kind = 'credit_purchase' and account = 'tax_payable'), 0) as b2c_tax,
      coalesce(-sum(cents) filter (where kind in ('credit_refund', 'credit_dispute_lost') and account = 'tax_payable'), 0)
        as b2c_tax_returned,
      coalesce(-sum(cents) filter (where kind = 'provider_payment' and account = 'payers'), 0) as b2b_gmv,
      coalesce(sum(cents) filter (where kind in ('provider_payment', 'fee_adjustment') and account = 'platform_fees'), 0) as b2b_fees,
      coalesce(-sum(cents) filter (where kind = 'provider_refund' and account = 'platform_fees'), 0) as b2b_fee_refunds
    from money group by currency
  )
  select coalesce((select jsonb_agg(jsonb_build_object(
        'currency', l.currency,
        'b2c_credits', jsonb_build_object('gmv_cents', l.b2c_gmv, 'refunds_cents', l.b2c_refunds,
          'disputes_lost_cents', l.b2c_disputes_lost, 'stripe_fees_cents', l.b2c_stripe_fees,
          'net_revenue_cents', l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees,
          'tax_collected_cents', l.b2c_tax, 'tax_returned_cents', l.b2c_tax_returned),
        'b2b_provider_fees', jsonb_build_object('gmv_cents', l.b2b_gmv, 'platform_fees_cents', l.b2b_fees,
          'fee_refunds_cents', l.b2b_fee_refunds, 'net_revenue_cents', l.b2b_fees - l.b2b_fee_refunds,
          'take_rate', case when l.b2b_gmv > 0 then round(l.b2b_fees::numeric / l.b2b_gmv, 6) end),
        'gmv_cents', l.b2c_gmv + l.b2b_gmv,
        'net_revenue_cents', l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees + l.b2b_fees - l.b2b_fee_refunds,
        'take_rate', case when l.b2c_gmv + l.b2b_gmv > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost
          - l.b2c_stripe_fees + l.b2b_fees - l.b2b_fee_refunds)::numeric / (l.b2c_gmv + l.b2b_gmv), 6) end,
        'arpu_cents', case when p_active > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost - l.b2c_stripe_fees
          + l.b2b_fees - l.b2b_fee_refunds)::numeric / p_active, 2) end,
        'arpu_paying_cents', case when p_paying > 0 then round((l.b2c_gmv - l.b2c_refunds - l.b2c_disputes_lost
          - l.b2c_stripe_fees)::numeric / p_paying, 2) end
      ) order by l.currency) from lines l), '[]'::jsonb));
end;
$$;
comment on function billing.metric_by_currency(p_parts billing.metric_part[], p_active bigint, p_paying bigint) is 'Internal: the by_currency metrics (B2C credits, B2B provider fees, GMV, net revenue, take rate, ARPU) of a range''s parts, given its active and paying users.';
revoke execute on function billing.metric_by_currency(p_parts billing.metric_part[], p_active bigint, p_paying bigint) from public, anon, authenticated;

-- What the range's credits did: purchased, bonus, spent (less voids), reversed, usage by model,
-- and the unspent liability at the range's end.
create or replace function billing.metric_credits(p_parts billing.metric_part[], p_from timestamptz, p_to timestamptz, p_use_rollup boolean) returns jsonb
language plpgsql stable
set search_path = ''
as $$
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
$$;
comment on function billing.metric_credits(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean) is 'Internal: the credits metrics (purchased, bonus, spent, reversed, outstanding at the end, usage by model) of a range''s parts.';
revoke execute on function billing.metric_credits(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean) from public, anon, authenticated;

-- Every metric for [p_from, p_to) from its parts (docs/metrics.md): the parts of that range, or
-- of a larger one cut at whole days. p_use_rollup as the parts were made (the liability at the
-- end may start from a roll-up row before the range).
-- p_codes and p_plans: the period's codes_activity and plan_standing when the caller read them for
-- many periods at once (series_of); read here otherwise.
create or replace function billing.metrics_of(p_parts billing.metric_part[], p_from timestamptz, p_to timestamptz, p_use_rollup boolean,
  p_codes jsonb default null, p_plans jsonb default null)
returns jsonb
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
set jit = off
set max_parallel_workers_per_gather = 0
as $$
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
    'codes', coalesce(p_codes, billing.codes_activity(p_from, p_to)) || (select jsonb_build_object('promo_credits_used', trim_scale(s.used)::text)
      from source_lots s where s.source = 'promo_code'),
    -- Plans, from the paid invoices (56-plans.sql): subscribers and MRR at the end, churn, plan
    -- credits granted; what plan lots drew, from the parts.
    'plans', coalesce(p_plans, billing.plan_standing(p_from, p_to)) || (select jsonb_build_object('credits_used', trim_scale(s.used)::text,
      'credits_expired', trim_scale(s.expired)::text) from source_lots s where s.source = 'plan')
  ));
end;
$$;
comment on function billing.metrics_of(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean, p_codes jsonb, p_plans jsonb) is 'Internal: every metric for [from, to), one definition each (docs/metrics.md), from the parts billing.metric_parts made.';
revoke execute on function billing.metrics_of(p_parts billing.metric_part[], p_from timestamp with time zone, p_to timestamp with time zone, p_use_rollup boolean, p_codes jsonb, p_plans jsonb) from public;

-- Periods of a day, ISO week or month, clipped to [p_from, p_to), each with its metrics, from the
-- parts of the whole range (each period takes the parts that start in it: they never straddle a
-- day). What codes and plans did is read from their rows once for all the periods.
create or replace function billing.series_of(p_parts billing.metric_part[], p_from date, p_to date, p_granularity text) returns jsonb
language sql stable
set search_path = ''
as $$
  with b as (
    select greatest(s, p_from::timestamp) at time zone 'UTC' as lo,
           least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC' as hi
    from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
      ('1 ' || p_granularity)::interval) s
  ),
  bounds as (select array_agg(b.lo order by b.lo) as lo, array_agg(b.hi order by b.lo) as hi from b),
  rows_read as (
    select x.lo, x.codes, x.plans
    from bounds, unnest(bounds.lo, billing.codes_activity_over(bounds.lo, bounds.hi),
      billing.plan_standing_over(bounds.lo, bounds.hi)) x(lo, codes, plans)
  )
  select coalesce(jsonb_agg(billing.metrics_of(array(select x from unnest(p_parts) x where x.lo >= b.lo and x.lo < b.hi),
        b.lo, b.hi, true, r.codes, r.plans) order by b.lo), '[]'::jsonb)
  from b join rows_read r on r.lo = b.lo
$$;
comment on function billing.series_of(p_parts billing.metric_part[], p_from date, p_to date, p_granularity text) is 'Internal: revenue_metrics per day, week or month over [from, to), from the range''s parts.';
revoke execute on function billing.series_of(p_parts billing.metric_part[], p_from date, p_to date, p_granularity text) from public;

-- What GET /admin/metrics answers, in one call: revenue_metrics over [p_from, p_to) as `total`
-- and metrics_series as `series`, both from one set of parts.
create or replace function billing.metrics_report(p_from date, p_to date, p_granularity text) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_from timestamptz := p_from::timestamp at time zone 'UTC';
  v_to timestamptz := p_to::timestamp at time zone 'UTC';
  v_parts billing.metric_part[] := billing.metric_parts(v_from, v_to, true);
begin
  return jsonb_build_object(
    'total', billing.metrics_of(v_parts, v_from, v_to, true),
    'series', billing.series_of(v_parts, p_from, p_to, p_granularity));
end;
$$;
comment on function billing.metrics_report(p_from date, p_to date, p_granularity text) is 'GET /admin/metrics: revenue_metrics over [from, to) (total) and per day, week or month (series), from one set of parts.';
revoke execute on function billing.metrics_report(p_from date, p_to date, p_granularity text) from public;
grant execute on function billing.metrics_report(p_from date, p_to date, p_granularity text) to service_role;

-- ============================================================ the daily numbers and the minute job
-- Above the metrics they compute (90-reporting.sql keeps the roll-up they refresh).

-- Computes (or recomputes) a day: its roll-up row, then its numbers in daily_revenue.
create or replace function billing.refresh_daily_revenue(p_day date) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_metrics jsonb;
begin
  perform billing.refresh_revenue_rollup(p_day);
  v_metrics := billing.revenue_metrics(p_day::timestamp at time zone 'UTC', (p_day + 1)::timestamp at time zone 'UTC');
  insert into billing.daily_revenue as d (day, metrics) values (p_day, v_metrics)
  on conflict (day) do update set metrics = excluded.metrics, computed_at = now();
  return v_metrics;
end;
$$;
comment on function billing.refresh_daily_revenue(p_day date) is 'Computes (or recomputes) a day''s roll-up and its row in daily_revenue.';
revoke execute on function billing.refresh_daily_revenue(p_day date) from public;
grant execute on function billing.refresh_daily_revenue(p_day date) to service_role;

-- Every minute: the credit ledger up to its horizon, today's events half up to five minutes
-- ago (so a read computes only the minutes since live), then up to p_limit stale closed days,
-- their daily numbers included (late events reach the daily report too).
create or replace function billing.refresh_stale_revenue(p_limit integer default 31) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_day date;
  v_count integer := 0;
begin
  perform billing.roll_up_ledger();
  perform billing.refresh_revenue_rollup((now() at time zone 'UTC')::date);
  for v_day in select d from billing.stale_revenue_days() d limit p_limit loop
    perform billing.refresh_daily_revenue(v_day);
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
comment on function billing.refresh_stale_revenue(p_limit integer) is 'pg_cron: rolls the credit ledger up to its horizon, today''s events so far, and closed days whose roll-up is missing, incomplete or stale (late events).';
revoke execute on function billing.refresh_stale_revenue(p_limit integer) from public;
grant execute on function billing.refresh_stale_revenue(p_limit integer) to service_role;

-- After midnight UTC: yesterday's numbers (and the day before, for late events), then the report.
create or replace function billing.run_daily_revenue() returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_day date := (now() at time zone 'UTC')::date - 1;
  v_metrics jsonb;
begin
  perform billing.refresh_daily_revenue(v_day - 1);
  v_metrics := billing.refresh_daily_revenue(v_day);
  insert into billing.notification_outbox (template, dedupe_key, payload)
  values ('daily_report', 'daily-report:' || v_day, jsonb_build_object('day', v_day, 'metrics', v_metrics))
  on conflict (dedupe_key) do nothing;
end;
$$;
comment on function billing.run_daily_revenue() is 'pg_cron: refreshes the last two days of daily_revenue and queues the daily report to admins.';
revoke execute on function billing.run_daily_revenue() from public;
grant execute on function billing.run_daily_revenue() to service_role;

-- A day's report: stored by the nightly run, else live.
create or replace function billing.get_daily_report(p_day date) returns table (metrics jsonb, computed_at timestamptz)
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(d.metrics, billing.revenue_metrics(p_day::timestamp at time zone 'UTC', (p_day + 1)::timestamp at time zone 'UTC')),
    d.computed_at
  from (select 1) one left join billing.daily_revenue d on d.day = p_day
$$;
comment on function billing.get_daily_report(p_day date) is 'GET /admin/reports/daily: a UTC day''s stored metrics and when they were computed, or (not stored yet) computed live with a null time.';
revoke execute on function billing.get_daily_report(p_day date) from public;
grant execute on function billing.get_daily_report(p_day date) to service_role;
