-- Credits for some models only: which lots a charge may draw, holds kept payable, moves keep
-- (and narrow) the list, the writer's `take`, the batch and the hot path.
begin;
select plan(40);
\ir helpers.psql

insert into auth.users (id) values
  ('a7a7a7a7-0000-4000-8000-000000000001'), ('a7a7a7a7-0000-4000-8000-000000000002'),
  ('a7a7a7a7-0000-4000-8000-000000000003'), ('a7a7a7a7-0000-4000-8000-000000000004'),
  ('a7a7a7a7-0000-4000-8000-000000000005');

create function pg_temp.remaining(p_key text) returns numeric language sql as $$
  select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
  where t.idempotency_key = p_key and l.moved_from is null
$$;
create function pg_temp.account(p_user uuid) returns bigint language sql as $$
  select a.id from billing.accounts a where a.user_id = p_user
$$;

-- ============================================================ the rule

select ok(billing.lot_pays_for(null, 'gpt-4o') and billing.lot_pays_for(null, null),
  'a lot for anything pays for any model and for a movement with none');
select ok(billing.lot_pays_for('{gpt-4o-mini*}', 'gpt-4o-mini') and billing.lot_pays_for('{gpt-4o-mini*}', 'gpt-4o-mini-2024'),
  'a family pays for every model its name starts');
select ok(not billing.lot_pays_for('{gpt-4o-mini*}', 'gpt-4o') and not billing.lot_pays_for('{gpt-4o-mini}', null),
  'a restricted lot pays for nothing else, nor for a movement without a model');
select is(billing.applies_to_of('{"applies_to": ["gpt-4o", "claude*", "gpt-4o"]}'), '{claude*,gpt-4o}'::text[],
  'a list is kept sorted, once each');
select is(pg_temp.err($$select billing.applies_to_of('{"applies_to": ["gpt-5-typo"]}')$$), 'INVALID_LOT',
  'a name that is no model on the rate card is refused (credits for nothing)');
select is(pg_temp.err($$select billing.applies_to_of('{"applies_to": []}')$$), 'INVALID_LOT', 'an empty list is refused');
select is(pg_temp.err($$select billing.applies_to_of('{"applies_to": ["gpt 4o"]}')$$), 'INVALID_LOT', 'so is a name with a space');
select is(pg_temp.err($$select billing.applies_to_of('{"applies_to": ["*"]}')$$), 'INVALID_LOT', 'and a bare star (any: leave it out)');
select is(billing.narrow_applies_to('{gpt-4o*,claude*}', '{gpt-4o-mini}'), '{gpt-4o-mini}'::text[],
  'narrowing keeps what both allow: a name within a family');
select is(billing.narrow_applies_to('{gpt-4o-mini}', '{claude*}'), '{}'::text[], 'disjoint lists allow nothing');
select is(billing.narrow_applies_to(null, '{claude*}'), '{claude*}'::text[], 'a lot for anything takes the list given');

-- ============================================================ a charge draws only what may pay for its model

-- Spending order would take the general lot first (priority 1 before 5).
select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000001', 10, 'adjustment', 'ap-any', null, null, null,
  '{"category": "promotional", "priority": 1}');
select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000001', 10, 'promo_grant', 'ap-mini', null, null, null,
  '{"priority": 5, "applies_to": ["gpt-4o-mini*"]}');
select ok((select a.restricted_lots from billing.accounts a where a.user_id = 'a7a7a7a7-0000-4000-8000-000000000001'),
  'a restricted lot marks its account');
select is((select l.applies_to from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'ap-mini'), '{gpt-4o-mini*}'::text[], 'the lot keeps its list');

select is(pg_temp.detail($$select billing.reserve_credits('a7a7a7a7-0000-4000-8000-000000000001', 15, 'ap-d1')$$)
  - 'debt', '{"required": "15", "available": "10", "restricted": "10", "reason": "some credits may only pay for other models"}'::jsonb,
  'a movement without a model (a student''s own hold) may not use the restricted credits: the 402 says how many and why');
select ok(billing.run_usage_request('a7a7a7a7-0000-4000-8000-000000000001', 'ap-hot', 'h', 'r',
  '{"model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 0}', 200) is null,
  'the one-trip usage path hands an account with restricted lots to the general path');

-- A gateway call for gpt-4o holds 6: only the general lot can pay it.
select billing.reserve_hold('a7a7a7a7-0000-4000-8000-000000000001', 6, 'ap-h1', 600, 'ai', null, '{"model": "gpt-4o"}');
select is(pg_temp.err($$select billing.reserve_hold('a7a7a7a7-0000-4000-8000-000000000001', 5, 'ap-h2', 600, 'ai', null,
  '{"model": "gpt-4o"}')$$), 'INSUFFICIENT_CREDITS', 'a second gpt-4o hold beyond the general credits is refused');
select billing.reserve_hold('a7a7a7a7-0000-4000-8000-000000000001', 5, 'ap-h3', 600, 'ai', null, '{"model": "gpt-4o-mini"}');
select is((select h.status from billing.holds h where h.idempotency_key = 'ap-h3'), 'active',
  'a gpt-4o-mini hold fits beside it, on the restricted credits');
select billing.release_hold(null, (select h.id from billing.holds h where h.idempotency_key = 'ap-h3'));

-- 9 of gpt-4o-mini: the general lot comes first in spending order, but 6 of it pays the gpt-4o hold.
select billing.charge_usage('a7a7a7a7-0000-4000-8000-000000000001', 'gpt-4o-mini', 15000, 0, 'ap-u1');
select is((select t.amount from billing.transfers t where t.idempotency_key = 'ap-u1'), 9::numeric, 'the charge is 9 credits');
select is(pg_temp.remaining('ap-any'), 6::numeric, 'it drew the general lot only down to what the gpt-4o hold needs');
select is(pg_temp.remaining('ap-mini'), 5::numeric, 'and the rest from the restricted lot');
select is(pg_temp.err($$select billing.charge_usage('a7a7a7a7-0000-4000-8000-000000000001', 'gpt-4o-mini', 10000, 0, 'ap-u2')$$),
  'INSUFFICIENT_CREDITS', 'a charge of 6 for gpt-4o-mini is refused: 5 restricted left, the general 6 are held');
select billing.capture_hold(null, (select h.id from billing.holds h where h.idempotency_key = 'ap-h1'), 6, null,
  '{"model": "gpt-4o"}');
select is(pg_temp.remaining('ap-any'), 0::numeric, 'the gpt-4o hold is captured in full from the general lot');
select is((select sum(l.remaining) from billing.lots l where l.account_id = pg_temp.account('a7a7a7a7-0000-4000-8000-000000000001')),
  (select a.balance from billing.accounts a where a.user_id = 'a7a7a7a7-0000-4000-8000-000000000001'), 'lots still equal the balance');

-- ============================================================ the batch

select is(billing.charge_usage_batch(jsonb_build_array(
    jsonb_build_object('event_id', 'ap-b1', 'user_id', 'a7a7a7a7-0000-4000-8000-000000000001', 'model', 'gpt-4o',
      'input_tokens', 100, 'output_tokens', 0, 'occurred_at', now()),
    jsonb_build_object('event_id', 'ap-b2', 'user_id', 'a7a7a7a7-0000-4000-8000-000000000001', 'model', 'gpt-4o-mini',
      'input_tokens', 1000, 'output_tokens', 0, 'occurred_at', now())))
  -> 0 ->> 'restricted', '5',
  'a batch event for another model is refused, naming the restricted credits');
select is(pg_temp.remaining('ap-mini'), 4.4::numeric, 'the batch event for gpt-4o-mini is paid by its lot');

-- ============================================================ moves keep the list, and may narrow it

select billing.ensure_user_account('a7a7a7a7-0000-4000-8000-000000000005') as id \gset escrow_
select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000002', 10, 'promo_grant', 'ap-any2');
select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000002', 10, 'promo_grant', 'ap-claude', null, null, null,
  '{"applies_to": ["claude*"], "priority": 0}');
select billing.move_credits(pg_temp.account('a7a7a7a7-0000-4000-8000-000000000002'), :escrow_id, 12, 'code_escrow', 'ap-m1', null);
select results_eq($$select l.amount, l.applies_to from billing.lots l where l.account_id = $$ || :escrow_id || $$ order by l.amount desc$$,
  $$values (10::numeric, '{claude*}'::text[]), (2::numeric, null::text[])$$,
  'moved credits arrive with each lot''s list');
select is(pg_temp.err(format($$select billing.move_credits(%s, %s, 12, 'code_escrow', 'ap-m2', null, null, '{gpt-4o}')$$,
  :escrow_id, billing.ensure_user_account('a7a7a7a7-0000-4000-8000-000000000004'))), 'INVALID_LOT',
  'a move narrowed to a model its claude credits cannot pay for is refused');
select billing.move_credits(:escrow_id, billing.ensure_user_account('a7a7a7a7-0000-4000-8000-000000000003'), 12, 'code_redemption',
  'ap-m3', null, null, '{claude-haiku-4-5,gpt-4o}');
select results_eq($$select l.amount, l.applies_to from billing.lots l where l.account_id = pg_temp.account('a7a7a7a7-0000-4000-8000-000000000003') order by l.amount desc$$,
  $$values (10::numeric, '{claude-haiku-4-5}'::text[]), (2::numeric, '{claude-haiku-4-5,gpt-4o}'::text[])$$,
  'a move narrowed to a list: each lot keeps what both lists allow');

-- ============================================================ the writer's take

select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000004', 10, 'adjustment', 'ap-w1');
select billing.grant_credits('a7a7a7a7-0000-4000-8000-000000000002', 1, 'adjustment', 'ap-w2');
select is(pg_temp.err(format($$select billing.post_transfers(array[('usage', %s, billing.platform_account_id('usage_revenue'), 3,
  'ap-t1', null, null, null, null, null, null, jsonb_build_object('take', jsonb_build_array(jsonb_build_object('lot_id', %s, 'amount', 2))))::billing.transfer_spec])$$,
  pg_temp.account('a7a7a7a7-0000-4000-8000-000000000004'), (select l.id from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'ap-w1'))),
  'LEDGER_INVARIANT', 'a take of other than the amount is refused');
select is(pg_temp.err(format($$select billing.post_transfers(array[('usage', %s, billing.platform_account_id('usage_revenue'), 1,
  'ap-t2', null, null, null, null, null, null, jsonb_build_object('take', jsonb_build_array(jsonb_build_object('lot_id', %s, 'amount', 1))))::billing.transfer_spec])$$,
  pg_temp.account('a7a7a7a7-0000-4000-8000-000000000004'), (select l.id from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'ap-w2'))),
  'LEDGER_INVARIANT', 'a take of another account''s lot is refused');
select is(pg_temp.err(format($$select billing.post_transfers(array[('usage', %s, billing.platform_account_id('usage_revenue'), 1,
  'ap-t3', null, null, null, null, null, null, '{"take": []}'::jsonb)::billing.transfer_spec])$$,
  pg_temp.account('a7a7a7a7-0000-4000-8000-000000000004'))), 'LEDGER_INVARIANT', 'so is an empty take');

-- ============================================================ attacks: a dispute's freeze, many models held

insert into auth.users (id) values ('a8a8a8a8-0000-4000-8000-000000000001'), ('a8a8a8a8-0000-4000-8000-000000000002');

-- ============================================================ a dispute freezes what it names

-- A sponsored student's account: 10 credits of their own (for anything), and 10 credits of a school's
-- purchase narrowed to gpt-4o-mini (a sponsor code for that model). The purchase is disputed: its lot
-- is frozen where it is (as billing.set_lots_frozen marks it), and no hold is placed for it.
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000001', 10, 'adjustment', 'atk-own');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000001', 10, 'promo_grant', 'atk-disputed', null, null, null,
  '{"applies_to": ["gpt-4o-mini"]}');
update billing.lots l set frozen = true from billing.transfers t
where t.id = l.grant_transfer_id and t.idempotency_key = 'atk-disputed';
update billing.accounts a set frozen_lots = true where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000001';
-- 6 credits of gpt-4o-mini: the student has 10 available.
select billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000001', 'gpt-4o-mini', 10000, 0, 'atk-u1');
select is(pg_temp.remaining('atk-disputed'), 10::numeric,
  'the disputed (frozen) lot is not spent while the dispute is open: the charge draws the student''s own credits');

-- ============================================================ how many models may be held at once

-- Nine models held at once (eight of them a gateway call's, one the student's own hold): the plan
-- walks the account's lists, not the models held, so a capture is charged in full and a move goes.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
select 'atk-m' || i, 1, 1, 2, 1, now() - interval '1 minute' from generate_series(1, 8) i;
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000002', 1000, 'adjustment', 'atk-any');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000002', 1, 'promo_grant', 'atk-r', null, null, null,
  '{"applies_to": ["atk-m1"]}');
select billing.reserve_hold('a8a8a8a8-0000-4000-8000-000000000002', 1, 'atk-own-hold', 600, 'user', null, null);
select billing.reserve_hold('a8a8a8a8-0000-4000-8000-000000000002', 10, 'atk-h1a', 600, 'ai', null, '{"model": "atk-m1"}');
select billing.reserve_hold('a8a8a8a8-0000-4000-8000-000000000002', 10, 'atk-h1b', 600, 'ai', null, '{"model": "atk-m1"}');
select billing.reserve_hold('a8a8a8a8-0000-4000-8000-000000000002', 10, 'atk-h' || i, 600, 'ai', null,
  jsonb_build_object('model', 'atk-m' || i)) from generate_series(2, 8) i;
select is((select trim_scale(c.captured + c.overage) from billing.charge_hold_at(
    (select h.id from billing.holds h where h.idempotency_key = 'atk-h1a'), 5,
    (select r.id from billing.rate_cards r where r.model = 'atk-m1'), 'atk-ov', 'atk-c', '{}', '{}') c),
  5::numeric, 'a call priced 5 on an account with 1,000 credits for anything is charged 5');
select is(pg_temp.err($$select billing.move_credits((select a.id from billing.accounts a where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000002'),
    billing.ensure_user_account('a8a8a8a8-0000-4000-8000-000000000001'), 5, 'code_escrow', 'atk-mv', null)$$),
  'no error', 'moving 5 of 900 available credits (a sweep, a removal) is not refused for the models held');

-- ============================================================ any number of lists

-- A school's admin gives a student twenty lists (0.01 credits each, as twenty sponsor codes would),
-- then the student pays for a plan whose credits are for another model: every grant goes in (the
-- plan's draw is polynomial in the lists, so no account is capped at a number of them).
insert into auth.users (id) values ('a9a9a9a9-0000-4000-8000-000000000001');
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
select 'cap-m' || i, 1, 1, 2, 1, now() - interval '1 minute' from generate_series(1, 22) i;
select billing.grant_credits('a9a9a9a9-0000-4000-8000-000000000001', 0.01, 'promo_grant', 'cap-free-' || i, null, null, null,
  jsonb_build_object('applies_to', jsonb_build_array('cap-m' || i))) from generate_series(1, 20) i;
select is(pg_temp.err($$select billing.post_user_transfer(null, 1, 'credit', 5000, 'plan_grant', 'plans', 'cap-plan', null, null,
    null, null, '{"category": "paid", "cost_cents": 500, "priority": 5, "applies_to": ["cap-m21"]}',
    billing.ensure_user_account('a9a9a9a9-0000-4000-8000-000000000001'))$$), 'no error',
  'a paid plan grant for a twenty-first list goes in');
select is(pg_temp.remaining('cap-plan'), 5000::numeric, 'its credits are there');
select is(pg_temp.err($$select billing.grant_credits('a9a9a9a9-0000-4000-8000-000000000001', 1, 'promo_grant', 'cap-free-22',
    null, null, null, '{"applies_to": ["cap-m22"]}')$$), 'no error',
  'free credits for a twenty-second list go in too (there was a cap of 7 lists)');
select is(billing.charge_usage('a9a9a9a9-0000-4000-8000-000000000001', 'cap-m21', 1000000, 0, 'cap-use') is not null, true,
  'the plan''s credits pay for their model with twenty-two lists held');

select is((select jsonb_agg(x) from billing.check_lots() x) -> 0 -> 'lots', '[]'::jsonb, 'every lot agrees with its allocations');
select is((select count(*) from billing.accounts a join billing.lots l on l.account_id = a.id
           where a.user_id::text like 'a7a7a7a7%' group by a.id having sum(l.remaining) <> max(a.balance)), null::bigint,
  'for every account, the lots sum to the balance');

select * from finish();
rollback;
