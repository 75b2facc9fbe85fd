-- The ledger's one writer attacked at the SQL level (second attack): its single movement and its
-- batch must write the same thing for the same movement (entries, versions, lot draws, `first`,
-- `return_to` with debt, moves, replays, reused keys); an expiry's key must never replay an
-- earlier expiry of the lot through freeze / void / thaw cycles whose amounts repeat; derived
-- keys stay within 300 characters and never merge two request keys, whatever the scope.
begin;
select plan(18);
\ir helpers.psql

-- X and Y are twins: X's movements go alone (the single branch), Y's in a batch with a movement
-- of Z beside them (the batch branch). M and N receive moves.
insert into auth.users (id) values
  ('a2a2a2a2-0000-4000-8000-00000000000a'), ('a2a2a2a2-0000-4000-8000-00000000000b'),
  ('a2a2a2a2-0000-4000-8000-00000000000c'), ('a2a2a2a2-0000-4000-8000-00000000000d'),
  ('a2a2a2a2-0000-4000-8000-00000000000e'), ('a2a2a2a2-0000-4000-8000-00000000000f');
select billing.grant_credits(u::uuid, 10, 'promo_grant', 'atk2-promo-' || u)
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000a', 'a2a2a2a2-0000-4000-8000-00000000000b']) u;
select billing.grant_credits(u::uuid, 30, 'purchase', 'atk2-buy-' || u, null, null, null, '{"cost_cents": 300}')
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000a', 'a2a2a2a2-0000-4000-8000-00000000000b']) u;
select billing.grant_credits('a2a2a2a2-0000-4000-8000-00000000000c', 1000, 'promo_grant', 'atk2-pad');
select billing.grant_credits(u::uuid, 1, 'promo_grant', 'atk2-recv-' || u)
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000d', 'a2a2a2a2-0000-4000-8000-00000000000e']) u;

create temp table acc as select
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000a') as x,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000b') as y,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000c') as z,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000d') as m,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000e') as n,
  billing.platform_account_id('usage_revenue') as ur;

create function pg_temp.spec(p_kind text, p_from bigint, p_to bigint, p_amount numeric, p_key text, p_lots jsonb default null)
returns billing.transfer_spec language sql as $$
  select (p_kind::billing.transfer_kind, p_from, p_to, p_amount, p_key, null, null, null, null, null, null, p_lots)::billing.transfer_spec
$$;
-- One movement alone, and the same in a batch beside a padding debit of Z.
create function pg_temp.single(s billing.transfer_spec) returns billing.posted_transfer language sql as $$
  select (billing.post_transfers(array[s]))[1]
$$;
create function pg_temp.batched(s billing.transfer_spec) returns billing.posted_transfer language sql as $$
  select (billing.post_transfers(array[s, pg_temp.spec('debit', (select z from acc), (select ur from acc), 1,
    'atk2-pad-' || s.idempotency_key)]))[1]
$$;
-- An account's ledger as a shape two twins can share: lots (by rank), entries, and each transfer's
-- draws by lot rank, in order.
create function pg_temp.shape(p_account bigint) returns jsonb language sql as $$
  with l as (select l.*, row_number() over (order by l.id) as rank from billing.lots l where l.account_id = p_account)
  select jsonb_build_object(
    'lots', (select jsonb_agg(jsonb_build_array(trim_scale(l.amount), trim_scale(l.remaining), trim_scale(l.debt_settled),
               l.category, trim_scale(l.cost_cents), l.frozen, l.expires_at is null,
               (select s.rank from l s where s.id = l.moved_from)) order by l.rank) from l),
    'entries', (select jsonb_agg(jsonb_build_array(trim_scale(e.amount), trim_scale(e.balance_after), e.account_version) order by e.id)
                from billing.entries e where e.account_id = p_account),
    'draws', (select jsonb_agg(jsonb_build_array(t.kind, l.rank, trim_scale(la.amount)) order by t.id, l.rank)
              from billing.lot_allocations la join l on l.id = la.lot_id join billing.transfers t on t.id = la.transfer_id),
    'account', (select jsonb_build_array(trim_scale(a.balance), a.version) from billing.accounts a where a.id = p_account))
$$;
create function pg_temp.paid_lot(p_account bigint) returns bigint language sql as $$
  select l.id from billing.lots l where l.account_id = p_account and l.category = 'paid' order by l.id limit 1
$$;

-- A debit spanning two lots (the single movement's one-lot draw does not cover it).
select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'atk2-d1-x'));
select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'atk2-d1-y'));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a debit across two lots: alone and in a batch, the same entries and draws');
-- `first`: the paid lot before the spending order.
select pg_temp.single(pg_temp.spec('debit', (select x from acc), (select ur from acc), 4, 'atk2-d2-x',
  jsonb_build_object('first', jsonb_build_array(pg_temp.paid_lot((select x from acc))))));
select pg_temp.batched(pg_temp.spec('debit', (select y from acc), (select ur from acc), 4, 'atk2-d2-y',
  jsonb_build_object('first', jsonb_build_array(pg_temp.paid_lot((select y from acc))))));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a debit with lots drawn first: the same alone and in a batch');
-- A move to another tracked account: the lots it drew arrive as they were.
select pg_temp.single(pg_temp.spec('allowance', (select x from acc), (select m from acc), 12, 'atk2-mv-x'));
select pg_temp.batched(pg_temp.spec('allowance', (select y from acc), (select n from acc), 12, 'atk2-mv-y'));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)), 'a move out: the same alone and in a batch');
select is(pg_temp.shape((select m from acc)), pg_temp.shape((select n from acc)), 'a move in: the same alone and in a batch');
-- A reversal into debt, then a return to lots that pays it first.
select pg_temp.single(pg_temp.spec('refund_reversal', (select x from acc), billing.platform_account_id('refunds'), 13, 'atk2-rv-x',
  '{"first": []}'));
select pg_temp.batched(pg_temp.spec('refund_reversal', (select y from acc), billing.platform_account_id('refunds'), 13, 'atk2-rv-y',
  '{"first": []}'));
select pg_temp.single(pg_temp.spec('void', (select ur from acc), (select x from acc), 15, 'atk2-void-x',
  jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
    from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id where t.idempotency_key = 'atk2-d1-x'))));
select pg_temp.batched(pg_temp.spec('void', (select ur from acc), (select y from acc), 15, 'atk2-void-y',
  jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
    from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id where t.idempotency_key = 'atk2-d1-y'))));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a reversal into debt and a return that settles it: the same alone and in a batch');
select is((select trim_scale(balance) from billing.accounts where id = (select x from acc)), 11::numeric,
  'the return paid the 4 of debt first: 11 left');
-- Replays and reused keys.
select ok((pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'atk2-d1-x'))).replayed
  and (pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'atk2-d1-y'))).replayed,
  'a movement under a written key is a replay on both branches');
select is(array[pg_temp.err($$select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 16, 'atk2-d1-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 16, 'atk2-d1-y'))$$),
                pg_temp.err($$select pg_temp.single(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'atk2-d1-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'atk2-d1-x'))$$)],
  array['IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED'],
  'another amount or another account under a written key is refused on both branches');
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)), 'replays and refusals moved nothing on either side');
select is(array[pg_temp.err($$select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'atk2-over-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'atk2-over-y'))$$)],
  array['LEDGER_INVARIANT', 'LEDGER_INVARIANT'], 'a debit past the balance is refused on both branches');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "accounts": [], "transfers": [], "expiry": []}'::jsonb, 'lots agree with the ledger');

-- ============================================================ expiry keys through freeze, void, thaw

-- A promotional lot of 100: charges of 40, 10 and 40 leave 10, which expire. Each charge is then
-- voided back while the lot is frozen (a dispute), and the lot thaws and expires again: the
-- amounts repeat (10 after a first expiry of 10; 40 twice).
insert into auth.users (id) values ('a2a2a2a2-0000-4000-8000-0000000000e1');
select billing.grant_credits('a2a2a2a2-0000-4000-8000-0000000000e1', 100, 'promo_grant', 'atk2-e-grant');
create temp table e as select a.id as account, l.id as lot from billing.accounts a join billing.lots l on l.account_id = a.id
  where a.user_id = 'a2a2a2a2-0000-4000-8000-0000000000e1';
create temp table ch as
  select k, (billing.debit_credits('a2a2a2a2-0000-4000-8000-0000000000e1', amt, 'atk2-e-' || k)).transfer_id as id
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

-- ============================================================ derived keys

-- Every scope the API derives keys under (usage, holds, batch events, allowances), keys of every
-- length up to 255 around each boundary, with and without a sha256: look-alike prefix.
create temp table keys as
  select s.scope, k.key, billing.scoped_key(s.scope, k.key) as derived
  from (values ('http:a2a2a2a2-0000-4000-8000-00000000000a:credits.usage:'),
               ('http:a2a2a2a2-0000-4000-8000-00000000000a:credits.holds:'),
               ('usage-event:a2a2a2a2-0000-4000-8000-00000000000a:'),
               ('allowance:a2a2a2a2-0000-4000-8000-00000000000a:')) s(scope)
  cross join lateral (
    select repeat('k', n) as key from generate_series(1, 255) n
    union all select 'sha256:' || encode(sha256(convert_to(repeat('k', n), 'UTF8')), 'hex') from generate_series(1, 255) n
    union all select 'SHA256:' || encode(sha256(convert_to(repeat('k', n), 'UTF8')), 'hex') from generate_series(1, 255) n
    union all select 'sha256:' || repeat('k', n) from generate_series(1, 248) n) k;
select is((select count(*)::integer from keys where length(derived) > 300), 0, 'every derived key fits in 300 characters');
select is((select count(*)::integer from (select scope, derived from keys group by scope, derived having count(*) > 1) d), 0,
  'no two request keys derive the same ledger key under one scope');

select * from finish();
rollback;
