// Helpers for code tests: promo codes made by an admin, redemptions by students, over the real API.
import assert from 'node:assert/strict';
import { adminToken, api, env, key } from './helpers.ts';
import { balanceOf } from './purchases.ts';

/** A promo code made through POST /admin/codes; answers the code (shown once) and its id. */
export async function promo(spec: Record<string, unknown>): Promise<{ id: string; code: string }> {
  const r = await api('/admin/codes', { token: await adminToken(), headers: key(), body: spec });
  assert.equal(r.status, 201, r.text);
  const d = r.body.data as { id: string; code: string };
  return { id: d.id, code: d.code };
}

/** POST /credits/codes/redeem as `token` (a fresh Idempotency-Key unless given). */
export const redeem = (token: string, code: string, k = crypto.randomUUID(), headers: Record<string, string> = {}) =>
  api('/credits/codes/redeem', { token, body: { code }, headers: { 'idempotency-key': k, ...headers } });

/** Buys a gift end to end (gift checkout → the buyer pays → webhooks); answers the purchase and its code. */
export async function buyGift(token: string, packageId: string) {
  const r = await api('/checkout/sessions', { token, headers: key(), body: { package_id: packageId, gift: true } });
  assert.equal(r.status, 201, r.text);
  const co = r.body.data as { purchase_id: string; session_id: string };
  const paid = await fetch(`${env('STRIPE_API_BASE')}/_emulator/checkout/sessions/${co.session_id}/pay`, {
    method: 'POST',
    body: JSON.stringify({ outcome: 'succeeded' }),
  });
  assert.equal(paid.status, 200, await paid.text());
  const status = await api(`/checkout/sessions/${co.purchase_id}`, { token });
  assert.equal(status.status, 200, status.text);
  const gift = (status.body.data as { gift: { code: string; code_id: string; status: string } }).gift;
  assert.equal(gift.status, 'active', status.text);
  return { ...co, code: gift.code, codeId: gift.code_id };
}

/** The caller's balance (GET /credits/balance), as a string. */
export const balance = async (token: string) => (await balanceOf(token)).balance;

/** POST /orgs/:id/sponsor-codes as `token` under a fresh Idempotency-Key. */
export const issue = (token: string, org: string, body: Record<string, unknown>) =>
  api(`/orgs/${org}/sponsor-codes`, { token, headers: key(), body });
