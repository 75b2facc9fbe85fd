// An organisation's invoice (POST /orgs/:id/invoices) as billing.sync_org_invoice converges on
// it: Stripe's invoice re-fetched (status, amounts before and after tax, links, due date, our
// metadata) and, once paid, its payment (charge, fee, refunds, dispute) through Stripe's
// invoice payments. Plan invoices are not these: they have a subscription and no such kind.
import type Stripe from 'stripe';
import { idOf, stripe, stripeCall } from '../adapters/stripe.ts';
import { paymentIntentExpand, paymentState } from './purchases.ts';

/** Where an org invoice's state lives: the Stripe invoice. */
export type OrgInvoiceRef = { orgInvoice: string };

/** The metadata kind that marks an invoice as an organisation's (never a plan's). */
export const orgInvoiceKind = 'org_invoice';

export type OrgInvoiceState = {
  kind: 'org_invoice';
  invoice_id: string;
  org_invoice_id: string | null;
  org_id: string | null;
  status: string | null;
  currency: string;
  /** Before tax, and with it: the difference is Stripe Tax's. */
  subtotal: number;
  total: number;
  amount_paid: number;
  hosted_invoice_url: string | null;
  invoice_pdf: string | null;
  due_date: number | null;
  payment_intent: string | null;
  charge_id: string | null;
  stripe_fee: number | null;
  amount_refunded: number;
  dispute_id: string | null;
  dispute_status: string | null;
};

/** Whether a Stripe invoice is one of ours for an organisation (not a plan's). */
export const isOrgInvoice = (inv: Pick<Stripe.Invoice, 'metadata' | 'parent'>): boolean =>
  inv.metadata?.kind === orgInvoiceKind && !inv.parent?.subscription_details;

/**
 * What SQL reads of an invoice (and of its payment, when it has one).
 * @example orgInvoiceState(await client.invoices.sendInvoice(id), null)
 */
export function orgInvoiceState(
  inv: Stripe.Invoice,
  payment: Awaited<ReturnType<typeof paymentState>> | null,
): OrgInvoiceState {
  return {
    kind: 'org_invoice',
    invoice_id: inv.id,
    org_invoice_id: inv.metadata?.org_invoice_id ?? null,
    org_id: inv.metadata?.org_id ?? null,
    status: inv.status,
    currency: inv.currency,
    subtotal: inv.total_excluding_tax ?? inv.subtotal,
    total: inv.total,
    amount_paid: inv.amount_paid,
    hosted_invoice_url: inv.hosted_invoice_url ?? null,
    invoice_pdf: inv.invoice_pdf ?? null,
    due_date: inv.due_date,
    payment_intent: null,
    charge_id: payment?.charge_id ?? null,
    stripe_fee: payment?.stripe_fee ?? null,
    amount_refunded: payment?.amount_refunded ?? 0,
    dispute_id: payment?.dispute_id ?? null,
    dispute_status: payment?.dispute_status ?? null,
  };
}

/** Stripe's current state of an organisation's invoice, or null when the invoice is not one. */
export async function fetchOrgInvoiceState(invoiceId: string): Promise<OrgInvoiceState | null> {
  const client = stripe().client;
  const inv = await stripeCall(() => client.invoices.retrieve(invoiceId));
  if (!isOrgInvoice(inv)) return null;
  if (inv.status !== 'paid') return orgInvoiceState(inv, null);
  const payments = await stripeCall(() => client.invoicePayments.list({ invoice: inv.id, limit: 1 }));
  const paymentIntent = idOf(payments.data[0]?.payment?.payment_intent);
  const pi = paymentIntent
    ? await stripeCall(() => client.paymentIntents.retrieve(paymentIntent, { expand: paymentIntentExpand }))
    : null;
  return { ...orgInvoiceState(inv, await paymentState(pi)), payment_intent: paymentIntent };
}
