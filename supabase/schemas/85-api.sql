-- What a browser may read with supabase-js: security_invoker views in the exposed schema
-- billing_api, so the caller's own RLS policies on billing.* decide what each row shows.
-- Nothing here is writable.

-- ============================================================ views

create or replace view billing_api.balance with (security_invoker = true) as
  select a.user_id, b.balance, b.held, b.available
  from billing.accounts a, lateral billing.balance_of(a.id) b
  where a.user_id is not null;
comment on view billing_api.balance is 'The signed-in user''s balance, held and available credits.';
grant select on table billing_api.balance to authenticated;
grant select on table billing_api.balance to service_role;

create or replace view billing_api.ledger_entries with (security_invoker = true) as
  select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference
  from billing.entries e
  join billing.transfers t on t.id = e.transfer_id
  join billing.accounts a on a.id = e.account_id
  where a.user_id is not null;
comment on view billing_api.ledger_entries is 'The signed-in user''s ledger entries.';
grant select on table billing_api.ledger_entries to authenticated;
grant select on table billing_api.ledger_entries to service_role;

create or replace view billing_api.holds with (security_invoker = true) as
  select h.id, h.purpose, h.status, h.amount, h.captured_amount, h.expires_at, h.created_at, h.finished_at, h.correlation_id
  from billing.holds h;
comment on view billing_api.holds is 'The signed-in user''s holds.';
grant select on table billing_api.holds to authenticated;
grant select on table billing_api.holds to service_role;

create or replace view billing_api.credit_packages with (security_invoker = true) as
  select p.id, p.name, p.price_cents, p.currency, p.credits, p.bonus_credits
  from billing.credit_packages p where p.active order by p.sort_order;
comment on view billing_api.credit_packages is 'Packages on sale.';
grant select on table billing_api.credit_packages to authenticated;
grant select on table billing_api.credit_packages to service_role;

create or replace view billing_api.rate_cards with (security_invoker = true) as
  select distinct on (r.model) r.model, r.version, r.usd_per_million_input, r.usd_per_million_output, r.markup, r.effective_from,
    r.usd_per_million_cached_input, r.usd_per_million_reasoning, r.usd_per_image, r.usd_per_audio_second
  from billing.rate_cards r where r.effective_from <= now()
    and not exists (select 1 from billing.model_aliases a where a.alias = r.model)
  order by r.model, r.effective_from desc, r.version desc;
comment on view billing_api.rate_cards is 'The current rate card of each model, once (an alias''s earlier cards are history; null kind prices: see docs/pricing.md).';
grant select on table billing_api.rate_cards to authenticated;
grant select on table billing_api.rate_cards to service_role;

create or replace view billing_api.purchases with (security_invoker = true) as
  select p.id, p.package_id, p.status, p.price_cents, p.currency, p.credits, p.bonus_credits,
         p.amount_refunded_cents, p.created_at, p.paid_at, p.org_id
  from billing.purchases p;
comment on view billing_api.purchases is 'The signed-in user''s purchases.';
grant select on table billing_api.purchases to authenticated;
grant select on table billing_api.purchases to service_role;

create or replace view billing_api.lots with (security_invoker = true) as
  select l.id, t.kind as source, l.category, l.priority, l.amount, l.remaining, l.granted_at, l.expires_at, l.frozen
  from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id;
comment on view billing_api.lots is 'The signed-in user''s credit lots: where each credit came from, what is left, when it expires.';
grant select on table billing_api.lots to authenticated;
grant select on table billing_api.lots to service_role;

create or replace view billing_api.org_memberships with (security_invoker = true) as
  select m.org_id, o.name as org_name, m.user_id, m.role, m.active, m.joined_at, m.removed_at
  from billing.org_members m join billing.orgs o on o.id = m.org_id;
comment on view billing_api.org_memberships is 'Memberships the caller may see (RLS): their own, and every member of an organisation they administer.';
grant select on table billing_api.org_memberships to authenticated;
