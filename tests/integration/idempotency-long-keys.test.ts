// docs/api.md allows an Idempotency-Key of 1–255 printable ASCII characters on every route that
// moves credits or money. The keys the routes derive from it (for the ledger, 'http:<user>:<action>:'
// and 'allowance:' prefixes, at most 300 characters; for Stripe, 'refund:<purchase>:', at most
// 255) once grew past their stores' limits, so keys of 237–255 characters were refused. Here a
// 255-character key works on each money route, a retry with it replays, and two such keys that
// differ only in their last character stay two requests.
import assert from 'node:assert/strict';
import { adminToken, api, fund, reportUsage } from '../helpers.ts';
import { person, school } from '../orgs.ts';
import { newProvider, paidPayment } from '../providers.ts';
import { buy } from '../purchases.ts';

type Answer = Awaited<ReturnType<typeof api>>;

const charset = Array.from({ length: 94 }, (_, i) => String.fromCharCode(0x21 + i)).join('');
/** A fresh key of exactly 255 characters that uses the whole documented charset. */
const longKey = () => (crypto.randomUUID() + charset + charset + charset).slice(0, 255);
/** The same key with another last character. */
const sibling = (key: string) => key.slice(0, 254) + (key.endsWith('A') ? 'B' : 'A');

const ok = (r: Answer, what: string) => assert.ok(r.status >= 200 && r.status < 300, `${what}: ${r.status} ${r.text}`);
const data = (r: Answer) => r.body.data as Record<string, unknown>;

/** Sends with a 255-character key, then again with the same key: the same answer, replayed. */
async function sendTwice(what: string, send: (key: string) => Promise<Answer>, replayHeader = true) {
  const key = longKey();
  assert.equal(key.length, 255);
  const first = await send(key);
  ok(first, what);
  const again = await send(key);
  assert.equal(again.status, first.status, `${what}: the retry answers the same`);
  if (replayHeader) assert.equal(again.headers.get('idempotent-replayed'), 'true', `${what}: the retry is a replay`);
  assert.deepEqual(data(again), data(first), `${what}: the retry answers the same data`);
  return { key, first };
}

Deno.test('a 255-character Idempotency-Key works and replays on every credit route', async () => {
  const s = await person('longkey');
  await fund(s.id, '100');
  const usage = (key: string) =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: { 'idempotency-key': key },
      body: { model: 'gpt-4o-mini', input_tokens: 10, output_tokens: 10 },
    });
  const used = await sendTwice('usage', usage);
  const other = await usage(sibling(used.key));
  ok(other, 'usage under a sibling key');
  assert.notEqual(data(other).transfer_id, data(used.first).transfer_id, 'a sibling key is another charge');

  const hold = (key: string) =>
    api('/credits/holds', { token: s.token, headers: { 'idempotency-key': key }, body: { amount: '1' } });
  const held = await sendTwice('holds', hold);
  const otherHold = await hold(sibling(held.key));
  ok(otherHold, 'holds under a sibling key');
  assert.notEqual(data(otherHold).hold_id, data(held.first).hold_id, 'a sibling key is another hold');
  for (const [verb, id] of [['capture', data(held.first).hold_id], ['release', data(otherHold).hold_id]]) {
    await sendTwice(
      verb as string,
      (key) => api(`/credits/holds/${id}/${verb}`, { token: s.token, headers: { 'idempotency-key': key }, body: {} }),
    );
  }

  const admin = await adminToken();
  const grant = (key: string) =>
    api('/credits/grants', {
      token: admin,
      headers: { 'idempotency-key': key },
      body: { user_id: s.id, amount: '2', reason: 'long keys' },
    });
  const granted = await sendTwice('grants', grant);
  const otherGrant = await grant(sibling(granted.key));
  ok(otherGrant, 'grants under a sibling key');
  assert.notEqual(data(otherGrant).transfer_id, data(granted.first).transfer_id, 'a sibling key is another grant');

  await sendTwice('jobs', (key) =>
    api('/jobs', {
      token: s.token,
      headers: { 'idempotency-key': key },
      body: { type: 'ai_completion', input: { model: 'gpt-4o-mini', prompt: 'hello', max_tokens: 5 } },
    }));
});

Deno.test("a 255-character Idempotency-Key works and replays on an organisation's allowances and grants", async () => {
  const [owner, member] = await Promise.all(['long-owner', 'long-member'].map(person));
  const org = await school(owner, [member], 'allowance', '100');
  const allowance = (key: string) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, headers: { 'idempotency-key': key }, body: { amount: '1' } });
  const funded = await sendTwice('allowances', allowance, false);
  const otherFunding = await allowance(sibling(funded.key));
  ok(otherFunding, 'allowances under a sibling key');
  const transfers = (r: Answer) => (data(r).funded as { transfer_id: string }[]).map((f) => f.transfer_id);
  assert.notDeepEqual(transfers(otherFunding), transfers(funded.first), 'a sibling key funds again');

  const admin = await adminToken();
  const grant = (key: string) =>
    api(`/orgs/${org}/grants`, {
      token: admin,
      headers: { 'idempotency-key': key },
      body: { amount: '3', reason: 'x' },
    });
  const key = longKey();
  const first = await grant(key);
  ok(first, 'org grants');
  const again = await grant(key);
  ok(again, 'org grants retried');
  assert.equal(data(again).transfer_id, data(first).transfer_id, 'the retry is the same grant');
  assert.equal(data(again).replayed, true);
  const other = await grant(sibling(key));
  assert.notEqual(data(other).transfer_id, data(first).transfer_id, 'a sibling key is another grant');
});

Deno.test('a 255-character Idempotency-Key works and replays on purchases, refunds and provider payments', async () => {
  const s = await person('long-buyer');
  await sendTwice(
    'checkout sessions',
    (key) =>
      api('/checkout/sessions', { token: s.token, headers: { 'idempotency-key': key }, body: { package_id: 'mini' } }),
  );
  const admin = await adminToken();
  const bought = await buy(s.token, 'starter');
  // Stripe takes keys of at most 255 characters: the refund's own key is derived to fit.
  await sendTwice('checkout refunds', (key) =>
    api('/checkout/refunds', {
      token: admin,
      headers: { 'idempotency-key': key },
      body: { purchase_id: bought.purchase_id, amount_cents: 100 },
    }));

  await sendTwice('providers', (key) =>
    api('/providers', {
      token: s.token,
      headers: { 'idempotency-key': key },
      body: { name: 'Long Key Fund', email: 'fund@example.org', country: 'US' },
    }));
  const p = await newProvider();
  await sendTwice('provider payments', (key) =>
    api(`/providers/${p.id}/payments`, {
      token: p.token,
      headers: { 'idempotency-key': key },
      body: { amount_cents: 5000, currency: 'usd', description: 'Tuition award' },
    }));
  const { pay } = await paidPayment(p, 5000);
  await sendTwice('provider refunds', (key) =>
    api(`/providers/${p.id}/payments/${pay.payment_id}/refunds`, {
      token: admin,
      headers: { 'idempotency-key': key },
      body: { amount_cents: 100 },
    }));
});
