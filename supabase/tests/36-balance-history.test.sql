-- Balances as of an instant: what changes in place is recorded as it changes (and only then),
-- the readers answer each instant from the rows, and only the service role may call them.
begin;
select plan(14);
\ir helpers.psql

insert into auth.users (id) values ('36363636-0000-4000-8000-000000000001'), ('36363636-0000-4000-8000-000000000002');

-- ============================================================ changes made in place are recorded

select billing.grant_credits('36363636-0000-4000-8000-000000000001', 100, 'promo_grant', 'asof-grant');
select billing.reserve_credits('36363636-0000-4000-8000-000000000001', 60, 'asof-hold-1');
select billing.reserve_hold('36363636-0000-4000-8000-000000000001', 10, 'asof-hold-2', 900, 'job');
-- The job's hold gives way whole, then the student's in part (one purpose at a time: the order is theirs).
select billing.shrink_holds((select id from billing.accounts where user_id = '36363636-0000-4000-8000-000000000001'), 10,
  array['job'], '{}');
select billing.shrink_holds((select id from billing.accounts where user_id = '36363636-0000-4000-8000-000000000001'), 15,
  array['user'], '{}');
select results_eq(
  $$select trim_scale(r.amount_before), trim_scale(r.amount_after) from billing.hold_resizes r
    join billing.holds h on h.id = r.hold_id where h.idempotency_key like 'asof-hold-%' order by r.id$$,
  $$values (60::numeric, 45::numeric)$$,
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
  '{"balance": "95", "held": "0", "available": "95"}'::jsonb,
  'as of now: the grant less the capture, nothing held (the hold captured, the other released)');
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
insert into billing.lot_changes (lot_id, changed_at, frozen_before, expires_at_before)
select l.id, now() + interval '1 second', false, null from billing.lots l
join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'asof-grant';
select results_eq(
  $$select x ->> 'remaining', (x ->> 'frozen')::boolean, x ->> 'expires_at'
    from jsonb_array_elements(billing.user_lots_as_of('36363636-0000-4000-8000-000000000001', now(), null, 50)) x$$,
  $$values ('95', false, null::text)$$,
  'a lot as of an instant: what remained then, and its flag and expiry before the next change');

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
