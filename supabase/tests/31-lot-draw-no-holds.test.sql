-- A charge on an account with credits for some models is drawn by the writer for its model (lots
-- 'for'): the free credits of the lots that may pay for it, in spending order, the same lots and
-- amounts the one picker (billing.pick_lots) would reserve for a hold of that model and amount,
-- and what live holds reserved is never drawn.
begin;
select plan(6);
\ir helpers.psql

insert into auth.users (id) values ('a8a8a8a8-0000-4000-8000-000000000001'), ('a8a8a8a8-0000-4000-8000-000000000002');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000001', g.amount, 'promo_grant', 'fast-' || g.n, null, null, null,
  jsonb_build_object('applies_to', g.list) || g.extra)
from (values (1, 3, '["claude*"]'::jsonb, '{}'::jsonb), (2, 2, '["gpt-4o"]', '{"priority": 1}'),
             (3, 4, '["gpt-4o*"]', '{}'), (4, 1.5, '["gpt-4o", "claude*"]', '{"priority": 5}'),
             (5, 0.25, '["gpt-4o-mini"]', '{}')) g(n, amount, list, extra);

-- A gateway call's hold for gpt-4o of 2.5 reserves the gpt-4o list (priority 1) whole, then 0.5 of
-- the gpt-4o or claude* list (5): a charge for claude then finds 1 free credit there, not 1.5.
select billing.reserve_hold('a8a8a8a8-0000-4000-8000-000000000001', 2.5, 'fast-hold', 600, 'ai', null, '{"model": "gpt-4o"}');
select is((select jsonb_agg(jsonb_build_array(t.idempotency_key, trim_scale(hl.amount)) order by t.idempotency_key)
           from billing.hold_lots hl join billing.lots l on l.id = hl.lot_id join billing.transfers t on t.id = l.grant_transfer_id
           join billing.holds h on h.id = hl.hold_id where h.idempotency_key = 'fast-hold'),
  '[["fast-2", 2], ["fast-4", 0.5]]'::jsonb,
  'the gpt-4o hold reserves by priority: the gpt-4o list first, then the gpt-4o or claude* list; claude* and gpt-4o-mini may not pay');
select is(billing.free_credits((select a.id from billing.accounts a where a.user_id = 'a8a8a8a8-0000-4000-8000-000000000001'),
    'claude-haiku-4-5', false), 4::numeric, 'claude may spend its own list (3) and what the hold left of the shared one (1)');
select is(pg_temp.err($$select billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000001', 'gpt-4o', 5000, 0, 'fast-gpt')$$),
  'INSUFFICIENT_CREDITS', 'a charge for gpt-4o finds only the free credits: the hold''s are its own');

-- The writer draws what the picker would reserve (lots 'for'): charges on the second account (the
-- same lists) allocate exactly the lots and amounts pick_lots gives just before each.
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
  for c in select * from (values (1, 'gpt-4o', 75), (2, 'gpt-4o-mini', 1000), (3, 'claude-haiku-4-5', 1000),
                                 (4, 'gpt-4o', 300), (5, 'gpt-4o-mini', 5000)) x(n, model, tokens) loop
    insert into drawn (n, model, planned)
    select c.n, c.model, (select jsonb_agg(jsonb_build_object('lot_id', p.lot_id, 'amount', p.amount) order by p.lot_id)
      from billing.pick_lots(v_acct, c.model, (billing.price_usage(c.model, c.tokens, 0, 0, 0)).amount) p);
    v_charge := billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000002', c.model, c.tokens, 0, 'fast2-charge-' || c.n);
    update drawn set allocated = (select jsonb_agg(jsonb_build_object('lot_id', a.lot_id, 'amount', a.amount) order by a.lot_id)
                                  from billing.lot_allocations a where a.transfer_id = v_charge.transfer_id)
    where n = c.n;
  end loop;
end $$;
select is((select count(*)::int from drawn where jsonb_array_length(planned) > 0), 5, 'five charges, each drawing from some lot');
select is((select count(*)::int from drawn where planned is distinct from allocated), 0,
  'each charge allocates exactly the lots and amounts the picker gives (the writer draws for the model)');

-- Eleven lists (there was a limit of 10 a plan could protect): the charge is drawn for its model
-- like any other, by the writer, from lots that may pay for it.
insert into auth.users (id) values ('a8a8a8a8-0000-4000-8000-000000000003');
select billing.grant_credits('a8a8a8a8-0000-4000-8000-000000000003', 1, 'purchase', 'fast3-' || n, null, null, null,
  jsonb_build_object('applies_to', to_jsonb(array['gpt-4o-mini'] || array(
    select m from unnest(array['gpt-4o', 'claude-haiku-4-5', 'claude*', 'gpt-4o*']) with ordinality x(m, i)
    where n & (1 << (i::int - 1)) <> 0))))
from generate_series(1, 11) n;
create temp table fast3 as
select (billing.charge_usage('a8a8a8a8-0000-4000-8000-000000000003', 'gpt-4o-mini', 100, 0, 'fast3-charge')).transfer_id;
select is((select trim_scale(sum(a.amount)) from billing.lot_allocations a where a.transfer_id = (select transfer_id from fast3)),
  (select trim_scale((billing.price_usage('gpt-4o-mini', 100, 0, 0, 0)).amount)),
  'eleven lists: the charge is drawn for its model, in full');

select * from finish();
rollback;
