-- The ledger's writer, billing.post_transfers and its other operations (that no other function writes the ledger is
-- proven by parsing supabase/schemas: scripts/local/sql-shape.ts, tests/unit/sql-shape.test.ts),
-- and what it checks
-- for every movement: replays, a reused key, debt only through a reversal, amounts, a return to
-- lots of exactly the amount, a batch's entries numbered in order; and a movement alone and the
-- same in a batch write the same thing (entries, versions, lot draws, `first`, `return_to` with
-- debt, moves, replays, reused keys).
begin;
select plan(36);
\ir helpers.psql

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
    pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 3, 'w-1'),
    pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 4, 'w-2')])) with ordinality p(transfer_id, replayed, from_balance, to_balance, o)),
  array[7, 3]::numeric[], 'a batch''s debits leave the balances after each, in order');
select results_eq($$select e.balance_after, e.account_version from billing.entries e where e.account_id = (select id from acct) order by e.id$$,
  $$values (10::numeric, 1::bigint), (7, 2), (3, 3)$$, 'each entry carries the balance and version after it');
select is((select sum(l.remaining) from billing.lots l where l.account_id = (select id from acct)), 3::numeric,
  'the lots were drawn by the same amounts');
select ok((billing.post_transfers(array[pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 3, 'w-1')]))[1].replayed,
  'a movement under a written key and kind is a replay');
select is((select balance from billing.accounts where id = (select id from acct)), 3::numeric(38, 18),
  'and moves nothing');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 2, 'w-1')])$$),
  'IDEMPOTENCY_KEY_REUSED', 'another movement under the same key and kind is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('adjustment', (select id from acct), billing.platform_account_id('adjustments'), 5, 'w-3')])$$),
  'LEDGER_INVARIANT', 'a debit below zero is refused unless it is a reversal');
-- Spending past what the account has is the writer's answer, not an error: nothing is written.
select is((select row(p.transfer_id, p.result, p.refusal)::text from unnest(billing.post_transfers(array[
    pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 5, 'w-4')])) p),
  row(null::bigint, 'insufficient', '{"required": "5", "available": "3"}'::jsonb)::text,
  'a charge past the balance is answered insufficient, with what it needed and what there was');
select is((select count(*) from billing.transfers where idempotency_key in ('w-3', 'w-4')), 0::bigint,
  'and writes no transfer');
-- A batch whose movements touch no tracked account (platform to platform) has no legs: written all the same.
select is((select array_agg(p.result order by o) from unnest(billing.post_transfers(array[
    pg_temp.spec('adjustment', billing.platform_account_id('adjustments'), billing.platform_account_id('usage_revenue'), 1, 'w-p1'),
    pg_temp.spec('adjustment', billing.platform_account_id('adjustments'), billing.platform_account_id('usage_revenue'), 2, 'w-p2')]))
    with ordinality p(transfer_id, replayed, from_balance, to_balance, result, refusal, o)),
  array['applied', 'applied'], 'a batch between platform accounts is written');
-- A hold is a pending transfer (billing.place_hold, the writer's hold): placing one past what the
-- account has is refused with the same figures, and places nothing.
select is(pg_temp.err(format($$select billing.place_hold(%s, 4, 'w-hold-over', now() + interval '1 hour', 'user')$$,
    (select id from acct))),
  'INSUFFICIENT_CREDITS', 'a hold past what the account has is refused');
select is((select row(p.result, p.refusal)::text from unnest(billing.post_transfers(array[pg_temp.spec('usage',
    (select id from acct), billing.platform_account_id('usage_revenue'), 4, 'w-charge-over')])) p),
  row('insufficient', '{"required": "4", "available": "3"}'::jsonb)::text,
  'as a debit past it is answered insufficient');
select is(array[(select count(*) from billing.holds h where h.idempotency_key = 'w-hold-over'),
                (select a.held from billing.accounts a where a.id = (select id from acct))],
  array[0, 0]::numeric[], 'and places nothing');
select is(pg_temp.err($$select billing.post_transfers(array[('hold_capture', (select id from acct),
    billing.platform_account_id('usage_revenue'), 1, 'w-cap', null, null, null, null, gen_random_uuid(), null,
    null)::billing.transfer_spec])$$),
  'LEDGER_INVARIANT', 'a capture is the debit''s (billing.post_debit), never a batch''s');
-- A replay spends nothing: answered as one whatever the account has now, alone or in a batch,
-- it takes no room from the batch's other debits and no cap room.
insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-000000000002'), ('eeeeeeee-0000-4000-8000-000000000003');
select billing.grant_credits('eeeeeeee-0000-4000-8000-000000000002', 100, 'purchase', 'rp-grant-2');
select billing.grant_credits('eeeeeeee-0000-4000-8000-000000000003', 10, 'purchase', 'rp-grant-3');
select billing.set_spend_cap('eeeeeeee-0000-4000-8000-000000000002', 'day', 'UTC', null, 10,
  'eeeeeeee-0000-4000-8000-000000000002', 'self');
create temp table rp as select
  (select id from billing.accounts where user_id = 'eeeeeeee-0000-4000-8000-000000000002') as capped,
  (select id from billing.accounts where user_id = 'eeeeeeee-0000-4000-8000-000000000003') as short,
  billing.platform_account_id('usage_revenue') as ur;
select is(array[(billing.post_transfers(array[pg_temp.spec('usage', (select capped from rp), (select ur from rp), 6, 'rp-a')]))[1].result,
                (billing.post_transfers(array[pg_temp.spec('usage', (select capped from rp), (select ur from rp), 6, 'rp-b')]))[1].result,
                (billing.post_transfers(array[pg_temp.spec('usage', (select capped from rp), (select ur from rp), 6, 'rp-a')]))[1].result],
  array['applied', 'capped', 'exists'], 'a charge past its cap is answered capped; a replay past it is answered exists');
select is((select array_agg(p.result order by o) from unnest(billing.post_transfers(array[
    pg_temp.spec('usage', (select capped from rp), (select ur from rp), 6, 'rp-a'),
    pg_temp.spec('usage', (select capped from rp), (select ur from rp), 4, 'rp-c')])) with ordinality p(transfer_id, replayed, from_balance, to_balance, result, refusal, o)),
  array['exists', 'applied'], 'in a batch, a replay takes no cap room from the debits after it');
select is((select trim_scale(spent) from billing.spend_caps where account_id = (select capped from rp)), 10::numeric,
  'the cap counted what was charged, each once');
select billing.post_transfers(array[pg_temp.spec('usage', (select short from rp), (select ur from rp), 8, 'rp-d')]);
select is((select array_agg(p.result order by o) from unnest(billing.post_transfers(array[
    pg_temp.spec('usage', (select short from rp), (select ur from rp), 8, 'rp-d'),
    pg_temp.spec('usage', (select short from rp), (select ur from rp), 2, 'rp-e')])) with ordinality p(transfer_id, replayed, from_balance, to_balance, result, refusal, o)),
  array['exists', 'applied'], 'in a batch, a replay takes no room from the debits after it');
select is((select balance from billing.accounts where id = (select short from rp)), 0::numeric(38, 18),
  'and the account paid each charge once');
select billing.place_hold((select id from acct), 2, 'w-hold-reserve', now() + interval '1 hour', 'user');
select is((select array[a.held, (select sum(l.reserved) from billing.lots l where l.account_id = a.id),
                  (select sum(hl.amount) from billing.hold_lots hl join billing.holds h on h.id = hl.hold_id
                   where h.idempotency_key = 'w-hold-reserve')]
           from billing.accounts a where a.id = (select id from acct)), array[2, 2, 2]::numeric[],
  'a hold reserves its amount of specific lots (held, lots.reserved, hold_lots)');
select is((billing.post_transfers(array[pg_temp.spec('refund_reversal', (select id from acct), billing.platform_account_id('refunds'), 5, 'w-4')]))[1].from_balance,
  -2::numeric, 'a refund reversal may leave debt (it takes only the free credit; what the hold reserved stays)');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), 0.0000000000000000001, 'w-5')])$$),
  'LEDGER_INVARIANT', 'an amount finer than 18 places is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('usage', (select id from acct), billing.platform_account_id('usage_revenue'), null, 'w-7')])$$),
  'LEDGER_INVARIANT', 'a movement without an amount is refused');
select is(pg_temp.err($$select billing.post_transfers(array[pg_temp.spec('void', billing.platform_account_id('usage_revenue'), (select id from acct), 2, 'w-6',
    jsonb_build_object('return_to', jsonb_build_array(jsonb_build_object('lot_id', (select min(l.id) from billing.lots l where l.account_id = (select id from acct)), 'amount', 1))))])$$),
  'LEDGER_INVARIANT', 'a return to lots of another amount than the movement''s is refused');

-- ============================================================ one movement alone or in a batch writes the same

-- X and Y are twins: X's movements go alone (the single branch), Y's in a batch with a movement
-- of Z beside them (the batch branch). M and N receive moves.
insert into auth.users (id) values
  ('a2a2a2a2-0000-4000-8000-00000000000a'), ('a2a2a2a2-0000-4000-8000-00000000000b'),
  ('a2a2a2a2-0000-4000-8000-00000000000c'), ('a2a2a2a2-0000-4000-8000-00000000000d'),
  ('a2a2a2a2-0000-4000-8000-00000000000e'), ('a2a2a2a2-0000-4000-8000-00000000000f');
select billing.grant_credits(u::uuid, 10, 'promo_grant', 'twin-promo-' || u)
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000a', 'a2a2a2a2-0000-4000-8000-00000000000b']) u;
select billing.grant_credits(u::uuid, 30, 'purchase', 'twin-buy-' || u, null, null, null, '{"cost_cents": 300}')
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000a', 'a2a2a2a2-0000-4000-8000-00000000000b']) u;
select billing.grant_credits('a2a2a2a2-0000-4000-8000-00000000000c', 1000, 'promo_grant', 'twin-pad');
select billing.grant_credits(u::uuid, 1, 'promo_grant', 'twin-recv-' || u)
from unnest(array['a2a2a2a2-0000-4000-8000-00000000000d', 'a2a2a2a2-0000-4000-8000-00000000000e']) u;

create temp table acc as select
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000a') as x,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000b') as y,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000c') as z,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000d') as m,
  (select id from billing.accounts where user_id = 'a2a2a2a2-0000-4000-8000-00000000000e') as n,
  billing.platform_account_id('usage_revenue') as ur;

-- One movement alone, and the same in a batch beside a padding debit of Z.
create function pg_temp.single(s billing.transfer_spec) returns billing.posted_transfer language sql as $$
  select (billing.post_transfers(array[s]))[1]
$$;
create function pg_temp.batched(s billing.transfer_spec) returns billing.posted_transfer language sql as $$
  select (billing.post_transfers(array[s, pg_temp.spec('usage', (select z from acc), (select ur from acc), 1,
    'twin-pad-' || s.idempotency_key)]))[1]
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
select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'twin-d1-x'));
select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'twin-d1-y'));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a debit across two lots: alone and in a batch, the same entries and draws');
-- `first`: the paid lot before the spending order.
select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 4, 'twin-d2-x',
  jsonb_build_object('first', jsonb_build_array(pg_temp.paid_lot((select x from acc))))));
select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 4, 'twin-d2-y',
  jsonb_build_object('first', jsonb_build_array(pg_temp.paid_lot((select y from acc))))));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a debit with lots drawn first: the same alone and in a batch');
-- A move to another tracked account: the lots it drew arrive as they were.
select pg_temp.single(pg_temp.spec('allowance', (select x from acc), (select m from acc), 12, 'twin-mv-x'));
select pg_temp.batched(pg_temp.spec('allowance', (select y from acc), (select n from acc), 12, 'twin-mv-y'));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)), 'a move out: the same alone and in a batch');
select is(pg_temp.shape((select m from acc)), pg_temp.shape((select n from acc)), 'a move in: the same alone and in a batch');
-- A reversal into debt, then a return to lots that pays it first.
select pg_temp.single(pg_temp.spec('refund_reversal', (select x from acc), billing.platform_account_id('refunds'), 13, 'twin-rv-x',
  '{"first": []}'));
select pg_temp.batched(pg_temp.spec('refund_reversal', (select y from acc), billing.platform_account_id('refunds'), 13, 'twin-rv-y',
  '{"first": []}'));
select pg_temp.single(pg_temp.spec('void', (select ur from acc), (select x from acc), 15, 'twin-void-x',
  jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
    from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id where t.idempotency_key = 'twin-d1-x'))));
select pg_temp.batched(pg_temp.spec('void', (select ur from acc), (select y from acc), 15, 'twin-void-y',
  jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
    from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id where t.idempotency_key = 'twin-d1-y'))));
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)),
  'a reversal into debt and a return that settles it: the same alone and in a batch');
select is((select trim_scale(balance) from billing.accounts where id = (select x from acc)), 11::numeric,
  'the return paid the 4 of debt first: 11 left');
-- Replays and reused keys.
select ok((pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'twin-d1-x'))).replayed
  and (pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'twin-d1-y'))).replayed,
  'a movement under a written key is a replay on both branches');
select is(array[pg_temp.err($$select pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 16, 'twin-d1-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 16, 'twin-d1-y'))$$),
                pg_temp.err($$select pg_temp.single(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'twin-d1-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'twin-d1-x'))$$)],
  array['IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_REUSED'],
  'another amount or another account under a written key is refused on both branches');
select is(pg_temp.shape((select x from acc)), pg_temp.shape((select y from acc)), 'replays and refusals moved nothing on either side');
select is(array[pg_temp.err($$select pg_temp.single(pg_temp.spec('adjustment', (select x from acc), (select ur from acc), 15, 'twin-over-x'))$$),
                pg_temp.err($$select pg_temp.batched(pg_temp.spec('adjustment', (select y from acc), (select ur from acc), 15, 'twin-over-y'))$$)],
  array['LEDGER_INVARIANT', 'LEDGER_INVARIANT'], 'a debit past the balance is refused on both branches');
select is(array[(pg_temp.single(pg_temp.spec('usage', (select x from acc), (select ur from acc), 15, 'twin-short-x'))).refusal,
                (pg_temp.batched(pg_temp.spec('usage', (select y from acc), (select ur from acc), 15, 'twin-short-y'))).refusal],
  array['{"required": "15", "available": "11"}', '{"required": "15", "available": "11"}']::jsonb[],
  'a charge past what the account has is answered the same on both branches (the batch''s other movement written)');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "accounts": [], "sub_accounts": [], "transfers": [], "expiry": []}'::jsonb, 'lots agree with the ledger');

select * from finish();
rollback;
