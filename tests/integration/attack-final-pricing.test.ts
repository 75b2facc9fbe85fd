// Attacking pricing by token kind as a student: the smallest counts priced exactly (no free
// usage by rounding), kinds that do not exist or are missing, and jobs' limits. Nothing here may
// be a 5xx, and a refused request charges nothing.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../helpers.ts';

type Json = Record<string, unknown>;

async function student(credits = '1000') {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}

const usage = (token: string, body: Json) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': crypto.randomUUID() }, body });

const charged = async (userId: string) => {
  const [{ n, total }] = await testDb`select count(*)::int as n, coalesce(trim_scale(sum(t.amount)), 0)::text as total
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${userId} and t.kind = 'usage'`;
  return { n, total };
};

Deno.test('one token of any kind is charged exactly (gpt-4o-mini: 0.0006 credits an input token); 0 and 0 charge nothing', async () => {
  const s = await student();
  const one = await usage(s.token, { model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 0 });
  assert.equal(one.status, 201, one.text);
  assert.equal((one.body.data as Json).charged, '0.0006');
  const each = await usage(s.token, {
    model: 'gpt-4o-mini',
    input_tokens: 1,
    output_tokens: 1,
    cached_input_tokens: 1,
    reasoning_tokens: 1,
  });
  assert.equal((each.body.data as Json).charged, '0.006', 'cached at the input price, reasoning at the output price');
  const none = await usage(s.token, { model: 'gpt-4o-mini', input_tokens: 0, output_tokens: 0 });
  assert.ok(none.status < 300, none.text);
  assert.deepEqual(await charged(s.id), { n: 2, total: '0.0066' });
  await assertLedgerInvariants();
});

Deno.test('unknown, missing and mistyped kinds are 400 and charge nothing', async () => {
  const s = await student();
  const bad: Json[] = [
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, video_seconds: 10 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, Input_Tokens: 5 },
    { model: 'gpt-4o', output_tokens: 1 },
    { model: 'gpt-4o', input_tokens: 1 },
    { model: 'gpt-4o', input_tokens: '1', output_tokens: 1 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1e12 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, images: 1.0000001 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: -1 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, audio_seconds: Number.MAX_SAFE_INTEGER + 2 },
    { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, images: 1 }, // the card prices no image
    { model: 'no-such-model', input_tokens: 1, output_tokens: 1 },
    { model: 'gpt-4o\u0000', input_tokens: 1, output_tokens: 1 },
  ];
  for (const b of bad) {
    const r = await usage(s.token, b);
    assert.ok(r.status === 400 || r.status === 404, `${JSON.stringify(b)}: ${r.status} ${r.text}`);
  }
  assert.deepEqual(await charged(s.id), { n: 0, total: '0' });
});

Deno.test('a job with odd limits or an unpriced model is refused and places no hold', async () => {
  const s = await student();
  for (const max_tokens of [0, 4097, 1.5, '10', -1, null]) {
    const r = await api('/jobs', {
      token: s.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { type: 'ai_completion', input: { model: 'gpt-4o-mini', prompt: 'one two', max_tokens } },
    });
    assert.equal(r.status, 400, `${max_tokens}: ${r.status} ${r.text}`);
  }
  const unpriced = await api('/jobs', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { type: 'ai_completion', input: { model: 'no-such-model', prompt: 'one two', max_tokens: 10 } },
  });
  assert.ok(unpriced.status >= 400 && unpriced.status < 500, unpriced.text);
  const [{ n }] = await testDb`select count(*)::int as n from billing.holds h join billing.accounts a
    on a.id = h.account_id where a.user_id = ${s.id}`;
  assert.equal(n, 0, 'no hold for a refused job');
});

Deno.test("a student's token cannot ingest a usage batch (events naming anyone, at any count)", async () => {
  const s = await student();
  const r = await api('/credits/usage/batch', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {
      events: [{ event_id: crypto.randomUUID(), user_id: s.id, model: 'gpt-4o', input_tokens: -5, output_tokens: 0 }],
    },
  });
  assert.ok(r.status === 401 || r.status === 403, `${r.status} ${r.text}`);
  assert.deepEqual(await charged(s.id), { n: 0, total: '0' });
});
