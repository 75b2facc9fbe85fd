-- What a browser reads with supabase-js (billing_api): every view runs with the caller's rights,
-- is readable by authenticated only and writable by no one; each shows the caller what their RLS
-- policies allow: their own purchases, the packages on sale, each model's current rate card,
-- their own memberships and, for an organisation's admin, its members'.
begin;
select plan(12);
\ir helpers.psql

insert into auth.users (id) values
  ('85858585-0000-4000-8000-00000000000a'), ('85858585-0000-4000-8000-00000000000b'), ('85858585-0000-4000-8000-00000000000c');
insert into billing.purchases (user_id, package_id, request_key, price_cents, currency, credits, bonus_credits, package_version)
select u::uuid, 'mini', 'api-view-' || u, k.price_cents, k.currency, k.credits, k.bonus_credits, k.version
from billing.credit_packages k, unnest(array['85858585-0000-4000-8000-00000000000a', '85858585-0000-4000-8000-00000000000b']) u
where k.id = 'mini';
-- A's organisation, with B as a member; C belongs to none.
create temp table o as select (billing.create_org('85858585-0000-4000-8000-00000000000a', 'API school', 'allowance', true) ->> 'id')::uuid as id;
insert into billing.org_members (org_id, user_id, role) values ((select id from o), '85858585-0000-4000-8000-00000000000b', 'member');
grant select on o to authenticated;

-- ============================================================ the catalogue

select is((select string_agg(c.relname, ', ') from pg_class c where c.relnamespace = 'billing_api'::regnamespace and c.relkind = 'v'
           and not has_table_privilege('authenticated', c.oid, 'select')), null, 'authenticated may read every view');
select is((select string_agg(c.relname, ', ') from pg_class c where c.relnamespace = 'billing_api'::regnamespace and c.relkind = 'v'
           and (has_table_privilege('anon', c.oid, 'select') or has_table_privilege('authenticated', c.oid, 'insert, update, delete'))),
  null, 'anon may read none, and no one signed in may write any');

-- ============================================================ as student A, an organisation's owner

set local request.jwt.claims = '{"sub": "85858585-0000-4000-8000-00000000000a", "role": "authenticated"}';
set local role authenticated;
select is((select array_agg(p.package_id) from billing_api.purchases p), array['mini'], 'a student reads their own purchases only');
select is(pg_temp.err($$insert into billing_api.purchases (package_id) values ('mini')$$), 'permission denied for view purchases',
  'and cannot write one');
select is((select count(*)::int from billing_api.credit_packages), (select count(*)::int from billing.credit_packages where active),
  'the packages on sale, every one');
select is((select count(*)::int from billing_api.rate_cards),
  (select count(distinct r.model)::int from billing.rate_cards r where r.effective_from <= now()
     and not exists (select 1 from billing.model_aliases a where a.alias = r.model)),
  'one current rate card per model, none under an alias (its name''s earlier cards are history)');
select is((select array_agg(m.user_id::text order by m.role desc) from billing_api.org_memberships m where m.org_id = (select id from o)),
  array['85858585-0000-4000-8000-00000000000a', '85858585-0000-4000-8000-00000000000b'], 'an owner reads every member of the organisation');
reset role;

-- ============================================================ as student B, a member

set local request.jwt.claims = '{"sub": "85858585-0000-4000-8000-00000000000b", "role": "authenticated"}';
set local role authenticated;
select is((select count(*)::int from billing_api.purchases p where p.package_id = 'mini'), 1, 'another student reads their own purchase');
select is((select array_agg(m.user_id::text) from billing_api.org_memberships m), array['85858585-0000-4000-8000-00000000000b'],
  'a member reads only their own membership');
reset role;

-- ============================================================ as student C, in no organisation

set local request.jwt.claims = '{"sub": "85858585-0000-4000-8000-00000000000c", "role": "authenticated"}';
set local role authenticated;
select is((select count(*)::int from billing_api.purchases), 0, 'a student who bought nothing reads no purchase');
select is((select count(*)::int from billing_api.org_memberships), 0, 'and no membership');
reset role;

-- ============================================================ as anon

set local role anon;
select is(pg_temp.err($$select count(*) from billing_api.credit_packages$$), 'permission denied for schema billing_api',
  'anon reads nothing, not even the packages on sale');
reset role;

select * from finish();
rollback;
