-- What a browser may read with supabase-js: security_invoker views in the exposed schema
-- billing_api, so the caller's own RLS policies on billing.* decide what each row shows.
-- Nothing here is writable.

create schema if not exists billing_api;
comment on schema billing_api is 'Exposed through the Data API: read-only views over the ledger for signed-in users.';
revoke all on schema billing_api from public;
grant usage on schema billing_api to authenticated, service_role;

create view billing_api.balance with (security_invoker = true) as
  select a.user_id, b.balance, b.held, b.available
  from billing.accounts a, lateral billing.balance_of(a.id) b
  where a.user_id is not null;
comment on view billing_api.balance is 'The signed-in user''s balance, held and available credits.';

create view billing_api.ledger_entries with (security_invoker = true) as
  select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference
  from billing.entries e
  join billing.transfers t on t.id = e.transfer_id
  join billing.accounts a on a.id = e.account_id
  where a.user_id is not null;
comment on view billing_api.ledger_entries is 'The signed-in user''s ledger entries.';

create view billing_api.holds with (security_invoker = true) as
  select h.id, h.purpose, h.status, h.amount, h.captured_amount, h.expires_at, h.created_at, h.finished_at, h.correlation_id
  from billing.holds h;
comment on view billing_api.holds is 'The signed-in user''s holds.';

create view billing_api.credit_packages with (security_invoker = true) as
  select p.id, p.name, p.price_cents, p.currency, p.credits, p.bonus_credits
  from billing.credit_packages p where p.active order by p.sort_order;
comment on view billing_api.credit_packages is 'Packages on sale.';

create view billing_api.rate_cards with (security_invoker = true) as
  select distinct on (r.model) r.model, r.version, r.usd_per_million_input, r.usd_per_million_output, r.markup, r.effective_from
  from billing.rate_cards r where r.effective_from <= now()
  order by r.model, r.effective_from desc, r.version desc;
comment on view billing_api.rate_cards is 'The current rate card of each model.';

revoke all on all tables in schema billing_api from public, anon, authenticated, service_role;
grant select on all tables in schema billing_api to authenticated, service_role;

-- balance_of is an internal helper; the view calls it as the invoker.
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
