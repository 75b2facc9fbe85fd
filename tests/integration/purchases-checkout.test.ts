// Buying credits through Stripe Checkout, end to end on the local stack.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env, newUser, spawnGateway, testDb, userToken } from '../support/helpers.ts';
import { balanceOf, buy, emulator, startCheckout, stripeApi } from '../support/purchases.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

Deno.test('a student buys the starter package ($9.99) and sees 9,990 credits', async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  assert.deepEqual(await balanceOf(s.token), { balance: '9990', held: '0', available: '9990' });
  const status = await api(`/checkout/sessions/${co.session_id}`, { token: s.token });
  assert.equal((status.body.data as Record<string, unknown>).status, 'paid');
  const [receipt] = await testDb`select template, payload from billing.notification_outbox where dedupe_key = ${
    'receipt:' + co.purchase_id
  }`;
  assert.equal(receipt.template, 'purchase_receipt');
  assert.equal(receipt.payload.credits, '9990');
  assert.ok(!JSON.stringify(receipt.payload).includes('@'), 'the receipt row carries no address');
  await assertLedgerInvariants();
});

Deno.test('the max package grants base credits plus a separate 20% promo_grant', async () => {
  const s = await student();
  await buy(s.token, 'max');
  assert.equal((await balanceOf(s.token)).balance, '119988');
  const ledger = (await api('/credits/ledger', { token: s.token })).body.data as {
    items: { kind: string; amount: string }[];
  };
  assert.deepEqual(ledger.items.map((e) => [e.kind, e.amount]), [['promo_grant', '19998'], ['purchase', '99990']]);
});

Deno.test('GET /checkout/packages lists the five tiers with credits as strings', async () => {
  const s = await student();
  const r = await api('/checkout/packages', { token: s.token });
  const packages = (r.body.data as { items: Record<string, unknown>[] }).items;
  assert.deepEqual(packages.map((p) => [p.id, p.price_cents, p.credits, p.bonus_credits]), [
    ['mini', 500, '5000', '0'],
    ['starter', 999, '9990', '0'],
    ['plus', 2499, '24990', '1249.5'],
    ['pro', 4999, '49990', '4999'],
    ['max', 9999, '99990', '19998'],
  ]);
});

Deno.test("the Checkout Session is hosted, carries the purchase, and sets Stripe's idempotency", async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'starter');
  const session = await stripeApi(`/v1/checkout/sessions/${co.session_id}`);
  assert.equal(session.mode, 'payment');
  assert.equal(session.client_reference_id, co.purchase_id);
  assert.deepEqual(session.metadata, { purchase_id: co.purchase_id, user_id: s.id, package_id: 'starter' });
  assert.equal(session.amount_total, 999);
  // The emulator this stack runs (STRIPE_API_BASE: each stack has its own port).
  assert.ok(
    String(session.url).startsWith(`${env('STRIPE_API_BASE')}/_emulator/checkout/cs_test_`),
    String(session.url),
  );
});

Deno.test('an open session for the same package is reused (200) instead of a second charge', async () => {
  const s = await student();
  const first = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'plus' },
  });
  const second = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'plus' },
  });
  assert.equal(first.status, 201);
  assert.equal(second.status, 200);
  assert.equal(
    (second.body.data as Record<string, string>).session_id,
    (first.body.data as Record<string, string>).session_id,
  );
  const other = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'mini' },
  });
  assert.equal(other.status, 201, 'another package gets its own session');
});

Deno.test('20 parallel session requests with one Idempotency-Key make one Stripe session', async () => {
  const s = await student();
  const key = crypto.randomUUID();
  const results = await Promise.all(
    Array.from(
      { length: 20 },
      () =>
        api('/checkout/sessions', { token: s.token, headers: { 'idempotency-key': key }, body: { package_id: 'pro' } }),
    ),
  );
  // Beyond 5 a minute the checkout rate limit answers 429; in flight, 409: both retryable.
  for (const r of results) {
    assert.ok([201, 409, 429].includes(r.status), `unexpected ${r.status}`);
    if (r.status !== 201) assert.equal((r.body.error as Record<string, unknown>).retryable, true);
    if (r.status === 409) assert.equal((r.body.error as Record<string, unknown>).code, 'IDEMPOTENCY_KEY_IN_USE');
  }
  const sessionIds = new Set(
    results.filter((r) => r.status === 201).map((r) => (r.body.data as Record<string, string>).session_id),
  );
  assert.equal(sessionIds.size, 1);
  const [{ n }] = await testDb`select count(*)::int as n from billing.purchases where user_id = ${s.id}`;
  assert.equal(n, 1);
  const [stored] =
    await testDb`select response_status from billing.idempotency_keys where user_id = ${s.id} and key = ${key}`;
  assert.equal(stored.response_status, 201, 'the key keeps the one response to replay');
});

Deno.test('redirect URLs off the allowlist are refused', async () => {
  const s = await student();
  const r = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'mini', success_url: 'https://evil.example/steal' },
  });
  assert.equal(r.status, 400);
  assert.equal((r.body.error as Record<string, unknown>).code, 'REDIRECT_NOT_ALLOWED');
});

Deno.test('an unknown package is 404 and creates nothing', async () => {
  const s = await student();
  const r = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'mega' },
  });
  assert.equal(r.status, 404);
  assert.equal((r.body.error as Record<string, unknown>).code, 'PACKAGE_NOT_FOUND');
  const [{ n }] = await testDb`select count(*)::int as n from billing.purchases where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('async payment success credits the purchase; async failure marks it failed with no credits', async () => {
  const ok = await student();
  const co = await startCheckout(ok.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'async_succeeded' });
  assert.equal((await balanceOf(ok.token)).balance, '5000');

  const bad = await student();
  const co2 = await startCheckout(bad.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co2.session_id}/pay`, { outcome: 'async_failed' });
  assert.equal((await balanceOf(bad.token)).balance, '0');
  const status = await api(`/checkout/sessions/${co2.purchase_id}`, { token: bad.token });
  assert.equal((status.body.data as Record<string, unknown>).status, 'failed');
});

Deno.test('a declined card leaves the purchase pending and records payment_intent.payment_failed', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'failed' });
  assert.equal(events[0].type, 'payment_intent.payment_failed');
  const [e] = await testDb`select status from billing.stripe_events where id = ${events[0].id}`;
  assert.equal(e.status, 'processed');
  assert.equal((await balanceOf(s.token)).balance, '0');
});

Deno.test('an expired session expires the purchase, and a new checkout gets a new session', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'starter');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/expire`);
  const status = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  assert.equal((status.body.data as Record<string, unknown>).status, 'expired');
  const again = await startCheckout(s.token, 'starter');
  assert.notEqual(again.session_id, co.session_id);
});

Deno.test('the success-page poll fulfils the purchase even when no webhook arrived', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'starter');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded', deliver: false });
  assert.equal((await balanceOf(s.token)).balance, '0');
  const polls = await Promise.all(
    Array.from({ length: 5 }, () => api(`/checkout/sessions/${co.session_id}`, { token: s.token })),
  );
  assert.ok(polls.every((p) => (p.body.data as Record<string, unknown>).status === 'paid'));
  assert.equal((await balanceOf(s.token)).balance, '9990');
  await assertLedgerInvariants();
});

Deno.test("another student's purchase is 404", async () => {
  const owner = await student();
  const other = await student();
  const co = await startCheckout(owner.token, 'mini');
  assert.equal((await api(`/checkout/sessions/${co.purchase_id}`, { token: other.token })).status, 404);
  assert.equal((await api(`/checkout/sessions/${co.session_id}`, { token: other.token })).status, 404);
});

Deno.test("an emulator pay call asked for ?summary answers each event's id and type, and still pays", async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  const res = await fetch(`${env('STRIPE_API_BASE')}/_emulator/checkout/sessions/${co.session_id}/pay?summary`, {
    method: 'POST',
    body: '{}',
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const { events } = JSON.parse(text) as { events: Record<string, string>[] };
  assert.deepEqual(events.map((e) => Object.keys(e).sort()), events.map(() => ['id', 'type']));
  assert.ok(events.some((e) => e.type === 'checkout.session.completed'));
  assert.ok(text.length < 400, `a short answer to paste (${text.length} bytes)`);
  assert.equal((await balanceOf(s.token)).balance, '5000', 'the events were delivered');
});

// A Checkout whose process died after Stripe made the session, before the purchase recorded it,
// tried again a few seconds later under the same key: Stripe's idempotency key is the purchase's,
// and Stripe refuses a key sent again with other parameters. Its expires_at is read from the
// purchase's creation (sessionExpiresAt), not the clock, so the retry sends the same ones and gets
// the same session (it was 502 STRIPE_ERROR when the second had moved on: a double click that
// straddled a second).
Deno.test('a Checkout retried after its process died past Stripe gets the session Stripe made', async () => {
  const user = await newUser();
  const token = await userToken(user);
  const key = crypto.randomUUID();
  const gw = spawnGateway({ FAILPOINTS: 'checkout.after_session' });
  try {
    await gw.ready();
    const died = await fetch(`${gw.url}/checkout/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, 'idempotency-key': key },
      body: JSON.stringify({ package_id: 'mini' }),
    }).then((r) => r.status, () => 0);
    assert.equal(died, 0, 'no answer: the process died');
  } finally {
    await gw.kill();
  }
  const [pending] = await testDb`select p.id::text, p.stripe_session_id from billing.purchases p
    where p.user_id = ${user}`;
  assert.equal(pending.stripe_session_id, null, 'Stripe made a session the purchase does not know yet');
  // The retry comes once the dead attempt's key may be taken over (60 s silent: its lock is set
  // back), on a clock past the first try's second.
  await testDb`update billing.idempotency_keys set locked_at = locked_at - interval '61 seconds'
    where user_id = ${user} and key = ${key}`;
  await new Promise((r) => setTimeout(r, 1100));
  const retry = await api('/checkout/sessions', {
    token,
    headers: { 'idempotency-key': key },
    body: { package_id: 'mini' },
  });
  assert.equal(retry.status, 201, retry.text);
  const { session_id } = retry.body.data as { session_id: string };
  const session = await stripeApi(`/v1/checkout/sessions/${session_id}`);
  const [row] = await testDb`select extract(epoch from created_at)::int as created from billing.purchases
    where id = ${pending.id}::uuid`;
  assert.equal(session.client_reference_id, pending.id);
  assert.ok(Math.abs(Number(session.expires_at) - (row.created + 35 * 60)) <= 1, `expires_at ${session.expires_at}`);
});
