-- The ops overview's reconciliation list (billing.ops_overview, read by the dashboard): one row
-- per provider however many mismatches, kinds, currencies and days it has; providers that share
-- a name stay apart by id. (A "provider twice" on the dashboard was two providers with the
-- same name, which the page could not tell apart; this pins the list's shape.)
begin;
select plan(5);
\ir helpers.psql

insert into auth.users (id) values ('eeeeeeee-0000-4000-8000-000000000001'), ('eeeeeeee-0000-4000-8000-000000000002');
create temp table twins as
  select * from billing.begin_provider('eeeeeeee-0000-4000-8000-000000000001', 'twin-a', 'Twin Fund', 'a@example.org', 'US')
  union all
  select * from billing.begin_provider('eeeeeeee-0000-4000-8000-000000000002', 'twin-b', 'Twin Fund', 'b@example.org', 'US');
select billing.attach_provider_account(id, 'acct_twin_' || request_key) from twins;

-- The day before, then the latest day: one provider with mismatches of two kinds in two currencies.
select pg_temp.reconcile('2998-12-31', jsonb_build_object('balances', jsonb_build_array(
  jsonb_build_object('account', 'acct_twin_twin-a', 'currency', 'usd', 'amount', 1))));
select is(pg_temp.reconcile('2999-01-01', jsonb_build_object(
  'charges', jsonb_build_array(jsonb_build_object('id', 'ch_twin', 'amount', 5000, 'currency', 'usd',
    'destination', 'acct_twin_twin-a', 'payment_id', null, 'application_fee_amount', 150)),
  'balances', jsonb_build_array(
    jsonb_build_object('account', 'acct_twin_twin-a', 'currency', 'usd', 'amount', 100),
    jsonb_build_object('account', 'acct_twin_twin-a', 'currency', 'eur', 'amount', 500)))), 3,
  'the latest day has three mismatches, all of one provider');

create temp table listed as
  select x ->> 'provider_id' as provider_id, x ->> 'name' as name, (x ->> 'mismatches')::int as mismatches, x -> 'kinds' as kinds
  from jsonb_array_elements(billing.ops_overview() -> 'reconciliation') x
  where x ->> 'provider_id' in (select id::text from twins);

select is((select count(*)::int from listed), 2, 'two providers, two rows: none listed twice');
select is((select count(distinct provider_id)::int from listed where name = 'Twin Fund'), 2,
  'providers that share a name are told apart by id');
select is((select mismatches from listed where provider_id = (select id::text from twins where request_key = 'twin-a')), 3,
  'every mismatch of the latest day counts on the provider''s one row');
select is((select kinds from listed where provider_id = (select id::text from twins where request_key = 'twin-a')),
  '["balance_mismatch", "payment_missing"]'::jsonb, 'each kind named once');

select * from finish();
rollback;
