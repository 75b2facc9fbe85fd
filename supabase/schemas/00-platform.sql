-- The project's two schemas, deny-by-default privileges, and the platform extensions it uses.
--
-- billing holds every table and function: private, never exposed through the Data API. Money
-- moves only through its SECURITY DEFINER functions, each granted to the one role that needs it.
-- billing_api is the exposed schema: read-only security_invoker views, so the caller's own RLS
-- policies on billing.* decide which rows each view shows (85-api.sql).
--
-- These files are the current state. The migrations are the deploy record, generated from them
-- with ./scripts/db-diff <name> (see README.md); ./scripts/test proves both build the same catalogue.

-- ============================================================ schemas

create schema if not exists billing;
comment on schema billing is 'Private: the credit ledger. Not exposed through the API; read through billing_api.';
revoke all on schema billing from public;
-- Reads for signed-in users go through billing_api's views, which run under these grants and policies.
grant usage on schema billing to authenticated, service_role;

-- Deny by default: nothing in billing is executable by PUBLIC unless a grant below a function says so.
alter default privileges in schema billing revoke execute on functions from public;

create schema if not exists billing_api;
comment on schema billing_api is 'Exposed through the Data API: read-only views over the ledger for signed-in users.';
revoke all on schema billing_api from public;
grant usage on schema billing_api to authenticated, service_role;

-- ============================================================ extensions

-- Where Supabase documents it: its catalogue in pg_catalog, its jobs in schema cron (a bare
-- `create extension pg_cron` registers it in public, which the Security Advisor flags). On
-- hosted, postgres may create it (an allowlisted extension); locally the bootstrap already has.
create extension if not exists pg_cron with schema pg_catalog;

-- HTTP-only work is scheduled with pg_cron + pg_net (95-schedules.sql). pg_net's functions live
-- in schema net; the extension is registered in extensions.
create extension if not exists pg_net with schema extensions;
