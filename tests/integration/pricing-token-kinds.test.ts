// Rate cards by token kind over real HTTP: every kind priced and recorded, the 402 pricing
// every kind, and a student's attempts to send counts the card cannot price or Postgres cannot
// hold (docs/pricing.md).
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env, fund, newUser, reportUsage, testDb, userToken } from '../helpers.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;
const error = (r: { body: Json }) => r.body.error as Json;
const key = () => ({ 'idempotency-key': crypto.randomUUID() });
const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };

/** A model with every kind priced ($2 / $0.5 / $8 / $12 a million, $0.04 an image, $0.006 an audio second, ×2). */
async function fullCard(): Promise<string> {
  const model = `kinds-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second)
    values (${model}, 1, 2, 8, 2, now() - interval '1 minute', 0.5, 12, 0.04, 0.006)`;
  return model;
}

async function student(credits?: string) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

const usage = (token: string, body: Json) => reportUsage('/credits/usage', { token, headers: key(), body });

Deno.test('POST /credits/usage prices every kind and records them on the transfer', async () => {
  const model = await fullCard();
  const s = await student('1000');
  const r = await usage(s.token, {
    model,
    input_tokens: 1000,
    output_tokens: 500,
    cached_input_tokens: 4000,
    reasoning_tokens: 250,
    images: 3,
    audio_seconds: 10,
  });
  assert.equal(r.status, 201);
  assert.equal(data(r).charged, '382');
  const [t] = await testDb`select metadata - array['request_hash', 'request_id'] as metadata,
    metadata ->> 'request_hash' ~ '^[0-9a-f]{64}$' as recorded
    from billing.transfers where id = ${String(data(r).transfer_id)}::bigint`;
  assert.ok(t.recorded, "the transfer is the request's record: its hash beside the kinds");
  assert.deepEqual(t.metadata, {
    model,
    input_tokens: 1000,
    output_tokens: 500,
    cached_input_tokens: 4000,
    reasoning_tokens: 250,
    images: 3,
    audio_seconds: 10,
  });
  await assertLedgerInvariants();
});

Deno.test('POST /credits/usage without the optional kinds charges as before (gpt-4o: 50 credits)', async () => {
  const s = await student('100');
  const r = await usage(s.token, { model: 'gpt-4o', input_tokens: 1000, output_tokens: 500 });
  assert.equal(r.status, 201);
  assert.equal(data(r).charged, '50');
});

Deno.test('POST /credits/usage returns 402 whose required prices every kind', async () => {
  const model = await fullCard();
  const s = await student('100');
  const r = await usage(s.token, { model, input_tokens: 0, output_tokens: 0, images: 3, audio_seconds: 10 });
  assert.equal(r.status, 402);
  assert.equal(error(r).code, 'INSUFFICIENT_CREDITS');
  assert.equal((error(r).details as Json).required, '360');
});

Deno.test('POST /credits/usage with images on a card without an image price is 400 UNPRICED_USAGE', async () => {
  const s = await student('100');
  const r = await usage(s.token, { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, images: 1 });
  assert.equal(r.status, 400);
  assert.equal(error(r).code, 'UNPRICED_USAGE');
  assert.equal((error(r).details as Json).kind, 'images');
  const [b] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage'`;
  assert.equal(b.n, 0);
});

Deno.test('POST /credits/usage refuses huge, negative, fractional and non-numeric kinds with 400 INVALID_TOKENS', async () => {
  const s = await student('100');
  const bad: [string, unknown][] = [
    ['cached_input_tokens', -1],
    ['reasoning_tokens', 10_000_001],
    ['images', 1.5],
    ['audio_seconds', '9223372036854775808'],
    ['images', 1e20],
    ['reasoning_tokens', -0.0001],
    ['audio_seconds', 86_401],
  ];
  for (const [field, value] of bad) {
    const r = await usage(s.token, { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, [field]: value });
    assert.equal(r.status, 400, `${field}=${value}`);
    assert.equal(error(r).code, 'INVALID_TOKENS', `${field}=${value}`);
    assert.equal(error(r).field, field);
  }
  const [b] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage'`;
  assert.equal(b.n, 0);
});

Deno.test('POST /credits/usage/batch takes the optional kinds per event', async () => {
  const model = await fullCard();
  const s = await student('1000');
  const r = await api('/credits/usage/batch', {
    headers: service,
    body: {
      events: [
        {
          event_id: crypto.randomUUID(),
          user_id: s.id,
          model,
          input_tokens: 1000,
          output_tokens: 500,
          cached_input_tokens: 4000,
          reasoning_tokens: 250,
          images: 3,
          audio_seconds: 10,
          occurred_at: new Date().toISOString(),
        },
        {
          event_id: crypto.randomUUID(),
          user_id: s.id,
          model: 'gpt-4o',
          input_tokens: 1,
          output_tokens: 1,
          audio_seconds: 1,
          occurred_at: new Date().toISOString(),
        },
      ],
    },
  });
  assert.equal(r.status, 200, r.text);
  const outcomes = (data(r) as { outcomes: Json[] }).outcomes;
  assert.equal(outcomes.length, 2, r.text);
  assert.equal(outcomes[0].status, 'applied');
  assert.equal(outcomes[0].charged, '382');
  assert.deepEqual([outcomes[1].status, outcomes[1].error], ['invalid', 'UNPRICED_USAGE']);
  await assertLedgerInvariants();
});
