-- Credits for some models as accounts: the writer keeps one sub-account per list an account's
-- lots are under, holding exactly what those lots hold, through grants, charges, batches,
-- moves (narrowed), refunds into debt; in_debt reads them; check_lots catches one that drifts.
begin;
select plan(16);
\ir helpers.psql

insert into auth.users (id) select ('d5d5d5d5-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 4) n;
create function pg_temp.u(n int) returns uuid language sql as $$ select ('d5d5d5d5-0000-4000-8000-00000000000' || n)::uuid $$;
-- User n's sub-accounts: {list: balance}.
create function pg_temp.subs(n int) returns jsonb language sql as $$
  select coalesce(jsonb_object_agg(array_to_string(s.applies_to, ','), trim_scale(s.balance)::text), '{}')
  from billing.sub_accounts s join billing.accounts a on a.id = s.account_id where a.user_id = pg_temp.u(n)
$$;
create function pg_temp.account(n int) returns bigint language sql as $$
  select a.id from billing.accounts a where a.user_id = pg_temp.u(n)
$$;

-- 10 for anything (spent first: priority 1), 10 for gpt-4o-mini*, 5 for claude*.
select billing.grant_credits(pg_temp.u(1), 10, 'adjustment', 'sa-any', null, null, null, '{"category": "promotional", "priority": 1}');
select billing.grant_credits(pg_temp.u(1), 10, 'promo_grant', 'sa-mini', null, null, null, '{"priority": 5, "applies_to": ["gpt-4o-mini*"]}');
select billing.grant_credits(pg_temp.u(1), 5, 'promo_grant', 'sa-claude', null, null, null, '{"applies_to": ["claude*"]}');
select is(pg_temp.subs(1), '{"gpt-4o-mini*": "10", "claude*": "5"}', 'a list''s first credits open its sub-account');
select is(pg_temp.subs(2), '{}', 'credits for anything open none');

-- 12 of gpt-4o-mini (20,000 input tokens): the general lot first (10), then 2 of the mini lot.
select billing.charge_usage(pg_temp.u(1), 'gpt-4o-mini', 20000, 0, 'sa-u1');
select is(pg_temp.subs(1), '{"gpt-4o-mini*": "8", "claude*": "5"}', 'a charge takes from the sub-account of the lots it drew');

-- A batch: 3 of gpt-4o-mini and one for gpt-4o, refused (nothing for it is left).
select is((select jsonb_agg(x ->> 'status') from jsonb_array_elements(billing.charge_usage_batch(jsonb_build_array(
    jsonb_build_object('event_id', 'sa-b1', 'user_id', pg_temp.u(1), 'model', 'gpt-4o-mini', 'input_tokens', 5000,
      'output_tokens', 0, 'occurred_at', now()),
    jsonb_build_object('event_id', 'sa-b2', 'user_id', pg_temp.u(1), 'model', 'gpt-4o', 'input_tokens', 100,
      'output_tokens', 0, 'occurred_at', now())))) x),
  '["applied", "insufficient"]', 'a batch: the mini event applied, the gpt-4o one refused');
select is(pg_temp.subs(1), '{"gpt-4o-mini*": "5", "claude*": "5"}', 'the batch event took its part from the sub-account');

-- A move (a gift code's escrow) takes the mini lot first (priority 5): its part leaves the
-- source's sub-account and lands in the destination's for the same list; moved again, narrowed
-- to gpt-4o-mini, in the sub-account for what both lists allow.
select billing.move_credits(pg_temp.account(1), billing.ensure_user_account(pg_temp.u(2)), 4, 'code_escrow', 'sa-m1', null);
select is(pg_temp.subs(1), '{"gpt-4o-mini*": "1", "claude*": "5"}', 'the move took its credits out of the source''s sub-account');
select is(pg_temp.subs(2), '{"gpt-4o-mini*": "4"}', 'and they arrive in the same list''s sub-account');
select billing.move_credits(pg_temp.account(2), billing.ensure_user_account(pg_temp.u(4)), 3, 'code_redemption', 'sa-m2', null, null,
  '{gpt-4o-mini}');
select is(pg_temp.subs(2) || pg_temp.subs(4), '{"gpt-4o-mini*": "1", "gpt-4o-mini": "3"}', 'narrowed, in the narrower list''s');

-- A refund of more than the credits for anything: debt, and the credits for some models stay whole.
select billing.grant_credits(pg_temp.u(3), 10, 'promo_grant', 'sa-3-mini', null, null, null, '{"applies_to": ["gpt-4o-mini"]}');
select billing.grant_credits(pg_temp.u(3), 4, 'adjustment', 'sa-3-any');
select ok(not billing.in_debt((select a from billing.accounts a where a.id = pg_temp.account(3))), 'not in debt before');
select billing.reverse_credits(pg_temp.u(3), 6, 'refund_reversal', 'sa-3-refund', null, null, null, '{}');
select is(pg_temp.subs(3), '{"gpt-4o-mini": "10"}', 'a reversal into debt leaves the sub-account whole');
-- The writer keeps that rule whoever asks: a reversal naming no lots (its one-lot draw) skips the
-- credits for some models that come first in spending order.
select billing.grant_credits(pg_temp.u(4), 10, 'promo_grant', 'sa-4-mini', null, null, null, '{"applies_to": ["gpt-4o-mini"], "priority": 0}');
select billing.grant_credits(pg_temp.u(4), 10, 'adjustment', 'sa-4-any');
select billing.post_user_transfer(pg_temp.u(4), -1, 'reverse', 6, 'refund_reversal', 'refunds', 'sa-4-refund');
select is(pg_temp.subs(4), '{"gpt-4o-mini": "13"}', 'a reversal alone takes the credits for any model, not the first lot''s');
select ok(billing.in_debt((select a from billing.accounts a where a.id = pg_temp.account(3))),
  'in debt: the balance (8) is below the sub-accounts (10)');

-- Credits for anything pay the debt first; the sub-account is untouched.
select billing.grant_credits(pg_temp.u(3), 5, 'adjustment', 'sa-3-more');
select is(pg_temp.subs(3), '{"gpt-4o-mini": "10"}', 'credits for anything arriving pay the debt, not the sub-account');
select ok(not billing.in_debt((select a from billing.accounts a where a.id = pg_temp.account(3))), 'and the debt is paid');

select is(billing.check_lots() -> 'sub_accounts', '[]', 'every sub-account holds what its lots hold');
-- The check can fail: a sub-account one credit off is named.
update billing.sub_accounts s set balance = s.balance + 1 where s.account_id = pg_temp.account(3);
select is(billing.check_lots() -> 'sub_accounts', jsonb_build_array(pg_temp.account(3)), 'a sub-account off by one is named');

select * from finish();
rollback;
