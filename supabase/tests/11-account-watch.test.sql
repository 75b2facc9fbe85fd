-- The watch queue a posting leaves for the tick (billing.run_account_watch): one account whose
-- alert fails is that account's alone (the others go on, its row leaves the queue, an operator
-- alert names it); the tick moves no money.
begin;
select plan(6);
\ir helpers.psql

insert into auth.users (id) values ('11111111-aaaa-4000-8000-000000000001'), ('11111111-aaaa-4000-8000-000000000002');
create temp table k as select '11111111-aaaa-4000-8000-000000000001'::uuid as bad, '11111111-aaaa-4000-8000-000000000002'::uuid as good;
select billing.grant_credits((select bad from k), 100, 'promo_grant', 'watch-bad');
select billing.grant_credits((select good from k), 100, 'promo_grant', 'watch-good');
update billing.accounts set low_balance_threshold = 50 where user_id in ((select bad from k), (select good from k));
-- The bad account's alert cannot be written (a stand-in for any error in its checks).
create function pg_temp.refuse() returns trigger language plpgsql as $$
begin raise exception 'no alert for this account'; end $$;
create trigger watch_refuse before update of low_balance_fired on billing.accounts for each row
  when (new.user_id = '11111111-aaaa-4000-8000-000000000001') execute function pg_temp.refuse();

select billing.post_user_transfer((select bad from k), -1, 'spend', 60, 'usage', 'usage_revenue', 'watch-spend-bad');
select billing.post_user_transfer((select good from k), -1, 'spend', 60, 'usage', 'usage_revenue', 'watch-spend-good');
select is((select count(*)::int from billing.account_watch w join billing.accounts a on a.id = w.account_id
           where a.user_id in ((select bad from k), (select good from k))), 2, 'each spend queued its account');
create temp table before as select sum(balance) as s from billing.accounts;

select is(billing.run_account_watch(100000) >= 2, true, 'the tick looked at both');
select is((select low_balance_fired from billing.accounts where user_id = (select good from k)), true,
  'the other account''s alert fired');
select is((select count(*)::int from billing.account_watch w join billing.accounts a on a.id = w.account_id
           where a.user_id = (select bad from k)), 0, 'the failing account left the queue: it never blocks the tick');
select is((select al.details ->> 'account_id' from billing.alerts al where al.condition = 'account_watch_failed'
           and al.status = 'open'), (select a.id::text from billing.accounts a where a.user_id = (select bad from k)),
  'and an operator alert names it');
select is((select sum(balance) from billing.accounts), (select s from before), 'the tick moved no money');

select * from finish();
rollback;
