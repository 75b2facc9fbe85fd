// Attacking pricing by token kind (#36) as a student: kinds that make a charge cheaper, counts
// Postgres or the formula should refuse, an idempotency key re-sent with other kinds, and a
// charge across a rate-card publish boundary (docs/pricing.md). The admin only publishes.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newAdmin, newUser, reportUsage, testDb, userToken } from '../helpers.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;
const error = (r: { body: Json }) => (r.body.error ?? {}) as Json;

async function student(credits = '100000') {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}

const usage = (token: string, body: Json, k: string = crypto.randomUUID()) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body });

async function charges(userId: string): Promise<number> {
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.user_id = ${userId} and t.kind = 'usage'`;
  return n;
}

Deno.test('a kind the card leaves null costs what the kind it belongs to costs (cached = input, reasoning = output)', async () => {
  const s = await student();
  const plain = await usage(s.token, { model: 'gpt-4o', input_tokens: 1000, output_tokens: 1000 });
  const kinds = await usage(s.token, {
    model: 'gpt-4o',
    input_tokens: 0,
    output_tokens: 0,
    cached_input_tokens: 1000,
    reasoning_tokens: 1000,
  });
  assert.equal(plain.status, 201, plain.text);
  assert.equal(kinds.status, 201, kinds.text);
  assert.equal(data(kinds).charged, data(plain).charged);
  await assertLedgerInvariants();
});

Deno.test('an idempotency key re-sent with other kinds never makes a second or cheaper charge', async () => {
  const s = await student();
  const k = crypto.randomUUID();
  const first = await usage(s.token, { model: 'gpt-4o', input_tokens: 1000, output_tokens: 1000 }, k);
  assert.equal(first.status, 201, first.text);
  // Same total on gpt-4o (cached priced as input, reasoning as output), other kinds.
  const other = await usage(s.token, {
    model: 'gpt-4o',
    input_tokens: 0,
    output_tokens: 0,
    cached_input_tokens: 1000,
    reasoning_tokens: 1000,
  }, k);
  assert.ok(
    other.status === 409 || (other.status < 300 && data(other).transfer_id === data(first).transfer_id),
    other.text,
  );
  const cheaper = await usage(s.token, { model: 'gpt-4o', input_tokens: 1, output_tokens: 0, images: 0 }, k);
  assert.ok(cheaper.status === 409 || data(cheaper).transfer_id === data(first).transfer_id, cheaper.text);

  const k2 = crypto.randomUUID();
  const race = await Promise.all(Array.from({ length: 10 }, (_, i) =>
    usage(s.token, {
      model: 'gpt-4o',
      input_tokens: i % 2 ? 1000 : 0,
      cached_input_tokens: i % 2 ? 0 : 1000,
      output_tokens: 10 * i,
    }, k2)));
  assert.ok(race.every((r) => r.status < 500), race.map((r) => r.status).join(','));
  assert.equal(await charges(s.id), 2, 'one charge per key');
  await assertLedgerInvariants();
});

Deno.test('counts a student should not send are 400, never a 5xx, and charge nothing', async () => {
  const s = await student();
  const bad: Json[] = [
    { cached_input_tokens: null },
    { cached_input_tokens: '100' },
    { reasoning_tokens: '1e2' },
    { images: true },
    { audio_seconds: 0.5 },
    { cached_input_tokens: -1 },
    { reasoning_tokens: 10_000_001 },
    { images: 10_001 },
    { audio_seconds: 86_401 },
    { cached_input_tokens: 2 ** 63 },
    { reasoning_tokens: 1e308 },
    { images: '0x10' },
    { audio_seconds: [] },
    { cached_input_tokens: {} },
    { input_tokens: -0.0001 },
  ];
  for (const b of bad) {
    const r = await usage(s.token, { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, ...b });
    assert.equal(r.status, 400, `${JSON.stringify(b)}: ${r.status} ${r.text}`);
  }
  const zero = await usage(s.token, { model: 'gpt-4o', input_tokens: -0, output_tokens: 0, cached_input_tokens: 0 });
  assert.ok(zero.status < 500, zero.text);
  const big = await usage(s.token, {
    model: 'gpt-4o',
    input_tokens: 10_000_000,
    output_tokens: 10_000_000,
    cached_input_tokens: 10_000_000,
    reasoning_tokens: 10_000_000,
  });
  assert.ok(big.status === 402 || big.status === 201, big.text);
  if (big.status === 402) {
    assert.equal(error(big).code, 'INSUFFICIENT_CREDITS');
    const required = (error(big).details as Json).required as string;
    await fund(s.id, required);
    const k = crypto.randomUUID();
    const again = await usage(s.token, {
      model: 'gpt-4o',
      input_tokens: 10_000_000,
      output_tokens: 10_000_000,
      cached_input_tokens: 10_000_000,
      reasoning_tokens: 10_000_000,
    }, k);
    assert.equal(again.status, 201, again.text);
    assert.equal(data(again).charged, required, "the 402's required is what is then charged");
  }
  await assertLedgerInvariants();
});

Deno.test('a card published a few seconds ahead prices charges before it at the old price and after it at the new', async () => {
  const adminId = await newAdmin();
  const admin = await userToken(adminId, { admin: true });
  const model = `attack36-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 1, 1, now() - interval '1 minute')`;
  const d = await api('/admin/rate-cards/drafts', {
    token: admin,
    body: { model, usd_per_million_input: '10', usd_per_million_output: '10', markup: '1', reason: 'rise' },
  });
  assert.equal(d.status, 201, d.text);
  const at = Date.now() + 2500;
  const p = await api(`/admin/rate-cards/drafts/${data(d).id}/publish`, {
    token: admin,
    body: { reason: 'rise', effective_from: new Date(at).toISOString() },
  });
  assert.equal(p.status, 200, p.text);
  const s = await student();
  const before = await usage(s.token, { model, input_tokens: 1_000_000, output_tokens: 0 });
  assert.deepEqual([data(before).rate_card_version, data(before).charged], [1, '1000']);
  await new Promise((r) => setTimeout(r, Math.max(0, at - Date.now()) + 300));
  const after = await Promise.all(
    Array.from({ length: 5 }, () => usage(s.token, { model, input_tokens: 1_000_000, output_tokens: 0 })),
  );
  assert.deepEqual(after.map((r) => [data(r).rate_card_version, data(r).charged]), Array(5).fill([2, '10000']));
  await assertLedgerInvariants();
});
