-- A charge on an account with credits for some models and no live hold is drawn in one
-- statement (billing.plan_lot_draw's first branch). Its answer must be the plan's: on an account
-- of lists only, a hold for a model no list pays constrains nothing, so the plan (the hold
-- counted) and the one statement (the hold excepted) must give the same take, found and unusable
-- for every model and amount.
begin;
select plan(6);
\ir helpers.psql

insert into auth.users (id) values ('a8a8a8a8-0000-4000-8000-000000000001'), ('a8a8a8a8-0000-4000-8000-000000000002');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000001', g.amount, 'promo_grant', 'fast-' || g.n, null, null, null,
  jsonb_build_object('applies_to', g.list) || g.extra)
from (values (1, 3, '["claude*"]'::jsonb, '{}'::jsonb), (2, 2, '["gpt-4o"]', '{"priority": 1}'),
             (3, 4, '["gpt-4o*"]', '{}'), (4, 1.5, '["gpt-4o", "claude*"]', '{"priority": 5}'),
             (5, 0.25, '["gpt-4o-mini"]', '{}')) g(n, amount, list, extra);

-- A hold for a model no list pays, placed by the writer as any hold is.
create temp table h as select gen_random_uuid() as id;
select billing.post_transfers('{}', array[('place', (select id from h), 0.5, null, null, null,
  (select a.id from billing.accounts a where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000001'), 'fast-hold', null,
  '{"model": "no-list-pays-this"}'::jsonb, now() + interval '1 hour', 'ai', null)::billing.hold_step]);

create temp table cases as
select m.model, m.any_model, a.amount,
  billing.plan_lot_draw(acct.id, m.model, a.amount, m.any_model, null) as planned,
  billing.plan_lot_draw(acct.id, m.model, a.amount, m.any_model, (select id from h)) as fast
from (select a.id from billing.accounts a where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000001') acct,
  (values ('gpt-4o', false), ('gpt-4o-mini', false), ('claude-3-5-haiku', false), ('o1', false), (null, true)) m(model, any_model),
  (values (0.1::numeric), (1), (2.5), (6), (10.75), (100)) a(amount);

select is((select count(*)::int from cases), 30, 'thirty cases: five models (or any) by six amounts');
select is((select count(*)::int from cases where planned is distinct from fast), 0,
  'with no live hold to keep payable, the one statement answers exactly as the plan does');
select is((select fast from cases where model = 'gpt-4o' and amount = 2.5),
  jsonb_build_object('take', jsonb_build_array(jsonb_build_object('lot_id', (select l.id from billing.lots l
      join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'fast-2'), 'amount', 2.000000000000000000),
    jsonb_build_object('lot_id', (select l.id from billing.lots l
      join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'fast-4'), 'amount', 0.500000000000000000)),
    'found', '2.5', 'unusable', '3.25'),
  'gpt-4o draws by priority: the gpt-4o list (priority 1) first, then the gpt-4o or claude* list (5); claude* and gpt-4o-mini may not pay');

-- The writer draws the same when told only the model (lots 'for'): charges on the second account
-- (the same lists, no hold) allocate exactly the take the plan gives just before each.
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000002', g.amount, 'promo_grant', 'fast2-' || g.n, null, null, null,
  jsonb_build_object('applies_to', g.list) || g.extra)
from (values (1, 3, '["claude*"]'::jsonb, '{}'::jsonb), (2, 2, '["gpt-4o"]', '{"priority": 1}'),
             (3, 4, '["gpt-4o*"]', '{}'), (4, 1.5, '["gpt-4o", "claude*"]', '{"priority": 5}'),
             (5, 0.25, '["gpt-4o-mini"]', '{}')) g(n, amount, list, extra);
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000002', 20, 'promo_grant', 'fast2-any');
create temp table drawn (n int, model text, planned jsonb, allocated jsonb);
do $$
declare
  v_acct bigint := (select a.id from billing.accounts a where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000002');
  v_charge billing.usage_result;
  c record;
begin
  for c in select * from (values (1, 'gpt-4o', 75), (2, 'gpt-4o-mini', 1000), (3, 'claude-3-5-haiku', 1000),
                                 (4, 'gpt-4o', 300), (5, 'gpt-4o-mini', 5000)) x(n, model, tokens) loop
    insert into drawn (n, model, planned)
    select c.n, c.model, (select jsonb_agg(x order by (x ->> 'lot_id')::bigint) from jsonb_array_elements(
      billing.plan_lot_draw(v_acct, c.model, (billing.price_usage(c.model, c.tokens, 0, 0, 0)).amount) -> 'take') x);
    v_charge := billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000002', c.model, c.tokens, 0, 'fast2-charge-' || c.n);
    update drawn set allocated = (select jsonb_agg(jsonb_build_object('lot_id', a.lot_id, 'amount', a.amount) order by a.lot_id)
                                  from billing.lot_allocations a where a.transfer_id = v_charge.transfer_id)
    where n = c.n;
  end loop;
end $$;
select is((select count(*)::int from drawn where jsonb_array_length(planned) > 0), 5, 'five charges, each drawing from some lot');
select is((select count(*)::int from drawn where planned is distinct from allocated), 0,
  'each charge allocates exactly the lots and amounts the plan gives (the writer draws for the model)');

-- Eleven lists (there was a limit of 10 the plan could protect): the charge is drawn for its model
-- like any other, by the writer, from lots that may pay for it.
insert into auth.users (id) values ('a8a8a8a8-0000-4000-8000-000000000003');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000003', 1, 'purchase', 'fast3-' || n, null, null, null,
  jsonb_build_object('applies_to', to_jsonb(array['gpt-4o-mini'] || array(
    select m from unnest(array['gpt-4o', 'claude-3-5-haiku', 'claude*', 'gpt-4o*']) with ordinality x(m, i)
    where n & (1 << (i::int - 1)) <> 0))))
from generate_series(1, 11) n;
create temp table fast3 as
select (billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000003', 'gpt-4o-mini', 100, 0, 'fast3-charge')).transfer_id;
select is((select trim_scale(sum(a.amount)) from billing.lot_allocations a where a.transfer_id = (select transfer_id from fast3)),
  (select trim_scale((billing.price_usage('gpt-4o-mini', 100, 0, 0, 0)).amount)),
  'eleven lists and no hold: the charge is drawn for its model, in full');

select * from finish();
rollback;
