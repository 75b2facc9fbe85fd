-- Schools pay by invoice: an organisation's owner or admin asks for a package's credits on a
-- Stripe invoice (send_invoice, net terms, a PO number) instead of paying through Checkout.
--
-- The order keeps a crash between Stripe and here from losing anything: the intent is recorded
-- first (a draft row), Stripe's objects are made with idempotency keys derived from the row's
-- id (a retry reaches the same invoice), and the row opens when Stripe's finalized invoice is
-- recorded (by the request, or by the invoice.finalized webhook if the request died first).
--
-- One transition, one function: draft → open (open_org_invoice), open or uncollectible → paid
-- (pay_org_invoice), draft, open or uncollectible → void (void_org_invoice), open →
-- uncollectible (mark_org_invoice_uncollectible). billing.sync_org_invoice applies whichever
-- Stripe's re-fetched invoice calls for, so webhooks converge in any order, any number of times.
--
-- Paid, the invoice becomes a purchase of the organisation (billing.purchases, origin
-- 'invoice', the same id) and billing.sync_purchase credits the wallet exactly as an
-- organisation's Checkout purchase does: a paid lot whose cost is the invoice's amount before
-- tax (the tax kept beside it, as for a taxed Checkout purchase), and the package's bonus as a
-- promotional lot. Its refunds and disputes reach the credits through that purchase (pro rata
-- of what was paid, tax included).
-- An invoice marked uncollectible that is paid after all (Stripe allows it) credits like any
-- other: the money arrived.

-- ============================================================ tables

create table billing.org_invoices (
  id uuid primary key default gen_random_uuid(),     -- also the id of the purchase made when it is paid
  org_id uuid not null references billing.orgs (id),
  package_id text not null references billing.credit_packages (id),
  package_version integer not null,                  -- the version invoiced: credits, bonus and amount are its × quantity
  quantity integer not null,
  credits numeric(38, 18) not null,                  -- the package's credits × quantity
  bonus_credits numeric(38, 18) not null,            -- its bonus × quantity
  amount_cents integer not null,                     -- the package's price × quantity, before tax
  currency text not null,
  po_number text,
  days_until_due integer not null,
  status text not null default 'draft',
  request_key text not null,                         -- the Idempotency-Key of the request that made it
  stripe_invoice_id text unique,
  hosted_invoice_url text,
  invoice_pdf text,
  tax_cents integer,                                 -- Stripe Tax's, once finalized
  total_cents integer,                               -- what the school pays: amount + tax
  due_at timestamptz,
  purchase_id uuid references billing.purchases (id),
  created_by uuid not null references auth.users (id),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  paid_at timestamptz,
  constraint org_invoices_request unique (created_by, request_key),
  constraint org_invoices_quantity check (quantity between 1 and 100),
  constraint org_invoices_days_until_due check (days_until_due between 1 and 90),
  constraint org_invoices_po_number check (length(po_number) between 1 and 64),
  constraint org_invoices_amount check (amount_cents > 0 and tax_cents >= 0 and total_cents >= amount_cents),
  constraint org_invoices_status check (status in ('draft', 'open', 'paid', 'void', 'uncollectible')),
  constraint org_invoices_paid check ((status = 'paid') = (purchase_id is not null))
);
comment on table billing.org_invoices is 'An organisation''s request for a package on a Stripe invoice (net terms, PO number); its credits come when Stripe says it is paid.';
alter table billing.org_invoices enable row level security;
-- Every column but the payment page and PDF, which only billing.org_invoice_json shows (to its asker).
grant select (id, org_id, package_id, package_version, quantity, credits, bonus_credits, amount_cents, currency,
  po_number, days_until_due, status, request_key, stripe_invoice_id, tax_cents, total_cents, due_at, purchase_id,
  created_by, created_at, updated_at, paid_at) on table billing.org_invoices to authenticated;
grant select on table billing.org_invoices to service_role;

-- The admins' list pages by organisation, newest first.
create index org_invoices_org_created on billing.org_invoices (org_id, created_at);

-- ============================================================ functions

-- An invoice as the API shows it.
-- Its payment page and PDF (which carries the page's link) only for the admin who asked for it:
-- that admin answers for its payment (docs/credit-lots.md § Refunds, disputes and debt), so no
-- other admin may pay it with a card of theirs and leave the dispute to them.
create or replace function billing.org_invoice_json(p billing.org_invoices, p_reader uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p.id, 'org_id', p.org_id, 'package_id', p.package_id, 'quantity', p.quantity,
    'credits', trim_scale(p.credits)::text, 'bonus_credits', trim_scale(p.bonus_credits)::text,
    'amount_cents', p.amount_cents, 'tax_cents', p.tax_cents, 'total_cents', p.total_cents, 'currency', p.currency,
    'po_number', p.po_number, 'days_until_due', p.days_until_due, 'due_at', billing.json_time(p.due_at),
    'status', p.status,
    'hosted_invoice_url', case when p.created_by = p_reader then p.hosted_invoice_url end,
    'invoice_pdf', case when p.created_by = p_reader then p.invoice_pdf end,
    'stripe_invoice_id', p.stripe_invoice_id, 'created_by', p.created_by, 'created_at', billing.json_time(p.created_at),
    'paid_at', billing.json_time(p.paid_at))
$$;
comment on function billing.org_invoice_json(p billing.org_invoices, p_reader uuid) is 'Internal: an organisation invoice as the API shows it to p_reader (its payment page and PDF only to the admin who asked for it).';
revoke execute on function billing.org_invoice_json(p billing.org_invoices, p_reader uuid) from public;

-- Who may be billed, and how often (the platform must not relay invoices to whoever a requester
-- names, with text of their choosing):
-- * The invoice goes to the requester's own confirmed address (auth.users.email with
--   email_confirmed_at): a verified mailbox without a mail flow of our own. A billing_email given
--   must be that address (BILLING_EMAIL_NOT_VERIFIED).
-- * An organisation may ask only once it has paid for a package by card through Checkout (a
--   purchase with origin 'checkout', paid, neither refunded nor disputed), or an operator approved it
--   (billing.approve_org_invoicing): ORG_INVOICING_NOT_ALLOWED otherwise.
-- * At most 10 requests per requester and 20 per organisation in any rolling 24 hours, counted from
--   billing.org_invoices (drafts and voided ones included): INVOICE_LIMIT. A retry of a request
--   (its key) is not a new one.
-- Every text Stripe prints (the organisation's name, the address, the PO number) is refused by
-- the route when it holds a control, format or bidirectional character or a link (values/text.ts).
create or replace function billing.org_invoice_limits() returns jsonb
language sql immutable
set search_path = ''
as $$ select '{"requester": 10, "organisation": 20}'::jsonb $$;
comment on function billing.org_invoice_limits() is 'Internal: invoice requests allowed per requester and per organisation in a rolling 24 hours.';
revoke execute on function billing.org_invoice_limits() from public;

create or replace function billing.begin_org_invoice(p_user uuid, p_org uuid, p_package_id text, p_quantity integer,
  p_po_number text, p_days_until_due integer, p_request_key text, p_billing_email text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs;
  v_package billing.credit_packages;
  v billing.org_invoices;
  v_email text;
  v_scope text;
  v_count integer;
  v_oldest timestamptz;
begin
  -- Only an owner or admin runs up the school's bills: checked on every call, a retry of an
  -- unfinished request too (its draft would otherwise be sent, with the retry's billing details,
  -- for someone removed since).
  v_org := billing.require_org_role(p_org, p_user, true);
  -- The requester's own confirmed address, the only one billed (never echoed in the error: it
  -- would reach the Postgres log).
  select u.email into v_email from auth.users u where u.id = p_user and u.email_confirmed_at is not null;
  if v_email is null or (p_billing_email is not null
                         and billing.ascii_lower(btrim(p_billing_email)) <> billing.ascii_lower(v_email)) then
    perform billing.raise_error('BILLING_EMAIL_NOT_VERIFIED', jsonb_build_object('field', 'billing_email',
      'rule', 'your own confirmed email address'));
  end if;
  select * into v from billing.org_invoices i where i.created_by = p_user and i.request_key = p_request_key;
  if not found then
    if v_org.invoicing_approved_at is null
       and not exists (select 1 from billing.purchases p
                       where p.org_id = p_org and p.origin = 'checkout' and p.status = 'paid'
                         and p.amount_refunded_cents = 0 and p.dispute_id is null) then
      perform billing.raise_error('ORG_INVOICING_NOT_ALLOWED', jsonb_build_object('rule',
        'a first card purchase through Checkout, or an operator''s approval'));
    end if;
    -- Counted under a lock per requester, then per organisation (always in that order), so
    -- concurrent requests cannot both take the last place.
    perform pg_advisory_xact_lock(hashtextextended('org-invoices:requester:' || p_user, 0));
    perform pg_advisory_xact_lock(hashtextextended('org-invoices:org:' || p_org, 0));
    foreach v_scope in array array['requester', 'organisation'] loop
      select count(*), min(i.created_at) into v_count, v_oldest from billing.org_invoices i
      where case v_scope when 'requester' then i.created_by = p_user else i.org_id = p_org end
        and i.created_at > now() - interval '1 day';
      if v_count >= (billing.org_invoice_limits() ->> v_scope)::integer then
        perform billing.raise_error('INVOICE_LIMIT', jsonb_build_object('scope', v_scope,
          'limit', (billing.org_invoice_limits() ->> v_scope)::integer, 'window', '24 hours',
          'retry_at', billing.json_time(v_oldest + interval '1 day')));
      end if;
    end loop;
    select * into v_package from billing.credit_packages k where k.id = p_package_id and k.active;
    if not found then
      -- Never the id asked for: a caller's text in a DETAIL lands in the Postgres log.
      perform billing.raise_error('PACKAGE_NOT_FOUND', '{}');
    end if;
    insert into billing.org_invoices (org_id, package_id, package_version, quantity, credits, bonus_credits, amount_cents,
                                      currency, po_number, days_until_due, request_key, created_by)
    values (p_org, v_package.id, v_package.version, p_quantity, v_package.credits * p_quantity, v_package.bonus_credits * p_quantity,
            v_package.price_cents * p_quantity, v_package.currency, p_po_number, p_days_until_due, p_request_key, p_user)
    on conflict on constraint org_invoices_request do nothing
    returning * into v;
    if not found then  -- a concurrent twin of this request made it first
      select * into v from billing.org_invoices i where i.created_by = p_user and i.request_key = p_request_key;
    end if;
  end if;
  if (v.org_id, v.package_id, v.quantity, v.po_number, v.days_until_due)
     is distinct from (p_org, p_package_id, p_quantity, p_po_number, p_days_until_due) then
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'org_invoice'));
  end if;
  select * into v_org from billing.orgs o where o.id = v.org_id;
  return billing.org_invoice_json(v, p_user) || jsonb_build_object('org_name', v_org.name, 'billing_email', v_email,
    'stripe_customer_id', v_org.stripe_customer_id,
    'package_name', (select k.name from billing.credit_packages k where k.id = v.package_id));
end;
$$;
comment on function billing.begin_org_invoice(p_user uuid, p_org uuid, p_package_id text, p_quantity integer, p_po_number text, p_days_until_due integer, p_request_key text, p_billing_email text) is 'An owner or admin records the intent to invoice the organisation for a package (a draft, before any Stripe call), or gets the one this request key made; with the organisation''s Stripe customer and the requester''s confirmed address to bill. Refused unless the organisation paid by card once or an operator approved it, past the daily limits, or for another address than the requester''s own.';
revoke execute on function billing.begin_org_invoice(p_user uuid, p_org uuid, p_package_id text, p_quantity integer, p_po_number text, p_days_until_due integer, p_request_key text, p_billing_email text) from public;
grant execute on function billing.begin_org_invoice(p_user uuid, p_org uuid, p_package_id text, p_quantity integer, p_po_number text, p_days_until_due integer, p_request_key text, p_billing_email text) to service_role;

create or replace function billing.approve_org_invoicing(p_org uuid, p_approved boolean, p_admin uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs;
begin
  update billing.orgs o
  set invoicing_approved_at = case when p_approved then coalesce(o.invoicing_approved_at, now()) end,
      invoicing_approved_by = case when p_approved then coalesce(o.invoicing_approved_by, p_admin) end
  where o.id = p_org returning * into v_org;
  if not found then
    perform billing.raise_error('ORG_NOT_FOUND', '{}');
  end if;
  return jsonb_build_object('org_id', v_org.id, 'invoicing_approved', v_org.invoicing_approved_at is not null,
    'invoicing_approved_at', billing.json_time(v_org.invoicing_approved_at), 'invoicing_approved_by', v_org.invoicing_approved_by);
end;
$$;
comment on function billing.approve_org_invoicing(p_org uuid, p_approved boolean, p_admin uuid) is 'A platform admin lets an organisation ask for invoices before its first card purchase (p_approved), or withdraws that.';
revoke execute on function billing.approve_org_invoicing(p_org uuid, p_approved boolean, p_admin uuid) from public, anon, authenticated;
grant execute on function billing.approve_org_invoicing(p_org uuid, p_approved boolean, p_admin uuid) to service_role;

-- A platform admin who checked who a school is marks it verified: its wallet then answers for its
-- purchases paid from then on at a dispute or refund, and the admin who paid is not suspended
-- for them (purchases.wallet_answers). Before, the admin who paid answers, as for their own.
create or replace function billing.verify_org(p_org uuid, p_verified boolean, p_admin uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_org billing.orgs;
begin
  update billing.orgs o
  set verified_at = case when p_verified then coalesce(o.verified_at, now()) end,
      verified_by = case when p_verified then coalesce(o.verified_by, p_admin) end
  where o.id = p_org returning * into v_org;
  if not found then
    perform billing.raise_error('ORG_NOT_FOUND', '{}');
  end if;
  return jsonb_build_object('org_id', v_org.id, 'verified', v_org.verified_at is not null,
    'verified_at', billing.json_time(v_org.verified_at), 'verified_by', v_org.verified_by);
end;
$$;
comment on function billing.verify_org(p_org uuid, p_verified boolean, p_admin uuid) is 'A platform admin marks an organisation verified (its wallet answers for its own purchases at a dispute or refund) or withdraws that.';
revoke execute on function billing.verify_org(p_org uuid, p_verified boolean, p_admin uuid) from public, anon, authenticated;
grant execute on function billing.verify_org(p_org uuid, p_verified boolean, p_admin uuid) to service_role;

create or replace function billing.attach_org_customer(p_org uuid, p_customer text) returns text
language sql
security definer
set search_path = ''
as $$
  update billing.orgs o set stripe_customer_id = coalesce(o.stripe_customer_id, p_customer) where o.id = p_org
  returning o.stripe_customer_id
$$;
comment on function billing.attach_org_customer(p_org uuid, p_customer text) is 'Records the organisation''s Stripe customer; the first one recorded stays (a racing request uses it), and is returned.';
revoke execute on function billing.attach_org_customer(p_org uuid, p_customer text) from public;
grant execute on function billing.attach_org_customer(p_org uuid, p_customer text) to service_role;

create or replace function billing.open_org_invoice(p_id uuid) returns text
language plpgsql
set search_path = ''
as $$
begin
  update billing.org_invoices i set status = 'open', updated_at = now() where i.id = p_id and i.status = 'draft';
  return case when found then 'org_invoice_opened' else 'org_invoice_unchanged' end;
end;
$$;
comment on function billing.open_org_invoice(p_id uuid) is 'Internal: draft → open, once Stripe finalized the invoice.';
revoke execute on function billing.open_org_invoice(p_id uuid) from public;

create or replace function billing.void_org_invoice(p_id uuid) returns text
language plpgsql
set search_path = ''
as $$
begin
  update billing.org_invoices i set status = 'void', updated_at = now()
  where i.id = p_id and i.status in ('draft', 'open', 'uncollectible');
  return case when found then 'org_invoice_voided' else 'org_invoice_unchanged' end;
end;
$$;
comment on function billing.void_org_invoice(p_id uuid) is 'Internal: → void (Stripe voided it); credits nothing. A paid invoice is never voided (Stripe refuses to).';
revoke execute on function billing.void_org_invoice(p_id uuid) from public;

create or replace function billing.mark_org_invoice_uncollectible(p_id uuid) returns text
language plpgsql
set search_path = ''
as $$
begin
  update billing.org_invoices i set status = 'uncollectible', updated_at = now()
  where i.id = p_id and i.status in ('draft', 'open');
  return case when found then 'org_invoice_uncollectible' else 'org_invoice_unchanged' end;
end;
$$;
comment on function billing.mark_org_invoice_uncollectible(p_id uuid) is 'Internal: open → uncollectible; credits nothing (a later payment still does: pay_org_invoice).';
revoke execute on function billing.mark_org_invoice_uncollectible(p_id uuid) from public;

-- What billing.sync_purchase reads, from a paid org invoice's state: its price before tax, the
-- tax on top and the total paid, and its charge (refunds as Stripe reports them, tax included).
create or replace function billing.org_invoice_purchase_state(p billing.org_invoices, p_state jsonb) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('purchase_id', p.id, 'payment_status', 'paid', 'amount_subtotal', p.amount_cents,
    'amount_total', p.total_cents, 'amount_tax', p.tax_cents, 'currency', p.currency,
    'payment_intent', p_state ->> 'payment_intent', 'charge_id', p_state ->> 'charge_id',
    'stripe_fee', p_state -> 'stripe_fee', 'amount_refunded', coalesce((p_state ->> 'amount_refunded')::integer, 0),
    'dispute_id', p_state ->> 'dispute_id', 'dispute_status', p_state ->> 'dispute_status')
$$;
comment on function billing.org_invoice_purchase_state(p billing.org_invoices, p_state jsonb) is 'Internal: a paid org invoice''s payment as its purchase sees it (the amounts the invoice recorded when paid, its charge as Stripe reports it).';
revoke execute on function billing.org_invoice_purchase_state(p billing.org_invoices, p_state jsonb) from public;

create or replace function billing.pay_org_invoice(p_id uuid, p_state jsonb) returns text
language plpgsql
set search_path = ''
as $$
declare
  v billing.org_invoices;
  v_net integer := (p_state ->> 'subtotal')::integer;
  v_total integer := (p_state ->> 'total')::integer;
begin
  select * into v from billing.org_invoices i where i.id = p_id;
  if v.status = 'paid' then
    return 'org_invoice_unchanged';
  end if;
  -- What was invoiced before tax must be what we asked for; the school paid it with its tax.
  if v_net is distinct from v.amount_cents or lower(p_state ->> 'currency') is distinct from v.currency
     or (p_state ->> 'amount_paid')::integer is distinct from v_total then
    perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('org_invoice_id', v.id,
      'expected_cents', v.amount_cents, 'invoiced_cents', v_net, 'paid_cents', p_state ->> 'amount_paid',
      'currency', p_state ->> 'currency'));
  end if;
  insert into billing.purchases (id, user_id, package_id, request_key, price_cents, currency, credits, bonus_credits,
                                 org_id, origin, package_version)
  values (v.id, v.created_by, v.package_id, 'org-invoice:' || v.id, v.amount_cents, v.currency, v.credits,
          v.bonus_credits, v.org_id, 'invoice', v.package_version);
  update billing.org_invoices i
  set status = 'paid', purchase_id = v.id, total_cents = v_total, tax_cents = v_total - v_net, paid_at = now(),
      updated_at = now()
  where i.id = v.id returning * into v;
  -- The organisation's Checkout purchases credit its wallet here, and so does this one.
  perform billing.sync_purchase(billing.org_invoice_purchase_state(v, p_state));
  return 'org_invoice_paid';
end;
$$;
comment on function billing.pay_org_invoice(p_id uuid, p_state jsonb) is 'Internal: → paid, once: checks the amount before tax and what was paid, then makes the invoice a purchase of the organisation and credits its wallet through billing.sync_purchase (cost = the amount before tax).';
revoke execute on function billing.pay_org_invoice(p_id uuid, p_state jsonb) from public;

create or replace function billing.sync_org_invoice(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v billing.org_invoices;
  v_outcome text;
begin
  -- By our id in the invoice's metadata (the first event may come before the request recorded
  -- Stripe's id); only we set metadata, and the organisation must match too.
  if coalesce(p_state ->> 'org_invoice_id', '') !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    return 'unknown_org_invoice';
  end if;
  select * into v from billing.org_invoices i
  where i.id = (p_state ->> 'org_invoice_id')::uuid and i.org_id::text = p_state ->> 'org_id' for update;
  if not found then
    return 'unknown_org_invoice';
  end if;
  if v.stripe_invoice_id <> p_state ->> 'invoice_id' then
    return 'org_invoice_mismatch';  -- not the invoice this row made (it never makes two)
  end if;
  update billing.org_invoices i
  set stripe_invoice_id = p_state ->> 'invoice_id',
      hosted_invoice_url = coalesce(p_state ->> 'hosted_invoice_url', i.hosted_invoice_url),
      invoice_pdf = coalesce(p_state ->> 'invoice_pdf', i.invoice_pdf),
      due_at = coalesce(to_timestamp((p_state ->> 'due_date')::bigint), i.due_at),
      -- The totals of a finalized invoice (a draft's may lack its item; a paid one's are kept).
      tax_cents = case when i.status = 'paid' or p_state ->> 'status' not in ('open', 'paid', 'uncollectible') then i.tax_cents
                       else (p_state ->> 'total')::integer - (p_state ->> 'subtotal')::integer end,
      total_cents = case when i.status = 'paid' or p_state ->> 'status' not in ('open', 'paid', 'uncollectible')
                         then i.total_cents else (p_state ->> 'total')::integer end
  where i.id = v.id;
  v_outcome := case p_state ->> 'status'
    when 'open' then billing.open_org_invoice(v.id)
    when 'paid' then billing.pay_org_invoice(v.id, p_state)
    when 'void' then billing.void_org_invoice(v.id)
    when 'uncollectible' then billing.mark_org_invoice_uncollectible(v.id)
    else 'org_invoice_unchanged' end;
  -- Paid: its refunds and disputes converge through its purchase, like any purchase's.
  select * into v from billing.org_invoices i where i.id = v.id;
  if v.status = 'paid' and v_outcome <> 'org_invoice_paid' then
    perform billing.sync_purchase(billing.org_invoice_purchase_state(v, p_state));
  end if;
  return v_outcome;
end;
$$;
comment on function billing.sync_org_invoice(p_state jsonb) is 'Converges an organisation invoice on Stripe''s re-fetched invoice (and, once paid, its charge): open, paid (credits once), void or uncollectible (credits nothing); refunds and disputes reach the credits through its purchase. Safe in any order, any number of times.';
revoke execute on function billing.sync_org_invoice(p_state jsonb) from public;
grant execute on function billing.sync_org_invoice(p_state jsonb) to service_role;

create or replace function billing.list_org_invoices(p_user uuid, p_org uuid, p_after uuid, p_limit integer) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return (select coalesce(jsonb_agg(billing.org_invoice_json(x, p_user) order by x.created_at desc, x.id desc), '[]')
    from (select i.* from billing.org_invoices i
          where i.org_id = p_org
            and (p_after is null or (i.created_at, i.id) < (select c.created_at, c.id from billing.org_invoices c
                                                            where c.id = p_after and c.org_id = p_org))
          order by i.created_at desc, i.id desc limit least(greatest(p_limit, 1), 101)) x);
end;
$$;
comment on function billing.list_org_invoices(p_user uuid, p_org uuid, p_after uuid, p_limit integer) is 'An owner or admin pages through the organisation''s invoices, newest first, at most p_limit (≤ 101: a page and one more); p_after is the last one of the previous page.';
revoke execute on function billing.list_org_invoices(p_user uuid, p_org uuid, p_after uuid, p_limit integer) from public;
grant execute on function billing.list_org_invoices(p_user uuid, p_org uuid, p_after uuid, p_limit integer) to service_role;

create or replace function billing.get_org_invoice(p_user uuid, p_org uuid, p_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return (select billing.org_invoice_json(i, p_user) from billing.org_invoices i where i.id = p_id and i.org_id = p_org);
end;
$$;
comment on function billing.get_org_invoice(p_user uuid, p_org uuid, p_id uuid) is 'An owner or admin reads one of the organisation''s invoices (null: no such invoice there).';
revoke execute on function billing.get_org_invoice(p_user uuid, p_org uuid, p_id uuid) from public;
grant execute on function billing.get_org_invoice(p_user uuid, p_org uuid, p_id uuid) to service_role;

-- ============================================================ policies

create policy "Admins read their organisation's invoices" on billing.org_invoices
  for select to authenticated using (org_id in (select a.org_id from billing.org_admins a where a.user_id = (select auth.uid())));
