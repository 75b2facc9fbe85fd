-- Scheduled upkeep with pg_cron (minute granularity). Each job calls one idempotent,
-- batch-bounded function, so an overlapping or repeated run is harmless.

-- Where Supabase documents it: its catalogue in pg_catalog, its jobs in schema cron (a bare
-- `create extension pg_cron` registers it in public, which the Security Advisor flags). On
-- hosted, postgres may create it (an allowlisted extension); locally the bootstrap already has.
create extension if not exists pg_cron with schema pg_catalog;

select cron.schedule('billing-release-expired-holds', '* * * * *', $$select billing.release_expired_holds(500)$$);
select cron.schedule('billing-delete-expired-idempotency-keys', '*/5 * * * *',
  $$select billing.delete_expired_idempotency_keys(5000)$$);

-- For operators: platform accounts' balances are Σ of their entries (they are not tracked in place).
create view billing.platform_balances with (security_invoker = true) as
  select a.code, coalesce(sum(e.amount), 0)::numeric(38, 18) as balance, count(e.id) as entries
  from billing.accounts a left join billing.entries e on e.account_id = a.id
  where a.code is not null
  group by a.code;
comment on view billing.platform_balances is 'Each platform account''s balance as the sum of its entries.';
revoke all on billing.platform_balances from public, anon, authenticated;
grant select on billing.platform_balances to service_role;
