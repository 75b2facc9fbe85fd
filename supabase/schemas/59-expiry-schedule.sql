-- What of a student's own credits ends when: every upcoming expiry with its amount, and for the
-- plan credits of the current period what the plan's rollover rule carries into the next one.
-- Read-only over the lots (30-lots.sql) and the plans (56-plans.sql, hence after it): nothing
-- here moves money, and the rule below is the one billing.roll_over_plan_credits applies at a
-- renewal (the renewal's plan is the subscription's plan_id: a downgrade bills, and rolls by,
-- the new plan's rule).
--
-- Amounts assume nothing more is spent before the date: spending draws plan credits first
-- (priority 5), so the figures are what ends at most. A frozen (disputed) lot waits for its
-- dispute and is left out; a lot past its expiry that the sweep has not reached is already gone
-- for spending and is left out too.

-- ============================================================ functions

-- One row per date and source: 'plan' (the plan's lots of a period, granted or rolled into it),
-- 'paid' (purchased credits with an expiry) or 'promotional'. A plan row of the live plan's
-- current period carries what rolls over if the plan renews (least of what is left and the
-- rule's cap: rollover_limit credits, or floor(credits × share)); every other row rolls nothing.
create or replace function billing.get_expiry_schedule(p_user uuid)
returns table (ends_at timestamptz, source text, credits numeric, rolls_over numeric, expires numeric,
               plan_id text, plan_renews boolean)
language sql stable
security definer
set search_path = ''
as $$
  with live as (
    -- At most one live plan per student (subscriptions_one_live).
    select s.id, s.plan_id, s.current_period_end,
      s.status in ('active', 'trialing') and not s.cancel_at_period_end as renews,
      case p.rollover when 'up_to_credits' then p.rollover_limit
        when 'up_to_share' then floor(p.credits * p.rollover_limit) else 0 end as cap
    from billing.subscriptions s join billing.plans p on p.id = s.plan_id
    where s.user_id = p_user and s.refused_at is null and s.stripe_subscription_id is not null
      and s.status in ('active', 'past_due', 'trialing', 'unpaid', 'paused')
  ),
  ending as (
    select l.expires_at, case when pl.lot_id is not null then 'plan' else l.category end as source,
      sum(l.remaining) as credits,
      -- The live plan's current period: the lots its renewal rolls over.
      max(v.id::text) filter (where pl.period_end = v.current_period_end) as this_period
    from billing.accounts a
    join billing.lots l on l.account_id = a.id
    left join billing.plan_lots pl on pl.lot_id = l.id
    left join live v on v.id = pl.subscription_id
    where a.user_id = p_user and l.open and not l.frozen and l.expires_at > now()
    group by 1, 2
  )
  select e.expires_at, e.source, trim_scale(e.credits), trim_scale(r.rolls), trim_scale(e.credits - r.rolls),
    case when e.this_period is not null then v.plan_id end,
    case when e.this_period is not null then v.renews end
  from ending e
  left join live v on v.id::text = e.this_period
  cross join lateral (select case when v.renews then least(e.credits, v.cap) else 0 end as rolls) r
  order by e.expires_at, e.source
$$;
comment on function billing.get_expiry_schedule(p_user uuid) is 'A user''s upcoming expiries of their own credits, by date and source (plan, paid, promotional), each with what the live plan''s rollover rule carries into the next period if it renews and what expires; read-only.';
revoke execute on function billing.get_expiry_schedule(p_user uuid) from public, anon, authenticated;
grant execute on function billing.get_expiry_schedule(p_user uuid) to service_role;
