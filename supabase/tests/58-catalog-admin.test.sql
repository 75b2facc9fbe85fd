-- Packages and plans as versions: created, changed (a new version, never an edit of one sold)
-- and retired by the admin functions, audited; a purchase keeps the version it began at and a
-- new one sells the version on sale; a subscription's plan is its version's row, read back as
-- the plan's id; a plan's model list follows its family; only the service role may call them.
begin;
select plan(31);
\ir helpers.psql

insert into auth.users (id, email) values
  ('58000000-0000-4000-8000-0000000000ad', 'admin@catalog.test'), ('58000000-0000-4000-8000-000000000001', 'one@catalog.test');
create temp table ids as select '58000000-0000-4000-8000-0000000000ad'::uuid as admin,
  '58000000-0000-4000-8000-000000000001'::uuid as student;
grant select on ids to public;

-- Packages.
create temp table n1 as select billing.next_package_version('cat-pack', '{"name": "Cat", "price_cents": 700, "credits": "7000"}',
  true) as n;
select is((select n from n1), '{"version": 1, "spec": {"name": "Cat", "price_cents": 700, "currency": "usd", "credits": "7000",
  "bonus_credits": "0"}}', 'a new package is version 1, its defaults filled in');
select is((select billing.save_package_version((select admin from ids), 'cat-pack', 1, (select n -> 'spec' from n1), 'price_a', 50,
  'launch') ->> 'replayed'), 'false', 'saving it puts it on sale');
select is((select billing.save_package_version((select admin from ids), 'cat-pack', 1, (select n -> 'spec' from n1), 'price_b', 50,
  'launch') ->> 'stripe_price_id'), 'price_a', 'the same version saved again (an identical twin) answers the first');
select is((select billing.next_package_version('cat-pack', '{"name": "Cat", "price_cents": 700, "credits": "7000"}', true)
  -> 'answer' ->> 'replayed'), 'true', 'an identical create, later, makes nothing');
select is(pg_temp.err($$select billing.next_package_version('cat-pack', '{"name": "Cat", "price_cents": 800, "credits": "7000"}',
  true)$$), 'CATALOG_ITEM_EXISTS', 'a create of an id in use with another price is refused');
select is(pg_temp.err($$select billing.next_package_version('no-such', '{"price_cents": 800}', false)$$), 'PACKAGE_NOT_FOUND',
  'a change of no package is refused');
select is(pg_temp.detail($$select billing.next_package_version('no-such', '{"price_cents": 800}', false)$$), '{}',
  'never naming what was asked (the Postgres log)');

-- A student begins a Checkout at version 1, then the price changes.
create temp table co1 as select * from billing.begin_checkout((select student from ids), 'cat-pack', 'cat-key-1');
select billing.attach_checkout_session((select purchase_id from co1), 'cs_cat_1', 'https://pay', now() + interval '30 minutes');
create temp table n2 as select billing.next_package_version('cat-pack', '{"price_cents": 900, "credits": "9500"}', false) as n;
select is((select n ->> 'version' from n2), '2', 'a change makes the next version');
select billing.save_package_version((select admin from ids), 'cat-pack', 2, (select n -> 'spec' from n2), 'price_c', null, 'up');
select is(pg_temp.err($$select billing.save_package_version((select admin from ids), 'cat-pack', 2,
  billing.package_spec('Cat', 1000, 'usd', 9500, 0), 'price_d', null, 'raced')$$), 'CATALOG_VERSION_CONFLICT',
  'a different change made for the same version loses the race');
select is((select row(price_cents, trim_scale(credits), package_version)::text from billing.purchases
  where id = (select purchase_id from co1)), '(700,7000,1)', 'the open Checkout keeps version 1''s price and credits');
create temp table co2 as select * from billing.begin_checkout((select student from ids), 'cat-pack', 'cat-key-2');
select isnt((select purchase_id from co2), (select purchase_id from co1), 'a new Checkout is not the one opened before the change');
select is((select row(price_cents, trim_scale(credits), package_version)::text from billing.purchases
  where id = (select purchase_id from co2)), '(900,9500,2)', 'and sells version 2');
select is((select package_name || ':' || price_cents from co1), 'Cat:700', 'a checkout reads its own version');
select is((select array_agg(version order by version)::text from billing.credit_package_versions where package_id = 'cat-pack'),
  '{1,2}', 'every version is kept');
select is(pg_temp.err($$update billing.credit_package_versions set price_cents = 1 where package_id = 'cat-pack'$$),
  'LEDGER_IMMUTABLE', 'a version sold is never edited');

select is((select billing.retire_package((select admin from ids), 'cat-pack', 'gone') ->> 'active'), 'false', 'retired');
select is(pg_temp.err($$select billing.begin_checkout((select student from ids), 'cat-pack', 'cat-key-3')$$), 'PACKAGE_NOT_FOUND',
  'a retired package sells to no one');
select is(pg_temp.err($$select billing.next_package_version('cat-pack', '{"price_cents": 1}', false)$$), 'CATALOG_ITEM_RETIRED',
  'a retired package does not change');
select is((select string_agg(action, ',' order by id) from billing.catalog_changes where item_id = 'cat-pack'),
  'created,changed,retired', 'each change is audited');
select is(pg_temp.err($$select billing.save_package_version((select admin from ids), 'x', 1,
  billing.package_spec('', 100, 'usd', 1, 0), null, null, 'r')$$), 'INVALID_CATALOG_ITEM', 'a package that cannot be is refused');

-- Plans: a version is a row; a subscription names its version's row.
create temp table p2 as select billing.next_plan_version('basic_monthly', '{"price_cents": 1299, "credits": "12000"}', false) as n;
select is((select n ->> 'version_id' from p2), 'basic_monthly.v2', 'a plan''s second version is a row of its own');
insert into billing.subscriptions (user_id, plan_id, request_key, status, stripe_subscription_id, current_period_end)
values ((select student from ids), 'basic_monthly', 'cat-sub', 'active', 'sub_cat', now() + interval '20 days');
insert into billing.model_access (plan_id, model, set_by) values ('basic_monthly', 'gpt-4o-mini', (select admin from ids));
select billing.save_plan_version((select admin from ids), 'basic_monthly', 2, (select n -> 'spec' from p2), 'price_p', null, 'up');
select is((select string_agg(id || '=' || active, ',' order by version) from billing.plans where family = 'basic_monthly'),
  'basic_monthly=false,basic_monthly.v2=true', 'the new version is on sale, the old one stays for its subscribers');
select is((select billing.get_subscription((select student from ids)) - 'current_period_end' - 'current_period_start'
  - 'subscription_id' - 'plan_credits_left' - 'stripe_customer_id'),
  '{"plan_id": "basic_monthly", "plan_version": 1, "plan_version_id": "basic_monthly", "status": "active",
    "cancel_at_period_end": false, "stripe_subscription_id": "sub_cat"}', 'the subscription renews at version 1');
select is((select list_plan from billing.model_list_of((select student from ids))), 'basic_monthly',
  'a plan''s model list is its family''s, whatever version');
update billing.subscriptions set plan_id = 'basic_monthly.v2' where request_key = 'cat-sub';
select is((select list_plan from billing.model_list_of((select student from ids))), 'basic_monthly',
  'and the same list at version 2');
update billing.subscriptions set status = 'canceled' where request_key = 'cat-sub';
create temp table s1 as select * from billing.begin_subscription((select student from ids), 'basic_monthly.v2', 'cat-sub-2');
select is((select plan_id from billing.begin_subscription((select student from ids), 'basic_monthly', 'cat-sub-2')),
  'basic_monthly.v2', 'a retry under the same key keeps the version it began at');
select is(pg_temp.err($$select billing.begin_subscription((select student from ids), 'pro_monthly', 'cat-sub-2')$$),
  'IDEMPOTENCY_KEY_REUSED', 'another plan under the same key is refused');

-- as anon and authenticated
set local role anon;
select matches(pg_temp.err($$select billing.catalog_overview()$$), '^permission denied',
  'anon cannot read the catalogue''s admin view');
reset role;
set local role authenticated;
select is(pg_temp.err($$select billing.save_package_version((select admin from ids), 'evil', 1,
  '{"name": "E", "price_cents": 1, "currency": "usd", "credits": "1000000", "bonus_credits": "0"}', null, null, 'r')$$),
  'permission denied for function save_package_version',
  'a signed-in user cannot make a package');
select is(pg_temp.err($$select billing.retire_plan((select admin from ids), 'pro_monthly', 'r')$$),
  'permission denied for function retire_plan', 'nor retire a plan');
select is(pg_temp.err($$select billing.next_plan_version('pro_monthly', '{}', false)$$),
  'permission denied for function next_plan_version', 'nor read what a change would make');
reset role;

select * from finish();
rollback;
