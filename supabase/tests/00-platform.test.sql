-- The local database is shaped like a hosted Supabase one: roles and who owns what, the
-- extensions where Supabase puts them, the auth helpers, the grants. The migrations ran as
-- postgres, which is not a superuser, and these tests run as postgres too.
begin;
select plan(32);

-- ============================================================ roles, as on hosted

select is(current_user::text, 'postgres', 'the tests run as postgres (as supabase test db does)');
select ok(not (select rolsuper from pg_roles where rolname = 'postgres'), 'postgres is not a superuser');
select is((select array[rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin] from pg_roles where rolname = 'postgres'),
  array[true, true, true, true, true], 'postgres has CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS and LOGIN, as on hosted');
select ok((select rolsuper from pg_roles where rolname = 'supabase_admin'), 'supabase_admin is the superuser');
select is((select datdba::regrole::text from pg_database where datname = current_database()), 'postgres',
  'postgres owns the database');
select has_role('anon', 'the anon role exists');
select has_role('authenticated', 'the authenticated role exists');
select ok((select rolbypassrls from pg_roles where rolname = 'service_role'), 'service_role bypasses RLS');
select ok((select rolcanlogin from pg_roles where rolname = 'authenticator'), 'authenticator can log in');

-- ============================================================ who owns what

select is((select relowner::regrole::text from pg_class where oid = 'auth.users'::regclass), 'supabase_auth_admin',
  'auth.users belongs to supabase_auth_admin');
select is((select proowner::regrole::text from pg_proc where oid = 'auth.uid()'::regprocedure), 'supabase_auth_admin',
  'the auth helpers belong to supabase_auth_admin');
select ok(has_table_privilege('postgres', 'auth.users', 'select, insert, update, delete, references'),
  'postgres may read and write auth.users and reference it from foreign keys');
select ok(not has_schema_privilege('postgres', 'auth', 'create'), 'postgres cannot create objects in auth');
select is(
  (select string_agg(distinct r::text, ', ') from (
     select relowner::regrole as r from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname in ('billing', 'billing_api', 'supabase_migrations')
     union all
     select proowner::regrole from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('billing', 'billing_api')) o),
  'postgres', 'every object the migrations made belongs to postgres: they were pushed as postgres');

-- ============================================================ extensions, where Supabase puts them

select is((select extnamespace::regnamespace::text from pg_extension where extname = 'pg_cron'), 'pg_catalog',
  'pg_cron is registered in pg_catalog (its jobs live in schema cron)');
select is((select extnamespace::regnamespace::text from pg_extension where extname = 'pg_net'), 'extensions',
  'pg_net is registered in extensions');
select is((select extnamespace::regnamespace::text from pg_extension where extname = 'pgtap'), 'extensions',
  'pgTAP lives in extensions, where supabase test db expects it');
select is((select nspowner::regrole::text from pg_namespace where nspname = 'cron'), 'supabase_admin',
  'the platform owns schema cron');
select is((select string_agg(distinct proowner::regrole::text, ', ') from pg_proc where pronamespace = 'net'::regnamespace),
  'supabase_admin', 'the platform owns pg_net''s functions');
select is(
  (select pg_get_function_arguments(p.oid) || ' returns ' || pg_get_function_result(p.oid)
   from pg_proc p where p.oid = 'net.http_post(text, jsonb, jsonb, jsonb, integer)'::regprocedure),
  'url text, body jsonb DEFAULT ''{}''::jsonb, params jsonb DEFAULT ''{}''::jsonb, headers jsonb DEFAULT '
    || '''{"Content-Type": "application/json"}''::jsonb, timeout_milliseconds integer DEFAULT 5000 returns bigint',
  'net.http_post has pg_net''s signature and defaults (a 5 s timeout)');
select ok(has_table_privilege('postgres', 'cron.job', 'select'), 'postgres reads cron.job');
select ok(not has_table_privilege('postgres', 'cron.job', 'insert') and not has_table_privilege('postgres', 'cron.job', 'update')
  and not has_table_privilege('postgres', 'cron.job', 'delete'), 'postgres changes jobs only through cron.schedule, never writes cron.job');
select ok(has_function_privilege('postgres', 'cron.schedule(text, text, text)', 'execute'), 'postgres may schedule jobs');

-- ============================================================ vault

select ok(has_table_privilege('postgres', 'vault.decrypted_secrets', 'select'), 'postgres reads Vault''s decrypted secrets');
select is((select count(*)::int from vault.decrypted_secrets where name in ('functions_url', 'cron_secret')), 2,
  'Vault holds the functions URL and the cron secret the schedules read');

-- ============================================================ auth helpers

set local request.jwt.claims = '{"sub": "6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11", "role": "authenticated", "email": "a@example.com"}';
select is(auth.uid(), '6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11'::uuid, 'auth.uid() reads sub from request.jwt.claims');
select is(auth.role(), 'authenticated', 'auth.role() reads role from request.jwt.claims');
select is(auth.jwt() ->> 'email', 'a@example.com', 'auth.jwt() returns the claims');

set local request.jwt.claims = '';
select is(auth.uid(), null, 'auth.uid() is null without claims');

-- as anon
set local role anon;
select throws_ok('select count(*) from auth.users', '42501', null, 'anon cannot read auth.users');
reset role;

-- as authenticated
set local role authenticated;
select throws_ok('select count(*) from auth.users', '42501', null, 'authenticated cannot read auth.users');
select throws_ok('select count(*) from vault.decrypted_secrets', '42501', null, 'authenticated cannot read Vault');
reset role;

select * from finish();
rollback;
