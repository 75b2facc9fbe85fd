// Rate cards by token kind over real HTTP: every kind priced and recorded, the smallest counts
// priced exactly (no free usage by rounding), a kind the card leaves null priced as the kind it
// belongs to, the 402 pricing every kind, an Idempotency-Key re-sent with other kinds charging
// once, and counts the card cannot price or Postgres cannot hold refused with nothing charged
// (docs/pricing.md).
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env, fund, reportUsage, student, testDb } from '../support/helpers.ts';
import { charged, everyKind, fullCard } from '../support/money.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;
const error = (r: { body: Json }) => r.body.error as Json;
const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };

const usage = (token: string, body: Json, k: string = crypto.randomUUID()) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body });

Deno.test('POST /credits/usage prices every kind and records them on the transfer', async () => {
  const model = await fullCard();
  const s = await student('1000');
  const r = await usage(s.token, { model, ...everyKind });
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

Deno.test('a kind the card leaves null costs what the kind it belongs to costs (cached = input, reasoning = output)', async () => {
  const s = await student('100000');
  // A card with input and output prices only.
  const model = `plain-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 5, 15, 4, now() - interval '1 minute')`;
  const plain = await usage(s.token, { model, input_tokens: 1000, output_tokens: 1000 });
  const kinds = await usage(s.token, {
    model,
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
  const s = await student('100000');
  const k = crypto.randomUUID();
  const first = await usage(s.token, { model: 'gpt-4o', input_tokens: 1000, output_tokens: 1000 }, k);
  assert.equal(first.status, 201, first.text);
  // Other kinds on gpt-4o, cheaper (cached input at half the input price).
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
  assert.equal((await charged(s.id)).n, 2, 'one charge per key');
  await assertLedgerInvariants();
});

Deno.test('counts a student should not send are 400, never a 5xx, and charge nothing', async () => {
  const s = await student('100000');
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

Deno.test('one token of any kind is charged exactly (gpt-4o-mini: 0.0006 credits an input token, 0.0003 cached); 0 and 0 charge nothing', async () => {
  const s = await student('1000');
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
  assert.equal(
    (each.body.data as Json).charged,
    '0.0057',
    'cached at half the input price, reasoning at the output price',
  );
  const none = await usage(s.token, { model: 'gpt-4o-mini', input_tokens: 0, output_tokens: 0 });
  assert.ok(none.status < 300, none.text);
  assert.deepEqual(await charged(s.id), { n: 2, total: '0.0063' });
  await assertLedgerInvariants();
});

Deno.test('unknown, missing and mistyped kinds are 400 and charge nothing', async () => {
  const s = await student('1000');
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
