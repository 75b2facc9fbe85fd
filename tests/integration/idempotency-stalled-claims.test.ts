// Stored answers of routes whose work spans a Stripe call (claim_idempotency_key, the work,
// complete_idempotency_key), as a student with their own token: a claim stalled past 60 seconds
// (a slow Stripe, a paused or crashed instance) is taken over only by the same request, and the
// request that held it still answers what its work did without writing over the key; a refusal
// that says `retryable: true` is not stored, so a retry under the key runs again; a 255-character
// key changes and cancels a plan. The 60 seconds are simulated: the claim's locked_at is moved back
// while the first request is really in flight (the Stripe emulator's latency holds it there).
import assert from 'node:assert/strict';
import { api, student, testDb } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { emulator } from '../support/purchases.ts';
import { change, subscribeTo } from '../support/plans.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const session = (token: string, key: string, packageId: string) =>
  api('/checkout/sessions', { token, headers: { 'idempotency-key': key }, body: { package_id: packageId } });

/** Waits until the request under `key` holds its claim, then makes that claim look 61 seconds old. */
async function ageClaim(user: string, key: string) {
  for (let i = 0; i < 100; i++) {
    const [row] =
      await testDb`select responded_at from billing.idempotency_keys where user_id = ${user} and key = ${key}`;
    if (row) {
      assert.equal(row.responded_at, null, 'the first request is still in flight');
      await testDb`update billing.idempotency_keys set locked_at = now() - interval '61 seconds'
        where user_id = ${user} and key = ${key}`;
      return;
    }
    await sleep(25);
  }
  throw new Error('the first request never claimed its key');
}

Deno.test({
  name: 'another request under a stalled claim is refused, and the first request keeps its answer',
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const s = await student();
    const k = crypto.randomUUID();
    await emulator('/_emulator/faults', { latency_ms: 3000 });
    let first, other;
    try {
      const pending = session(s.token, k, 'mini'); // in flight at Stripe for 3 s
      await ageClaim(s.id, k);
      other = await session(s.token, k, 'starter'); // the same key, another package
      first = await pending;
    } finally {
      await emulator('/_emulator/faults', { latency_ms: 0 });
    }
    assert.equal(first.status, 201, first.text);
    assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', other.text);
    await sleep(3000); // the route's rate-limit window

    // The other body retried: still refused, never answered with the first request's session.
    const otherAgain = await session(s.token, k, 'starter');
    assert.notEqual(
      otherAgain.status,
      201,
      `a request for "starter" that was refused is now answered 201 with a "mini" session: ${otherAgain.text}`,
    );
    assert.equal(codeOf(otherAgain), 'IDEMPOTENCY_KEY_REUSED', otherAgain.text);
    // The first request retried under its key: its own session, replayed.
    const firstAgain = await session(s.token, k, 'mini');
    assert.equal(firstAgain.status, 201, `the first request's retry is refused: ${firstAgain.text}`);
    assert.equal(firstAgain.text, first.text);
    // The first answer names its own request, not the one that took its claim over.
    assert.equal(
      (first.body.metadata as { requestId: string }).requestId,
      first.headers.get('x-request-id'),
      `the first answer carries another request's id: ${first.text}`,
    );
  },
});

Deno.test({
  name: 'a first request whose stale claim was taken over and abandoned still answers the session it made, not a 500',
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const s = await student();
    const k = crypto.randomUUID();
    await emulator('/_emulator/faults', { latency_ms: 4000 });
    let first, retry;
    try {
      const pending = session(s.token, k, 'mini'); // in flight at Stripe for 4 s
      await ageClaim(s.id, k);
      await emulator('/_emulator/faults', { latency_ms: 0, down: true });
      retry = await session(s.token, k, 'mini'); // takes the claim over; Stripe fails it: 502, claim abandoned
      await emulator('/_emulator/faults', { latency_ms: 0, down: false });
      first = await pending;
    } finally {
      await emulator('/_emulator/faults', { latency_ms: 0, down: false });
    }
    assert.equal(retry.status, 502, retry.text);
    const [p] = await testDb`select stripe_session_id from billing.purchases where user_id = ${s.id}`;
    assert.ok(p?.stripe_session_id, 'the first request made its Checkout Session');
    assert.equal(first.status, 201, `the session was made, but its request answered: ${first.text}`);
    assert.equal((dataOf(first) as { session_id: string }).session_id, p.stripe_session_id);
  },
});

Deno.test({
  name:
    'CHECKOUT_IN_PROGRESS says retryable: the same key retried once the other checkout is done is not that refusal again',
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const s = await student();
    const [k1, k2] = [crypto.randomUUID(), crypto.randomUUID()];
    await emulator('/_emulator/faults', { latency_ms: 1500 });
    let answers;
    try {
      // Two tabs, two keys, one package: one makes the session, the other is told to retry.
      answers = await Promise.all([session(s.token, k1, 'mini'), session(s.token, k2, 'mini')]);
    } finally {
      await emulator('/_emulator/faults', { latency_ms: 0 });
    }
    const refused = answers.findIndex((r) => codeOf(r) === 'CHECKOUT_IN_PROGRESS');
    assert.notEqual(refused, -1, answers.map((r) => r.text).join('\n'));
    const made = answers[1 - refused];
    assert.equal(made.status, 201, made.text);
    assert.equal((answers[refused].body.error as { retryable: boolean }).retryable, true);

    await sleep(3000); // the route's rate-limit window; the other checkout is long done
    const again = await session(s.token, [k1, k2][refused], 'mini');
    assert.notEqual(
      codeOf(again),
      'CHECKOUT_IN_PROGRESS',
      `a retryable refusal was stored: the retry replays it (Idempotent-Replayed: ${
        again.headers.get('idempotent-replayed')
      }) for 24 hours: ${again.text}`,
    );
    assert.equal(again.status, 200, again.text); // the open session for the package, reused
    assert.equal(
      (dataOf(again) as { session_id: string }).session_id,
      (dataOf(made) as { session_id: string }).session_id,
    );
  },
});

// docs/api.md § Idempotency: every key of 1–255 characters works on every route; Stripe's own
// key carries the key's SHA-256 where it would pass 255 (scopedKey), a plan's change and
// cancellation included.
Deno.test('a 255-character Idempotency-Key changes and cancels a plan (Stripe is sent a key it takes)', async () => {
  const s = await student();
  await subscribeTo(s.token, 'basic_monthly');
  const up = await change(s.token, 'pro_monthly', { 'idempotency-key': 'k'.repeat(255) });
  assert.equal(up.status, 202, `a valid Idempotency-Key makes Stripe refuse the change: ${up.text}`);
  const cancel = await api('/checkout/subscription/cancel', {
    token: s.token,
    headers: { 'idempotency-key': 'c'.repeat(255) },
    body: {},
  });
  assert.equal(cancel.status, 202, `a valid Idempotency-Key makes Stripe refuse the cancellation: ${cancel.text}`);
});

Deno.test('teardown', async () => {
  await testDb.end();
});
