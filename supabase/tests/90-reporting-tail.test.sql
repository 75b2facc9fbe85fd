-- Today's tail from what the writer kept (billing.ledger_tail, accounts.active_from): what the
-- writer's roads write after today's watermark reads the same from the summary as from the raw
-- rows (credits by kind and model, the liability's change, active accounts once united with the
-- rolled-up bitmap, the whole report), only today's whole tail from a whole second is read that
-- way, and a row written past the writer is not in it (so the summary is what was read).
-- One snapshot; the roll-up held, so the minute job cannot move today's row meanwhile.
-- The minute roll-up is held off by a session lock taken before the transaction: its snapshot,
-- taken after, holds whatever a roll-up committed while this waited (a lock taken inside it, at
-- its first statement, would wait on a snapshot older than that roll-up's row).
select pg_advisory_lock(hashtext('billing.roll_up_ledger'));
begin;
set transaction isolation level repeatable read;
lock table billing.revenue_rollup in exclusive mode;
select plan(16);
\ir helpers.psql

create temp table t0 as select (now() at time zone 'UTC')::date as today, date_trunc('second', now()) as lo,
  date_trunc('day', now(), 'UTC') as day_start, date_trunc('day', now(), 'UTC') + interval '1 day' as day_end;
-- The same set whatever order jsonb_agg wrote it in.
create function pg_temp.norm(j jsonb) returns jsonb language sql as $$
  select coalesce(jsonb_agg(x order by x::text), '[]'::jsonb) from jsonb_array_elements(j) x
$$;
create function pg_temp.parts(p_tail boolean) returns table(credits jsonb, lots jsonb, active_accounts bigint[], user_credit_change numeric)
language sql as $$
  select pg_temp.norm(p.credits), pg_temp.norm(p.lots), p.active_accounts, p.user_credit_change
  from t0, billing.ledger_parts(t0.lo, t0.day_end, p_tail) p
$$;
-- Distinct accounts active today: the rolled-up bitmap united with a tail's ids.
create function pg_temp.active_today(p_tail boolean) returns bigint language sql as $$
  select billing.count_accounts(array[r.active_accounts], (select p.active_accounts from pg_temp.parts(p_tail) p))
  from billing.revenue_rollup r, t0 where r.day = t0.today
$$;

-- Today rolled up to a whole second: every write below is dated at or after it (now()).
delete from billing.revenue_rollup where day = (select today from t0);
select billing.add_ledger_span(today, day_start, lo) from t0;

select ok((select billing.ledger_tail_readable(lo, day_end) from t0), 'today''s tail from a whole second is read from what the writer kept');
select ok(not (select billing.ledger_tail_readable(lo + interval '1 millisecond', day_end) from t0),
  'not from an instant within a second (the writer sums per second)');
select ok(not (select billing.ledger_tail_readable(lo, lo + interval '1 hour') from t0)
  and not (select billing.ledger_tail_readable(day_start - interval '1 day', day_end) from t0),
  'nor a span ending before today''s end, or starting before today');
update billing.ledger_tail_kept set since = 'infinity';
select ok(not (select billing.ledger_tail_readable(lo, day_end) from t0), 'nor from before the writer has kept it');
update billing.ledger_tail_kept set since = '-infinity';

-- Each road into the writer: grants, a charge alone and its replay, a batch, a hold captured,
-- a move between two tracked accounts (a member's allowance swept back), a void.
insert into auth.users (id) values ('d4d4d4d4-0000-4000-8000-000000000001'), ('d4d4d4d4-0000-4000-8000-000000000002'),
  ('d4d4d4d4-0000-4000-8000-000000000003');
select billing.grant_credits(('d4d4d4d4-0000-4000-8000-00000000000' || n)::uuid, 100, 'promo_grant', 'tail-fund-' || n) from generate_series(1, 3) n;
select billing.charge_usage('d4d4d4d4-0000-4000-8000-000000000001', 'gpt-4o-mini', 123456, 7890, 'tail-usage-1');
select billing.charge_usage('d4d4d4d4-0000-4000-8000-000000000001', 'gpt-4o-mini', 123456, 7890, 'tail-usage-1');
-- As if student 2's grant were yesterday's: the batch is its first write today.
update billing.accounts set active_from = now() - interval '1 day' where user_id = 'd4d4d4d4-0000-4000-8000-000000000002';
select billing.charge_usage_batch(jsonb_build_array(
  jsonb_build_object('event_id', 'e1', 'user_id', 'd4d4d4d4-0000-4000-8000-000000000002', 'model', 'gpt-4o-mini',
    'input_tokens', 1000, 'output_tokens', 10, 'occurred_at', now()),
  jsonb_build_object('event_id', 'e2', 'user_id', 'd4d4d4d4-0000-4000-8000-000000000002', 'model', 'gpt-4o',
    'input_tokens', 2000, 'output_tokens', 20, 'occurred_at', now()),
  jsonb_build_object('event_id', 'e1', 'user_id', 'd4d4d4d4-0000-4000-8000-000000000003', 'model', 'gpt-4o-mini',
    'input_tokens', 3000, 'output_tokens', 30, 'occurred_at', now())));
select billing.capture_hold('d4d4d4d4-0000-4000-8000-000000000003',
  (billing.reserve_hold('d4d4d4d4-0000-4000-8000-000000000003', 5, 'tail-hold-1', 600, 'user')).hold_id, 2.5);
select billing.move_credits(a.id, b.id, 1.25, 'adjustment', 'tail-move-1', null)
from billing.accounts a, billing.accounts b
where a.user_id = 'd4d4d4d4-0000-4000-8000-000000000001' and b.user_id = 'd4d4d4d4-0000-4000-8000-000000000003';

-- A promo code's credits (their origin, as billing.redeem_code gives them) spent first.
select billing.grant_credits('d4d4d4d4-0000-4000-8000-000000000002', 50, 'promo_grant', 'tail-promo', null, null, null,
  '{"origin": "promo_code", "priority": 0}');
select billing.charge_usage('d4d4d4d4-0000-4000-8000-000000000002', 'gpt-4o-mini', 1000, 10, 'tail-usage-promo');
select ok((select count(*) = 1 from pg_temp.parts(true) p, jsonb_array_elements(p.lots) x
           where x ->> 'source' = 'promo_code' and x ->> 'kind' = 'usage'),
  'what a promo code''s credits paid is in the tail under their origin');

select ok((select count(*) > 0 from billing.ledger_tail x, t0 where x.at = t0.lo and x.backend = pg_backend_pid()),
  'the writer kept this transaction''s movements under its second and its backend');
select is((select array[credits, lots] from pg_temp.parts(true)), (select array[credits, lots] from pg_temp.parts(false)),
  'credits by kind and model, and what lots paid, read from the tail equal the raw rows');
select is((select user_credit_change from pg_temp.parts(true)), (select user_credit_change from pg_temp.parts(false)),
  'and so does how much the liability moved');
select ok((select user_credit_change from pg_temp.parts(true)) <> 0, 'which is not nothing');
select ok((select count(*) from billing.accounts a, pg_temp.parts(true) p
           where a.user_id::text like 'd4d4d4d4-%' and a.id = any(p.active_accounts)) = 3,
  'the three students first active today since the watermark are among the tail''s accounts');
select is(pg_temp.active_today(true), pg_temp.active_today(false), 'today''s active accounts: the bitmap and the tail count as the raw rows do');
select is((select billing.metrics_report(today - 1, today + 1, 'day') from t0),
  (select jsonb_build_object('total', billing.revenue_metrics_live((today - 1)::timestamp at time zone 'UTC', day_end),
     'series', jsonb_build_array(
       billing.revenue_metrics_live((today - 1)::timestamp at time zone 'UTC', day_start),
       billing.revenue_metrics_live(day_start, day_end))) from t0),
  'the report (GET /admin/metrics) equals the raw rows');

-- The raw path is still what a span off the tail reads: the same answer from rows alone.
select is((select pg_temp.norm(p.credits) from t0, billing.ledger_parts(t0.lo, t0.day_end - interval '1 second', true) p),
  (select pg_temp.norm(p.credits) from t0, billing.ledger_parts(t0.lo, t0.day_end - interval '1 second', false) p),
  'a span that is not today''s whole tail reads the rows, asked for the tail or not');

-- A transfer written past the writer (as only the table owner can) is in the rows, not the
-- tail: the tail's answer was read from what the writer kept.
insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key)
select 'adjustment', billing.platform_account_id('adjustments'), a.id, 7, 'tail-planted'
from billing.accounts a where a.user_id = 'd4d4d4d4-0000-4000-8000-000000000001';
select isnt((select credits from pg_temp.parts(true)), (select credits from pg_temp.parts(false)),
  'a row written past the writer is not in the tail');
select is((select (x ->> 'amount')::numeric from pg_temp.parts(false) p, jsonb_array_elements(p.credits) x where x ->> 'kind' = 'adjustment'),
  8.25, 'but is in the rows (7 planted beside the 1.25 moved)');

-- So is an allocation: what lots paid in the tail was read from what the writer kept.
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
select t.id, l.id, 'usage', 0.5, 0 from billing.transfers t, billing.lots l
where t.idempotency_key = 'tail-planted' and l.grant_transfer_id = (select x.id from billing.transfers x where x.idempotency_key = 'tail-promo');
select isnt((select lots from pg_temp.parts(true)), (select lots from pg_temp.parts(false)),
  'an allocation written past the writer is not in the tail''s lots part');

select * from finish();
rollback;
select pg_advisory_unlock(hashtext('billing.roll_up_ledger'));
