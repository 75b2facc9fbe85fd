// Helpers for code tests: promo codes made by an admin, redemptions by students, over the real API.
import assert from 'node:assert/strict';
import { adminToken, api, newUser, userToken } from './helpers.ts';

export const key = () => ({ 'idempotency-key': crypto.randomUUID() });

export async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

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
