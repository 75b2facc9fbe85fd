-- POST /credits/usage's fast path (billing.run_usage_request) charges through the writer's debit
-- (billing.post_debit) and never settles: an account with something fallen due (a lot past its
-- expiry, a hold past its TTL) goes the general way (its answer stored under the key, where the
-- fast path stores none), which ends it first, so the request is answered as if the sweep had run. The debit refuses what it is not: a movement under a hold
-- it does not post, one that credits a tracked account.
begin;
select plan(11);
\ir helpers.psql

insert into auth.users (id) select ('f5f5f5f5-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 3) n;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('f5f5f5f5-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.usage(n int, p_key text, p_tokens integer) returns billing.request_answer language sql as $$
  select * from billing.run_usage_report(pg_temp.u(n), 'credits.usage', p_key, 'hash-' || p_key, 'req-' || p_key,
    jsonb_build_object('model', 'gpt-4o', 'input_tokens', p_tokens, 'output_tokens', 0), 201)
$$;
create function pg_temp.acct(n int) returns billing.accounts language sql as $$
  select * from billing.accounts where user_id = pg_temp.u(n)
$$;
-- What a request costs, priced by the card the request is priced by.
create function pg_temp.price(p_tokens integer) returns numeric language sql as $$
  select (billing.quote_usage('gpt-4o', p_tokens, 0)).amount
$$;

-- ============================================================ a hold past its TTL
-- 10 credits, 3 of them held by a hold whose TTL passed; the charge is 5 credits, which fits
-- beside the hold: the fast path would charge it and leave the hold active. It goes the general
-- way instead (its answer stored under the key), which ends the hold first.
select billing.grant_credits(pg_temp.u(1), 10, 'adjustment', 'fast-1');
select billing.reserve_credits(pg_temp.u(1), 3, 'fast-hold-1', 600);
with h as (update billing.holds set expires_at = now() - interval '1 second' where idempotency_key = 'fast-hold-1'
           returning account_id, expires_at)
update billing.accounts a set next_hold_expiry = h.expires_at from h where a.id = h.account_id;
select ok(billing.falls_due(pg_temp.acct(1)), 'an account with a hold past its TTL has something fallen due');
select is((select status from pg_temp.usage(1, 'fast-k1', 250)), 201, 'a usage request beside an overdue hold is charged');
select is((select (h.status, a.held, a.balance)::text from billing.holds h, billing.accounts a
           where h.idempotency_key = 'fast-hold-1' and a.id = h.account_id),
  ('expired', 0::numeric(38, 18), 10 - pg_temp.price(250))::text, 'the hold ended first, then the charge was written');
select ok(exists (select 1 from billing.idempotency_keys k where k.user_id = pg_temp.u(1) and k.key = 'fast-k1'),
  'by the general path: its answer is stored under the key');

-- ============================================================ a lot past its expiry
-- Two lots of 5: a promotion's, spent first, that expired a second ago, and an adjustment's. The
-- charge is 3 credits. Unsettled, it would draw the expired lot; settled first, that lot expires
-- whole and the other pays.
select billing.grant_credits(pg_temp.u(2), 5, 'promo_grant', 'fast-2-promo');
select billing.grant_credits(pg_temp.u(2), 5, 'adjustment', 'fast-2-paid');
with l as (update billing.lots set expires_at = now() - interval '1 second'
           where grant_transfer_id = (select id from billing.transfers where idempotency_key = 'fast-2-promo')
           returning account_id, expires_at)
update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id;
select is((select status from pg_temp.usage(2, 'fast-k2', 150)), 201, 'a usage request beside an expired lot is charged');
select is((select string_agg(trim_scale(l.remaining)::text, ', ' order by l.id) from billing.lots l
           where l.account_id = (pg_temp.acct(2)).id),
  '0, ' || trim_scale(5 - pg_temp.price(150)), 'the expired lot expired whole; the other lot paid');
select ok(exists (select 1 from billing.idempotency_keys k where k.user_id = pg_temp.u(2) and k.key = 'fast-k2'),
  'by the general path: its answer is stored under the key');
select is((pg_temp.acct(2)).balance, (select sum(e.amount) from billing.entries e where e.account_id = (pg_temp.acct(2)).id),
  'the balance is the sum of its entries');

-- ============================================================ the charge is only a charge
select billing.grant_credits(pg_temp.u(3), 10, 'adjustment', 'fast-3');
select ok(not billing.falls_due(pg_temp.acct(3)), 'nothing has fallen due on an account with a fresh lot and no hold');
select is(pg_temp.err(format($$select billing.post_debit(('usage', %s, billing.platform_account_id('usage_revenue'), 1,
    'fast-under-hold', null, null, null, null, gen_random_uuid(), null, null)::billing.transfer_spec)$$, (pg_temp.acct(3)).id)),
  'LEDGER_INVARIANT', 'a movement under a hold it does not post is not a debit');
select is(pg_temp.err(format($$select billing.post_debit(('usage', %s, %s, 1, 'fast-to-tracked', null, null, null, null,
    null, null, null)::billing.transfer_spec)$$, (pg_temp.acct(3)).id, (pg_temp.acct(1)).id)),
  'LEDGER_INVARIANT', 'nor one that credits a tracked account');

select * from finish();
rollback;
