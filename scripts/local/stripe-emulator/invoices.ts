// Stripe Invoicing for one-off invoices (an organisation's credits on net terms): customers with
// a billing address, draft invoices (send_invoice, days_until_due, custom fields, payment method
// types, automatic tax, metadata), invoice items on them, finalize (hosted page and PDF served
// here), send, void and mark uncollectible, each emitting the event Stripe sends. The test
// control POST /_emulator/invoices/:id/pay (subscriptions.ts) pays one here by bank transfer
// (customer_balance) or card. Tax: Stripe Tax's one rate (tax.ts) on the lines' subtotal.
import type Stripe from 'stripe';
import { chargeEvent, emit, invoiceEvent } from './events.ts';
import { type FormObject, obj, str } from './form.ts';
import { invalid, missing, route } from './http.ts';
import { invoiceBase, lineBase, setAmounts } from './billing-objects.ts';
import { payInvoice } from './charges.ts';
import { paymentIntent } from './objects.ts';
import { customer as newCustomer } from './off-session.ts';
import { automaticTaxBlock, automaticTaxRequested, taxOn } from './tax.ts';
import { config, newId, now, store } from './state.ts';

const meta = (v: unknown) => Object.fromEntries(Object.entries(obj(v)).map(([k, x]) => [k, String(x)]));
const list = (v: unknown) => (Array.isArray(v) ? v : []);

function address(v: unknown): Stripe.Address | null {
  const a = obj(v);
  if (!Object.keys(a).length) return null;
  const field = (k: string) => str(a[k]);
  return {
    line1: field('line1'),
    line2: field('line2'),
    city: field('city'),
    state: field('state'),
    postal_code: field('postal_code'),
    country: field('country'),
  };
}

function getCustomer(id: string): Stripe.Customer {
  const c = store.customers.get(id);
  if (!c) throw missing('customer', id);
  return c;
}

function setCustomer(c: Stripe.Customer, body: FormObject): Stripe.Customer {
  if (body.email !== undefined) c.email = str(body.email);
  if (body.name !== undefined) c.name = str(body.name);
  if (body.address !== undefined) c.address = address(body.address);
  if (body.metadata !== undefined) c.metadata = { ...c.metadata, ...meta(body.metadata) };
  return c;
}

function getInvoice(id: string): Stripe.Invoice {
  const inv = store.invoices.get(id);
  if (!inv) throw missing('invoice', id);
  return inv;
}

const mustBe = (inv: Stripe.Invoice, ...statuses: Stripe.Invoice.Status[]) => {
  if (!statuses.includes(inv.status as Stripe.Invoice.Status)) {
    throw invalid(`The invoice is ${inv.status}; this needs it ${statuses.join(' or ')}.`);
  }
};

/** The lines' subtotal with Stripe Tax's share on top when the invoice asked for it. */
function total(inv: Stripe.Invoice): void {
  const subtotal = inv.lines.data.reduce((n, l) => n + l.amount, 0);
  setAmounts(inv, subtotal, taxOn(subtotal, inv.automatic_tax.enabled));
}

/** POST /v1/invoices: a draft with nothing on it (pending items are left out, as asked). */
function createInvoice(body: FormObject): Stripe.Invoice {
  const cus = getCustomer(str(body.customer) ?? '');
  const inv = invoiceBase(cus.id, str(body.currency) ?? 'usd', 'manual');
  const collection = str(body.collection_method) ?? 'charge_automatically';
  if (collection !== 'send_invoice' && collection !== 'charge_automatically') {
    throw invalid('collection_method must be send_invoice or charge_automatically.', 'collection_method');
  }
  const days = Number(str(body.days_until_due));
  if (collection === 'send_invoice' && !(Number.isInteger(days) && days >= 0 && days <= 1825)) {
    throw invalid('days_until_due is required for send_invoice.', 'days_until_due');
  }
  const fields = list(body.custom_fields).map(obj).map((f) => ({ name: str(f.name) ?? '', value: str(f.value) ?? '' }));
  if (fields.length > 4 || fields.some((f) => !f.name || f.name.length > 40 || f.value.length > 140)) {
    throw invalid('At most 4 custom_fields, each a name of 1–40 and a value of up to 140 characters.', 'custom_fields');
  }
  const methods = list(obj(body.payment_settings).payment_method_types).map(String);
  inv.collection_method = collection;
  inv.custom_fields = fields.length ? fields : null;
  inv.description = str(body.description);
  inv.metadata = meta(body.metadata);
  inv.automatic_tax = { disabled_reason: null, ...automaticTaxBlock(automaticTaxRequested(body)) };
  inv.payment_settings.payment_method_types = methods.length
    ? methods as Stripe.Invoice.PaymentSettings.PaymentMethodType[]
    : null;
  store.invoiceDays.set(inv.id, collection === 'send_invoice' ? days : null);
  store.invoices.set(inv.id, inv);
  return inv;
}

/** POST /v1/invoiceitems on a draft invoice: a line for `amount` (in the invoice's currency). */
function createInvoiceItem(body: FormObject): Stripe.InvoiceItem {
  const inv = getInvoice(str(body.invoice) ?? '');
  mustBe(inv, 'draft');
  const cus = str(body.customer) ?? '';
  if (cus !== inv.customer) throw invalid('The invoice belongs to another customer.', 'invoice');
  const amount = Number(str(body.amount));
  if (!Number.isInteger(amount) || amount <= 0) throw invalid('amount must be a positive integer.', 'amount');
  if ((str(body.currency) ?? inv.currency) !== inv.currency) {
    throw invalid("The currency must be the invoice's.", 'currency');
  }
  const description = str(body.description);
  const item: Stripe.InvoiceItem = {
    id: newId('ii'),
    object: 'invoiceitem',
    amount,
    currency: inv.currency,
    customer: cus,
    customer_account: null,
    date: now(),
    description,
    discountable: true,
    discounts: [],
    invoice: inv.id,
    livemode: false,
    metadata: meta(body.metadata),
    net_amount: amount,
    parent: null,
    period: { start: now(), end: now() },
    pricing: null,
    proration: false,
    quantity: 1,
    quantity_decimal: null as unknown as Stripe.InvoiceItem['quantity_decimal'], // Stripe sends a string
    tax_rates: [],
    test_clock: null,
  };
  inv.lines.data.push({
    ...lineBase(inv, amount, description ?? ''),
    metadata: item.metadata ?? {},
    parent: {
      invoice_item_details: { invoice_item: item.id, proration: false, proration_details: null, subscription: null },
      subscription_item_details: null,
      type: 'invoice_item_details',
    },
  });
  total(inv);
  return item;
}

/** draft → open: numbered, its customer's details copied on, due, with a hosted page and a PDF. */
function finalize(inv: Stripe.Invoice): Stripe.Event[] {
  mustBe(inv, 'draft');
  const cus = getCustomer(inv.customer as string);
  const days = store.invoiceDays.get(inv.id);
  const base = `http://127.0.0.1:${config.port}/_emulator/invoices/${inv.id}`;
  total(inv);
  Object.assign(
    inv,
    {
      status: 'open',
      number: `EMU-${store.invoices.size}`,
      customer_address: cus.address ?? null,
      customer_email: cus.email,
      customer_name: cus.name ?? null,
      due_date: days == null ? null : now() + days * 86_400,
      effective_at: now(),
      ending_balance: 0,
      hosted_invoice_url: `${base}/hosted`,
      invoice_pdf: `${base}/pdf`,
    } satisfies Partial<Stripe.Invoice>,
  );
  inv.status_transitions.finalized_at = now();
  return [invoiceEvent('invoice.finalized', inv)];
}

/** The test control's payment of a one-off invoice: `method` must be one the invoice accepts. */
export function payStandaloneInvoice(inv: Stripe.Invoice, body: unknown): Stripe.Event[] {
  const { method = 'customer_balance' } = obj(body) as { method?: string };
  mustBe(inv, 'open', 'uncollectible'); // Stripe lets an uncollectible invoice be paid after all
  const accepted = inv.payment_settings.payment_method_types;
  if (accepted && !accepted.includes(method as Stripe.Invoice.PaymentSettings.PaymentMethodType)) {
    throw invalid(`The invoice does not accept ${method}.`, 'method');
  }
  const pi = paymentIntent({ amount: inv.amount_due, currency: inv.currency, metadata: {} });
  pi.customer = inv.customer as string;
  pi.payment_method_types = [method];
  const ch = payInvoice(inv, pi);
  return [chargeEvent('charge.succeeded', ch), invoiceEvent('invoice.paid', inv)];
}

function action(name: string, run: (inv: Stripe.Invoice) => Stripe.Event[]) {
  return route('POST', `/v1/invoices/:id/${name}`, async ({ params }) => {
    const inv = getInvoice(params.id);
    await emit(run(inv), true);
    return inv;
  });
}

/** A one-page PDF saying what the invoice is for (enough for a browser or a PDF reader). */
function pdf(inv: Stripe.Invoice): string {
  const text = `Invoice ${inv.number} ${(inv.total / 100).toFixed(2)} ${inv.currency.toUpperCase()}`
    .replace(/[()\\]/g, '');
  const objects = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>',
    `<< /Length ${text.length + 30} >>\nstream\nBT /F1 14 Tf 72 760 Td (${text}) Tj ET\nendstream`,
    '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>',
  ];
  let out = '%PDF-1.4\n';
  const offsets = objects.map((o, i) => {
    const at = out.length;
    out += `${i + 1} 0 obj\n${o}\nendobj\n`;
    return at;
  });
  const xref = out.length;
  out += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  out += offsets.map((o) => `${String(o).padStart(10, '0')} 00000 n \n`).join('');
  out += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return out; // ASCII only: its offsets are its bytes'
}

export const invoiceRoutes = [
  route('POST', '/v1/customers', ({ body }) => {
    const c = setCustomer(newCustomer(null), body);
    store.customers.set(c.id, c);
    return c;
  }),
  route('GET', '/v1/customers/:id', ({ params }) => getCustomer(params.id)),
  route('POST', '/v1/customers/:id', ({ params, body }) => setCustomer(getCustomer(params.id), body)),
  route('POST', '/v1/invoices', ({ body }) => createInvoice(body)),
  route('POST', '/v1/invoiceitems', ({ body }) => createInvoiceItem(body)),
  action('finalize', finalize),
  action('send', (inv) => {
    mustBe(inv, 'open');
    if (inv.collection_method !== 'send_invoice') throw invalid('Only send_invoice invoices are sent.');
    return [invoiceEvent('invoice.sent', inv)];
  }),
  action('void', (inv) => {
    mustBe(inv, 'open', 'uncollectible');
    inv.status = 'void';
    inv.status_transitions.voided_at = now();
    return [invoiceEvent('invoice.voided', inv)];
  }),
  action('mark_uncollectible', (inv) => {
    mustBe(inv, 'open');
    inv.status = 'uncollectible';
    inv.status_transitions.marked_uncollectible_at = now();
    return [invoiceEvent('invoice.marked_uncollectible', inv)];
  }),
  // What the invoice's links open: Stripe's hosted page (pay by bank transfer or card) and its PDF.
  route('GET', '/_emulator/invoices/:id/hosted', ({ params }) => {
    const inv = getInvoice(params.id);
    return new Response(
      `<!doctype html><meta charset="utf-8"><title>Invoice ${inv.number} (Stripe emulator)</title>` +
        `<p>Local Stripe emulator: invoice ${inv.number}, ${(inv.total / 100).toFixed(2)} ` +
        `${inv.currency.toUpperCase()}, ${inv.status}.</p>`,
      { headers: { 'content-type': 'text/html; charset=utf-8' } },
    );
  }),
  route(
    'GET',
    '/_emulator/invoices/:id/pdf',
    ({ params }) => new Response(pdf(getInvoice(params.id)), { headers: { 'content-type': 'application/pdf' } }),
  ),
];
