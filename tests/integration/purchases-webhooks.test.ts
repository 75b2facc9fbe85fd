// Stripe webhooks: signatures, duplicates, any order, refunds, disputes and debt.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  newUser,
  reportUsage,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import {
  balanceOf,
  buy,
  chargeOf,
  deliver,
  emulator,
  sign,
  type SignedEvent,
  startCheckout,
} from '../support/purchases.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

const completed = (events: SignedEvent[]) => {
  const e = events.find((x) => x.type === 'checkout.session.completed');
  if (!e) throw new Error('no completion event');
  return e;
};

Deno.test('the same event delivered 20 times concurrently credits once', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'starter');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const event = completed(events);
  const results = await Promise.all(Array.from({ length: 20 }, () => deliver(event)));
  assert.ok(results.every((r) => r.status === 200));
  assert.equal(results.filter((r) => r.body.data.duplicate === true).length, 19);
  assert.equal((await balanceOf(s.token)).balance, '9990');
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers where idempotency_key = ${
    'purchase:' + co.purchase_id
  }`;
  assert.equal(n, 1);
  await assertLedgerInvariants();
});

/** A purchase with a completion, a partial refund and a lost dispute, all held back. */
async function heldBackHistory() {
  const s = await student();
  const co = await startCheckout(s.token, 'pro');
  const pay = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const charge = await chargeOf(co.session_id);
  const refund = await emulator(`/_emulator/charges/${charge}/refund`, { amount: 1000, deliver: false });
  const opened = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false });
  const closed = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false });
  const pick = (list: SignedEvent[], type: string) => list.find((e) => e.type === type) as SignedEvent;
  return {
    s,
    events: [
      completed(pay.events),
      pick(refund.events, 'charge.refunded'),
      pick(opened.events, 'charge.dispute.created'),
      pick(closed.events, 'charge.dispute.closed'),
    ],
  };
}

function permutations<T>(xs: T[]): T[][] {
  return xs.length <= 1
    ? [xs]
    : xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

Deno.test('completion, refund and dispute events in every order converge to the in-order state', async () => {
  const inOrder = await heldBackHistory();
  for (const e of inOrder.events) assert.equal((await deliver(e)).status, 200);
  const expected = await balanceOf(inOrder.s.token);
  const kinds = async (token: string) =>
    ((await api('/credits/ledger', { token })).body.data as { items: { kind: string; amount: string }[] }).items
      .map((e) => `${e.kind}:${e.amount}`).sort();
  const expectedKinds = await kinds(inOrder.s.token);
  // pro: 49,990 + 4,999 bonus; 10.00 of 49.99 refunded → −10,000 and −1,000; the lost dispute takes the rest.
  assert.deepEqual(
    expectedKinds.sort(),
    ['dispute_reversal:-43989', 'promo_grant:4999', 'purchase:49990', 'refund_reversal:-1000', 'refund_reversal:-10000']
      .sort(),
  );
  assert.deepEqual(expected, { balance: '0', held: '0', available: '0' });

  for (const order of permutations([0, 1, 2, 3]).slice(1)) {
    const run = await heldBackHistory();
    for (const i of order) assert.equal((await deliver(run.events[i])).status, 200);
    assert.deepEqual(await balanceOf(run.s.token), expected, `order ${order} diverged`);
    assert.deepEqual(await kinds(run.s.token), expectedKinds, `order ${order} moved credits differently`);
  }
  await assertLedgerInvariants();
});

Deno.test('a partial refund of a half-spent purchase reverses credits pro rata', async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  // Spend 5,000 credits: 100,000 gpt-4o input tokens × $5/M × 4 = $2 = 2,000; 250,000 → 5,000.
  const spend = await reportUsage('/credits/usage', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: 250000, output_tokens: 0 },
  });
  assert.equal((spend.body.data as Record<string, string>).charged, '5000');
  // Refund $3.00 of $9.99: floor(9,990 × 300 / 999) = 3,000 credits.
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 300 });
  assert.equal((await balanceOf(s.token)).balance, '1990');
  await assertLedgerInvariants();
});

Deno.test('a dispute lost after everything was spent creates debt; debits are refused; the next purchase pays it', async () => {
  const s = await student();
  const co = await buy(s.token, 'mini');
  await reportUsage('/credits/usage', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: 250000, output_tokens: 0 },
  });
  assert.equal((await balanceOf(s.token)).balance, '0');
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  assert.equal((await balanceOf(s.token)).held, '0', 'nothing left to hold');
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  assert.deepEqual(await balanceOf(s.token), { balance: '-5000', held: '0', available: '-5000' });
  const refused = await reportUsage('/credits/usage', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
  });
  assert.equal(refused.status, 402);
  assert.equal((refused.body.error as { details: { debt: boolean } }).details.debt, true);
  await buy(s.token, 'starter');
  assert.equal((await balanceOf(s.token)).balance, '4990');
  await assertLedgerInvariants();
});

Deno.test("an open dispute freezes the purchase's remaining credits (nothing held); a won dispute thaws them", async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  assert.deepEqual(await balanceOf(s.token), { balance: '9990', held: '0', available: '0' });
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  assert.deepEqual(await balanceOf(s.token), { balance: '9990', held: '0', available: '9990' });
});

Deno.test('an admin refund goes to Stripe; credits move when charge.refunded arrives', async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  const admin = await adminToken();
  const r = await api('/checkout/refunds', {
    token: admin,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { purchase_id: co.purchase_id },
  });
  assert.equal(r.status, 202);
  assert.equal((r.body.data as Record<string, unknown>).amount_cents, 999);
  assert.equal((await balanceOf(s.token)).balance, '0');
  const notAdmin = await api('/checkout/refunds', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { purchase_id: co.purchase_id },
  });
  assert.equal(notAdmin.status, 403);
});

Deno.test('signatures: bad, stale, wrong secret, missing and re-serialised bodies are 400 and store nothing', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const e = completed(events);
  const secret = env('STRIPE_WEBHOOK_SECRET').split(',')[0];
  const [{ before }] =
    await testDb`select coalesce((select value from billing.counters where name = 'stripe_webhook_signature_failures'), 0)::int as before`;
  const cases: Array<[string, string, string]> = [
    ['a garbled signature', e.payload, e.signature.slice(0, -1) + (e.signature.endsWith('0') ? '1' : '0')],
    ['a timestamp older than 300 s', e.payload, await sign(e.payload, secret, Math.floor(Date.now() / 1000) - 301)],
    ['the wrong secret', e.payload, await sign(e.payload, 'whsec_not_the_secret')],
    ['no signature', e.payload, ''],
    ['a re-serialised body', JSON.stringify(JSON.parse(e.payload)), e.signature],
  ];
  for (const [what, payload, signature] of cases) {
    const r = await deliver({ payload, signature });
    assert.equal(r.status, 400, what);
    assert.equal(r.body.error.code, 'SIGNATURE_INVALID', what);
  }
  // Counted off the request path (batched per instance): the count arrives just after the 400s.
  await until('every refusal counted', async () => {
    const [{ after }] =
      await testDb`select value::int as after from billing.counters where name = 'stripe_webhook_signature_failures'`;
    return after - before >= cases.length;
  }, 5000);
  const [{ n }] = await testDb`select count(*)::int as n from billing.stripe_events where id = ${e.id}`;
  assert.equal(n, 0);
  assert.equal((await balanceOf(s.token)).balance, '0');
  assert.equal((await deliver(e)).status, 200, 'the genuine delivery still works');
  assert.equal((await balanceOf(s.token)).balance, '5000');
});

Deno.test('a livemode event reaching a test-mode deployment is ignored with 200', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const live = { ...JSON.parse(completed(events).payload), livemode: true, id: `evt_live_${crypto.randomUUID()}` };
  const payload = JSON.stringify(live);
  const r = await deliver({ payload, signature: await sign(payload, env('STRIPE_WEBHOOK_SECRET').split(',')[0]) });
  assert.equal(r.status, 200);
  assert.equal(r.body.data.ignored, 'livemode_mismatch');
  assert.equal((await balanceOf(s.token)).balance, '0');
});

Deno.test('an event type we do not handle is recorded and answered 200', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const other = events.find((x) => x.type === 'charge.succeeded') as SignedEvent;
  const r = await deliver(other);
  assert.equal(r.status, 200);
  const [row] = await testDb`select status, type from billing.stripe_events where id = ${other.id}`;
  assert.deepEqual({ ...row }, { status: 'ignored', type: 'charge.succeeded' });
});
