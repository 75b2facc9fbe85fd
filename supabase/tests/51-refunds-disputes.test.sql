-- A refund or a lost dispute after some of the purchase's credits expired: what expired already
-- left the account (as breakage) and is not taken again, from the buyer's other credits or as
-- debt; what was spent is still owed; the outcome is the same whether the expiry ran before or
-- after the refund. One transaction, so every row carries now(): the metrics window
-- [now(), now() + 1 µs) holds exactly what is planted here.
begin;
set transaction isolation level repeatable read;
lock table billing.revenue_rollup, billing.daily_revenue in exclusive mode;
select plan(40);
\ir helpers.psql

insert into auth.users (id) select ('b0b0b0b0-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 8) n;

-- Stripe's state of purchase n (session cs_bonus_<n>, charge ch_bonus_<n>, dispute dp_bonus_<n>).
create function pg_temp.state(n int, cents int, refunded int default 0, dispute text default null) returns jsonb
language sql as $$
  select jsonb_build_object('session_id', 'cs_bonus_' || n, 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', cents, 'currency', 'usd', 'payment_intent', 'pi_bonus_' || n, 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_bonus_' || n, 'amount_refunded', refunded,
    'dispute_id', case when dispute is not null then 'dp_bonus_' || n end, 'dispute_status', dispute)
$$;
-- User n buys a package (paid at once); returns the purchase id.
create function pg_temp.buy(n int, pkg text) returns uuid language plpgsql as $$
declare
  v_id uuid := (billing.begin_checkout(('b0b0b0b0-0000-4000-8000-00000000000' || n)::uuid, pkg, 'bonus-' || n)).purchase_id;
begin
  perform billing.attach_checkout_session(v_id, 'cs_bonus_' || n, 'https://checkout.example/' || n, now() + interval '1 hour');
  perform billing.sync_purchase(pg_temp.state(n, (select p.price_cents from billing.purchases p where p.id = v_id)));
  return v_id;
end;
$$;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('b0b0b0b0-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.bal(n int) returns numeric language sql as $$ select balance from billing.get_balance(pg_temp.u(n)) $$;
-- Time passes for a purchase's lots of one category, wherever they are; each account's sweep runs.
create function pg_temp.expire(p_purchase uuid, p_category text) returns void language plpgsql as $$
begin
  update billing.lots l set expires_at = now() - interval '1 second'
  where l.purchase_id = p_purchase and l.category = p_category and l.open;
  update billing.accounts a set next_expiry = now() - interval '1 second'
  where a.id in (select l.account_id from billing.lots l where l.purchase_id = p_purchase);
  perform billing.expire_due_lots(a.id) from billing.accounts a
  where a.id in (select l.account_id from billing.lots l where l.purchase_id = p_purchase) order by a.id;
end;
$$;
-- A paid adjustment of 1,000 credits that costs 100¢ and is spent after everything else.
create function pg_temp.other_paid_credits(n int) returns void language sql as $$
  select billing.grant_credits(pg_temp.u(n), 1000, 'adjustment', 'other-paid-' || n, null, null, null,
    '{"category": "paid", "cost_cents": 100, "priority": 50}')
$$;
create temp table p (n int primary key, id uuid);

-- ============================================================ a full refund after the bonus expired

-- u1 buys pro (49,990 credits for 4,999¢ + a 4,999 bonus) and has 1,000 other paid credits (an adjustment). The
-- bonus expires unspent; Stripe refunds everything.
insert into p values (1, pg_temp.buy(1, 'pro'));
select pg_temp.other_paid_credits(1);
select pg_temp.expire((select id from p where n = 1), 'promotional');
select is(pg_temp.bal(1), 50990::numeric, 'u1: the expired bonus went to breakage');
select billing.sync_purchase(pg_temp.state(1, 4999, 4999));
select is(pg_temp.bal(1), 1000::numeric, 'u1: a full refund takes the paid credits; the expired bonus is not taken again');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'other-paid-1'), 1000::numeric, 'u1: the other paid credits are untouched');
select results_eq($$select credits_refund_reversed, bonus_refund_reversed, credits_expiry_forgiven, bonus_expiry_forgiven
                    from billing.purchases where id = (select id from p where n = 1)$$,
  $$values (49990::numeric, 4999::numeric, 0::numeric, 4999::numeric)$$,
  'u1: the purchase records the bonus as refunded, all of it forgiven because it had expired');
select is((select sum(t.amount) from billing.transfers t join billing.accounts a on a.id = t.from_account_id
           where a.user_id = pg_temp.u(1) and t.kind = 'refund_reversal'), 49990::numeric,
  'u1: the reversals move only the paid credits');

-- ============================================================ partial refunds: expiry before or after

-- u2 and u3 buy pro and spend 3,000 (from the bonus: promotional first), leaving 1,999 of it.
-- u2's bonus then expires; u3's expires only after the refunds. Half is refunded, then the rest.
-- The refunded half takes the bonus's 2,500: u3 gives its 1,999 left and owes 501, u2's 1,999
-- expired and is forgiven, and it owes the same 501. At the full refund both owe the 3,000 spent.
insert into p values (2, pg_temp.buy(2, 'pro')), (3, pg_temp.buy(3, 'pro'));
select pg_temp.spend(pg_temp.u(n), 3000, 'bonus-spend-' || n) from generate_series(2, 3) n;
select pg_temp.expire((select id from p where n = 2), 'promotional');
select is(pg_temp.bal(2), 49990::numeric, 'u2: 1,999 of the bonus expired');
select billing.sync_purchase(pg_temp.state(n, 4999, 2500)) from generate_series(2, 3) n;
select is(pg_temp.bal(2), 24489::numeric, 'u2: half refunded: 25,000 paid, 2,500 bonus of which 1,999 expired and 501 owed');
select is(pg_temp.bal(3), 24489::numeric, 'u3: the same balance when the bonus had not expired yet');
select billing.sync_purchase(pg_temp.state(n, 4999, 4999)) from generate_series(2, 3) n;
select is(pg_temp.bal(2), -3000::numeric, 'u2: fully refunded, it owes exactly what it spent');
select is(pg_temp.bal(3), -3000::numeric, 'u3: the same');
select pg_temp.expire((select id from p where n = 3), 'promotional');
select is(pg_temp.bal(3), -3000::numeric, 'u3: nothing is left to expire afterwards');
select is((select bonus_expiry_forgiven from billing.purchases where id = (select id from p where n = 2)), 1999::numeric,
  'u2: forgiven once, never more than expired');

-- ============================================================ a dispute after the bonus expired

-- u4: pro, 1,000 other paid credits, the bonus expires. The dispute freezes the paid credits only (the
-- expired bonus would not be taken back), so the other credits stay spendable; lost, nothing is owed.
insert into p values (4, pg_temp.buy(4, 'pro'));
select pg_temp.other_paid_credits(4);
select pg_temp.expire((select id from p where n = 4), 'promotional');
select billing.sync_purchase(pg_temp.state(4, 4999, 0, 'needs_response'));
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(4))$$,
  $$values (50990::numeric, 0::numeric, 1000::numeric)$$, 'u4: the open dispute freezes the paid credits (nothing held): the other credits are available');
select billing.sync_purchase(pg_temp.state(4, 4999, 0, 'lost'));
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(4))$$,
  $$values (1000::numeric, 0::numeric, 1000::numeric)$$, 'u4: lost: the purchase''s paid credits go, the other credits stay, no debt');

-- u5: the bonus is due but not swept when the dispute opens: the dispute expires it first.
insert into p values (5, pg_temp.buy(5, 'pro'));
select pg_temp.other_paid_credits(5);
update billing.lots set expires_at = now() - interval '1 second' where purchase_id = (select id from p where n = 5)
  and category = 'promotional';
update billing.accounts set next_expiry = now() - interval '1 second' where user_id = pg_temp.u(5);
select billing.sync_purchase(pg_temp.state(5, 4999, 0, 'needs_response'));
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(5))$$,
  $$values (50990::numeric, 0::numeric, 1000::numeric)$$, 'u5: a due bonus expires before the dispute freezes');
select billing.sync_purchase(pg_temp.state(5, 4999, 0, 'lost'));
select is(pg_temp.bal(5), 1000::numeric, 'u5: lost: no debt');

-- ============================================================ forgiven once: a partial refund, then a lost dispute

-- u6: pro, the bonus expires; 1,000¢ refunded (10,000 paid, 1,000 bonus: forgiven), then the
-- rest is disputed and lost (39,990 paid, 3,999 bonus: forgiven). 4,999 forgiven in all.
insert into p values (6, pg_temp.buy(6, 'pro'));
select pg_temp.expire((select id from p where n = 6), 'promotional');
select billing.sync_purchase(pg_temp.state(6, 4999, 1000));
select is(pg_temp.bal(6), 39990::numeric, 'u6: the partial refund took only paid credits');
select billing.sync_purchase(pg_temp.state(6, 4999, 1000, 'needs_response'));
select results_eq($$select sum(l.remaining), bool_and(l.frozen), (select held from billing.get_balance(pg_temp.u(6)))
                     from billing.lots l where l.purchase_id = (select id from p where n = 6) and l.open$$,
  $$values (39990::numeric, true, 0::numeric)$$, 'u6: the dispute freezes the paid credits left, and holds nothing');
select billing.sync_purchase(pg_temp.state(6, 4999, 1000, 'lost'));
select is(pg_temp.bal(6), 0::numeric, 'u6: lost: no debt');
select is((select bonus_expiry_forgiven from billing.purchases where id = (select id from p where n = 6)), 4999::numeric,
  'u6: the refund and the dispute together forgave the expired bonus once');

-- ============================================================ a student's hold over the expiring bonus

-- u7: pro and other paid credits; the student holds 54,000 of 55,989: it reserves the bonus (4,999)
-- and 49,001 of the paid lot. The bonus expires under the hold (it shrinks to 49,001); the refund
-- takes the paid lot's free 989 at once, the 49,001 the hold reserved at the tick after it ends; the
-- bonus is forgiven.
insert into p values (7, pg_temp.buy(7, 'pro'));
select pg_temp.other_paid_credits(7);
select billing.reserve_credits(pg_temp.u(7), 54000, 'bonus-hold-7');
select pg_temp.expire((select id from p where n = 7), 'promotional');
select is((select held from billing.get_balance(pg_temp.u(7))), 49001::numeric, 'u7: the hold shrank by what expired of its lots');
select billing.sync_purchase(pg_temp.state(7, 4999, 4999));
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(7))$$,
  $$values (50001::numeric, 49001::numeric, 1000::numeric)$$, 'u7: refunded: the paid lot''s free credits go at once, the hold keeps what it reserved');
select billing.release_hold(pg_temp.u(7), (select h.id from billing.holds h where h.idempotency_key = 'bonus-hold-7'));
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(7))$$,
  $$values (50001::numeric, 49001::numeric, 1000::numeric)$$, 'u7: the hold released: what it returned of the paid lot stays reserved for the refund');
-- A take-back that fails (here a trigger refusing u7's claims hold; in life an invariant) moves
-- nothing and tells an operator; the claimed credits stay held for the next minute.
create function pg_temp.refuse() returns trigger language plpgsql as $$
begin
  if new.account_id = (select a.id from billing.accounts a where a.user_id = pg_temp.u(7)) then
    raise exception 'no take-back for u7';
  end if;
  return new;
end $$;
create trigger take_back_refuse before update on billing.holds for each row
  when (old.purpose = 'claims') execute function pg_temp.refuse();
select billing.take_back_due_claims(100000);
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(7))$$,
  $$values (50001::numeric, 49001::numeric, 1000::numeric)$$, 'u7: a failed take-back moved nothing: the claims stay held');
select is((select al.details ->> 'account_id' from billing.alerts al where al.condition = 'take_back_failed'
           and al.status = 'open'), (select a.id::text from billing.accounts a where a.user_id = pg_temp.u(7)),
  'u7: and an operator alert names the account');
drop trigger take_back_refuse on billing.holds;
select billing.take_back_claims(a.id) from billing.accounts a where a.user_id = pg_temp.u(7);  -- the minute's tick, for u7
select results_eq($$select balance, held, available from billing.get_balance(pg_temp.u(7))$$,
  $$values (1000::numeric, 0::numeric, 1000::numeric)$$, 'u7: the tick took it back; the other credits stay, no debt');
select is((select sum(l.reserved) + count(*) filter (where l.remaining > 0) from billing.lots l
           where l.purchase_id = (select id from p where n = 7)), 0::numeric, 'u7: nothing of the purchase is left');

-- ============================================================ paid credits that expired

-- u8: paid credits expire after 30 days (a policy some jurisdictions allow). A starter lot
-- (9,990 for 999¢) expires unspent: its cost is breakage revenue. The full refund returns the
-- money; the credits were already gone and are not taken again (no debt).
update billing.credit_expiry_policy set expires_after = interval '30 days' where category = 'paid';
insert into p values (8, pg_temp.buy(8, 'starter'));
select pg_temp.expire((select id from p where n = 8), 'paid');
select billing.sync_purchase(pg_temp.state(8, 999, 999));
select is(pg_temp.bal(8), 0::numeric, 'u8: refunded after its paid credits expired: no debt');
select is((select credits_expiry_forgiven from billing.purchases where id = (select id from p where n = 8)), 9990::numeric,
  'u8: the expired paid credits are forgiven');
select is((select count(*)::int from billing.transfers t join billing.accounts a on a.id = t.from_account_id
           where a.user_id = pg_temp.u(8) and t.kind = 'refund_reversal'), 0, 'u8: nothing to reverse');

-- ============================================================ the books

select is(billing.check_lots() - 'deferred_revenue_cents', '{"lots": [], "accounts": [], "sub_accounts": [], "transfers": [], "expiry": []}'::jsonb,
  'lots agree with the ledger');
select is((select count(*)::int from jsonb_each(billing.check_lots() -> 'deferred_revenue_cents') c
           where c.value -> 'from_lots' <> c.value -> 'from_flows'), 0, 'deferred revenue is the same both ways');
select is((select count(*)::int from billing.purchases pu where pu.id in (select id from p)
             and (pu.credits_expiry_forgiven > (select coalesce(sum(la.amount), 0) from billing.lots l
                    join billing.lot_allocations la on la.lot_id = l.id and la.kind = 'expiry'
                    where l.purchase_id = pu.id and l.category = 'paid')
               or pu.bonus_expiry_forgiven > (select coalesce(sum(la.amount), 0) from billing.lots l
                    join billing.lot_allocations la on la.lot_id = l.id and la.kind = 'expiry'
                    where l.purchase_id = pu.id and l.category = 'promotional'))), 0,
  'no purchase forgave more than expired of it');
select is((select count(*)::int from billing.accounts a where a.user_id in (select pg_temp.u(n) from generate_series(1, 8) n)
             and a.balance < 0 and a.user_id not in (pg_temp.u(2), pg_temp.u(3))), 0,
  'only the students who spent refunded credits are in debt');

-- Paid credits in revenue_metrics, by hand (every paid credit here costs 0.1¢): granted 7 × pro
-- 4,999 + starter 999 + 4 other grants × 100 = 36,392; breakage: u8's 999; reversed: all 7 pro lots
-- (u2 and u3's 501 owed for the bonus came out of their paid lot, whose 49,990 all went back)
-- = 34,993; recognised 0 (the spending drew the bonus). Deferred: the 4 other grants, 400.
create temp table lots_line as select x as v from jsonb_array_elements(billing.revenue_metrics(now(), now() + interval '1 microsecond')
  -> 'credit_lots') x where x ->> 'currency' = 'usd';
select is((select (v ->> 'paid_granted_cents')::int from lots_line), 36392, 'paid credits granted');
select is((select (v ->> 'breakage_revenue_cents')::int from lots_line), 999, 'breakage: the expired paid credits, once');
select is((select (v ->> 'paid_reversed_cents')::int from lots_line), 34993,
  'paid reversed: the refunded purchases'' own credits, no other credits taken in place of expired ones');
select is((select (v ->> 'recognised_revenue_cents')::int from lots_line), 0, 'recognised: nothing paid was spent');
select is((select v -> 'promotional_credits' from lots_line),
  jsonb_build_object('granted', '34993', 'spent', '6000', 'expired', (5 * 4999 + 1999)::text),
  'promotional: 7 bonuses granted, 6,000 spent, the expired bonuses');
select is((select sum(l.cost_cents * l.remaining / l.amount) from billing.lots l
           where l.account_id in (select a.id from billing.accounts a where a.user_id in (select pg_temp.u(n) from generate_series(1, 8) n))
             and l.category = 'paid'), 400::numeric, 'deferred revenue left: the other grants');

select * from finish();
rollback;
