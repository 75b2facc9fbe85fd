-- What a hosted Supabase database already has before any migration runs, and nothing more.
-- Applied to the local cluster only (never a migration), by scripts/lib.sh, connected as the
-- cluster's superuser `supabase_admin` (initdb's bootstrap user), as the platform is on hosted.
-- Idempotent: it runs before every `db push`, so a change here reaches an existing cluster.
--
-- The hosted shape (supabase/postgres: migrations/db/init-scripts and migrations): `postgres`
-- is not a superuser (CREATEROLE CREATEDB REPLICATION BYPASSRLS) and owns the database;
-- `supabase_admin` owns the platform's objects (extensions, cron, vault); `auth.*` belongs to
-- `supabase_auth_admin` with grants to postgres. The migrations then run as postgres.
--
-- psql variables (set by scripts/lib.sh): functions_url, cron_secret (the Vault secrets the
-- hosted schedules read) and postgres_password.

-- ============================================================ roles
select format('create role postgres login nosuperuser createrole createdb replication bypassrls password %L',
  :'postgres_password')
where not exists (select 1 from pg_roles where rolname = 'postgres') \gexec
alter role postgres nosuperuser createrole createdb replication bypassrls login;
alter database postgres owner to postgres;
grant all on database postgres to postgres;

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit password 'postgres';
  end if;
  if not exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin noinherit createrole login noreplication;
  end if;
end $$;

grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;
-- What hosted grants postgres besides (supabase/postgres migrations): statistics, reading, signals.
grant pg_monitor, pg_read_all_data, pg_signal_backend to postgres;

-- ============================================================ schemas
create schema if not exists extensions;
grant all on schema extensions to postgres;
grant usage on schema extensions to anon, authenticated, service_role;

grant usage on schema public to postgres, anon, authenticated, service_role;
-- Objects the migrations (postgres) or the platform create in public reach the API roles.
alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;

-- ============================================================ auth (supabase_auth_admin's)
create schema if not exists auth authorization supabase_admin;
grant usage on schema auth to postgres, anon, authenticated, service_role;
grant all on schema auth to supabase_auth_admin;
-- postgres may use auth's tables (below) but not create objects in the schema (hosted since 2025).

create table if not exists auth.users (
  id uuid primary key,
  email text unique,
  role text default 'authenticated',
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  banned_until timestamptz
);
-- The columns Supabase Auth keeps for password sign-in (the local auth stand-in uses them).
alter table auth.users
  add column if not exists encrypted_password varchar(255),
  add column if not exists email_confirmed_at timestamptz,
  add column if not exists last_sign_in_at timestamptz;
alter table auth.users owner to supabase_auth_admin;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

alter function auth.jwt() owner to supabase_auth_admin;
alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.email() owner to supabase_auth_admin;

grant all on all tables in schema auth to supabase_auth_admin, postgres;
grant all on all routines in schema auth to supabase_auth_admin, postgres;
revoke all on auth.users from anon, authenticated;
grant all on auth.users to service_role;
grant execute on function auth.jwt(), auth.uid(), auth.role(), auth.email()
  to anon, authenticated, service_role;

-- ============================================================ extensions
-- Supabase's supautils lets postgres create allowlisted extensions, running the creation as
-- supabase_admin, then applies the platform's grants. pg_cron and pgTAP are not trusted
-- extensions here, so the platform (this file) creates them where Supabase documents them;
-- the migrations' `create extension if not exists … with schema …` are then no-ops. The pg_net
-- stand-in is marked trusted, so its migration really creates it as postgres.
create extension if not exists pg_cron with schema pg_catalog;
create extension if not exists pgtap with schema extensions;
-- Hosted has pgcrypto on in `extensions`; the auth stand-in hashes passwords with it.
create extension if not exists pgcrypto with schema extensions;
-- Hosted projects have pg_stat_statements on (shared_preload_libraries in lib.sh's pg_init).
create extension if not exists pg_stat_statements with schema extensions;

-- What supabase/postgres applies after creating pg_cron (extension-custom-scripts/pg_cron):
-- postgres schedules jobs through cron.schedule and reads cron.job, but never writes it.
grant usage on schema cron to postgres with grant option;
grant all on all functions in schema cron to postgres with grant option;
alter default privileges for role supabase_admin in schema cron grant all on sequences to postgres with grant option;
alter default privileges for role supabase_admin in schema cron grant all on tables to postgres with grant option;
alter default privileges for role supabase_admin in schema cron grant all on functions to postgres with grant option;
grant all privileges on all tables in schema cron to postgres with grant option;
revoke all on table cron.job from postgres;
grant select on table cron.job to postgres with grant option;
revoke trigger on cron.job_run_details from postgres;

-- ============================================================ vault
-- A stand-in for supabase_vault's interface (secrets are stored in clear here): the
-- `vault.decrypted_secrets` view the hosted schedules read, and create_secret/update_secret.
create schema if not exists vault;

create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text unique,
  description text not null default '',
  secret text not null,
  key_id uuid,
  nonce bytea,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create or replace view vault.decrypted_secrets as
  select s.id, s.name, s.description, s.secret, s.secret as decrypted_secret, s.key_id, s.nonce, s.created_at, s.updated_at
  from vault.secrets s;

create or replace function vault.create_secret(
  new_secret text, new_name text default null, new_description text default '', new_key_id uuid default null
) returns uuid
language sql
security definer
set search_path = ''
as $$
  insert into vault.secrets (secret, name, description, key_id)
  values (new_secret, new_name, coalesce(new_description, ''), new_key_id)
  returning id
$$;

create or replace function vault.update_secret(
  secret_id uuid, new_secret text default null, new_name text default null, new_description text default null,
  new_key_id uuid default null
) returns void
language sql
security definer
set search_path = ''
as $$
  update vault.secrets s set secret = coalesce(new_secret, s.secret), name = coalesce(new_name, s.name),
    description = coalesce(new_description, s.description), key_id = coalesce(new_key_id, s.key_id), updated_at = now()
  where s.id = secret_id
$$;

revoke all on all tables in schema vault from public;
revoke all on function vault.create_secret(text, text, text, uuid), vault.update_secret(uuid, text, text, text, uuid)
  from public;
-- As supabase/postgres grants them (migrations/db/migrations/*_create_vault.sql).
grant usage on schema vault to postgres with grant option;
grant select, delete on vault.secrets, vault.decrypted_secrets to postgres with grant option;
grant execute on function vault.create_secret(text, text, text, uuid), vault.update_secret(uuid, text, text, text, uuid)
  to postgres with grant option;

-- The secrets the hosted schedules read (billing.call_function): an operator creates them
-- once per project with vault.create_secret; locally they follow .local/env.
select vault.update_secret(s.id, :'functions_url') from vault.secrets s where s.name = 'functions_url';
select vault.create_secret(:'functions_url', 'functions_url', 'Base URL of the Edge Functions')
where not exists (select 1 from vault.secrets where name = 'functions_url');
select vault.update_secret(s.id, :'cron_secret') from vault.secrets s where s.name = 'cron_secret';
select vault.create_secret(:'cron_secret', 'cron_secret', 'CRON_SECRET: the bearer token of scheduled calls')
where not exists (select 1 from vault.secrets where name = 'cron_secret');

-- Supabase puts extensions on the search path of its roles.
alter role postgres set search_path = "$user", public, extensions;
