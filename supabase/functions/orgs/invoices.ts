// An organisation's admin asks for a package on a Stripe invoice (send_invoice, net terms, a PO
// number). The intent is recorded first (billing.begin_org_invoice: a draft row); every Stripe
// call then carries an idempotency key derived from that row's id, so a retry of a request that
// died half-way reaches the same customer update, invoice and item; the row opens when the
// finalized invoice is recorded (here, or by the invoice.finalized webhook). The credits come
// with invoice.paid (billing.sync_org_invoice).
import type Stripe from 'stripe';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import type { Effect } from '../_shared/http/idempotency.ts';
import type { OrgInvoice } from '../_shared/contract/index.ts';
import type { OrgInvoiceSchema } from '../_shared/contract/orgs.ts';
import { orgInvoiceKind, orgInvoiceState } from '../_shared/domain/org-invoices.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { isPrintable } from '../_shared/values/text.ts';
import { AppError } from '../_shared/errors.ts';
import type { z } from 'zod';

type Request = z.output<typeof OrgInvoiceSchema>;
type Begun = OrgInvoice & {
  org_name: string;
  package_name: string;
  stripe_customer_id: string | null;
  billing_email: string;
};

/** Bank transfers settle to the customer balance in the invoice's currency: Stripe's type for it. */
function bankTransfer(
  currency: string,
  country: string,
): Stripe.InvoiceCreateParams.PaymentSettings.PaymentMethodOptions {
  const type = ({ usd: 'us_bank_transfer', gbp: 'gb_bank_transfer', eur: 'eu_bank_transfer' } as const)[currency];
  if (!type) return {};
  return {
    customer_balance: {
      funding_type: 'bank_transfer',
      bank_transfer: { type, ...(type === 'eu_bank_transfer' ? { eu_bank_transfer: { country } } : {}) },
    },
  };
}

/** The organisation's Stripe customer, with the requester's confirmed address and this request's billing address. */
async function customerFor(row: Begun, body: Request): Promise<string> {
  const client = stripe().client;
  const details = { name: row.org_name, email: row.billing_email, address: body.billing_address };
  if (row.stripe_customer_id) {
    const id = row.stripe_customer_id;
    await stripeCall(() => client.customers.update(id, details, { idempotencyKey: `org-invoice-customer:${row.id}` }));
    return id;
  }
  const made = await stripeCall(() =>
    client.customers.create({ ...details, metadata: { org_id: row.org_id } }, {
      idempotencyKey: `org-customer:${row.id}`,
    })
  );
  const [{ kept }] = await sql<
    { kept: string }[]
  >`select billing.attach_org_customer(${row.org_id}, ${made.id}) as kept`;
  if (kept !== made.id) return customerFor({ ...row, stripe_customer_id: kept }, body); // another request's won
  return kept;
}

/** Makes (or, on a retry, reaches again) the Stripe invoice of a draft, finalizes and sends it. */
async function invoiceAtStripe(row: Begun, body: Request): Promise<Stripe.Invoice> {
  const client = stripe().client;
  const customer = await customerFor(row, body);
  const metadata = {
    kind: orgInvoiceKind,
    org_id: row.org_id,
    org_invoice_id: row.id,
    package_id: row.package_id,
    quantity: String(row.quantity),
  };
  const key = (step: string) => ({ idempotencyKey: `org-invoice-${step}:${row.id}` });
  const draft = await stripeCall(() =>
    client.invoices.create({
      customer,
      currency: row.currency,
      collection_method: 'send_invoice',
      days_until_due: row.days_until_due,
      auto_advance: false,
      pending_invoice_items_behavior: 'exclude',
      payment_settings: {
        payment_method_types: ['customer_balance', 'card'],
        payment_method_options: bankTransfer(row.currency, body.billing_address.country),
      },
      ...(row.po_number ? { custom_fields: [{ name: 'PO number', value: row.po_number }] } : {}),
      automatic_tax: { enabled: stripe().env.STRIPE_AUTOMATIC_TAX },
      metadata,
    }, key('create'))
  );
  await stripeCall(() =>
    client.invoiceItems.create({
      customer,
      invoice: draft.id,
      amount: row.amount_cents,
      currency: row.currency,
      description: `${row.package_name}: ${formatCredits(row.credits)} credits` +
        (row.quantity > 1 ? ` (${row.quantity} packages)` : ''),
      metadata,
    }, key('item'))
  );
  await stripeCall(() => client.invoices.finalizeInvoice(draft.id, { auto_advance: false }, key('finalize')));
  return await stripeCall(() => client.invoices.sendInvoice(draft.id, {}, key('send')));
}

/** POST /orgs/:id/invoices: the invoice, open and sent (201), or what this request made before (200). */
export async function requestInvoice(
  userId: string,
  orgId: string,
  body: Request,
  requestKey: string,
): Promise<Effect> {
  const [{ begun }] = await sql<{ begun: Begun }[]>`select billing.begin_org_invoice(${userId}, ${orgId},
    ${body.package_id}, ${body.quantity}, ${body.po_number ?? null}, ${body.days_until_due}, ${requestKey},
    ${body.billing_email ?? null}) as begun`;
  const { org_name: _n, package_name: _p, stripe_customer_id: _c, billing_email: _e, ...draft } = begun;
  if (begun.status !== 'draft') return { status: 200, data: draft };
  // Stripe prints the organisation's name as the customer's: one named before the rule (values/text.ts)
  // is renamed first (PATCH /orgs/:id); the draft is never sent meanwhile.
  if (!isPrintable(begun.org_name)) {
    throw new AppError(
      'validation',
      'VALIDATION_FAILED',
      "The organisation's name has a link or a control character that Stripe would print on the invoice: rename it first.",
      { field: 'name' },
    );
  }
  const sent = await invoiceAtStripe(begun, body);
  failpoint('org_invoice.after_stripe'); // the reliability test dies here: the webhooks open it
  await sql`select billing.sync_org_invoice(${jsonb(orgInvoiceState(sent, null))})`;
  const [{ invoice }] = await sql<{ invoice: OrgInvoice }[]>`select billing.get_org_invoice(${userId}, ${orgId},
    ${begun.id}) as invoice`;
  return { status: 201, data: invoice };
}
