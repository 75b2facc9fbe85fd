-- As-of reads against a long statement (docs/credit-lots.md § As of): plants, once, a user whose
-- account has :n user entries (a paid grant, then debits a minute apart, written as the ledger's
-- writer writes them), then reads the balance and the newest lot as of instants across that
-- history. Run by bench/balance-as-of.sh; never in the test suite (it commits its rows).
\set ON_ERROR_STOP 1
select ('a5a5a5a5-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid as uid \gset
select not exists (select 1 from billing.accounts where user_id = :'uid') as plant,
  exists (select 1 from information_schema.columns where table_schema = 'billing' and table_name = 'entries'
          and column_name = 'inserted_at') as has_inserted_at \gset
\if :plant
begin;
insert into auth.users (id) values (:'uid') on conflict do nothing;
select billing.grant_credits(:'uid', 10 * :n, 'adjustment', 'asof-bench-grant:' || :'uid', null, null, null,
  '{"category": "paid", "cost_cents": 1000}') \g /dev/null
-- The history, dated in the past: the grant first, then one debit a minute (the writer's rows: a
-- transfer, the user's entry with balance_after and version, an allocation from the lot).
-- As the writer would have written them: each entry the moment its transaction started.
\if :has_inserted_at
\set inserted_col ', inserted_at'
\set inserted_val ', t.created_at'
\else
\set inserted_col ''
\set inserted_val ''
\endif
create temp table plan as
select a.id as account_id, l.id as lot_id, now() - make_interval(mins => :n + 10) as t0
from billing.accounts a join billing.lots l on l.account_id = a.id where a.user_id = :'uid';
alter table billing.transfers disable trigger user;
alter table billing.entries disable trigger user;
update billing.transfers t set created_at = p.t0 from plan p, billing.lots l where l.id = p.lot_id and t.id = l.grant_transfer_id;
update billing.entries e set created_at = p.t0 from plan p, billing.lots l where l.id = p.lot_id and e.transfer_id = l.grant_transfer_id;
\if :has_inserted_at
update billing.entries e set inserted_at = e.created_at from plan p, billing.lots l where l.id = p.lot_id and e.transfer_id = l.grant_transfer_id;
\endif
alter table billing.transfers enable trigger user;
alter table billing.entries enable trigger user;
update billing.lots l set granted_at = p.t0 from plan p where l.id = p.lot_id;
with t as (
  insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, created_at)
  select 'usage', p.account_id, billing.platform_account_id('usage_revenue'), 1, 'asof-bench:' || :'uid' || ':' || g,
    p.t0 + make_interval(mins => g)
  from plan p, generate_series(1, :n - 1) g
  returning id, created_at, amount
), e as (
  insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version, created_at :inserted_col)
  select t.id, p.account_id, -1, 10 * :n - row_number() over (order by t.id), 1 + row_number() over (order by t.id), t.created_at
    :inserted_val
  from t, plan p
  returning transfer_id
)
insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, created_at)
select t.id, p.lot_id, 'usage', 1, t.created_at from t, plan p;
update billing.lots l set remaining = l.amount - (:n - 1) from plan p where l.id = p.lot_id;
update billing.accounts a set balance = 10 * :n - (:n - 1), version = :n from plan p where a.id = p.account_id;
commit;
vacuum analyze billing.entries;
vacuum analyze billing.lot_allocations;
\endif
