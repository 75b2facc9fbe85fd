-- A school's onboarding read from what was kept (billing.grants_tail, billing.ledger_tail,
-- accounts.active_from): right after new students are given credits (grants, a school's purchase
-- of paid credits, allowances funded from it), the report reads today's lots granted from the
-- grants tail, and its figures equal the raw rows' and those after the roll-up has passed them.
-- One snapshot; the roll-up held, so the minute job cannot move today's row meanwhile.
begin;
set transaction isolation level repeatable read;
select pg_advisory_xact_lock(hashtext('billing.roll_up_ledger'));
lock table billing.revenue_rollup in exclusive mode;
select plan(12);
\ir helpers.psql

create temp table t0 as select (now() at time zone 'UTC')::date as today, date_trunc('second', now()) as lo,
  date_trunc('day', now(), 'UTC') as day_start, date_trunc('day', now(), 'UTC') + interval '1 day' as day_end;
-- The same set whatever order jsonb_agg wrote it in.
create function pg_temp.norm(j jsonb) returns jsonb language sql as $$
  select coalesce(jsonb_agg(x order by x::text), '[]'::jsonb) from jsonb_array_elements(j) x
$$;
create function pg_temp.report() returns jsonb language sql as $$
  select billing.metrics_report(today - 1, today + 1, 'day') from t0
$$;
-- Today rolled up to p_until (both halves, as the minute job leaves them); the events half as
-- if computed five minutes on (rows written now are then no longer late), and the grants tail
-- it passed deleted, as billing.refresh_revenue_rollup does.
create function pg_temp.roll_up(p_until timestamptz) returns void language plpgsql as $$
begin
  perform billing.add_ledger_span(t0.today, coalesce(r.ledger_until, t0.day_start), p_until)
  from t0 left join billing.revenue_rollup r on r.day = t0.today;
  update billing.revenue_rollup r set covered_until = p_until, money = e.money, lots_granted = e.lots,
    paying_accounts = billing.account_bitmap(e.paying_accounts), first_time_purchasers = e.first_time_purchasers,
    checkouts_created = e.checkouts_created, checkouts_paid = e.checkouts_paid, webhooks_received = e.webhooks_received,
    webhooks_ok = e.webhooks_ok, computed_at = now() + interval '5 minutes'
  from t0, billing.event_parts(t0.day_start, p_until) e where r.day = t0.today;
  delete from billing.grants_tail x where x.at < p_until;
end;
$$;

-- Today rolled up to a whole second: every write below is dated at or after it (now()).
delete from billing.revenue_rollup where day = (select today from t0);
select pg_temp.roll_up(lo) from t0;
select ok((select billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
           from billing.revenue_rollup r, t0 where r.day = t0.today and r.covered_until = t0.lo),
  'today''s events half covers up to the burst and is current');

-- The onboarding: 50 new students given credits 3 times each (promotional, and paid at a cost);
-- a school buys paid credits into its wallet and funds each student's allowance from them.
insert into auth.users (id, email) select ('0b0b0b0b-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
  'onboard-' || n || '@example.org' from generate_series(1, 51) n;
select is((select count(billing.grant_credits(u.id, 10 * k + 0.25, case k when 3 then 'purchase' else 'promo_grant' end::billing.transfer_kind,
    'onboard-' || u.id || '-' || k, null, null, null,
    case k when 3 then '{"category": "paid", "cost_cents": 199}' end::jsonb))
from auth.users u, generate_series(1, 3) k where u.email like 'onboard-%' and u.email <> 'onboard-51@example.org'),
  150::bigint, '50 students given credits three times');
create temp table school as select (billing.create_org('0b0b0b0b-0000-4000-8000-000000000051', 'Onboarding school',
  'allowance', true) ->> 'id')::uuid as org;
insert into billing.org_members (org_id, user_id, role)
select s.org, u.id, 'member' from school s, auth.users u where u.email like 'onboard-%' and u.email <> 'onboard-51@example.org';
select is((select (billing.grant_credits(null, 5000, 'purchase', 'onboard-school-buys', null, null, null,
  '{"category": "paid", "cost_cents": 4999}', billing.org_wallet_id(s.org))).balance from school s), 5000::numeric,
  'the school bought paid credits into its wallet');
select ok((select billing.fund_allowances('0b0b0b0b-0000-4000-8000-000000000051', s.org, null, 40, 'onboard-allowances')
           -> 'funded' from school s) is not null, 'the school funded its 50 students'' allowances');

select ok((select count(*) > 0 from billing.grants_tail x, t0 where x.at = t0.lo and x.backend = pg_backend_pid()),
  'the lots granted were kept under this transaction''s second and backend');
select is((select pg_temp.norm(p.lots) from t0, billing.event_parts(t0.lo, t0.day_end, true) p),
  (select pg_temp.norm(p.lots) from t0, billing.event_parts(t0.lo, t0.day_end, false) p),
  'lots granted read from the grants tail equal the raw rows');
select is((select count(*) from t0, billing.event_parts(t0.lo, t0.day_end, true) p, jsonb_array_elements(p.lots) x
           where x ->> 'kind' = 'granted'), 2::bigint, 'promotional and paid lots granted, each its own line');
select is((select array(select g::bigint from generate_series(0, length(p.active_bitmap) - 1) g where get_bit(p.active_bitmap, g) = 1)
           from t0, billing.ledger_parts(t0.lo, t0.day_end, true) p),
  (select array(select x from unnest(p.active_accounts) x order by x) from t0, billing.ledger_parts(t0.lo, t0.day_end, false) p),
  'the accounts first active today since the roll-up (students, wallet, allowances) read from the active tail equal the raw rows');
select is((select cardinality(p.active_accounts) from t0, billing.ledger_parts(t0.lo, t0.day_end, false) p), 101,
  '50 students, their 50 allowances and the school''s wallet: 101 first active today');

create temp table right_after as select pg_temp.report() as report;
select is((select report from right_after),
  (select jsonb_build_object('total', billing.revenue_metrics_live((today - 1)::timestamp at time zone 'UTC', day_end),
     'series', jsonb_build_array(
       billing.revenue_metrics_live((today - 1)::timestamp at time zone 'UTC', day_start),
       billing.revenue_metrics_live(day_start, day_end))) from t0),
  'the report right after the onboarding equals the raw rows');

-- A lot granted past the trigger cannot exist, so a row planted in the tail shows that the
-- report read its lots granted from there.
insert into billing.grants_tail (at, backend, currency, category, kind, credits, cents)
select lo, 0, 'usd', 'promotional', 'granted', 7, 0 from t0;
select isnt(pg_temp.report() -> 'total' -> 'credit_lots', (select report -> 'total' -> 'credit_lots' from right_after),
  'the report''s lots granted today are read from the grants tail');
delete from billing.grants_tail where backend = 0;

-- The roll-up passes the onboarding: the same figures from the stored halves.
select pg_temp.roll_up(lo + interval '1 second') from t0;
select is(pg_temp.report(), (select report from right_after), 'the report after the roll-up equals the report right after');

select * from finish();
rollback;
