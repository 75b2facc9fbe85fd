-- Balances as of an instant: what changes in place is recorded as it changes (and only then),
-- the readers answer each instant from the rows, and only the service role may call them.
begin;
select plan(17);
\ir helpers.psql

insert into auth.users (id) values ('36363636-0000-4000-8000-000000000001'), ('36363636-0000-4000-8000-000000000002');

-- ============================================================ changes made in place are recorded

select billing.grant_credits('36363636-0000-4000-8000-000000000001', 100, 'promo_grant', 'asof-grant');
-- 15 more in a lot that expires tomorrow, so it is spent (and reserved) first.
select billing.grant_credits('36363636-0000-4000-8000-000000000001', 15, 'promo_grant', 'asof-expiring');
create function pg_temp.expire_at(p_at timestamptz) returns void language sql as $$
  update billing.lots l set expires_at = p_at from billing.transfers t
  where t.id = l.grant_transfer_id and t.idempotency_key = 'asof-expiring';
  update billing.accounts a set next_expiry = p_at where a.user_id = '36363636-0000-4000-8000-000000000001';
$$;
select pg_temp.expire_at(now() + interval '1 day');
select billing.reserve_hold('36363636-0000-4000-8000-000000000001', 10, 'asof-hold-2', 900, 'job');
select billing.reserve_credits('36363636-0000-4000-8000-000000000001', 60, 'asof-hold-1');
-- The expiring lot expires: the job's hold (10 of it) shrinks whole (it ends), the student's
-- (5 of it, 55 of the other) in part.
select pg_temp.expire_at(now() - interval '1 second');
select billing.expire_lots(100);
select results_eq(
  $$select trim_scale(r.amount_before), trim_scale(r.amount_after) from billing.hold_resizes r
    join billing.holds h on h.id = r.hold_id where h.idempotency_key like 'asof-hold-%' order by r.id$$,
  $$values (60::numeric, 55::numeric)$$,
  'a hold giving way in part records its amount before and after; one released whole keeps its amount and records nothing');

select billing.capture_hold('36363636-0000-4000-8000-000000000001',
  (select id from billing.holds where idempotency_key = 'asof-hold-1'), 5);
select is((select count(*) from billing.hold_resizes r join billing.holds h on h.id = r.hold_id
           where h.idempotency_key like 'asof-hold-%'), 1::bigint, 'a capture changes no amount: nothing is recorded');

update billing.lots set frozen = true where grant_transfer_id = (select id from billing.transfers where idempotency_key = 'asof-grant');
update billing.lots set warned_days = '{30}' where grant_transfer_id = (select id from billing.transfers where idempotency_key = 'asof-grant');
select results_eq(
  $$select c.frozen_before, c.expires_at_before is not null from billing.lot_changes c join billing.lots l on l.id = c.lot_id
    join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'asof-grant'$$,
  $$values (false, true)$$,
  'freezing a lot records its flag and expiry before; a warning sent changes neither and records nothing');
select is(pg_temp.err($$update billing.hold_resizes set amount_after = 1$$), 'LEDGER_IMMUTABLE', 'the record of resizes is never changed');

-- ============================================================ the readers, at instants around the rows

-- Everything above is dated now() (one transaction); the instant before it saw nothing.
select is(billing.user_balance_as_of('36363636-0000-4000-8000-000000000001', now()) - 'as_of' - 'expiring',
  '{"balance": "95", "held": "0", "available": "0"}'::jsonb,
  'as of now: the grant less the capture, nothing held (the hold captured, the other released), none available (the lot froze)');
select is(billing.user_balance_as_of('36363636-0000-4000-8000-000000000001', now() - interval '1 microsecond'),
  jsonb_build_object('as_of', billing.json_time(now() - interval '1 microsecond'), 'balance', '0', 'held', '0', 'available', '0',
    'expiring', null),
  'as of the instant before: zeros, as before the account existed');
select is(billing.user_lots_as_of('36363636-0000-4000-8000-000000000001', now() - interval '1 microsecond', null, 50), '[]'::jsonb,
  'no lots before the grant');
select is(billing.user_balance_as_of('36363636-0000-4000-8000-000000000002', now()) ->> 'balance', '0',
  'a user without an account has nothing at any instant');

-- A hold placed two hours ago at 60, given way to 45 an hour ago, finished now.
insert into billing.holds (account_id, amount, status, idempotency_key, expires_at, created_at, finished_at)
select a.id, 45, 'released', 'asof-hold-past', now() + interval '1 hour', now() - interval '2 hours', now()
from billing.accounts a where a.user_id = '36363636-0000-4000-8000-000000000001';
insert into billing.hold_resizes (hold_id, resized_at, amount_before, amount_after)
select h.id, now() - interval '1 hour', 60, 45 from billing.holds h where h.idempotency_key = 'asof-hold-past';
select results_eq(
  $$select billing.user_balance_as_of('36363636-0000-4000-8000-000000000001', now() - x.ago) ->> 'held'
    from (values (interval '3 hours'), (interval '90 minutes'), (interval '30 minutes'), (interval '0')) x(ago)$$,
  $$values ('0'), ('60'), ('45'), ('0')$$,
  'held: nothing before the hold, its amount before the resize, after it, and nothing once it finished');

-- A hold past its TTL reserves nothing, whether or not the sweep has marked it.
insert into billing.holds (account_id, amount, idempotency_key, expires_at, created_at)
select a.id, 7, 'asof-hold-overdue', now() - interval '10 minutes', now() - interval '20 minutes'
from billing.accounts a where a.user_id = '36363636-0000-4000-8000-000000000001';
select results_eq(
  $$select billing.user_balance_as_of('36363636-0000-4000-8000-000000000001', now() - x.ago) ->> 'held'
    from (values (interval '15 minutes'), (interval '5 minutes')) x(ago)$$,
  $$values ('52'), ('45')$$,
  'a hold counts until its TTL, not until the sweep');

-- A lot's frozen flag and expiry as they were: the first change after the instant holds them.
insert into billing.lot_changes (lot_id, changed_at, frozen_before, expires_at_before, reserved_before)
select l.id, now() + interval '1 second', false, null, 0 from billing.lots l
join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'asof-grant';
select results_eq(
  $$select x ->> 'remaining', (x ->> 'frozen')::boolean, x ->> 'expires_at'
    from jsonb_array_elements(billing.user_lots_as_of('36363636-0000-4000-8000-000000000001', now(), null, 50)) x
    where x ->> 'remaining' <> '0'$$,
  $$values ('95', false, null::text)$$,
  'a lot as of an instant (the one not expired): what remained then, and its flag and expiry before the next change');

-- ============================================================ the balance at an instant, from balance_after

-- A statement a day old, written as the writer writes it (in id order under the account lock, each
-- entry's balance_after the running sum in that order), with what concurrency makes of it: a
-- transaction that started first but wrote after a later one (the 4th row), and one that wrote
-- five minutes after it started (the 5th: a batch job's). Then 2,000 charges a second apart.
insert into auth.users (id) values ('36363636-0000-4000-8000-000000000003');
insert into billing.accounts (user_id) values ('36363636-0000-4000-8000-000000000003');
create temp table asof_t0 as select now() - interval '1 day' as t0;
create function pg_temp.at(p_seconds numeric) returns timestamptz language sql as $$
  select t0 + make_interval(secs => p_seconds) from asof_t0
$$;
with rows (n, created, inserted, amount) as (
  values (1, 0, 0, 100), (2, 60, 60, -10), (3, 125, 125.5, -5), (4, 120, 126, -7), (5, 100, 400, -3), (6, 500, 500, 50)
  union all select 6 + g, 600 + g, 600 + g, -0.01 from generate_series(1, 2000) g
), t as (
  insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, created_at)
  select case when r.amount > 0 then 'promo_grant'::billing.transfer_kind else 'usage' end,
    case when r.amount > 0 then billing.platform_account_id('promotions') else a.id end,
    case when r.amount > 0 then a.id else billing.platform_account_id('usage_revenue') end,
    abs(r.amount), 'asof-statement:' || r.n, pg_temp.at(r.created)
  from rows r, billing.accounts a where a.user_id = '36363636-0000-4000-8000-000000000003'
  order by r.n
  returning id, idempotency_key
)
insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version, created_at, inserted_at)
select t.id, a.id, r.amount, sum(r.amount) over (order by r.n), r.n, pg_temp.at(r.created), pg_temp.at(r.inserted)
from rows r join t on t.idempotency_key = 'asof-statement:' || r.n, billing.accounts a
where a.user_id = '36363636-0000-4000-8000-000000000003'
order by r.n;

select results_eq(
  $$select x.s, billing.balance_at(a.id, pg_temp.at(x.s)),
      (select coalesce(sum(e.amount), 0) from billing.entries e where e.account_id = a.id and e.created_at <= pg_temp.at(x.s))
    from billing.accounts a, (values (-1), (0), (59), (110), (122), (130), (450), (500), (1600), (2600)) x(s)
    where a.user_id = '36363636-0000-4000-8000-000000000003' order by x.s$$,
  $$values (-1, 0::numeric, 0::numeric), (0, 100, 100), (59, 100, 100), (110, 87, 87), (122, 80, 80), (130, 75, 75),
      (450, 75, 75), (500, 125, 125), (1600, 115, 115), (2600, 105, 105)$$,
  'the balance at each instant is Σ the entries dated by then, exactly, read from balance_after and the entries around it: a transaction that wrote after a later one, and one that wrote minutes after it started, count from when they started');

-- What a read touches, from the statistics of this transaction's own reads; planned, as in
-- production, with statistics of the rows (autovacuum's analyze; here, of the rows just planted).
analyze billing.entries;
create function pg_temp.entries_read() returns bigint language sql as $$
  select coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) from pg_stat_xact_user_tables where relid = 'billing.entries'::regclass
$$;
create temp table asof_reads as select pg_temp.entries_read() as before;
select is(billing.user_balance_as_of('36363636-0000-4000-8000-000000000003', pg_temp.at(1600)) ->> 'balance', '115',
  'as of an instant in the middle of 2,006 entries');
-- One entry's balance_after, the entries of the 20 seconds around it (a charge a second here) and
-- the late one: 22; the sum over the history before it read 1,000 or more.
select cmp_ok(pg_temp.entries_read() - (select before from asof_reads), '<', 40::bigint,
  'reading it touches the entries around one balance_after, not the 1,000 before the instant');

-- ============================================================ who may call

select ok(not has_function_privilege('authenticated', 'billing.user_balance_as_of(uuid, timestamptz)', 'execute')
  and not has_function_privilege('anon', 'billing.user_lots_as_of(uuid, timestamptz, bigint, integer)', 'execute')
  and not has_function_privilege('authenticated', 'billing.org_balance_as_of(uuid, uuid, timestamptz)', 'execute'),
  'students call no as-of reader directly: the routes check whose account it is');
select ok(has_function_privilege('service_role', 'billing.user_balance_as_of(uuid, timestamptz)', 'execute')
  and has_function_privilege('service_role', 'billing.org_lots_as_of(uuid, uuid, boolean, timestamptz, bigint, integer)', 'execute'),
  'the service role calls them');
select ok(not has_table_privilege('authenticated', 'billing.hold_resizes', 'select')
  and not has_table_privilege('authenticated', 'billing.lot_changes', 'select'),
  'the records of changes are not readable by students');

select * from finish();
rollback;
