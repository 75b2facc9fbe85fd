-- Many lists and many holds at once (docs/credit-lots.md § Spending order 4): each hold reserves
-- specific lots' free credits when it is placed, so a charge for any model finds exactly the free
-- credits of the lots that may pay for it, however many lists and holds the account has; no plan
-- over the lists, no limit on them.
begin;
select plan(5);
\ir helpers.psql

-- Fourteen lists, a gateway call's hold on each of seven models.
insert into auth.users (id) values ('a6a6a6a6-0000-4000-8000-000000000001');
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
select 'hs-m' || i, 1, 1000, 1000, 1, now() - interval '1 minute' from generate_series(1, 15) i;
select billing.grant_credits('a6a6a6a6-0000-4000-8000-000000000001', 10, 'promo_grant', 'hs14-' || i, null, null, null,
  jsonb_build_object('applies_to', case when i <= 7 then jsonb_build_array('hs-m' || i)
                                        else jsonb_build_array('hs-m' || (i - 7), 'hs-m' || (i + 1)) end))
from generate_series(1, 14) i;
select billing.grant_credits('a6a6a6a6-0000-4000-8000-000000000001', 5, 'promo_grant', 'hs14-any');
select billing.reserve_hold('a6a6a6a6-0000-4000-8000-000000000001', 15, 'hs14-h' || i, 600, 'ai', null,
  jsonb_build_object('model', 'hs-m' || i)) from generate_series(1, 7) i;
create temp table acct as select a.id from billing.accounts a where a.user_id = 'a6a6a6a6-0000-4000-8000-000000000001';

select is((select count(distinct l.applies_to)::int from billing.lots l where l.account_id = (select id from acct)
           and l.applies_to is not null), 14, 'fourteen lists held, seven models held');
-- Each hs-mN hold of 15 reserved its own list (10) and 5 of the list it shares (hs-mN, hs-m(N+8)),
-- in spending order: 5 of each shared list and the 5 for anything stay free.
select is(billing.free_credits((select id from acct), 'hs-m1', false), 10::numeric,
  'a charge for one model finds what its lists have free (5) and the credits for anything (5)');
select is(billing.free_credits((select id from acct), 'hs-m9', false), 10::numeric,
  'a charge for hs-m9 finds the free part of the list it shares with hs-m1, and anything: hs-m1''s hold keeps its own');
select is(pg_temp.err($$select billing.charge_usage('a6a6a6a6-0000-4000-8000-000000000001', 'hs-m9', 11, 0, 'hs14-over')$$),
  'INSUFFICIENT_CREDITS', 'a charge of 11 for hs-m9 is refused');
select billing.charge_usage('a6a6a6a6-0000-4000-8000-000000000001', 'hs-m9', 10, 0, 'hs14-fits');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "expiry": [], "accounts": [], "transfers": [], "sub_accounts": []}'::jsonb,
  'a charge of 10 is drawn, and every hold still has all it reserved');

select * from finish();
rollback;
