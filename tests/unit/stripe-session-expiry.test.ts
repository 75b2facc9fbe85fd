// sessionExpiresAt: a Checkout Session's expires_at read from its row's creation, so requests
// under one Stripe idempotency key agree, and always inside Stripe's window (30 min to 24 h).
import assert from 'node:assert/strict';
import { sessionExpiresAt } from '../../supabase/functions/_shared/adapters/stripe.ts';

const created = new Date('2026-11-26T12:00:00.000Z');
const at = (seconds: number) => created.getTime() + seconds * 1000;
const fromRow = created.getTime() / 1000 + 35 * 60;

Deno.test("requests in the row's first minutes send the same expires_at, whatever their second", () => {
  const sent = [0, 0.4, 0.999, 1.2, 59, 61, 239].map((s) => sessionExpiresAt(created, 35 * 60, at(s)));
  assert.deepEqual(new Set(sent), new Set([fromRow]));
});

Deno.test("a request so late that the row's time would be under Stripe's 30 minutes sends its own", () => {
  const late = at(10 * 60);
  assert.equal(sessionExpiresAt(created, 35 * 60, late), Math.ceil(late / 1000) + 31 * 60);
});

Deno.test("a day's lifetime stays a minute inside Stripe's 24 hours from now", () => {
  const now = at(5);
  assert.equal(sessionExpiresAt(created, 24 * 3600 - 10 * 60, now), created.getTime() / 1000 + 24 * 3600 - 10 * 60);
  assert.equal(sessionExpiresAt(created, 25 * 3600, now), Math.ceil(now / 1000) + 24 * 3600 - 60);
});
