-- Reservations (issue #77): the one picker, billing.pick_lots, reserves free credits (remaining −
-- reserved, none while frozen) of the lots that may pay for a model, in spending order; a lot's
-- reserved never passes its remaining, and billing.check_lots names a lot whose reserved is not
-- what active holds reserved of it. Then the writer's road (docs/credit-lots.md § Spending order
-- 4-7): a hold placed reserves what the picker picks (or is refused), a capture posts from its
-- reservation and returns the rest, a release returns it, charges draw only free credits, a lot
-- expires whole and the holds that reserved it shrink, and a dispute's freeze follows moved credits.
begin;
select plan(22);
\ir helpers.psql

insert into auth.users (id) values ('a2a2a2a2-0000-4000-8000-000000000001');
select billing.grant_credits('a2a2a2a2-0000-4000-8000-000000000001', g.amount, 'promo_grant', 'pick-' || g.n, null, null, null,
  jsonb_build_object('applies_to', g.list, 'priority', g.priority))
from (values (1, 2, '["gpt-4o"]'::jsonb, 1), (2, 4, '["gpt-4o*"]', 5), (3, 3, 'null', 9), (4, 5, 'null', 1)) g(n, amount, list, priority);

create function pg_temp.lot(p_n integer) returns bigint language sql as $$
  select l.id from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = 'pick-' || p_n
$$;
create function pg_temp.picked(p_model text, p_amount numeric) returns jsonb language sql as $$
  select coalesce(jsonb_agg(jsonb_build_array((select n from generate_series(1, 4) n where pg_temp.lot(n) = p.lot_id),
    trim_scale(p.amount))), '[]')
  from billing.pick_lots((select a.id from billing.accounts a where a.user_id = 'a2a2a2a2-0000-4000-8000-000000000001'),
    p_model, p_amount) p
$$;

-- A dispute froze lot 4 (the first in spending order for any model).
update billing.lots l set frozen = true where l.id = pg_temp.lot(4);

select is(pg_temp.picked('gpt-4o', 5), '[[1, 2], [2, 3]]'::jsonb,
  'gpt-4o: its own list (priority 1), then gpt-4o* (5); the frozen lot is passed over');
select is(pg_temp.picked('gpt-4o-mini', 5), '[[2, 4], [3, 1]]'::jsonb,
  'gpt-4o-mini: gpt-4o* whole, then credits for any model; the gpt-4o list may not pay');
select is(pg_temp.picked(null, 10), '[[3, 3]]'::jsonb,
  'no model: lots for any model only, and the frozen one gives nothing: short of the amount');
select is(pg_temp.picked('gpt-4o', 0.5), '[[1, 0.5]]'::jsonb, 'the first lot covers a small amount alone');

-- Lot 2 has 3 of its 4 reserved: only its free credit is picked.
update billing.lots l set reserved = 3 where l.id = pg_temp.lot(2);
select is(pg_temp.picked('gpt-4o', 5), '[[1, 2], [2, 1], [3, 2]]'::jsonb,
  'a lot gives only its free credits (remaining − reserved)');
select is(billing.check_lots() -> 'lots', jsonb_build_array(pg_temp.lot(2)),
  'check_lots names a lot whose reserved no active hold reserved');
select throws_ok(format('update billing.lots set reserved = remaining + 1 where id = %s', pg_temp.lot(1)), '23514', null,
  'a lot never reserves more than it has');
update billing.lots l set reserved = 0 where l.id = pg_temp.lot(2);
select is(billing.check_lots() -> 'lots', '[]'::jsonb, 'with nothing reserved, every lot agrees');

-- ============================================================ the writer's road

insert into auth.users (id) values ('a2a2a2a2-0000-4000-8000-000000000002'), ('a2a2a2a2-0000-4000-8000-000000000003');
select billing.grant_credits('a2a2a2a2-0000-4000-8000-000000000002', 10, 'promo_grant', 'rv-early', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 day'));
select billing.grant_credits('a2a2a2a2-0000-4000-8000-000000000002', 10, 'promo_grant', 'rv-late', null, null, null,
  jsonb_build_object('expires_at', now() + interval '2 days'));
create function pg_temp.rv(p_key text) returns billing.lots language sql as $$
  select l.* from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id where t.idempotency_key = p_key
    and l.moved_from is null
$$;
create function pg_temp.hold(p_key text) returns billing.holds language sql as $$
  select * from billing.holds h where h.idempotency_key = p_key
$$;

select billing.reserve_credits('a2a2a2a2-0000-4000-8000-000000000002', 12, 'rv-h1');
select is(array[(pg_temp.rv('rv-early')).reserved, (pg_temp.rv('rv-late')).reserved], array[10, 2]::numeric[],
  'a hold of 12 reserves the first lot in spending order whole, then 2 of the next');
select is(pg_temp.err($$select billing.reserve_credits('a2a2a2a2-0000-4000-8000-000000000002', 9, 'rv-h2')$$),
  'INSUFFICIENT_CREDITS', 'a second hold of 9 finds 8 free credits: refused');
select billing.charge_usage('a2a2a2a2-0000-4000-8000-000000000002', 'gpt-4o-mini', 1000, 0, 'rv-charge');
select is((pg_temp.rv('rv-early')).remaining, 10::numeric, 'a charge never draws reserved credits, first in order or not');
select billing.capture_hold(null, (pg_temp.hold('rv-h1')).id, 11);
select is(array[(pg_temp.rv('rv-early')).remaining, (pg_temp.rv('rv-early')).reserved,
                (pg_temp.rv('rv-late')).reserved], array[0, 0, 0]::numeric[],
  'a capture of 11 posts from its reservation in spending order (10, then 1) and returns the rest');
select is((select a.held from billing.accounts a where a.user_id = 'a2a2a2a2-0000-4000-8000-000000000002'), 0::numeric,
  'and the account holds nothing');

-- A lot expires whole: the holds that reserved it shrink by their part, released at nothing.
select billing.grant_credits('a2a2a2a2-0000-4000-8000-000000000002', 5, 'promo_grant', 'rv-soon', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
select billing.reserve_credits('a2a2a2a2-0000-4000-8000-000000000002', 3, 'rv-h3');
select billing.reserve_credits('a2a2a2a2-0000-4000-8000-000000000002', 4, 'rv-h4');
select is((select jsonb_agg(jsonb_build_array(h.idempotency_key, trim_scale(hl.amount)) order by h.idempotency_key, hl.amount)
           from billing.hold_lots hl join billing.holds h on h.id = hl.hold_id where h.idempotency_key in ('rv-h3', 'rv-h4')),
  '[["rv-h3", 3], ["rv-h4", 2], ["rv-h4", 2]]'::jsonb, 'two holds: 3 and 2 of the lot due soonest, then 2 of the next');
update billing.lots l set expires_at = now() - interval '1 second' where l.id = (pg_temp.rv('rv-soon')).id;
update billing.accounts a set next_expiry = now() - interval '1 second' where a.user_id = 'a2a2a2a2-0000-4000-8000-000000000002';
select billing.expire_lots(500);
select is(array[(pg_temp.rv('rv-soon')).remaining, (pg_temp.rv('rv-soon')).reserved], array[0, 0]::numeric[],
  'the lot expired whole, reserved or not');
select is(((pg_temp.hold('rv-h3')).status, (pg_temp.hold('rv-h4')).status, (pg_temp.hold('rv-h4')).amount),
  ('released'::text, 'active'::text, 2::numeric), 'the hold left with nothing ended released; the other shrank to 2');
select is((select a.held from billing.accounts a where a.user_id = 'a2a2a2a2-0000-4000-8000-000000000002'), 2::numeric,
  'held dropped with them');
select billing.release_hold(null, (pg_temp.hold('rv-h4')).id);
select is((pg_temp.rv('rv-late')).reserved, 0::numeric, 'a release returns the reservation');

-- A dispute's freeze follows the credits moved out of its purchase's lots, and flags each account.
update billing.lots l set purchase_id = 'a2a2a2a2-1111-4000-8000-000000000001' where l.id = (pg_temp.rv('rv-late')).id;
select billing.move_credits((select a.id from billing.accounts a where a.user_id = 'a2a2a2a2-0000-4000-8000-000000000002'),
  billing.ensure_user_account('a2a2a2a2-0000-4000-8000-000000000003'), 3, 'code_escrow', 'rv-move', null);
select billing.set_lots_frozen('a2a2a2a2-1111-4000-8000-000000000001'::uuid, true);
select is((select array_agg(a.frozen_lots order by a.user_id) from billing.accounts a
           where a.user_id in ('a2a2a2a2-0000-4000-8000-000000000002', 'a2a2a2a2-0000-4000-8000-000000000003')),
  array[true, true], 'the purchase''s lot and the lot moved from it freeze, wherever they are');
select is(pg_temp.err($$select billing.reserve_credits('a2a2a2a2-0000-4000-8000-000000000003', 1, 'rv-h5')$$),
  'INSUFFICIENT_CREDITS', 'a frozen lot gives nothing to a hold');
select billing.set_lots_frozen('a2a2a2a2-1111-4000-8000-000000000001'::uuid, false);
select is((select array_agg(a.frozen_lots order by a.user_id) from billing.accounts a
           where a.user_id in ('a2a2a2a2-0000-4000-8000-000000000002', 'a2a2a2a2-0000-4000-8000-000000000003')),
  array[false, false], 'thawed: the flags go');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "expiry": [], "accounts": [], "transfers": [], "sub_accounts": []}'::jsonb, 'and the lots agree throughout');

select * from finish();
rollback;
