// The credits API over real HTTP through the gateway, against the real database.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;
const error = (r: { body: Json }) => r.body.error as Json;
const key = () => ({ 'idempotency-key': crypto.randomUUID() });

async function student(credits?: string) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

Deno.test('GET /credits/balance starts at zero for a new student', async () => {
  const s = await student();
  const r = await api('/credits/balance', { token: s.token });
  assert.equal(r.status, 200);
  assert.deepEqual(data(r), { balance: '0', held: '0', available: '0', expiring: null });
});

Deno.test('POST /credits/usage charges exactly 50 credits for 1,000 + 500 gpt-4o tokens', async () => {
  const s = await student('100');
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: {
      model: 'gpt-4o',
      input_tokens: 1000,
      output_tokens: 500,
      correlation_id: 'req-42',
      metadata: { feature: 'essay' },
    },
  });
  assert.equal(r.status, 201);
  assert.equal(data(r).charged, '50');
  assert.equal(data(r).balance, '50');
  const [card] = await testDb`select max(version) as v from billing.rate_cards where model = 'gpt-4o'`;
  assert.equal(data(r).rate_card_version, card.v, 'the version of the card in effect');
  assert.match(String(data(r).transfer_id), /^[0-9]+$/);
  await assertLedgerInvariants();
});

Deno.test('POST /credits/usage returns 402 INSUFFICIENT_CREDITS with required and available', async () => {
  const s = await student('10');
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 1000, output_tokens: 500 },
  });
  assert.equal(r.status, 402);
  assert.equal(error(r).code, 'INSUFFICIENT_CREDITS');
  assert.equal(error(r).type, 'payment_required');
  assert.deepEqual(error(r).details, { required: '50', available: '10', debt: false });
  assert.deepEqual(await balanceOf(s.token), {
    balance: '10',
    held: '0',
    available: '10',
  });
});

Deno.test('POST /credits/usage without an Idempotency-Key is refused with 400 and moves nothing', async () => {
  const s = await student('100');
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    body: { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 },
  });
  assert.equal(r.status, 400);
  assert.equal(error(r).code, 'IDEMPOTENCY_KEY_REQUIRED');
  assert.equal(data(await api('/credits/balance', { token: s.token })).balance, '100');
});

const badUsage: Array<[string, unknown]> = [
  // user_id is the reported field naming who spent (reportUsage fills it in): mass assignment
  // now tries a field the route does not take.
  ['an unknown field (mass assignment)', {
    model: 'gpt-4o',
    input_tokens: 1,
    output_tokens: 1,
    account_id: crypto.randomUUID(),
  }],
  ['a user_id that is not a user id', { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, user_id: 'me' }],
  ['negative tokens', { model: 'gpt-4o', input_tokens: -1, output_tokens: 1 }],
  ['fractional tokens', { model: 'gpt-4o', input_tokens: 1.5, output_tokens: 1 }],
  ['tokens as a string', { model: 'gpt-4o', input_tokens: '10', output_tokens: 1 }],
  ['absurd token counts', { model: 'gpt-4o', input_tokens: 1e308, output_tokens: 1 }],
  ['a missing model', { input_tokens: 1, output_tokens: 1 }],
  ['SQL in the model name', { model: "gpt-4o'; drop table billing.entries;--", input_tokens: 1, output_tokens: 1 }],
];
for (const [what, body] of badUsage) {
  Deno.test(`POST /credits/usage with ${what} is a 400 in the envelope and changes nothing`, async () => {
    const s = await student('100');
    const r = await reportUsage('/credits/usage', { token: s.token, headers: key(), body });
    assert.equal(r.status, 400);
    assert.equal(error(r).type, 'validation');
    assert.equal(data(await api('/credits/balance', { token: s.token })).balance, '100');
  });
}

Deno.test('POST /credits/usage with an unknown model is 400 UNKNOWN_MODEL', async () => {
  const s = await student('100');
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-99', input_tokens: 1, output_tokens: 1 },
  });
  assert.equal(r.status, 400);
  assert.equal(error(r).code, 'UNKNOWN_MODEL');
});

Deno.test('holds: reserve, capture part, and the rest is released', async () => {
  const s = await student('100');
  const hold = await api('/credits/holds', {
    token: s.token,
    headers: key(),
    body: { amount: '40', ttl_seconds: 120 },
  });
  assert.equal(hold.status, 201);
  const id = String(data(hold).hold_id);
  assert.equal(data(hold).amount, '40');
  assert.ok(Date.parse(String(data(hold).expires_at)) > Date.now() + 100_000);
  assert.deepEqual(await balanceOf(s.token), {
    balance: '100',
    held: '40',
    available: '60',
  });

  const capture = await api(`/credits/holds/${id}/capture`, {
    token: s.token,
    headers: key(),
    body: { amount: '25.5' },
  });
  assert.equal(capture.status, 200);
  assert.equal(data(capture).captured, '25.5');
  assert.equal(data(capture).released, '14.5');
  assert.deepEqual(await balanceOf(s.token), {
    balance: '74.5',
    held: '0',
    available: '74.5',
  });
  await assertLedgerInvariants();
});

Deno.test('holds: release frees the credits, and a released hold cannot be captured', async () => {
  const s = await student('10');
  const id = String(
    data(await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '10' } })).hold_id,
  );
  const release = await api(`/credits/holds/${id}/release`, { token: s.token, headers: key(), body: {} });
  assert.equal(release.status, 200);
  assert.equal(data(release).status, 'released');
  const capture = await api(`/credits/holds/${id}/capture`, { token: s.token, headers: key(), body: {} });
  assert.equal(capture.status, 409);
  assert.equal(error(capture).code, 'HOLD_RELEASED');
  assert.equal(data(await api('/credits/balance', { token: s.token })).available, '10');
});

Deno.test("holds: another student's hold id is 404, and nothing moves", async () => {
  const owner = await student('50');
  const other = await student('50');
  const id = String(
    data(await api('/credits/holds', { token: owner.token, headers: key(), body: { amount: '50' } })).hold_id,
  );
  for (const action of ['capture', 'release']) {
    const r = await api(`/credits/holds/${id}/${action}`, { token: other.token, headers: key(), body: {} });
    assert.equal(r.status, 404);
    assert.equal(error(r).code, 'HOLD_NOT_FOUND');
  }
  assert.equal(
    (await api('/credits/holds/not-a-uuid/capture', { token: other.token, headers: key(), body: {} })).status,
    404,
  );
  assert.deepEqual(await balanceOf(owner.token), {
    balance: '50',
    held: '50',
    available: '0',
  });
});

Deno.test('holds: amounts are exact decimals; 19 fractional digits or a float number are refused', async () => {
  const s = await student('1');
  const ok = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '0.000000000000000001' } });
  assert.equal(ok.status, 201);
  assert.equal(data(ok).amount, '0.000000000000000001');
  for (const amount of ['0.0000000000000000001', 0.5, '-1', '0', '1e3', 'NaN', '']) {
    const r = await api('/credits/holds', { token: s.token, headers: key(), body: { amount } });
    assert.equal(r.status, 400, `amount ${JSON.stringify(amount)} was accepted`);
  }
});

Deno.test("GET /credits/ledger pages newest first with a cursor, and only shows the caller's entries", async () => {
  const s = await student('100');
  for (let i = 0; i < 3; i++) {
    await reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 50 * (i + 1), output_tokens: 0, correlation_id: `c-${i}` },
    });
  }
  const first = await api('/credits/ledger?limit=2', { token: s.token });
  const page1 = data(first) as { items: Json[]; next_cursor: string };
  assert.equal(page1.items.length, 2);
  assert.deepEqual(page1.items.map((e) => e.correlation_id), ['c-2', 'c-1']);
  assert.deepEqual(page1.items.map((e) => e.amount), ['-3', '-2']);
  const second = data(await api(`/credits/ledger?limit=2&cursor=${page1.next_cursor}`, { token: s.token })) as {
    items: Json[];
    next_cursor: string | null;
  };
  assert.deepEqual(second.items.map((e) => e.kind), ['usage', 'promo_grant']);
  assert.equal(second.next_cursor, null);
  assert.equal(second.items[1].balance_after, '100');
  const other = await student();
  assert.deepEqual((data(await api('/credits/ledger', { token: other.token })) as { items: Json[] }).items, []);
});

Deno.test('GET /credits/ledger?format=csv streams every entry with correlation ids', async () => {
  const s = await student('5000');
  const requests = Array.from(
    { length: 30 },
    (_, i) =>
      reportUsage('/credits/usage', {
        token: s.token,
        headers: key(),
        body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0, correlation_id: `csv-${i}` },
      }),
  );
  await Promise.all(requests);
  const r = await api('/credits/ledger?format=csv', { token: s.token });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /text\/csv/);
  const lines = r.text.trim().split('\r\n');
  assert.equal(lines[0], 'id,created_at,kind,amount,balance_after,correlation_id,reference,lots,paid_by');
  assert.equal(lines.length, 1 + 31);
  const ids = new Set(lines.slice(1).map((l) => l.split(',')[5]).filter((c) => c.startsWith('csv-')));
  assert.equal(ids.size, 30);
  // Every usage line names the one lot it drew from, the grant's line the lot it created.
  const [{ lot }] =
    await testDb`select l.id::text as lot from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id}`;
  const lots = lines.slice(1).map((l) => l.split(',')[7]);
  assert.equal(lots.filter((x) => x.startsWith(`${lot}:`)).length, 31);
  assert.equal(lots.at(-1), `${lot}:5000`);
});

Deno.test('POST /credits/grants is for admins only', async () => {
  const s = await student();
  const r = await api('/credits/grants', {
    token: s.token,
    headers: key(),
    body: { user_id: s.id, amount: '1000000', reason: 'free money' },
  });
  assert.equal(r.status, 403);
  assert.equal(data(await api('/credits/balance', { token: s.token })).balance, '0');
  assert.equal((await api('/credits/balance')).status, 401);
});
