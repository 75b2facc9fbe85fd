// Helpers for organisation invoice tests: ask for one over the real API, drive it with the
// Stripe emulator (its API and test controls), read the wallet it credits.
import assert from 'node:assert/strict';
import type { OrgInvoice } from '../supabase/functions/_shared/contract/index.ts';
import { api, env } from './helpers.ts';
import { key } from './orgs.ts';
import { emulator, emulatorUrl, type SignedEvent } from './purchases.ts';

export const billing = {
  billing_email: 'accounts@lakeside.test',
  billing_address: { line1: '1 Lake Road', city: 'Springfield', postal_code: '12345', country: 'US' },
};

/** POST /orgs/:id/invoices for `quantity` of a package, under `headers` (a fresh Idempotency-Key by default). */
export const requestInvoice = (
  token: string,
  org: string,
  body: Record<string, unknown> = {},
  headers: Record<string, string> = key(),
) => api(`/orgs/${org}/invoices`, { token, body: { package_id: 'mini', ...billing, ...body }, headers });

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
