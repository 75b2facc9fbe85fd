// Helpers for organisation invoice tests: ask for one over the real API, drive it with the
// Stripe emulator (its API and test controls), read the wallet it credits.
import assert from 'node:assert/strict';
import type { OrgInvoice } from '../../supabase/functions/_shared/contract/index.ts';
import { adminToken, api, env } from './helpers.ts';
import { key } from './orgs.ts';
import { emulator, emulatorUrl, type SignedEvent } from './purchases.ts';

// The invoice goes to the requester's own confirmed address: no billing_email needed.
export const billing = {
  billing_address: { line1: '1 Lake Road', city: 'Springfield', postal_code: '12345', country: 'US' },
};

let operator: Promise<string> | undefined;
const approved = new Set<string>();
/** A platform admin lets `org` ask for invoices before a card purchase (PUT /orgs/:id/invoicing). */
export async function approveInvoicing(org: string, approve = true) {
  const r = await api(`/orgs/${org}/invoicing`, {
    token: await (operator ??= adminToken()),
    method: 'PUT',
    body: { approved: approve },
  });
  assert.equal(r.status, 200, r.text);
  if (approve) approved.add(org);
  else approved.delete(org);
  return r.body.data as { invoicing_approved: boolean };
}

/**
 * POST /orgs/:id/invoices for `quantity` of a package, under `headers` (a fresh Idempotency-Key
 * by default), for an organisation an operator approved for invoicing (approved here first).
 */
export async function requestInvoice(
  token: string,
  org: string,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = key(),
) {
  if (!approved.has(org)) await approveInvoicing(org);
  return await api(`/orgs/${org}/invoices`, { token, body: { package_id: 'mini', ...billing, ...body }, headers });
}

/** requestInvoice while Stripe is down (the emulator's fault switch), answered as it is. */
export async function requestWhileStripeDown(token: string, org: string, headers: Record<string, string>) {
  await emulator('/_emulator/faults', { down: true });
  try {
    return await requestInvoice(token, org, {}, headers);
  } finally {
    await emulator('/_emulator/faults', { down: false });
  }
}

/** An invoice asked for and answered 201: open and sent. */
export async function openInvoice(token: string, org: string, body: Record<string, unknown> = {}) {
  const r = await requestInvoice(token, org, body);
  assert.equal(r.status, 201, r.text);
  const inv = r.body.data as OrgInvoice;
  assert.equal(inv.status, 'open');
  return inv as OrgInvoice & { stripe_invoice_id: string };
}

/** The school pays on the hosted page (test control): by bank transfer unless told card. */
export const pay = (inv: { stripe_invoice_id: string | null }, method = 'customer_balance', deliver = true) =>
  emulator(`/_emulator/invoices/${inv.stripe_invoice_id}/pay`, { method, deliver });

/** A Stripe API POST as the SDK sends it (form-encoded), answering the object. */
export async function stripePost(path: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${emulatorUrl}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('STRIPE_SECRET_KEY')}` },
  });
  return res.json();
}

/** The charge of a payment's events (charge.succeeded). */
export const chargeIn = (events: SignedEvent[]): string =>
  JSON.parse(events.find((e) => e.type === 'charge.succeeded')?.payload ?? '{}').data.object.id;
