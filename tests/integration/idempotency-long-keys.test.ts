// docs/api.md allows an Idempotency-Key of 1–255 printable ASCII characters on every route that
// moves credits or money. The keys the routes derive from it (for the ledger, 'http:<user>:<action>:'
// and 'allowance:' prefixes, at most 300 characters; for Stripe, 'refund:<purchase>:', at most
// 255) must fit their stores whatever the key's length. Here a 255-character key works on each
// money route, a retry with it replays, two such keys that differ only in their last character
// stay two requests, and derived keys filling their store exactly (300 characters), or a key's
// `sha256:` look-alike, never merge two requests.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  fund,
  reportUsage,
  sha256hex,
  student,
  testDb,
} from '../support/helpers.ts';
import { batch, charged, dataOf, outcomesOf, usageEvent } from '../support/money.ts';
import { person, school, walletOf } from '../support/orgs.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { newProvider, paidPayment } from '../support/providers.ts';

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

Deno.test('hold keys and batch event ids at 300 characters and sha256: look-alikes never merge two requests', async () => {
  const s = await student('100');
  const long = 'h'.repeat(255);
  // 'http:<user>:credits.holds:' is 56 characters: a 244-character key fills 300 exactly.
  const keys = [
    long,
    'sha256:' + await sha256hex(long),
    'b'.repeat(244),
    'b'.repeat(245),
    'SHA256:' + await sha256hex(long),
  ];
  const holds: string[] = [];
  for (const k of keys) {
    const h = await api('/credits/holds', { token: s.token, body: { amount: '5' }, headers: { 'idempotency-key': k } });
    assert.equal(h.status, 201, `${k.length}: ${h.text}`);
    holds.push(dataOf(h).hold_id as string);
  }
  assert.equal(new Set(holds).size, keys.length, 'each key is its own hold');
  // A day later the stored answers are gone: each key finds its own hold through the ledger's key.
  await testDb`delete from billing.idempotency_keys where user_id = ${s.id}`;
  for (const [i, k] of keys.entries()) {
    const again = await api('/credits/holds', {
      token: s.token,
      body: { amount: '5' },
      headers: { 'idempotency-key': k },
    });
    assert.equal(dataOf(again)?.hold_id, holds[i], `${k.length}: ${again.text}`);
  }
  assert.equal((await balanceOf(s.token)).held, '25');
  const e0 = 'e'.repeat(200);
  const events = [e0, 'sha256:' + await sha256hex(e0), 'SHA256:' + await sha256hex(e0)].map((id) =>
    usageEvent(s.id, id, 1)
  );
  const first = await batch(events);
  assert.ok(outcomesOf(first).every((o) => o.status === 'applied'), first.text);
  assert.equal(new Set(outcomesOf(first).map((o) => o.transfer_id)).size, 3);
  const second = await batch(events);
  assert.ok(outcomesOf(second).every((o) => o.status === 'duplicate'), second.text);
  assert.equal((await charged(s.id)).n, 3);
  await assertLedgerInvariants();
});

const allowanceOf = async (org: string, member: string) =>
  (await testDb`select trim_scale(a.balance)::text as b from billing.accounts a
                where a.org_id = ${org} and a.member_id = ${member}`)[0]?.b as string | undefined;

Deno.test('allowance keys at 300 characters and sha256: look-alikes: each key funds once per member, retries fund nothing', async () => {
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'allowance', '1000');
  // 'allowance:<org>:' is 47 characters and ':<member>' 37: a 216-character key fills 300 exactly.
  const long = 'a'.repeat(255);
  const keys = ['a'.repeat(216), 'a'.repeat(217), long, 'sha256:' + await sha256hex(long + ':' + ada.id)];
  for (const k of keys) {
    for (let i = 0; i < 2; i++) {
      const r = await api(`/orgs/${org}/allowances`, {
        token: owner.token,
        headers: { 'idempotency-key': k },
        body: { amount: '10' },
      });
      assert.equal(r.status, 201, `${k.length}: ${r.text}`);
    }
  }
  assert.equal(await allowanceOf(org, ada.id), '40', 'four keys, four fundings each, none twice');
  assert.equal(await allowanceOf(org, bob.id), '40');
  assert.equal((await walletOf(owner.token, org)).balance, '920');
  await assertLedgerInvariants();
});
