-- Organisations' invoices: who may ask for one, and the transitions SQL owns: paid credits the
-- wallet exactly once (cost before tax), void and uncollectible credit nothing, a wrong amount
-- is refused, an uncollectible invoice paid after all credits, a refund reaches the credits.
begin;
select plan(22);
\ir helpers.psql

insert into auth.users (id, email) values
  ('dddddddd-0000-4000-8000-000000000001', 'owner@invoice.test'),
  ('dddddddd-0000-4000-8000-000000000002', 'member@invoice.test'),
  ('dddddddd-0000-4000-8000-000000000003', 'outsider@invoice.test');

create temp table ids as
  select (billing.create_org('dddddddd-0000-4000-8000-000000000001', 'Invoiced School', 'allowance', true) ->> 'id')::uuid as org;
select billing.invite_member('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'member@invoice.test', 'member',
  'hash-invoice-member', 86400);
select billing.answer_invitation('dddddddd-0000-4000-8000-000000000002', 'member@invoice.test', 'hash-invoice-member', true);

-- An invoice asked for by the owner, under request key p_key: its id.
create function pg_temp.begin(p_key text, p_package text default 'mini', p_quantity integer default 2) returns uuid
language sql as $$
  select (billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), p_package, p_quantity,
    'PO-1', 30, p_key) ->> 'id')::uuid
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

select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000002', (select org from ids), 'mini', 1, null, 30, 'k')$$),
  'ORG_FORBIDDEN', 'a member cannot invoice the organisation');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000003', (select org from ids), 'mini', 1, null, 30, 'k')$$),
  'ORG_NOT_FOUND', 'an outsider cannot, nor learn that it exists');
select is(pg_temp.err($$select billing.list_org_invoices('dddddddd-0000-4000-8000-000000000002', (select org from ids), null, 10)$$),
  'ORG_FORBIDDEN', 'a member cannot list its invoices');
select is(pg_temp.err($$select billing.begin_org_invoice('dddddddd-0000-4000-8000-000000000001', (select org from ids), 'mini', 1, null, 91, 'k')$$),
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

select * from finish();
rollback;
