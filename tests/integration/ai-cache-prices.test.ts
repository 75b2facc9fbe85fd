// Prompt caching through the gateway priced as the providers price it (docs/pricing.md § Token
// kinds): with the reference rate cards a cache read costs less than the input it replaces, and an
// Anthropic cache write with `ttl: "1h"` is priced at the card's hour-long price, from the split of
// 5-minute and hour-long writes the provider reports, not refused. Against the real local stack.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { activeHolds, callsOf, cardPrice, gatewayUrl, settled, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, testDb } from '../support/helpers.ts';

const claude = 'claude-haiku-4-5';
const anthropicOf = (token: string) =>
  new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: token, maxRetries: 0 });

/** The reference card's credits per token of each kind, as exact text. */
async function perToken(model: string) {
  const [c] = await testDb`select trim_scale(credits_per_input_token)::text as input,
      trim_scale(credits_per_cached_input_token)::text as cached,
      trim_scale(credits_per_cache_write_token)::text as write,
      trim_scale(credits_per_cache_write_1h_token)::text as write1h
    from billing.rate_cards c where c.model = ${model} and c.effective_from <= now()
    order by c.effective_from desc, c.version desc limit 1`;
  return c;
}

Deno.test("the reference cards price caching in the providers' proportions: reads below input, writes above", async () => {
  // OpenAI: cached input at half the input price (gpt-4o, gpt-4o-mini); 1 USD = 1,000 credits, ×4.
  assert.deepEqual(await perToken('gpt-4o'), { input: '0.02', cached: '0.01', write: '0.02', write1h: '0.02' });
  assert.deepEqual(await perToken('gpt-4o-mini'), {
    input: '0.0006',
    cached: '0.0003',
    write: '0.0006',
    write1h: '0.0006',
  });
  // Anthropic: read 0.1×, 5-minute write 1.25×, hour-long write 2×.
  assert.deepEqual(await perToken(claude), { input: '0.004', cached: '0.0004', write: '0.005', write1h: '0.008' });
  // So a prompt read from the cache costs the student less than the same prompt sent afresh.
  for (const model of ['gpt-4o', 'gpt-4o-mini', claude]) {
    const [r] = await testDb`select (billing.price_usage(${model}, 0, 0, 1000)).amount
      < (billing.price_usage(${model}, 1000, 0)).amount as cheaper`;
    assert.equal(r.cheaper, true, model);
  }
});

Deno.test('Messages: an hour-long cache write is charged at the hour-long price, whole and streamed', async () => {
  const s = await student();
  const anthropic = anthropicOf(s.token);
  const body = {
    model: claude,
    max_tokens: 100,
    system: [
      {
        type: 'text' as const,
        text: 'a syllabus kept for the hour',
        cache_control: { type: 'ephemeral' as const, ttl: '1h' as const },
      },
      { type: 'text' as const, text: 'this week', cache_control: { type: 'ephemeral' as const } },
    ],
    messages: [{
      role: 'user' as const,
      content: 'summarise #standin words=6 cached=3 cache_write=2 cache_write_1h=5',
    }],
  };
  const whole = await anthropic.messages.create(body);
  assert.equal(whole.usage.cache_creation_input_tokens, 7);
  assert.deepEqual(whole.usage.cache_creation, { ephemeral_5m_input_tokens: 2, ephemeral_1h_input_tokens: 5 });
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  const u = whole.usage;
  const expected = await cardPrice(claude, {
    input: u.input_tokens,
    cached: 3,
    write: 2,
    write1h: 5,
    output: u.output_tokens,
  });
  assert.equal(c.charged, expected);
  // Worked out by hand: each kind at its own price per token.
  const [byHand] = await testDb`select trim_scale(${u.input_tokens}::numeric * 0.004 + 3 * 0.0004 + 2 * 0.005
    + 5 * 0.008 + ${u.output_tokens}::numeric * 0.02)::text as price`;
  assert.equal(c.charged, byHand.price);
  assert.equal(c.transfer_metadata.cache_write_tokens, 2);
  assert.equal(c.transfer_metadata.cache_write_1h_tokens, 5);
  assert.equal((whole.usage as unknown as { cost: string }).cost, c.charged, 'the usage says its cost');

  const streamed = await anthropic.messages.stream(body).finalMessage();
  assert.deepEqual(streamed.usage.cache_creation, { ephemeral_5m_input_tokens: 2, ephemeral_1h_input_tokens: 5 });
  await settled(s.id);
  const [again] = await callsOf(s.id);
  assert.equal(again.charged, expected, 'streamed costs what whole costs');
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('Messages: a ttl of 1h on a card without an hour-long price is UNPRICED_USAGE, nothing held', async () => {
  const s = await student();
  const model = `claude-test-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, usd_per_million_cache_write, upstream)
    values (${model}, 1, 1, 5, 2, now() - interval '1 minute', 1.25, 'anthropic')`;
  const ask = (ttl?: '1h') =>
    api('/ai/v1/messages', {
      token: s.token,
      body: {
        model,
        max_tokens: 10,
        messages: [{
          role: 'user',
          content: [{
            type: 'tool_result',
            tool_use_id: 't1',
            content: [
              {
                type: 'text',
                text: 'x #standin words=1',
                cache_control: { type: 'ephemeral', ...(ttl ? { ttl } : {}) },
              },
            ],
          }],
        }],
      },
    });
  const refused = await ask('1h');
  assert.equal(refused.status, 400, refused.text);
  assert.equal((refused.body.error as { code: string }).code, 'UNPRICED_USAGE');
  assert.match(JSON.stringify(refused.body.error), /cache_write_1h_tokens/);
  assert.equal((await callsOf(s.id)).length, 0);
  // The same request with a 5-minute write is served.
  assert.equal((await ask()).status, 200);
});

Deno.test('the hold covers a prompt written to the cache for an hour at the hour-long price', async () => {
  const [r] = await testDb`select trim_scale(billing.card_hold_amount(c, 1000, 0, true, true))::text as hour,
      trim_scale(billing.card_hold_amount(c, 1000, 0, true, false))::text as five
    from billing.rate_cards c where c.model = ${claude} and c.effective_from <= now()
    order by c.effective_from desc, c.version desc limit 1`;
  assert.deepEqual(r, { hour: '8', five: '5' });
});
