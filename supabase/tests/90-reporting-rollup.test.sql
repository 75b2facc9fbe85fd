-- Reading rolled-up days from billing.revenue_rollup gives exactly what computing every row
-- live gives (billing.revenue_metrics_live), for ranges of whole and partial days, for day, week
-- and month series, across rolled-up days, today (its credit ledger rolled up from a watermark,
-- its events to five minutes ago) and the live rest, and after late events reach closed days. The dataset is planted over the last nine days
-- with explicit timestamps (only possible as the table owner, in this rolled-back transaction).
-- One snapshot for the whole file, so other sessions' commits cannot land between the two sides
-- of a comparison; the roll-up tables are held so the minute pg_cron job waits for this file
-- (the roll-up's own lock first: a run of the job holding it would make this file's runs skip).
-- The minute roll-up is held off by a session lock taken before the transaction: its snapshot,
-- taken after, holds whatever a roll-up committed while this waited (a lock taken inside it, at
-- its first statement, would wait on a snapshot older than that roll-up's row).
select pg_advisory_lock(hashtext('billing.roll_up_ledger'));
begin;
set transaction isolation level repeatable read;
lock table billing.revenue_rollup, billing.daily_revenue in exclusive mode;
-- The rows planted here bypass the writer, which keeps today's tail for reports
-- (billing.ledger_tail): read every live piece from the rows (90-reporting-tail tests the tail).
update billing.ledger_tail_kept set since = 'infinity';
select plan(53);

create temp table t0 as select (now() at time zone 'UTC')::date as today;
-- k days ago at hh:00 UTC.
create function pg_temp.at(k integer, hh integer default 12) returns timestamptz language sql as $$
  select ((select today from t0) - k + make_interval(hours => hh))::timestamp at time zone 'UTC'
$$;
create function pg_temp.uid(n integer) returns uuid language sql as $$
  select ('ffffffff-0000-4000-8000-00000000000' || n)::uuid
$$;
-- A credit transfer of user n, with its two entries, at a given time.
create function pg_temp.credit(n integer, k billing.transfer_kind, amount numeric, t_at timestamptz) returns void
language sql as $$
  with a as (select x.id from billing.accounts x where x.user_id = pg_temp.uid(n)),
  p as (select billing.platform_account_id(case k when 'purchase' then 'purchases' when 'promo_grant' then 'promotions'
          when 'adjustment' then 'adjustments' else 'usage_revenue' end) as id),
  t as (
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, rate_card_id, created_at)
    select k, case when k in ('purchase', 'promo_grant', 'adjustment') then p.id else a.id end,
      case when k in ('purchase', 'promo_grant', 'adjustment') then a.id else p.id end, amount,
      'rollup-test:' || gen_random_uuid(),
      case when k = 'usage' then (select r.id from billing.rate_cards r where r.model = 'gpt-4o-mini' order by r.version desc limit 1) end,
      t_at
    from a, p returning *)
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version, created_at)
  select t.id, s.account_id, s.amount, case when s.account_id = a.id then 0 end, case when s.account_id = a.id then 0 end, t_at
  from t, a, lateral (values (t.to_account_id, t.amount), (t.from_account_id, -t.amount)) s(account_id, amount)
$$;
-- A money transfer with its entries ([account, cents] pairs), dated at occurred, recorded at recorded.
create function pg_temp.money(k text, currency text, occurred timestamptz, recorded timestamptz, entries text[][]) returns void
language sql as $$
  with t as (insert into billing.money_transfers (kind, idempotency_key, currency, occurred_at, created_at)
             values (k, 'rollup-test:' || gen_random_uuid(), currency, occurred, recorded) returning id)
  insert into billing.money_entries (transfer_id, account, currency, amount_cents, created_at)
  select t.id, entries[i][1], currency, entries[i][2]::bigint, recorded from t, generate_subscripts(entries, 1) i
$$;
create function pg_temp.purchase(n integer, pkg text, session text, created timestamptz, paid timestamptz) returns void
language sql as $$
  insert into billing.purchases (user_id, package_id, request_key, status, price_cents, currency, credits, bonus_credits,
    stripe_session_id, created_at, paid_at, package_version)
  select pg_temp.uid(n), k.id, 'rollup-test:' || gen_random_uuid(), case when paid is null then 'pending' else 'paid' end,
    k.price_cents, k.currency, k.credits, k.bonus_credits, session, created, paid, k.version
  from billing.credit_packages k where k.id = pkg
$$;
-- The live series: metrics_series's periods, each from revenue_metrics_live.
create function pg_temp.live_series(p_from date, p_to date, p_granularity text) returns jsonb language sql as $$
  select coalesce(jsonb_agg(billing.revenue_metrics_live(
      greatest(s, p_from::timestamp) at time zone 'UTC',
      least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC') order by s), '[]'::jsonb)
  from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
    ('1 ' || p_granularity)::interval) s
$$;
-- Whether GET /admin/metrics's one call (billing.metrics_report: the range and its series from one
-- set of parts) equals the live computation, from k days ago to tomorrow.
create function pg_temp.report_is_live(k integer, p_granularity text) returns boolean language sql as $$
  select billing.metrics_report(t.today - k, t.today + 1, p_granularity) = jsonb_build_object(
    'total', billing.revenue_metrics_live(pg_temp.at(k, 0), pg_temp.at(-1, 0)),
    'series', pg_temp.live_series(t.today - k, t.today + 1, p_granularity))
  from t0 t
$$;
-- Whether revenue_metrics equals revenue_metrics_live over [k1 days ago h1:00, k2 days ago h2:00).
create function pg_temp.same(k1 integer, h1 integer, k2 integer, h2 integer) returns boolean language sql as $$
  select billing.revenue_metrics(pg_temp.at(k1, h1), pg_temp.at(k2, h2)) = billing.revenue_metrics_live(pg_temp.at(k1, h1), pg_temp.at(k2, h2))
$$;
create function pg_temp.current_days() returns integer language sql as $$
  select count(*)::integer from billing.revenue_rollup r
  where r.day between (select today - 9 from t0) and (select today - 2 from t0)
    and billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
$$;
create function pg_temp.is_current(k integer) returns boolean language sql as $$
  select billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
  from billing.revenue_rollup r where r.day = (select today - k from t0)
$$;

-- ---------------------------------------------------------------- the planted days
insert into auth.users (id) select pg_temp.uid(n) from generate_series(1, 4) n;
insert into billing.accounts (user_id) select pg_temp.uid(n) from generate_series(1, 4) n;
-- Today's rows are dated now(): earlier today may already be rolled up (the 10-minute job), and
-- the credit ledger is dated by insertion.
-- u1 uses credits every day, today included: one active user however many days are combined.
select pg_temp.credit(1, 'adjustment', 500, pg_temp.at(9, 1));
select pg_temp.credit(1, 'usage', 1.25 * (k + 1), pg_temp.at(k, 3 + k)) from generate_series(1, 9) k;
select pg_temp.credit(1, 'usage', 1.25, now());
-- u2 buys plus eight days ago (paid that day), spends three days ago.
select pg_temp.purchase(2, 'plus', 'cs_rollup_2', pg_temp.at(8, 9), pg_temp.at(8, 10));
select pg_temp.credit(2, 'purchase', 24990, pg_temp.at(8, 10)), pg_temp.credit(2, 'promo_grant', 1249.5, pg_temp.at(8, 10));
select pg_temp.money('credit_purchase', 'usd', pg_temp.at(8, 10), pg_temp.at(8, 10), array[['payers', '-2499'], ['b2c_revenue', '2499']]);
select pg_temp.money('stripe_fee', 'usd', pg_temp.at(8, 10), pg_temp.at(8, 10), array[['b2c_revenue', '-102'], ['stripe_fees', '102']]);
select pg_temp.credit(2, 'hold_capture', 7.5, pg_temp.at(3, 8));
-- u3's checkout opens late on day 6 and is paid early on day 5 (a later day, before the roll-up).
select pg_temp.purchase(3, 'mini', 'cs_rollup_3', pg_temp.at(6, 23), pg_temp.at(5, 1));
select pg_temp.credit(3, 'purchase', 5000, pg_temp.at(5, 1));
select pg_temp.money('credit_purchase', 'usd', pg_temp.at(5, 1), pg_temp.at(5, 1), array[['payers', '-500'], ['b2c_revenue', '500']]);
select pg_temp.credit(3, 'promo_grant', 10, now());
-- u1 opens a checkout four days ago and does not pay (yet); u4's purchase six days ago never got a session (yet).
select pg_temp.purchase(1, 'starter', 'cs_rollup_1', pg_temp.at(4, 15), null);
select pg_temp.purchase(4, 'mini', null, pg_temp.at(6, 16), null);
-- A provider payment in eur two days ago, its fee partly refunded today.
select pg_temp.money('provider_payment', 'eur', pg_temp.at(2, 14), pg_temp.at(2, 14),
  array[['payers', '-10000'], ['provider:00000000-0000-4000-8000-000000000000', '9700'], ['platform_fees', '300']]);
select pg_temp.money('provider_refund', 'eur', now(), now(),
  array[['payers', '4000'], ['provider:00000000-0000-4000-8000-000000000000', '-3880'], ['platform_fees', '-120']]);
-- u4 is only active today.
select pg_temp.credit(4, 'adjustment', 3, now());
-- Webhooks: one processed eight days ago, one failed five days ago (retried below).
insert into billing.stripe_events (id, type, api_created, livemode, status, received_at, processed_at) values
  ('evt_rollup_1', 'checkout.session.completed', pg_temp.at(8, 10), false, 'processed', pg_temp.at(8, 10), pg_temp.at(8, 10)),
  ('evt_rollup_2', 'charge.refunded', pg_temp.at(5, 2), false, 'failed', pg_temp.at(5, 2), null);

-- Today's roll-up (by the 10-minute job, committed) predates the days planted above, whose rows
-- it carries on: set it aside in this transaction; today is rolled up again at the end.
delete from billing.revenue_rollup where day = (select today from t0);
-- The nightly job's work for the last nine days, oldest first (each carries the liability on),
-- dated an hour ago: everything in this transaction happens at now().
select count(billing.refresh_daily_revenue(day)) from (select today - k as day from t0, generate_series(9, 1, -1) k) d;
update billing.revenue_rollup set computed_at = now() - interval '1 hour'
where day between (select today - 9 from t0) and (select today - 1 from t0);
select is(pg_temp.current_days(), 8, 'every rolled-up day that has closed stands for its rows');
select is((select count(*)::int from billing.revenue_rollup where day between (select today - 9 from t0) and (select today - 2 from t0)
             and covered_until = (day + 1)::timestamp at time zone 'UTC'), 8, 'a closed day is rolled up whole');

-- ---------------------------------------------------------------- rolled-up == live
select ok(pg_temp.same(9, 0, -1, 0), 'nine rolled-up days and today (live) equal the live computation');
select ok(pg_temp.same(9, 0, 2, 0), 'whole rolled-up days only');
select ok(pg_temp.same(7, 12, 2, 6), 'partial days at both ends, rolled-up days between');
select ok(pg_temp.same(1, 13, 0, 6), 'a partial closed day and a partial today');
select is(billing.metrics_series((select today - 9 from t0), (select today + 1 from t0), 'day'),
  pg_temp.live_series((select today - 9 from t0), (select today + 1 from t0), 'day'), 'the daily series');
select is(billing.metrics_series((select today - 9 from t0), (select today + 1 from t0), 'week'),
  pg_temp.live_series((select today - 9 from t0), (select today + 1 from t0), 'week'), 'the weekly series');
select is(billing.metrics_series((select today - 40 from t0), (select today + 1 from t0), 'month'),
  pg_temp.live_series((select today - 40 from t0), (select today + 1 from t0), 'month'), 'the monthly series');
select ok(pg_temp.report_is_live(9, 'day') and pg_temp.report_is_live(9, 'week') and pg_temp.report_is_live(40, 'month'),
  'the report (range and series in one call) by day, week and month');
select is((select metrics from billing.daily_revenue where day = (select today - 5 from t0)),
  billing.revenue_metrics_live(pg_temp.at(5, 0), pg_temp.at(4, 0)), 'a stored day''s numbers are its live numbers');

-- The parts combine without double counting: u1 is active on all ten days, u2 on two, u3 on three.
select ok((billing.revenue_metrics(pg_temp.at(9, 0), pg_temp.at(-1, 0)) -> 'users' ->> 'active')::int
  < (select sum((billing.revenue_metrics(pg_temp.at(k, 0), pg_temp.at(k - 1, 0)) -> 'users' ->> 'active')::int) from generate_series(0, 9) k),
  'active users over a range are distinct users, not a sum of days');

-- The closed days really are read from the table: a tampered row shows through.
update billing.revenue_rollup set checkouts_created = checkouts_created + 1000 where day = (select today - 6 from t0);
select is((billing.revenue_metrics(pg_temp.at(6, 0), pg_temp.at(5, 0)) -> 'conversion' ->> 'checkouts_created')::int,
  (billing.revenue_metrics_live(pg_temp.at(6, 0), pg_temp.at(5, 0)) -> 'conversion' ->> 'checkouts_created')::int + 1000,
  'a closed day comes from revenue_rollup');
select count(billing.refresh_daily_revenue((select today - 6 from t0)));
update billing.revenue_rollup set computed_at = now() - interval '1 hour' where day = (select today - 6 from t0);

-- ---------------------------------------------------------------- late events
create temp table before_late as select billing.revenue_metrics_live(pg_temp.at(3, 0), pg_temp.at(2, 0)) as v;
create function pg_temp.usd_refunds(m jsonb) returns integer language sql as $$
  select coalesce(sum((x -> 'b2c_credits' ->> 'refunds_cents')::int), 0)::int
  from jsonb_array_elements(m -> 'by_currency') x where x ->> 'currency' = 'usd'
$$;
-- Ten minutes ago (after the roll-up; never before today's midnight, which would make
-- yesterday stale too), a Stripe event dated three days ago arrived: a money posting for a
-- closed day.
select pg_temp.money('credit_refund', 'usd', pg_temp.at(3, 20), greatest(pg_temp.at(0, 0), now() - interval '10 minutes'),
  array[['b2c_revenue', '-250'], ['payers', '250']]);
-- u1's checkout from four days ago was paid; u4's purchase from six days ago got its session.
update billing.purchases set status = 'paid', paid_at = greatest(pg_temp.at(0, 0), now() - interval '10 minutes') where stripe_session_id = 'cs_rollup_1';
update billing.purchases set stripe_session_id = 'cs_rollup_4' where user_id = pg_temp.uid(4);
-- The failed webhook from five days ago was retried and processed.
update billing.stripe_events set status = 'processed', processed_at = greatest(pg_temp.at(0, 0), now() - interval '10 minutes') where id = 'evt_rollup_2';

select ok(not pg_temp.is_current(3), 'a late money posting makes its day stale');
select ok(not pg_temp.is_current(4), 'a checkout paid on a later day makes its creation day stale');
select ok(not pg_temp.is_current(5), 'a webhook that finished on a later day makes its day stale');
select ok(not pg_temp.is_current(6), 'a session attached on a later day makes its purchase''s day stale');
select is(pg_temp.current_days(), 4, 'the other closed days still stand');
select ok(pg_temp.same(9, 0, -1, 0), 'late events show at once: stale days are computed live');
select is(billing.metrics_series((select today - 9 from t0), (select today + 1 from t0), 'day'),
  pg_temp.live_series((select today - 9 from t0), (select today + 1 from t0), 'day'), 'the daily series after late events');
select ok(pg_temp.report_is_live(9, 'day'), 'the report after late events');
select is(pg_temp.usd_refunds(billing.revenue_metrics(pg_temp.at(3, 0), pg_temp.at(2, 0))) - (select pg_temp.usd_refunds(v) from before_late),
  250, 'the late refund counts on the day it happened');

-- The 10-minute job (billing.refresh_stale_revenue) finds exactly those four, and rolls them up again.
select is(array(select d from billing.stale_revenue_days() d where d between (select today - 9 from t0) and (select today - 2 from t0)),
  array(select today - k from t0, generate_series(6, 3, -1) k), 'the stale days are the four that late events reached');
select count(billing.refresh_daily_revenue(d)) from billing.stale_revenue_days() d where d >= (select today - 9 from t0);
select is(pg_temp.current_days(), 8, 'after which every closed day stands again');
select ok(pg_temp.same(9, 0, -1, 0), 'and still equals the live computation');
select is(billing.metrics_series((select today - 9 from t0), (select today + 1 from t0), 'week'),
  pg_temp.live_series((select today - 9 from t0), (select today + 1 from t0), 'week'), 'the weekly series after the roll-up');

-- Today, rolled up to five minutes ago (the 10-minute job's other half); the minutes since stay live.
select billing.refresh_revenue_rollup((select today from t0));
select ok((select covered_until = now() - interval '5 minutes' from billing.revenue_rollup where day = (select today from t0))
  or now() < pg_temp.at(0, 0) + interval '5 minutes', 'today is rolled up to five minutes ago');
select ok(pg_temp.same(9, 0, -1, 0), 'rolled-up days, today''s rolled-up part and the live minutes equal the live computation');
select ok(pg_temp.same(0, 0, -1, 0), 'today alone');
select is(billing.metrics_series((select today - 9 from t0), (select today + 1 from t0), 'day'),
  pg_temp.live_series((select today - 9 from t0), (select today + 1 from t0), 'day'), 'the daily series with today rolled up');
select ok(pg_temp.report_is_live(9, 'day') and pg_temp.report_is_live(0, 'day'), 'the report with today rolled up');

-- A checkout opened within today's rolled-up span is paid after the roll-up (checkouts are paid
-- minutes after they open): today's row still stands, and counts that checkout paid at read time.
select pg_temp.purchase(2, 'mini', 'cs_rollup_today', greatest(pg_temp.at(0, 0), now() - interval '6 minutes'), null);
select billing.refresh_revenue_rollup((select today from t0));
update billing.purchases set status = 'paid', paid_at = now() where stripe_session_id = 'cs_rollup_today';
select ok(coalesce(pg_temp.is_current(0), true), 'a checkout of today''s rolled-up span paid since leaves the row current');
select ok(pg_temp.same(0, 0, -1, 0), 'and today equals the live computation, that checkout counted paid');
select is((billing.revenue_metrics(pg_temp.at(0, 0), pg_temp.at(-1, 0)) -> 'conversion' ->> 'checkouts_paid')::int,
  (select count(*)::int from billing.purchases where created_at >= pg_temp.at(0, 0) and status = 'paid' and stripe_session_id is not null),
  'today''s checkouts paid are every checkout of today paid so far');
select ok(pg_temp.report_is_live(9, 'day'), 'the report counts that checkout paid too');

-- A posting dated within today's rolled-up span is recorded now (a webhook a few minutes late):
-- today's row is stale until the job runs again, and today is computed live meanwhile.
select pg_temp.money('stripe_fee', 'usd', greatest(pg_temp.at(0, 0), now() - interval '6 minutes'), now(),
  array[['b2c_revenue', '-30'], ['stripe_fees', '30']]);
select ok(not coalesce(pg_temp.is_current(0), false), 'a posting for today''s rolled-up span recorded since makes it stale');
select ok(pg_temp.same(9, 0, -1, 0), 'and the range still equals the live computation');
select ok(pg_temp.report_is_live(9, 'week'), 'and so does the report');

-- ---------------------------------------------------------------- the credit ledger's watermark
-- The same set whatever order jsonb_agg wrote it in.
create function pg_temp.norm(j jsonb) returns jsonb language sql as $$
  select coalesce(jsonb_agg(x order by x::text), '[]'::jsonb) from jsonb_array_elements(j) x
$$;
-- Today's credit ledger rolled up again from its start, in runs of at most three minutes (a
-- backlog), over transfers dated through the last half hour of the day.
delete from billing.revenue_rollup where day = (select today from t0);
select pg_temp.credit(4, 'usage', 0.000001 * k, greatest(pg_temp.at(0, 0), now() - make_interval(mins => 3 * k))) from generate_series(1, 9) k;
select billing.roll_up_ledger('3 minutes');
select ok((select ledger_until <= pg_temp.at(0, 0) + interval '3 minutes' and covered_until = pg_temp.at(0, 0)
           from billing.revenue_rollup where day = (select today from t0)),
  'a run rolls up at most its step of the credit ledger; the new row''s events half is empty');
select count(billing.roll_up_ledger('3 minutes')) from generate_series(1, 4);
select billing.roll_up_ledger('1 day');
select ok((select ledger_until between now() - interval '2 minutes' and now() - interval '1 second'
           from billing.revenue_rollup where day = (select today from t0))
  or now() < pg_temp.at(0, 0) + interval '2 minutes', 'run after run, it reaches the horizon: a second before the oldest transaction');
select is((select array[pg_temp.norm(r.credits), pg_temp.norm(r.lots)] from billing.revenue_rollup r where r.day = (select today from t0)),
  (select array[pg_temp.norm(p.credits), pg_temp.norm(p.lots)] from billing.revenue_rollup r, billing.ledger_parts(pg_temp.at(0, 0), r.ledger_until) p
   where r.day = (select today from t0)),
  'the row added to run by run holds what its span''s rows sum to');
select is((select outstanding_credits from billing.revenue_rollup where day = (select today from t0)),
  (select sum(e.amount) from billing.entries e, billing.revenue_rollup r
   where r.day = (select today from t0) and e.balance_after is not null and e.created_at < r.ledger_until),
  'and the liability at its watermark is every user entry before it');
select ok(pg_temp.same(9, 0, -1, 0) and pg_temp.same(0, 0, -1, 0), 'today from its watermark on is live: the range equals the live computation');
select ok(pg_temp.report_is_live(9, 'day'), 'and so does the report');

-- Bounded by rows, not time: a run rolls up the longest span from where it stands (a minute,
-- doubled) that holds at most p_rows transfers, a minute holding more whole.
delete from billing.revenue_rollup where day = (select today from t0);
select billing.roll_up_ledger(null, 3);
select ok((select count(*) from billing.transfers t, billing.revenue_rollup r where r.day = (select today from t0)
           and t.created_at >= pg_temp.at(0, 0) and t.created_at < r.ledger_until) <= 3
  or (select ledger_until from billing.revenue_rollup where day = (select today from t0)) <= pg_temp.at(0, 0) + interval '1 minute',
  'a run bounded by rows rolls up at most that many transfers (or one minute)');
-- Plan lots' credits, as the roll-up's lots part holds them (by source), equal plan_metrics's
-- reading of the allocations.
insert into billing.subscriptions (user_id, plan_id, request_key, status) values (pg_temp.uid(1), 'basic_monthly', 'rollup-test', 'active');
select pg_temp.credit(1, 'promo_grant', 50, greatest(pg_temp.at(0, 0), now() - interval '20 seconds'));
-- A plan's lot, as the writer opens one for a plan's grant (its origin).
insert into billing.lots (account_id, grant_transfer_id, category, priority, amount, remaining, granted_at, origin)
select a.id, (select max(id) from billing.transfers), 'promotional', 0, 50, 48, greatest(pg_temp.at(0, 0), now() - interval '20 seconds'), 'plan'
from billing.accounts a where a.user_id = pg_temp.uid(1);
insert into billing.plan_lots (lot_id, subscription_id, period_end)
select l.id, s.id, now() + interval '30 days' from billing.lots l, billing.subscriptions s
where l.grant_transfer_id = (select max(id) from billing.transfers) and s.request_key = 'rollup-test';
select pg_temp.credit(1, 'usage', 2, greatest(pg_temp.at(0, 0), now() - interval '20 seconds'));
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, created_at)
select (select max(id) from billing.transfers), pl.lot_id, 'usage', 2, greatest(pg_temp.at(0, 0), now() - interval '20 seconds')
from billing.plan_lots pl join billing.subscriptions s on s.id = pl.subscription_id where s.request_key = 'rollup-test';
select billing.roll_up_ledger();
select ok(exists (select 1 from billing.revenue_rollup r, jsonb_array_elements(r.lots) x
                  where r.day = (select today from t0) and x ->> 'source' = 'plan' and (x ->> 'credits')::numeric = 2)
  or now() < pg_temp.at(0, 0) + interval '1 minute', 'the roll-up keeps what plan lots drew apart');
select is(billing.revenue_metrics(pg_temp.at(0, 0), pg_temp.at(-1, 0)) -> 'plans', billing.plan_metrics(pg_temp.at(0, 0), pg_temp.at(-1, 0)),
  'and the report''s plan credits used equal the allocations''');
select ok(pg_temp.same(0, 0, -1, 0) and pg_temp.report_is_live(9, 'day'), 'a report with plan lots equals the live computation');

-- A run that crosses midnight: yesterday rolled up to 23:50, a transfer at 23:55.
delete from billing.revenue_rollup where day >= (select today - 1 from t0);
select billing.add_ledger_span((select today - 1 from t0), pg_temp.at(1, 0), pg_temp.at(1, 23) + interval '50 minutes');
select pg_temp.credit(2, 'usage', 0.5, pg_temp.at(1, 23) + interval '55 minutes');
select billing.roll_up_ledger('1 day');
select ok((select ledger_until = pg_temp.at(0, 0) from billing.revenue_rollup where day = (select today - 1 from t0))
  and exists (select 1 from billing.revenue_rollup where day = (select today from t0)),
  'a run across midnight finishes yesterday and starts today');
select ok(pg_temp.same(1, 0, -1, 0) and pg_temp.report_is_live(2, 'day'), 'both days equal the live computation');

-- A void that gives back to a lot while its account is in debt pays the debt on the void's day
-- (the allocation's debt_settled): the day the lot was granted keeps what it had. (The lot is
-- dated seven days ago, its day's events half then recomputed; its grant transfer is today's: a
-- closed day's credit ledger is never written to.)
select pg_temp.credit(2, 'adjustment', 100, now());
insert into billing.lots (account_id, grant_transfer_id, category, priority, cost_cents, currency, amount, remaining, granted_at)
select a.id, (select max(id) from billing.transfers), 'paid', 0, 1000, 'usd', 100, 100, pg_temp.at(7, 9)
from billing.accounts a where a.user_id = pg_temp.uid(2);
select count(billing.refresh_daily_revenue((select today - 7 from t0)));
update billing.revenue_rollup set computed_at = now() - interval '1 hour' where day = (select today - 7 from t0);
create temp table closed as select billing.revenue_metrics(pg_temp.at(7, 0), pg_temp.at(6, 0)) as m;
select pg_temp.credit(2, 'void', 5, now());
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, debt_settled)
values ((select max(id) from billing.transfers), (select max(id) from billing.lots), 'void', -5, 5);
select ok(pg_temp.is_current(7), 'a void settling debt on a lot leaves the day it was granted as it was rolled up');
select ok((select m = billing.revenue_metrics(pg_temp.at(7, 0), pg_temp.at(6, 0)) from closed), 'that day''s figures do not change');
select ok(pg_temp.same(9, 0, -1, 0), 'and the range still equals the live computation, the debt paid counted today');

select * from finish();
rollback;
select pg_advisory_unlock(hashtext('billing.roll_up_ledger'));
