-- Supabase Security Advisor's conditions, asserted over the catalogue, plus the pg_cron
-- upkeep jobs and the idempotency-key sweep.
begin;
select plan(13);

-- Schemas whose objects the Data API can reach, and our private ones.
create temp table our_schemas as select unnest(array['public', 'billing_api', 'billing']) as nspname;

select is(
  (select string_agg(n.nspname || '.' || c.relname, ', ') from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.relkind in ('r', 'p') and n.nspname in (select nspname from our_schemas) and not c.relrowsecurity),
  null, 'RLS is enabled on every table in the exposed and private schemas');

select is(
  (select string_agg(p.oid::regprocedure::text, ', ') from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname in (select nspname from our_schemas)
     and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')),
  null, 'every function has a fixed search_path');

select is(
  (select string_agg(p.oid::regprocedure::text || ' by ' || r, ', ')
   from pg_proc p join pg_namespace n on n.oid = p.pronamespace, unnest(array['anon', 'authenticated']) r
   where n.nspname in (select nspname from our_schemas) and p.prosecdef and has_function_privilege(r, p.oid, 'execute')),
  null, 'no SECURITY DEFINER function is executable by anon or authenticated');

-- The catalogue documents itself (README: every table and function says what it holds or does).
select is(
  (select string_agg(x, ', ' order by x) from (
     select n.nspname || '.' || c.relname as x from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p', 'v', 'm') and n.nspname in ('billing', 'billing_api')
       and obj_description(c.oid, 'pg_class') is null
     union all
     select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('billing', 'billing_api') and obj_description(p.oid, 'pg_proc') is null) u),
  null, 'every table, view and function in billing and billing_api has a comment');

select is(
  (select string_agg(n.nspname || '.' || c.relname, ', ') from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.relkind = 'v' and n.nspname in (select nspname from our_schemas)
     and not coalesce(c.reloptions @> array['security_invoker=true'], false)),
  null, 'every view runs with the invoker''s rights (no SECURITY DEFINER views)');

select is(
  (select string_agg(policyname, ', ') from pg_policies
   where coalesce(qual, '') ilike '%user_metadata%' or coalesce(with_check, '') ilike '%user_metadata%'),
  null, 'no policy reads user_metadata');

select is(
  (select string_agg(distinct v.relname, ', ') from pg_depend d
   join pg_rewrite rw on rw.oid = d.objid join pg_class v on v.oid = rw.ev_class join pg_namespace n on n.oid = v.relnamespace
   where d.refobjid = 'auth.users'::regclass and n.nspname in ('public', 'billing_api')),
  null, 'no exposed view reads auth.users');

select is(
  (select string_agg(r || ' ' || priv || ' ' || t, ', ')
   from unnest(array['billing.transfers', 'billing.entries', 'billing.money_transfers', 'billing.money_entries']) t,
        unnest(array['anon', 'authenticated', 'service_role']) r,
        unnest(array['insert', 'update', 'delete', 'truncate']) priv
   where has_table_privilege(r, t, priv)),
  null, 'the ledger tables are append-only for every API role (only the ledger functions write)');

select is(
  (select string_agg(extname, ', ') from pg_extension where extnamespace = 'public'::regnamespace),
  null, 'no extension is installed in public (extension_in_public)');

select ok(
  (select array_agg(jobname::text) from cron.job) @> array['billing-delete-expired-idempotency-keys',
    'billing-expire-stale-purchases', 'billing-release-expired-holds', 'billing-expire-jobs',
    'billing-reconcile-providers', 'billing-daily-revenue', 'billing-jobs-tick', 'billing-notify-dispatch',
    'billing-deep-health'],
  'pg_cron schedules the hold sweep, key cleanup, stale-purchase and job expiry, the daily revenue, and the HTTP calls (jobs tick, outbox, deep health, provider reconciliation)');

-- The idempotency-key sweep deletes only expired keys, and at most its batch.
insert into billing.idempotency_keys (user_id, action, key, request_hash, expires_at)
select gen_random_uuid(), 'test', 'k' || i, 'h', now() - interval '1 minute' from generate_series(1, 3) i;
insert into billing.idempotency_keys (user_id, action, key, request_hash) values (gen_random_uuid(), 'test', 'fresh', 'h');
select is(billing.delete_expired_idempotency_keys(2), 2, 'the sweep deletes at most its batch');
select is(billing.delete_expired_idempotency_keys(), 1, 'the next run deletes the rest of the expired keys');
select is((select count(*) from billing.idempotency_keys where action = 'test')::int, 1, 'unexpired keys are kept');

select * from finish();
rollback;
