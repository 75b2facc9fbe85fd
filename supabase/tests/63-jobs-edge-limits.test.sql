-- Edge limits: a job runs in slices (yield_job hands it back without counting an attempt; a
-- tick skips the jobs it already served), and a reconciliation run is leased and saved page by
-- page (a page saved twice counts once; only the lease holder writes).
begin;
select plan(14);
\ir helpers.psql

-- ============================================================ job slices
insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-000000000005');
create temp table j as select * from billing.enqueue_job('eeeeeeee-0000-4000-8000-000000000005', 'ledger_export', '{}',
  'edge-limits-1');
update billing.jobs set run_after = now() - interval '10 years' where id = (select id from j); -- first in line

select is((select id from billing.claim_jobs('w1', 1, 30)), (select id from j), 'a worker claims the job');
select is(pg_temp.err($$select billing.yield_job((select id from j), 'w2')$$), 'LEASE_LOST',
  'only the worker holding the job can hand it back');
select is((select attempts from billing.yield_job((select id from j), 'w1')), 0,
  'a slice that ends well gives its attempt back');
select is((select row(status, locked_by)::text from billing.jobs where id = (select id from j)), '(processing,)',
  'the job waits, unleased, for the next slice');
update billing.jobs set run_after = now() - interval '10 years' where id = (select id from j);
select ok((select id from billing.claim_jobs('w1', 1, 30, array[(select id from j)])) is distinct from (select id from j),
  'a tick never claims a job it already gave a slice');
select is((select attempts from billing.claim_jobs('w3', 1, 30)), 1, 'the next tick claims it again, as attempt 1');

-- ============================================================ reconciliation runs
create temp table r as select * from billing.claim_reconciliation('2001-03-04', 'r1', 30);
select is((select locked_by from r), 'r1', 'a day''s run is created leased to its worker');
select is((select row(id, locked_by)::text from billing.claim_reconciliation('2001-03-04', 'r2', 30)),
  (select row(id, 'r1')::text from r), 'another worker gets the same run, still held by the first');
select is(pg_temp.err($$select billing.record_reconciliation_page((select id from r), 'r2', '[]', 'fees', null)$$),
  'LEASE_LOST', 'only the lease holder saves pages');
select billing.record_reconciliation_page((select id from r), 'r1',
  '[{"kind": "charge", "stripe_id": "ch_edge", "account": "acct_none", "amount_cents": 100, "currency": "USD"}]',
  'charges', 'ch_edge');
select is((select row(pages, phase, cursor)::text from billing.record_reconciliation_page((select id from r), 'r1',
  '[{"kind": "charge", "stripe_id": "ch_edge", "account": "acct_none", "amount_cents": 100, "currency": "USD"}]',
  'fees', null)), '(2,fees,)', 'each page moves the run on');
select is((select count(*)::int from billing.reconciliation_items where progress_id = (select id from r)), 1,
  'a page read twice is saved once');
select is((select phase from billing.finish_reconciliation((select id from r), 'r1')), 'done', 'the last step finishes the run');
select is((select count(*)::int from billing.reconciliation_items where progress_id = (select id from r)), 0,
  'a finished run keeps no Stripe records');
select isnt((select id from billing.claim_reconciliation('2001-03-04', 'r1', 30)), (select id from r),
  'running the day again starts a new run');

select * from finish();
rollback;
