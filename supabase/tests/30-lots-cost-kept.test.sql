-- A lot allocation keeps its part of the lot's cost basis (cents = cost_cents × amount / the lot's
-- amount), worked out by the writer, so a report sums it without reading the lot: the kept value
-- is the one a report would work out, digit for digit, on every path that draws (one lot, several
-- lots, a void's give-back); rows from before it was kept are worked out from the lot, to the same
-- sum; and billing.check_lots names a transfer whose kept value is off.
begin;
select plan(6);
\ir helpers.psql

insert into auth.users (id) values ('c0c0c0c0-0000-4000-8000-000000000001');
create function pg_temp.u() returns uuid language sql as $$ select 'c0c0c0c0-0000-4000-8000-000000000001'::uuid $$;
-- 7 credits for 999 cents and 3 for 1000: their cost bases do not divide evenly.
select billing.grant_credits(pg_temp.u(), 7, 'purchase', 'cost-kept-a', null, null, null, '{"cost_cents": 999}');
select billing.grant_credits(pg_temp.u(), 3, 'purchase', 'cost-kept-b', null, null, null, '{"cost_cents": 1000}');
create function pg_temp.mine() returns setof billing.lot_allocations language sql as $$
  select a.* from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
  join billing.accounts x on x.id = l.account_id where x.user_id = pg_temp.u() $$;

select pg_temp.spend(pg_temp.u(), 2.5, 'cost-kept-one');   -- one lot
select pg_temp.spend(pg_temp.u(), 6, 'cost-kept-two');     -- the rest of the first and part of the second
select results_eq(
  $$select a.cents::text from pg_temp.mine() a order by a.transfer_id, a.lot_id$$,
  $$select (l.cost_cents * a.amount / l.amount)::text from pg_temp.mine() a join billing.lots l on l.id = a.lot_id
    order by a.transfer_id, a.lot_id$$,
  'each draw keeps the cost basis a report would work out, digit for digit');
select is((select count(*)::int from pg_temp.mine() a where a.cents is not null), 3, 'one row for one lot, two for two');

-- A void gives back to the lots its charge drew: negative rows, their cost basis kept too.
select billing.void_charge_internal((select t.id from billing.transfers t where t.idempotency_key like '%cost-kept-two%'
  and t.kind = 'usage'), null, 'test', null);
select results_eq(
  $$select a.cents::text from pg_temp.mine() a where a.amount < 0 order by a.lot_id$$,
  $$select (l.cost_cents * a.amount / l.amount)::text from pg_temp.mine() a join billing.lots l on l.id = a.lot_id
    where a.amount < 0 order by a.lot_id$$,
  'a void''s give-back keeps its (negative) cost basis');
select is((select count(*)::int from pg_temp.mine() a where a.amount < 0 and a.cents is not null), 2, 'both lots are given back to');

-- A row from before the cost basis was kept (a fixture row, written as the writer once did): the
-- report works it out from the lot. Its cents over the minute equal the row-by-row sum, kept or not.
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
select t.id, l.id, 'usage', 1.25 from billing.transfers t, billing.lots l
where t.idempotency_key = 'cost-kept-a' and l.grant_transfer_id = t.id;
select is(
  (select sum((x ->> 'cents')::numeric)::text
   from billing.ledger_parts(now() - interval '1 minute', now() + interval '1 minute') p, jsonb_array_elements(p.lots) x
   -- What the lots drew and were given back (the lots granted are in the same part).
   where x ->> 'kind' not in ('granted', 'debt_settled_by_move')),
  (select sum(l.cost_cents * v.credits / l.amount)::text from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
   cross join lateral (values (a.amount), (a.debt_settled)) v(credits)
   where a.created_at >= now() - interval '1 minute' and a.created_at < now() + interval '1 minute'),
  'a report sums kept and worked-out cost bases to the row-by-row sum, to the last digit');

insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, cents)
select t.id, l.id, 'usage', 0.5, 0.1 from billing.transfers t, billing.lots l
where t.idempotency_key = 'cost-kept-b' and l.grant_transfer_id = t.id;
select ok((billing.check_lots() -> 'transfers') @> to_jsonb((select t.id from billing.transfers t
  where t.idempotency_key = 'cost-kept-b')),
  'check_lots names a transfer whose kept cost basis is off');

select * from finish();
rollback;
