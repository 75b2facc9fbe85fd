-- Credit lots: one per grant, drawn in spending order, immutable allocations, expiry, the
-- integrity check, RLS, and an expiry's key never replaying an earlier expiry of the lot
-- through freeze, void and thaw cycles whose amounts repeat.
begin;
select plan(27);
\ir helpers.psql

insert into auth.users (id) values
  ('dddddddd-0000-4000-8000-000000000001'), ('dddddddd-0000-4000-8000-000000000002'),
  ('dddddddd-0000-4000-8000-000000000003'), ('dddddddd-0000-4000-8000-000000000004');

create function pg_temp.remaining(p_transfer_key text) returns numeric language sql as $$
  select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = p_transfer_key
$$;

-- ============================================================ grants make lots; debits draw in order

select billing.grant_credits('dddddddd-0000-4000-8000-000000000001', 100, 'purchase', 'lot-paid', null, null, null,
  '{"cost_cents": 1000}');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000001', 30, 'promo_grant', 'lot-promo');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000001', 20, 'adjustment', 'lot-adj', null, null, null,
  '{"category": "promotional", "expires_at": null}');

select results_eq(
  $$select l.category, l.priority, l.cost_cents, l.expires_at is not null from billing.lots l
    join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key like 'lot-%' order by l.id$$,
  $$values ('paid', 20, 1000::numeric, false), ('promotional', 10, 0::numeric, true), ('promotional', 10, 0::numeric, false)$$,
  'each grant is a lot: a purchase paid at its cost, a promotion expiring by policy, an adjustment as the admin chose');

select pg_temp.spend('dddddddd-0000-4000-8000-000000000001', 40, 'lot-debit-1');
select is(pg_temp.remaining('lot-promo'), 0::numeric, 'the expiring promotion is spent first');
select is(pg_temp.remaining('lot-adj'), 10::numeric, 'then the promotion without expiry');
select is(pg_temp.remaining('lot-paid'), 100::numeric, 'paid credits last');
select results_eq(
  $$select la.amount from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    where t.idempotency_key = 'lot-debit-1' order by la.lot_id$$,
  $$values (30::numeric), (10::numeric)$$,
  'the debit records what it drew from each lot');

select pg_temp.spend('dddddddd-0000-4000-8000-000000000001', 40, 'lot-debit-1');
select is((select count(*)::int from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
  where t.idempotency_key = 'lot-debit-1'), 2, 'a replayed debit draws nothing again');

-- Batch events draw in event order across lots.
select billing.charge_usage_batch(jsonb_build_array(
  jsonb_build_object('event_id', 'lot-ev-1', 'user_id', 'dddddddd-0000-4000-8000-000000000001', 'model', 'gpt-4o',
    'input_tokens', 400, 'output_tokens', 0, 'occurred_at', now()),
  jsonb_build_object('event_id', 'lot-ev-2', 'user_id', 'dddddddd-0000-4000-8000-000000000001', 'model', 'gpt-4o',
    'input_tokens', 400, 'output_tokens', 0, 'occurred_at', now())));
select results_eq(
  $$select t.idempotency_key, la.amount from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
    where t.idempotency_key like 'usage-event:dddddddd-0000-4000-8000-000000000001:lot-ev-%' order by t.id, la.lot_id$$,
  $$values ('usage-event:dddddddd-0000-4000-8000-000000000001:lot-ev-1', 8::numeric), ('usage-event:dddddddd-0000-4000-8000-000000000001:lot-ev-2', 6::numeric),
    ('usage-event:dddddddd-0000-4000-8000-000000000001:lot-ev-2', 2::numeric)$$,
  'a batch draws event after event: the second event finishes one lot (2) and starts the next (6)');

select is(pg_temp.err($$update billing.lot_allocations set amount = 1$$), 'LEDGER_IMMUTABLE', 'allocations cannot be changed');
select is(pg_temp.err($$delete from billing.lot_allocations$$), 'LEDGER_IMMUTABLE', 'allocations cannot be deleted');

-- ============================================================ debt

select billing.reverse_credits('dddddddd-0000-4000-8000-000000000001', 150, 'refund_reversal', 'lot-refund', null, null, null,
  billing.purchase_lots(null, null));
select is((select sum(l.remaining) from billing.lots l join billing.accounts a on a.id = l.account_id
  where a.user_id = 'dddddddd-0000-4000-8000-000000000001'), 0::numeric, 'a reversal beyond the balance empties every lot');
select is((billing.get_balance('dddddddd-0000-4000-8000-000000000001')).balance, -56::numeric, 'and the rest is debt');
select billing.grant_credits('dddddddd-0000-4000-8000-000000000001', 100, 'adjustment', 'lot-after-debt');
select results_eq(
  $$select l.debt_settled, l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
    where t.idempotency_key = 'lot-after-debt'$$,
  $$values (56::numeric, 44::numeric)$$,
  'the next grant settles the debt first; its lot holds the rest');

-- ============================================================ expiry

select billing.grant_credits('dddddddd-0000-4000-8000-000000000002', 50, 'promo_grant', 'lot-expiring', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
update billing.lots set expires_at = now() - interval '1 minute'
  where grant_transfer_id = (select id from billing.transfers where idempotency_key = 'lot-expiring');
select is(billing.expire_lots(100000) >= 1, true, 'the sweep finds the overdue lot');
select is((billing.get_balance('dddddddd-0000-4000-8000-000000000002')).balance, 0::numeric, 'its credits are gone');
select is((select sum(x.amount) from billing.transfers x where x.to_account_id = billing.platform_account_id('expired')
  and x.id in (select la.transfer_id from billing.lot_allocations la join billing.lots l on l.id = la.lot_id
    join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'lot-expiring')), 50::numeric,
  'into the breakage account');

-- ============================================================ revenue: paid credits at their cost

-- Everything this transaction writes is dated now(): the window [now(), now() + 1 µs) holds
-- exactly it, so the difference a fourth student's flows make is theirs alone.
create temp table before_lots as select billing.revenue_metrics_live(now(), now() + interval '1 microsecond') as m;
create function pg_temp.lot_line(p_key text) returns numeric language sql as $$
  select (billing.revenue_metrics_live(now(), now() + interval '1 microsecond') -> 'credit_lots' -> 0 ->> p_key)::numeric
    - coalesce((select (b.m -> 'credit_lots' -> 0 ->> p_key)::numeric from before_lots b), 0)
$$;
select billing.grant_credits('dddddddd-0000-4000-8000-000000000004', 100, 'purchase', 'rev-paid', null, null, null,
  '{"cost_cents": 1000}');
select pg_temp.spend('dddddddd-0000-4000-8000-000000000004', 30, 'rev-spend');
select billing.reverse_credits('dddddddd-0000-4000-8000-000000000004', 20, 'expiry', 'rev-expire', null, null, null,
  array(select l.id from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'rev-paid'));
select billing.reverse_credits('dddddddd-0000-4000-8000-000000000004', 10, 'refund_reversal', 'rev-refund', null, null, null,
  array(select l.id from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'rev-paid'));
select is(pg_temp.lot_line('paid_granted_cents'), 1000::numeric, '100 paid credits bought for $10 enter deferred revenue at 1,000 cents');
select is(pg_temp.lot_line('recognised_revenue_cents'), 300::numeric, '30 spent are recognised at their cost: 300 cents');
select is(pg_temp.lot_line('breakage_revenue_cents'), 200::numeric, '20 expired are breakage: 200 cents');
select is(pg_temp.lot_line('paid_reversed_cents'), 100::numeric, '10 refunded leave at their cost: 100 cents');
select is((select (c -> 'deferred_revenue_cents_from_lots')::numeric from (select 1) x,
    lateral (select jsonb_build_object('deferred_revenue_cents_from_lots', round(sum(l.cost_cents * l.remaining / l.amount))) as c
             from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'rev-paid') y),
  400::numeric, 'and what is left (40 credits) is deferred: 1,000 − 300 − 200 − 100 cents');

-- ============================================================ RLS

set local request.jwt.claims = '{"sub": "dddddddd-0000-4000-8000-000000000002", "role": "authenticated"}';
set local role authenticated;
select is((select count(*)::int from billing_api.lots), 1, 'a student sees their own lots only');
select is(pg_temp.err($$update billing.lots set remaining = 1000$$), 'permission denied for table lots',
  'and cannot change them');
reset role;

-- ============================================================ expiry keys through freeze, void, thaw

-- A promotional lot of 100: charges of 40, 10 and 40 leave 10, which expire. Each charge is then
-- voided back while the lot is frozen (a dispute), and the lot thaws and expires again: the
-- amounts repeat (10 after a first expiry of 10; 40 twice).
insert into auth.users (id) values ('a2a2a2a2-0000-4000-8000-0000000000e1');
select billing.grant_credits('a2a2a2a2-0000-4000-8000-0000000000e1', 100, 'promo_grant', 'exp-grant');
create temp table e as select a.id as account, l.id as lot from billing.accounts a join billing.lots l on l.account_id = a.id
  where a.user_id = 'a2a2a2a2-0000-4000-8000-0000000000e1';
create temp table ch as
  select k, (pg_temp.spend('a2a2a2a2-0000-4000-8000-0000000000e1', amt, 'exp-' || k)).transfer_id as id
  from (values (1, 40), (2, 10), (3, 40)) v(k, amt);
create function pg_temp.due() returns void language sql as $$
  update billing.lots set expires_at = now() - interval '1 second', frozen = false where id = (select lot from e);
  update billing.accounts set next_expiry = now() - interval '1 second' where id = (select account from e);
$$;
create function pg_temp.frozen_void(p_k integer) returns void language plpgsql as $$
begin
  update billing.lots set frozen = true where id = (select lot from e);
  perform billing.void_charge_internal((select id from ch where k = p_k), 'a2a2a2a2-0000-4000-8000-0000000000e1', 'complaint', null);
  perform pg_temp.due();                             -- thawed: the dispute was won
  perform billing.expire_due_lots((select account from e));
end
$$;
select pg_temp.due();
select billing.expire_due_lots((select account from e));
select pg_temp.frozen_void(2);
select is((select trim_scale(remaining) from billing.lots where id = (select lot from e)), 0::numeric,
  '10 voided back after a first expiry of 10 expire again (no replay of the first expiry)');
select pg_temp.frozen_void(1);
select pg_temp.frozen_void(3);
select is((select trim_scale(remaining) from billing.lots where id = (select lot from e)), 0::numeric,
  '40 voided back twice, each time expired once the lot thawed');
select is((select count(*)::integer from billing.transfers t where t.kind = 'expiry' and t.metadata ->> 'lot_id' = (select lot from e)::text),
  4, 'four expiries of the lot, each its own transfer');
select is((select trim_scale(sum(amount)) from billing.lot_allocations where lot_id = (select lot from e) and kind = 'expiry'),
  100::numeric, 'all 100 ended as breakage');
select is((select trim_scale(balance) from billing.accounts where id = (select account from e)), 0::numeric,
  'nothing of the expired lot is spendable');

select * from finish();
rollback;
