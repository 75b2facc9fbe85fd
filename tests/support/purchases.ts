// Helpers for purchase tests: drive Checkout through the real API and the Stripe emulator's
// test controls, and deliver signed events to the webhook exactly as Stripe would.
import type { Balance } from '../../supabase/functions/_shared/contract/index.ts';
import assert from 'node:assert/strict';
import { api, env, functionsUrl, newUser, userToken } from './helpers.ts';

export const emulatorUrl = env('STRIPE_API_BASE');

export interface SignedEvent {
  id: string;
  type: string;
  payload: string;
  signature: string;
}

/** Calls an emulator test control (outside /v1). */
export async function emulator(path: string, body: unknown = {}): Promise<{ events: SignedEvent[] }> {
  const res = await fetch(`${emulatorUrl}${path}`, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`emulator ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Calls the emulator's Stripe API as the SDK would. */
export async function stripeApi(path: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${emulatorUrl}${path}`, {
    headers: { authorization: `Bearer ${env('STRIPE_SECRET_KEY')}` },
  });
  return res.json();
}

/** A `Stripe-Signature` header for `payload`, made as Stripe makes it. */
export async function sign(payload: string, secret: string, timestamp = Math.floor(Date.now() / 1000)) {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(`${timestamp}.${payload}`)));
  return `t=${timestamp},v1=${Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** POSTs an event's exact bytes with a signature header to the webhook. */
export async function deliver(e: { payload: string; signature: string }) {
  const res = await fetch(`${functionsUrl}/stripe-webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': e.signature },
    body: e.payload,
  });
  return { status: res.status, body: await res.json() };
}

/**
 * Delivers as Stripe does: a non-2xx answer (a deadlock between two events' transactions, say)
 * is sent again after a pause, up to five times; the last answer is returned.
 */
export async function deliverWithRetries(e: { payload: string; signature: string }) {
  let res = await deliver(e);
  for (let i = 1; i < 5 && res.status >= 300; i++) {
    await new Promise((r) => setTimeout(r, 100 * 2 ** i));
    res = await deliver(e);
  }
  return res;
}

/** Starts a checkout for a package (for the caller's organisation `orgId` when given) and returns the purchase. */
export async function startCheckout(token: string, packageId: string, key = crypto.randomUUID(), orgId?: string) {
  const r = await api('/checkout/sessions', {
    token,
    headers: { 'idempotency-key': key },
    body: { package_id: packageId, ...(orgId ? { org_id: orgId } : {}) },
  });
  if (r.status !== 201 && r.status !== 200) throw new Error(`checkout failed: ${r.status} ${r.text}`);
  return r.body.data as { purchase_id: string; session_id: string; url: string; status: string };
}

/** Buys a package end to end (checkout → customer pays → webhooks delivered), for `orgId` when given. */
export async function buy(token: string, packageId: string, orgId?: string) {
  const co = await startCheckout(token, packageId, undefined, orgId);
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  return co;
}

/** The caller's balance, held and available (the next expiry is asserted where lots are tested). */
export async function balanceOf(token: string): Promise<{ balance: string; held: string; available: string }> {
  const { balance, held, available } = (await api('/credits/balance', { token })).body.data as Balance;
  return { balance, held, available };
}

/** The charge behind a paid Checkout Session, as Stripe has it. */
export async function chargeOf(sessionId: string): Promise<string> {
  const session = await stripeApi(`/v1/checkout/sessions/${sessionId}`);
  const pi = await stripeApi(`/v1/payment_intents/${session.payment_intent}`);
  return String(pi.latest_charge);
}

/** A purchase paid through Checkout: for the caller, or for their organisation. */
export async function pays(token: string, body: Record<string, unknown>) {
  const co = await api('/checkout/sessions', { token, headers: { 'idempotency-key': crypto.randomUUID() }, body });
  assert.equal(co.status, 201, co.text);
  const { session_id } = co.body.data as { session_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  return session_id;
}

/** A new student who bought the starter package (9,990 credits) at Checkout, keeping the card when asked. */
export async function starterBuyer(saveCard = true) {
  const id = await newUser();
  const token = await userToken(id);
  const session = await pays(token, { package_id: 'starter', save_card: saveCard });
  return { id, token, session };
}

/** A starter buyer with auto-recharge of the mini package below `threshold`. */
export async function rechargingBuyer(threshold: string, monthlyMaxCount?: number) {
  const s = await starterBuyer();
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold, monthly_max_count: monthlyMaxCount },
  });
  assert.equal(on.status, 200, on.text);
  return s;
}
