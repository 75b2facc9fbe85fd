-- Plans: a monthly or yearly Stripe subscription that grants its included credits each period,
-- as a paid lot (cost = the invoice's amount) expiring at the period's end and spent before
-- package credits. Credits come from invoice.paid only, once per invoice (billing.plan_grants),
-- whatever the order or number of deliveries; an invoice for a period that is over, or older
-- than one already granted, grants nothing. At a renewal what is left of the ending period's
-- plan credits, capped by the plan's rollover rule, moves into a lot of its own that expires
-- at the new period's end (moved_from keeps the provenance); the rest expires as breakage. An
-- upgrade's proration invoice grants the share of the credit difference it paid for; a
-- downgrade takes effect at the next period (Stripe charges nothing back).
--
-- Here: the plans and the subscriptions. Their Stripe state's sync (billing.sync_subscription,
-- which grants a paid invoice's credits) and what invoices grant, roll over and take back:
-- 57-plan-credits.sql.

-- ============================================================ tables

-- A plan's price is versioned by rows: each version is a row of its own (the first's id is the
-- plan's, `family`; later ones `<family>.v<n>`), so a subscription keeps the row it was sold at
-- (its Checkout's and Stripe's metadata name that row) and every renewal grants and checks what
-- that row says. One version of a family is on sale (active) at a time; the others stay for the
-- subscriptions that still renew on them (58-catalog-admin.sql makes new ones).
create table billing.plans (
  id text primary key,
  family text not null,                           -- the plan's stable id: what students list and subscribe with
  version integer not null default 1,
  name text not null,
  stripe_price_id text,                           -- a Stripe Price to subscribe to; null: price_data from this row
  price_cents integer not null,
  currency text not null default 'usd',
  billing_interval text not null,
  credits numeric(38, 18) not null,               -- granted each period
  rollover text not null default 'none',          -- none | up_to_credits | up_to_share
  rollover_limit numeric(38, 18),                 -- credits (up_to_credits) or a share 0..1 of `credits` (up_to_share)
  active boolean not null default true,           -- on sale: the family's current version, unless retired
  sort_order integer not null default 0,
  created_at timestamptz not null default now(),
  applies_to text[],                              -- the models its credits may pay for (null: any)
  constraint plans_interval check (billing_interval in ('month', 'year')),
  constraint plans_family check (family ~ '^[a-z0-9_-]{1,48}$' and version >= 1
    and id = case when version = 1 then family else family || '.v' || version end),
  constraint plans_family_version unique (family, version),
  constraint plans_name check (length(name) between 1 and 80),
  constraint plans_price_positive check (price_cents > 0),
  constraint plans_credits_positive check (credits > 0),
  constraint plans_rollover check (
    (rollover = 'none' and rollover_limit is null)
    or (rollover = 'up_to_credits' and rollover_limit > 0)
    or (rollover = 'up_to_share' and rollover_limit > 0 and rollover_limit <= 1))
);
comment on table billing.plans is 'The plan catalogue, one row per version of a plan: price per interval, credits granted each period, and how many of them roll over.';
alter table billing.plans enable row level security;
grant select on table billing.plans to service_role;

create unique index plans_one_on_sale on billing.plans (family) where active;

create table billing.subscriptions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete restrict,
  plan_id text not null references billing.plans (id),
  request_key text not null,
  status text not null default 'incomplete',      -- Stripe's subscription status, as last fetched
  stripe_session_id text unique,
  session_url text,
  session_expires_at timestamptz,
  stripe_subscription_id text unique,
  stripe_customer_id text,
  current_period_start timestamptz,
  current_period_end timestamptz,
  cancel_at_period_end boolean not null default false,
  refused_at timestamptz,                         -- a second live plan paid anyway: cancelled at Stripe, its invoices refunded
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint subscriptions_request unique (user_id, request_key),
  constraint subscriptions_status check (status in ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due',
    'canceled', 'unpaid', 'paused'))
);
comment on table billing.subscriptions is 'A student''s plan: one Stripe subscription, its status and current period as Stripe last reported them.';
comment on column billing.subscriptions.plan_id is 'The plan Stripe bills now (its metadata); a downgrade shows here at once and grants from the next period.';
alter table billing.subscriptions enable row level security;
grant select on table billing.subscriptions to authenticated;
grant select on table billing.subscriptions to service_role;

-- One live plan per student: a second Checkout for a plan is refused while one is under way.
create unique index subscriptions_one_live on billing.subscriptions (user_id)
  where status in ('active', 'past_due', 'trialing', 'unpaid', 'paused') and refused_at is null;

create table billing.plan_grants (
  invoice_id text primary key,                    -- Stripe's: one grant per invoice, ever
  subscription_id uuid not null references billing.subscriptions (id),
  plan_id text not null references billing.plans (id),
  billing_reason text not null,
  period_start timestamptz not null,
  period_end timestamptz not null,                -- the period the credits are for
  amount_cents integer not null,                  -- what the invoice charged before tax (the credits' cost basis)
  currency text not null,
  tax_cents integer not null default 0,           -- Stripe Tax on top (the invoice's total_taxes): owed, never revenue
  credits numeric(38, 18) not null default 0,     -- 0: paid for a period already over or superseded
  lot_id bigint references billing.lots (id),
  rolled_over numeric(38, 18) not null default 0, -- credits carried into this period from the one before
  granted_at timestamptz not null default now(),
  stripe_charge_id text,
  amount_refunded_cents integer not null default 0,
  credits_reversed numeric(38, 18) not null default 0,  -- taken back by refunds and a lost dispute
  expiry_forgiven numeric(38, 18) not null default 0,   -- of those, what had expired already (not taken twice)
  dispute_id text,
  dispute_status text,
  constraint plan_grants_credits check (credits >= 0 and rolled_over >= 0),
  constraint plan_grants_refund_within check (amount_refunded_cents between 0 and amount_cents + tax_cents),
  constraint plan_grants_tax_cents check (tax_cents >= 0),
  constraint plan_grants_dispute_status check (dispute_status is null or dispute_status in ('open', 'won', 'lost'))
);
comment on table billing.plan_grants is 'Immutable in effect: each paid plan invoice, once, and the credits it granted (0 when its period was over or a later one already granted).';
alter table billing.plan_grants enable row level security;
grant select on table billing.plan_grants to service_role;

create index plan_grants_subscription on billing.plan_grants (subscription_id, period_end);

create table billing.plan_lots (
  lot_id bigint primary key references billing.lots (id),
  subscription_id uuid not null references billing.subscriptions (id),
  period_end timestamptz not null
);
comment on table billing.plan_lots is 'Every lot a plan put in an account (grants and rollovers), with the period it belongs to.';
alter table billing.plan_lots enable row level security;
grant select on table billing.plan_lots to service_role;

create index plan_lots_subscription on billing.plan_lots (subscription_id, period_end);

-- ============================================================ functions

create or replace function billing.begin_subscription(p_user uuid, p_plan_id text, p_request_key text)
returns billing.subscriptions
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_sub billing.subscriptions;
begin
  select * into v_sub from billing.subscriptions s where s.user_id = p_user and s.request_key = p_request_key;
  if found then
    -- The same plan, whatever version is on sale now: a retry keeps the version it began with.
    if (select p.family from billing.plans p where p.id = v_sub.plan_id)
       is distinct from (select p.family from billing.plans p where p.id = p_plan_id) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'subscribe'));
    end if;
    return v_sub;
  end if;
  perform pg_advisory_xact_lock(hashtextextended('checkout:' || p_user::text, 0));
  if not exists (select 1 from billing.plans p where p.id = p_plan_id and p.active) then
    perform billing.raise_error('PLAN_NOT_FOUND', '{}'); -- never the caller's text: DETAILs reach the Postgres log
  end if;
  if exists (select 1 from billing.subscriptions s where s.user_id = p_user and s.refused_at is null
             and s.status in ('active', 'past_due', 'trialing', 'unpaid', 'paused')) then
    perform billing.raise_error('PLAN_ALREADY_ACTIVE', '{}');
  end if;
  -- An open Checkout for the same plan is reused (two tabs, one session).
  select * into v_sub from billing.subscriptions s
  where s.user_id = p_user and s.plan_id = p_plan_id and s.status = 'incomplete' and s.stripe_subscription_id is null
    and (s.session_expires_at > now() + interval '1 minute' or (s.stripe_session_id is null and s.created_at > now() - interval '2 minutes'))
  order by s.created_at desc limit 1;
  if found then
    return v_sub;
  end if;
  insert into billing.subscriptions (user_id, plan_id, request_key) values (p_user, p_plan_id, p_request_key)
  returning * into v_sub;
  return v_sub;
end;
$$;
comment on function billing.begin_subscription(p_user uuid, p_plan_id text, p_request_key text) is 'Starts subscribing a student to a plan version on sale (a pending subscription for Checkout), or returns the one this request key (any version of the plan) or an open Checkout for the version already made. Refused while a plan is live.';
revoke execute on function billing.begin_subscription(p_user uuid, p_plan_id text, p_request_key text) from public;
grant execute on function billing.begin_subscription(p_user uuid, p_plan_id text, p_request_key text) to service_role;

create or replace function billing.attach_subscription_session(p_id uuid, p_session_id text, p_url text, p_expires_at timestamptz)
returns billing.subscriptions
language sql
security definer
set search_path = ''
as $$
  update billing.subscriptions s
  set stripe_session_id = p_session_id, session_url = p_url, session_expires_at = p_expires_at, updated_at = now()
  where s.id = p_id and (s.stripe_session_id is null or s.stripe_session_id = p_session_id)
  returning *
$$;
comment on function billing.attach_subscription_session(p_id uuid, p_session_id text, p_url text, p_expires_at timestamptz) is 'Records the Checkout Session made for a pending subscription.';
revoke execute on function billing.attach_subscription_session(p_id uuid, p_session_id text, p_url text, p_expires_at timestamptz) from public;
grant execute on function billing.attach_subscription_session(p_id uuid, p_session_id text, p_url text, p_expires_at timestamptz) to service_role;

create or replace function billing.close_other_subscription_sessions(p_user uuid, p_keep uuid) returns setof text
language sql
security definer
set search_path = ''
as $$
  -- Closed here first (never reused), then expired at Stripe by the caller: one open plan
  -- Checkout per student, so two plans cannot both be paid from two tabs.
  update billing.subscriptions s set session_expires_at = least(s.session_expires_at, now()), updated_at = now()
  where s.user_id = p_user and s.id <> p_keep and s.status = 'incomplete' and s.stripe_subscription_id is null
    and s.stripe_session_id is not null and s.session_expires_at > now()
  returning s.stripe_session_id
$$;
comment on function billing.close_other_subscription_sessions(p_user uuid, p_keep uuid) is 'Closes a student''s other open plan Checkouts (returns their Stripe session ids, for the caller to expire at Stripe).';
revoke execute on function billing.close_other_subscription_sessions(p_user uuid, p_keep uuid) from public;
grant execute on function billing.close_other_subscription_sessions(p_user uuid, p_keep uuid) to service_role;

create or replace function billing.get_subscription(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('subscription_id', s.id, 'plan_id', p.family, 'plan_version', p.version,
    'plan_version_id', s.plan_id, 'status', s.status,
    'current_period_start', billing.json_time(s.current_period_start), 'current_period_end', billing.json_time(s.current_period_end),
    'cancel_at_period_end', s.cancel_at_period_end, 'stripe_subscription_id', s.stripe_subscription_id,
    'stripe_customer_id', s.stripe_customer_id,
    'plan_credits_left', trim_scale(coalesce((select sum(l.remaining) from billing.plan_lots pl join billing.lots l on l.id = pl.lot_id
                                              where pl.subscription_id = s.id and l.open), 0))::text)
  from billing.subscriptions s join billing.plans p on p.id = s.plan_id
  where s.user_id = p_user and s.stripe_subscription_id is not null and s.refused_at is null
  order by (s.status in ('active', 'past_due', 'trialing', 'unpaid', 'paused')) desc, s.created_at desc
  limit 1
$$;
comment on function billing.get_subscription(p_user uuid) is 'The student''s plan (its stable id and the version it renews at): the live one, else the latest that reached Stripe; null when none.';
revoke execute on function billing.get_subscription(p_user uuid) from public;
grant execute on function billing.get_subscription(p_user uuid) to service_role;

-- Plans in each period [p_lo[i], p_hi[i]), for the reports (docs/metrics.md). A subscriber at an
-- instant is a plan whose paid period covers it, so the numbers come from the invoices Stripe was
-- paid, not from a status that changes later: subscribers and MRR at the period's end (or now, if
-- sooner), churn as those subscribed at its start and not at its end. A refused second plan, a
-- period refunded in full and an invoice that granted nothing (its period over, or superseded)
-- count for no one; an upgrade counts at its new plan (the period's latest paid invoice). The
-- periods are in order and do not overlap (a report's series): one pass over all of them.
create or replace function billing.plan_standing_over(p_lo timestamptz[], p_hi timestamptz[]) returns jsonb[]
language sql stable
set search_path = ''
as $$
  with b as (select x.n, x.lo, x.hi from unnest(p_lo, p_hi) with ordinality x(lo, hi, n)),
  covering as (
    select distinct on (i.n, i.at, g.subscription_id) i.n, i.at, g.subscription_id, p.currency,
           case p.billing_interval when 'year' then p.price_cents / 12.0 else p.price_cents end as monthly_cents
    from (select b.n, v.at, v.t from b
          cross join lateral (values ('start', b.lo), ('end', least(b.hi, now()) - interval '1 microsecond')) v(at, t)) i
    join billing.plan_grants g on g.period_start <= i.t and g.period_end > i.t
    join billing.subscriptions s on s.id = g.subscription_id and s.refused_at is null
    join billing.plans p on p.id = g.plan_id
    where g.credits > 0 and not (g.amount_cents > 0 and g.amount_refunded_cents = g.amount_cents)
    order by i.n, i.at, g.subscription_id, g.granted_at desc
  ),
  at_start as (select c.n, c.subscription_id from covering c where c.at = 'start'),
  at_end as (select * from covering c where c.at = 'end'),
  -- Per period: at its end, at its start, new at the end, gone by the end (grouped, not per period).
  counts as (
    select b.n, coalesce(e.k, 0) as subscribers, coalesce(a.k, 0) as started, coalesce(x.k, 0) as new,
      coalesce(y.k, 0) as churned
    from b
    left join (select e.n as period, count(*) as k from at_end e group by e.n) e on e.period = b.n
    left join (select a.n as period, count(*) as k from at_start a group by a.n) a on a.period = b.n
    left join (select e.n as period, count(*) as k from at_end e
               left join at_start a on a.n = e.n and a.subscription_id = e.subscription_id
               where a.n is null group by e.n) x on x.period = b.n
    left join (select a.n as period, count(*) as k from at_start a
               left join at_end e on e.n = a.n and e.subscription_id = a.subscription_id
               where e.n is null group by a.n) y on y.period = b.n
  ),
  -- Monthly recurring revenue at the end, per currency: a yearly plan counts a twelfth of its price.
  mrr as (
    select m.n, jsonb_agg(jsonb_build_object('currency', m.currency, 'subscribers', m.subscribers, 'mrr_cents', m.cents)
                          order by m.currency) as mrr
    from (select e.n, e.currency, count(*) as subscribers, round(sum(e.monthly_cents)) as cents from at_end e
          group by e.n, e.currency) m
    group by m.n
  ),
  granted as (
    select w.n, sum(g.credits) as credits, sum(g.rolled_over) as rolled_over from billing.plan_grants g
    cross join lateral (select width_bucket(g.granted_at, p_lo) as n) w
    where g.granted_at >= p_lo[1] and g.granted_at < p_hi[cardinality(p_hi)] and w.n > 0 and g.granted_at < p_hi[w.n]
    group by w.n
  )
  select coalesce(array_agg(jsonb_build_object(
      'subscribers', c.subscribers,
      'new_subscribers', c.new,
      'churned', c.churned,
      'churn_rate', case when c.started > 0 then round(c.churned::numeric / c.started, 6) end,
      'mrr', coalesce(m.mrr, '[]'::jsonb),
      'credits_granted', trim_scale(coalesce(g.credits, 0))::text,
      'credits_rolled_over', trim_scale(coalesce(g.rolled_over, 0))::text) order by c.n), '{}')
  from counts c left join mrr m on m.n = c.n left join granted g on g.n = c.n
$$;
comment on function billing.plan_standing_over(p_lo timestamp with time zone[], p_hi timestamp with time zone[]) is 'Internal: plan_standing of each period [lo[i], hi[i]) (in order, not overlapping), in one pass.';
revoke execute on function billing.plan_standing_over(p_lo timestamp with time zone[], p_hi timestamp with time zone[]) from public;

-- Plans in [p_from, p_to): the one period of plan_standing_over.
create or replace function billing.plan_standing(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
set search_path = ''
as $$
  select (billing.plan_standing_over(array[p_from], array[p_to]))[1]
$$;
comment on function billing.plan_standing(p_from timestamptz, p_to timestamptz) is 'Internal: plans at the end of [from, to) (subscribers, MRR) and over it (new, churned, plan credits granted and rolled over): plan_metrics less what plan lots drew.';
revoke execute on function billing.plan_standing(p_from timestamptz, p_to timestamptz) from public;

-- plan_standing and what plan lots drew in [p_from, p_to): credits used and expired. The reports
-- take the second from the credit ledger's roll-up (a lots part per source, 90-reporting.sql),
-- which must agree with this reading of the rows.
create or replace function billing.plan_metrics(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
set search_path = ''
as $$
  select billing.plan_standing(p_from, p_to) || jsonb_build_object(
    'credits_used', trim_scale(coalesce(sum(a.amount) filter (where a.kind in ('usage', 'hold_capture')), 0))::text,
    'credits_expired', trim_scale(coalesce(sum(a.amount) filter (where a.kind = 'expiry'), 0))::text)
  from billing.plan_lots pl join billing.lot_allocations a on a.lot_id = pl.lot_id
  where a.created_at >= p_from and a.created_at < p_to
$$;
comment on function billing.plan_metrics(p_from timestamptz, p_to timestamptz) is 'Internal: plans at the end of [from, to) (subscribers, MRR) and over it (new, churned, plan credits granted, used, expired and rolled over), from the rows.';
revoke execute on function billing.plan_metrics(p_from timestamptz, p_to timestamptz) from public;

-- The plans on sale.
create or replace function billing.list_plans() returns setof billing.plans
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.plans p where p.active order by p.sort_order, p.id
$$;
comment on function billing.list_plans() is 'The plans on sale (one version of each family), in display order.';
revoke execute on function billing.list_plans() from public;
grant execute on function billing.list_plans() to service_role;

-- The version of a plan family on sale now.
create or replace function billing.get_plan_on_sale(p_family text) returns setof billing.plans
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.plans p where p.family = p_family and p.active
$$;
comment on function billing.get_plan_on_sale(p_family text) is 'The version of a plan family on sale now; no row when none is.';
revoke execute on function billing.get_plan_on_sale(p_family text) from public;
grant execute on function billing.get_plan_on_sale(p_family text) to service_role;

-- A plan version by its row id, on sale or not.
create or replace function billing.get_plan(p_plan text) returns setof billing.plans
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.plans p where p.id = p_plan
$$;
comment on function billing.get_plan(p_plan text) is 'A plan version by its row id, on sale or not (what a subscription was sold at).';
revoke execute on function billing.get_plan(p_plan text) from public;
grant execute on function billing.get_plan(p_plan text) to service_role;

-- ============================================================ policies

create policy "Users can read their own subscriptions" on billing.subscriptions
  for select to authenticated using (user_id = (select auth.uid()));

-- ============================================================ reference rows


insert into billing.accounts (code) values ('plans');

insert into billing.plans (id, family, name, price_cents, currency, billing_interval, credits, rollover, rollover_limit, sort_order) values
  ('basic_monthly', 'basic_monthly', 'Basic', 999, 'usd', 'month', 10000, 'up_to_credits', 2000, 1),
  ('pro_monthly', 'pro_monthly', 'Pro', 2999, 'usd', 'month', 35000, 'up_to_share', 0.25, 2),
  ('pro_yearly', 'pro_yearly', 'Pro (yearly)', 29990, 'usd', 'year', 420000, 'none', null, 3);
