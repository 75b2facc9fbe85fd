-- Organisations' invoices: who may ask for one, and the transitions SQL owns: paid credits the
-- wallet exactly once (cost before tax), void and uncollectible credit nothing, a wrong amount
-- is refused, an uncollectible invoice paid after all credits, a refund reaches the credits.
begin;
select plan(30);
\ir helpers.psql

insert into auth.users (id, email, email_confirmed_at) values
  ('dddddddd-0000-4000-8000-000000000001', 'owner@invoice.test', now()),
  ('dddddddd-0000-4000-8000-000000000002', 'member@invoice.test', now()),
  ('dddddddd-0000-4000-8000-000000000003', 'outsider@invoice.test', now()),
  ('dddddddd-0000-4000-8000-000000000004', 'unconfirmed@invoice.test', null);

create temp table ids as
  select (billing.create_org('dddddddd-0000-4000-8000-000000000001', 'Invoiced School', 'allowance', true) ->> 'id')::uuid as org;
select billing.invite_member('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'member@invoice.test', 'member',
  'hash-invoice-member', 86400);
select billing.answer_invitation('dddddddd-0000-4000-8000-000000000002', 'member@invoice.test', 'hash-invoice-member', true);

-- An invoice asked for by the owner, under request key p_key: its id.
create function pg_temp.begin(p_key text, p_package text default 'mini', p_quantity integer default 2) returns uuid
language sql as $$
  select (billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), p_package, p_quantity,
    'PO-1', 30, p_key, null) ->> 'id')::uuid
$$;
-- Stripe's invoice for it in `status`, `net` before and `tax` on top; paid by charge ch_<key> with `refunded` back.
create function pg_temp.state(p_id uuid, p_status text, p_net integer default 1000, p_tax integer default 100,
  p_refunded integer default 0) returns jsonb
language sql as $$
  select jsonb_build_object('kind', 'org_invoice', 'invoice_id', 'in_' || p_id, 'org_invoice_id', p_id,
    'org_id', (select org from ids), 'status', p_status, 'currency', 'usd', 'subtotal', p_net, 'total', p_net + p_tax,
    'amount_paid', case when p_status = 'paid' then p_net + p_tax else 0 end, 'hosted_invoice_url', 'https://pay.test/' || p_id,
    'invoice_pdf', 'https://pay.test/' || p_id || '.pdf', 'due_date', 1900000000,
    'payment_intent', case when p_status = 'paid' then 'pi_' || p_id end,
    'charge_id', case when p_status = 'paid' then 'ch_' || p_id end, 'amount_refunded', p_refunded)
$$;
create function pg_temp.wallet() returns numeric language sql as $$
  select (billing.balance_of(billing.org_wallet_id((select org from ids)))).balance
$$;
create function pg_temp.status(p_id uuid) returns text language sql as $$
  select status from billing.org_invoices where id = p_id
$$;

-- ============================================================ who may ask

select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000002', (select org from ids), 'mini', 1, null, 30, 'k', null)$$),
  'ORG_FORBIDDEN', 'a member cannot invoice the organisation');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000003', (select org from ids), 'mini', 1, null, 30, 'k', null)$$),
  'ORG_NOT_FOUND', 'an outsider cannot, nor learn that it exists');
select is(pg_temp.err($$select billing.list_org_invoices('dddddddd-0000-4000-8000-000000000002', (select org from ids), null, 10)$$),
  'ORG_FORBIDDEN', 'a member cannot list its invoices');
-- An organisation that never paid by card asks only once an operator approved it.
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'mini', 1, null, 30, 'new', null)$$),
  'ORG_INVOICING_NOT_ALLOWED', 'a new organisation cannot ask for invoices before a card purchase or an approval');
select is((billing.approve_org_invoicing((select org from ids), true, 'dddddddd-0000-4000-8000-000000000003') ->> 'invoicing_approved')::boolean,
  true, 'an operator approves it');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'mini', 1, null, 30, 'k', 'someone@else.test')$$),
  'BILLING_EMAIL_NOT_VERIFIED', 'the invoice goes to the requester''s own confirmed address only');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'no-such-package', 1, null, 30, 'k', 'OWNER@invoice.test')$$),
  'PACKAGE_NOT_FOUND', 'their own address in another case is theirs');
select is(pg_temp.detail($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'jane@evil.test-078-05-1120', 1, null, 30, 'k', null)$$),
  '{}'::jsonb, 'an unknown package is refused without the text asked for in the detail');
select billing.set_member_role((select org from ids), 'dddddddd-0000-4000-8000-000000000004', 'admin');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000004', (select org from ids), 'mini', 1, null, 30, 'k', null)$$),
  'BILLING_EMAIL_NOT_VERIFIED', 'an admin without a confirmed address cannot be billed');
select billing.remove_member('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'dddddddd-0000-4000-8000-000000000004');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'mini', 1, null, 91, 'k', null)$$),
  'new row for relation "org_invoices" violates check constraint "org_invoices_days_until_due"', 'net terms are 1 to 90 days');

-- ============================================================ paid: credited once

create temp table inv as select pg_temp.begin('a') as paid, pg_temp.begin('b') as voided, pg_temp.begin('c') as late,
  pg_temp.begin('d') as wrong;
select is(pg_temp.begin('a'), (select paid from inv), 'the same request key is the same invoice');
select is(pg_temp.err($$select pg_temp.begin('a', 'mini', 3)$$), 'IDEMPOTENCY_KEY_REUSED', 'another request under it is refused');
select is(billing.sync_org_invoice(pg_temp.state((select paid from inv), 'open')), 'org_invoice_opened', 'finalized, it opens');
select is(pg_temp.wallet(), 0::numeric, 'an open invoice credits nothing');
select is(billing.sync_org_invoice(pg_temp.state((select paid from inv), 'paid')), 'org_invoice_paid', 'paid, it credits');
select is(billing.sync_org_invoice(pg_temp.state((select paid from inv), 'paid')), 'org_invoice_unchanged', 'a replay changes nothing');
select is(pg_temp.wallet(), 10000::numeric, 'the wallet got the package twice over, once');
select results_eq($$select category, cost_cents::integer from billing.lots where purchase_id = (select paid from inv)$$,
  $$values ('paid'::text, 1000)$$, 'one paid lot whose cost is the amount before tax');
select is((select array[tax_cents, total_cents] from billing.org_invoices where id = (select paid from inv)), array[100, 1100],
  'the invoice keeps its tax and total');
select is(billing.sync_org_invoice(pg_temp.state((select paid from inv), 'void')), 'org_invoice_unchanged',
  'a paid invoice is never voided');

-- ============================================================ void, uncollectible, wrong amounts

select billing.sync_org_invoice(pg_temp.state((select voided from inv), 'open'));
select is(billing.sync_org_invoice(pg_temp.state((select voided from inv), 'void')), 'org_invoice_voided', 'voided');
select is(pg_temp.wallet(), 10000::numeric, 'a void invoice credits nothing');

select is(billing.sync_org_invoice(pg_temp.state((select late from inv), 'uncollectible')), 'org_invoice_uncollectible',
  'marked uncollectible');
select is(billing.sync_org_invoice(pg_temp.state((select late from inv), 'paid')), 'org_invoice_paid',
  'an uncollectible invoice paid after all credits');

select is(pg_temp.err($$select billing.sync_org_invoice(pg_temp.state((select wrong from inv), 'paid', 999))$$),
  'PAYMENT_AMOUNT_MISMATCH', 'an invoice for another amount before tax is refused');

-- ============================================================ refunds

select billing.sync_org_invoice(pg_temp.state((select paid from inv), 'paid', p_refunded => 550));
select is(pg_temp.wallet(), 15000::numeric, 'half the total back takes half the credits (the purchase sees half the net)');

select is(billing.check_lots() -> 'accounts', '[]'::jsonb, 'every account''s lots add up to its balance');

-- The revenue report: the invoices' money is the organisation's, and says it came by invoice.
select is((select jsonb_build_object('gmv', o -> 'gmv_cents', 'invoiced', o -> 'invoiced_cents', 'refunds', o -> 'refunds_cents')
           from jsonb_array_elements(billing.revenue_metrics(now() - interval '1 day', now() + interval '1 day') -> 'organisations') o
           where o ->> 'org_id' = (select org from ids)::text),
  '{"gmv": 2000, "invoiced": 2000, "refunds": 500}'::jsonb, 'two invoices paid (1,000 each before tax), half of one refunded');

-- ============================================================ daily limits

select is(pg_temp.err($$select count(pg_temp.begin('limit-' || i, 'mini', 1)) from generate_series(1, 20) i$$),
  'INVOICE_LIMIT', 'a requester asks for at most 10 invoices a day, drafts and voided ones counted');
select is(pg_temp.begin('a'), (select paid from inv), 'a retry of an earlier request is not a new one');

select * from finish();
rollback;
