-- A hold is one account write when placed and its capture one more: the capture's release of
-- what was held goes into the capture's own balance update (post_capture's post step), and
-- held, balance and the entry's balance_after stay exact. Counted with this transaction's own
-- statistics (pg_stat_xact_user_tables), so nothing else on the cluster moves the figures.
begin;
select plan(14);
\ir helpers.psql

insert into auth.users (id) values ('c3c3c3c3-0000-4000-8000-000000000003');
select billing.grant_credits('c3c3c3c3-0000-4000-8000-000000000003', 100, 'promo_grant', 'writes-fund-1');

create function pg_temp.account_writes() returns bigint language sql as $$
  select n_tup_upd from pg_stat_xact_user_tables where schemaname = 'billing' and relname = 'accounts'
$$;
create function pg_temp.acct() returns billing.accounts language sql as $$
  select * from billing.accounts where user_id = 'c3c3c3c3-0000-4000-8000-000000000003'
$$;
create function pg_temp.call_writes() returns bigint language sql as $$
  select n_tup_ins + n_tup_upd from pg_stat_xact_user_tables where schemaname = 'billing' and relname = 'ai_calls'
$$;
create temp table w (phase text, before bigint, after bigint);
grant all on w to service_role;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;

-- ============================================================ an AI call: one write per phase
insert into w select 'begin', pg_temp.account_writes(), null;
insert into w select 'begin record', pg_temp.call_writes(), null;
select billing.begin_ai_call('c3c3c3c3-0000-4000-8000-000000000003', 'gpt-4o', 1000, 500, 'writes-call-1', 'h', 600);
update w set after = pg_temp.account_writes() where phase = 'begin';
update w set after = pg_temp.call_writes() where phase = 'begin record';
select is((select after - before from w where phase = 'begin record'), 1::bigint,
  'beginning it writes the call''s record once, with its hold and who pays');
select is((select after - before from w where phase = 'begin'), 1::bigint, 'beginning an AI call writes its account once (held)');
select is(((pg_temp.acct()).balance, (pg_temp.acct()).held), (100.0::numeric, 50.0::numeric),
  'the hold is the dearest price, held; the balance untouched');

insert into w select 'finish', pg_temp.account_writes(), null;
select billing.finish_ai_call((select id from billing.ai_calls where idempotency_key = 'writes-call-1'),
  '{"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 50, "reasoning_tokens": 0}', 'provider', null);
update w set after = pg_temp.account_writes() where phase = 'finish';
select is((select after - before from w where phase = 'finish'), 1::bigint,
  'finishing it writes its account once: the capture and the end of the hold in one UPDATE');
select is(((pg_temp.acct()).balance, (pg_temp.acct()).held, (pg_temp.acct()).version), (95.0::numeric, 0.0::numeric, 2::bigint),
  'the call''s price (5) left the balance, nothing stays held, one version per movement');
select is((select e.balance_after from billing.entries e join billing.ai_calls c on c.transfer_id = e.transfer_id
           where c.idempotency_key = 'writes-call-1' and e.account_id = (pg_temp.acct()).id), 95.0::numeric,
  'the capture''s entry says the balance after it');

-- ============================================================ a user's hold, beside another
select billing.reserve_credits('c3c3c3c3-0000-4000-8000-000000000003', 30, 'writes-hold-a', 600);
select billing.reserve_credits('c3c3c3c3-0000-4000-8000-000000000003', 20, 'writes-hold-b', 600);
insert into w select 'capture', pg_temp.account_writes(), null;
select billing.capture_hold('c3c3c3c3-0000-4000-8000-000000000003',
  (select id from billing.holds where idempotency_key = 'writes-hold-a'), 12);
update w set after = pg_temp.account_writes() where phase = 'capture';
select is((select after - before from w where phase = 'capture'), 1::bigint, 'a partial capture writes its account once');
select is(((pg_temp.acct()).balance, (pg_temp.acct()).held), (83.0::numeric, 20.0::numeric),
  'it spent 12 and ended its whole hold of 30; the other hold (20) is still held');
select is((select (available)::text from billing.balance_of((pg_temp.acct()).id)), '63.000000000000000000',
  'available is the balance less the other hold');

-- Capturing it again replays: nothing moves, no write.
insert into w select 'replay', pg_temp.account_writes(), null;
select is((billing.capture_hold('c3c3c3c3-0000-4000-8000-000000000003',
  (select id from billing.holds where idempotency_key = 'writes-hold-a'), 12)).replayed, true, 'a second capture replays');
update w set after = pg_temp.account_writes() where phase = 'replay';
select is((select after - before from w where phase = 'replay'), 0::bigint, 'and writes nothing');
select is(((pg_temp.acct()).balance, (pg_temp.acct()).held), (83.0::numeric, 20.0::numeric), 'balance and held as they were');

-- Released: held back to zero, the balance whole.
select billing.release_hold('c3c3c3c3-0000-4000-8000-000000000003', (select id from billing.holds where idempotency_key = 'writes-hold-b'));
select is(((pg_temp.acct()).balance, (pg_temp.acct()).held), (83.0::numeric, 0.0::numeric), 'a release ends what it held');

-- ============================================================ an account write finds its row by id
-- The writer names a tracked side by `id = … and code is null`. An index over every code offered
-- the planner the null codes of all user accounts, and before the table's first ANALYZE it took
-- it: each account write read every user account (money-path-profile: 160 µs for the hold's
-- write of held, 34 once it could not). Only platform codes are indexed.
select is((select count(*) from pg_index i where i.indrelid = 'billing.accounts'::regclass
             and 'code' = any(select a.attname from pg_attribute a where a.attrelid = i.indrelid and a.attnum = any(i.indkey))
             and coalesce(pg_get_expr(i.indpred, i.indrelid), '') <> '(code IS NOT NULL)'), 0::bigint,
  'no index of accounts holds the null code of a tracked account');
select * from finish();
rollback;
