// Helpers for Stripe Tax tests. STRIPE_AUTOMATIC_TAX is read once when a function starts, so
// taxed requests go through a second gateway started with it on (withGateway); Stripe's
// webhooks still reach the stack's own gateway.
import assert from 'node:assert/strict';

export const taxOn = { STRIPE_AUTOMATIC_TAX: 'true' };

/** POSTs to a route of the gateway at `base` under a fresh Idempotency-Key; answers `data` (2xx only). */
export async function post<T = Record<string, unknown>>(
  base: string,
  path: string,
  token: string,
  body: unknown,
): Promise<T> {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'idempotency-key': crypto.randomUUID(),
    },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.ok([200, 201, 202].includes(res.status), `${path}: ${res.status} ${text}`);
  return JSON.parse(text).data as T;
}
