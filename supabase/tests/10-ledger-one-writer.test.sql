-- The ledger's one writer: billing.post_transfers alone writes transfers, entries, lots and
-- allocations and changes balances and versions (read from the catalogue), and what it checks
-- for every movement: replays, a reused key, debt only through a reversal, amounts, a return to
-- lots of exactly the amount, a batch's entries numbered in order.
begin;
select plan(15);
\ir helpers.psql

-- Every function's source, lower-cased with its whitespace folded, and what it writes.
create temp table writers as
select p.oid::regprocedure::text as fn, s.src,
  s.src ~ 'insert into billing\.(transfers|entries|lot_allocations|lots)\M' as inserts,
  s.src ~ 'update billing\.accounts \w+ set [^;]*?[ ,](\w+\.)?(balance|held|version) =' as balances,
  s.src ~ 'update billing\.lots \w+ set [^;]*?[ ,](\w+\.)?(remaining|debt_settled) =' as lots
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
cross join lateral (select regexp_replace(lower(p.prosrc), '\s+', ' ', 'g') as src) s
where n.nspname not in ('pg_catalog', 'information_schema', 'extensions', 'cron') and p.prolang <> 12;

select ok((select inserts and balances and lots from writers where fn = 'billing.post_transfers(billing.transfer_spec[],billing.held_change[])'),
  'the catalogue check sees billing.post_transfers insert ledger rows, change balances and draw lots');
select is(array(select fn from writers where inserts and fn <> 'billing.post_transfers(billing.transfer_spec[],billing.held_change[])' order by fn),
  '{}'::text[], 'no other function inserts transfers, entries, lots or allocations');
select is(array(select fn from writers where balances and fn <> 'billing.post_transfers(billing.transfer_spec[],billing.held_change[])' order by fn),
  '{}'::text[], 'no other function changes an account''s balance, held amount or version');
select is(array(select fn from writers where lots and fn <> 'billing.post_transfers(billing.transfer_spec[],billing.held_change[])' order by fn),
  '{}'::text[], 'no other function changes what is left of a lot');

-- ============================================================ what it checks

insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-000000000001');
select billing.grant_credits('eeeeeeee-0000-4000-8000-000000000001', 10, 'purchase', 'w-grant');
create temp table acct as select a.id from billing.accounts a where a.user_id = 'eeeeeeee-0000-4000-8000-000000000001';
create function pg_temp.spec(p_kind text, p_from bigint, p_to bigint, p_amount numeric, p_key text, p_lots jsonb default null)
returns billing.transfer_spec language sql as $$
  select (p_kind::billing.transfer_kind, p_from, p_to, p_amount, p_key, null, null, null, null, null, null, p_lots)::billing.transfer_spec
$$;

-- A batch of two debits and a grant: entries numbered in batch order from the balance.
select is((select array_agg(p.from_balance order by o) from unnest(billing.post_transfers(array[
    pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 3, 'w-1'),
    pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 4, 'w-2')])) with ordinality p(transfer_id, replayed, from_balance, to_balance, o)),
  array[7, 3]::numeric[], 'a batch''s debits leave the balances after each, in order');
select results_eq($$select e.balance_after, e.account_version from billing.entries e where e.account_id = (select id from acct) order by e.id$$,
  $$values (10::numeric, 1::bigint), (7, 2), (3, 3)$$, 'each entry carries the balance and version after it');
select is((select sum(l.remaining) from billing.lots l where l.account_id = (select id from acct)), 3::numeric,
  'the lots were drawn by the same amounts');
select ok((billing.post_transfers(array[pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 3, 'w-1')]))[1].replayed,
  'a movement under a written key and kind is a replay');
select is((select balance from billing.accounts where id = (select id from acct)), 3::numeric(38, 18),
  'and moves nothing');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 2, 'w-1')])$$),
  'IDEMPOTENCY_KEY_REUSED', 'another movement under the same key and kind is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 5, 'w-3')])$$),
  'LEDGER_INVARIANT', 'a debit below zero is refused unless it is a reversal');
select is((billing.post_transfers(array[pg_temp.spec('refund_reversal', (select id from acct), billing.platform_account_id('refunds'), 5, 'w-4')]))[1].from_balance,
  -2::numeric, 'a refund reversal may leave debt');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), 0.0000000000000000001, 'w-5')])$$),
  'LEDGER_INVARIANT', 'an amount finer than 18 places is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('debit', (select id from acct), billing.platform_account_id('usage_revenue'), null, 'w-7')])$$),
  'LEDGER_INVARIANT', 'a movement without an amount is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('void', billing.platform_account_id('usage_revenue'), (select id from acct), 2, 'w-6',
    jsonb_build_object('return_to', jsonb_build_array(jsonb_build_object('lot_id', (select min(l.id) from billing.lots l where l.account_id = (select id from acct)), 'amount', 1))))])$$),
  'LEDGER_INVARIANT', 'a return to lots of another amount than the movement''s is refused');

select * from finish();
rollback;
