// The last credits buy an answer, never a broken one (docs/ai-gateway.md § The last credits): a
// call is held for the most the paying account can pay, up to the request's maximum (or
// AI_MAX_OUTPUT_TOKENS), and the provider is asked for no more (it ends with its own "length"
// reason). Refused only when not even AI_MIN_OUTPUT_TOKENS fits, when a cut answer would be useless
// (a forced tool call, a JSON schema or JSON mode), or when the caller sends `x-ai-clamp: off`; every 402 names
// what was needed and what is available in its message, which each SDK shows.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { generateText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { activeHolds, balanceOf, callsOf, gatewayUrl, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants, testDb } from '../support/helpers.ts';

const claude = 'claude-haiku-4-5';
const long = 'hi #standin words=3000';

/** What the gateway granted the student's latest call, as its record keeps it. */
const grantedOf = async (userId: string) =>
  (await testDb`select max_output_tokens from billing.ai_calls where user_id = ${userId} and status = 'charged'
    order by created_at desc limit 1`).map((r) => Number(r.max_output_tokens))[0];

/** The student ends whole: nothing held, the balance not below zero, the books balanced. */
async function endsWhole(userId: string) {
  await settled(userId);
  assert.equal(await activeHolds(userId), 0);
  assert.ok(!(await balanceOf(userId)).startsWith('-'), 'never below zero');
  await assertLedgerInvariants();
}

Deno.test('9.87 credits buy a clamped answer at the AI SDK defaults: openai(model), openai.chat(model), Anthropic', async () => {
  for (
    const [label, model] of [
      ['openai(model)', (t: string) => createOpenAI({ baseURL: gatewayUrl, apiKey: t })('gpt-4o')],
      ['openai.chat(model)', (t: string) => createOpenAI({ baseURL: gatewayUrl, apiKey: t }).chat('gpt-4o')],
      ['anthropic(model)', (t: string) => createAnthropic({ baseURL: gatewayUrl, apiKey: t })(claude)],
    ] as const
  ) {
    const s = await student('9.87');
    const r = await generateText({ model: model(s.token), prompt: long, maxRetries: 0 });
    assert.equal(r.finishReason, 'length', `${label}: the provider ended it at the granted maximum`);
    assert.ok(r.text.length > 0, label);
    const granted = await grantedOf(s.id);
    assert.ok(granted >= 64 && granted < 4096, `${label}: granted ${granted}`);
    const out = r.usage.outputTokens ?? 0;
    assert.ok(
      out <= granted && out > granted - 8,
      `${label}: the provider was asked for no more (${out} of ${granted})`,
    );
    const [call] = await callsOf(s.id);
    assert.ok(Number(call.charged) <= 9.87, `${label}: charged ${call.charged}`);
    await endsWhole(s.id);
  }
});

Deno.test('the granted maximum is in x-ai-max-output-tokens, whole and streamed; a request that fits is not cut', async () => {
  for (const stream of [false, true]) {
    const s = await student('9.87');
    const res = await fetch(`${gatewayUrl}/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: long }], stream }),
    });
    assert.equal(res.status, 200, await res.clone().text());
    const granted = Number(res.headers.get('x-ai-max-output-tokens'));
    assert.ok(granted >= 64 && granted < 4096, `granted ${granted}`);
    await res.text();
    await endsWhole(s.id);
  }
  const rich = await student('1000');
  const res = await rich.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: 'hi #standin words=3' }],
  }).withResponse();
  assert.equal(res.response.headers.get('x-ai-max-output-tokens'), '4096', 'all of AI_MAX_OUTPUT_TOKENS fits');
  assert.equal(res.data.choices[0].finish_reason, 'stop');
  await endsWhole(rich.id);
});

Deno.test("a maximum past AI_MAX_OUTPUT_TOKENS (an SDK's default for the model) is cut to it, unless the caller asks not", async () => {
  const s = await student('1000');
  const ask = (headers: Record<string, string>) =>
    fetch(`${gatewayUrl}/messages`, {
      method: 'POST',
      headers: {
        'x-api-key': s.token,
        'anthropic-version': '2023-06-01',
        'content-type': 'application/json',
        ...headers,
      },
      // @ai-sdk/anthropic asks for claude-haiku-4-5's own maximum.
      body: JSON.stringify({
        model: claude,
        max_tokens: 64000,
        messages: [{ role: 'user', content: 'hi #standin words=6000' }],
      }),
    });
  const res = await ask({});
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(res.headers.get('x-ai-max-output-tokens'), '4096');
  const message = await res.json() as { stop_reason: string; usage: { output_tokens: number } };
  assert.equal(message.stop_reason, 'max_tokens', 'the provider ended it at the granted maximum');
  const out = message.usage.output_tokens;
  assert.ok(out <= 4096 && out > 4096 - 8, `the provider was asked for no more (${out})`);
  const whole = await ask({ 'x-ai-clamp': 'off' });
  assert.equal(whole.status, 400);
  assert.match((await whole.json() as { error: { message: string } }).error.message, /max_tokens may be at most 4096/);
  await endsWhole(s.id);
});

Deno.test('0.01 credits: a 402 whose message names what was needed and what is available, in every SDK', async () => {
  const s = await student('0.01');
  const openaiErr = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: long }],
  })
    .then(() => null, (e) => e as InstanceType<typeof OpenAI.APIError>);
  assert.equal(openaiErr?.status, 402);
  assert.match(String(openaiErr?.message), /needs [0-9.]+ credits and 0\.01 are available.*Buy credits/);
  const anthropic = new Anthropic({ baseURL: `${gatewayUrl}`.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  const anthropicErr = await anthropic.messages.create({
    model: claude,
    max_tokens: 4096,
    messages: [{ role: 'user', content: long }],
  }).then(() => null, (e) => e as Error);
  assert.match(String(anthropicErr?.message), /needs [0-9.]+ credits and 0\.01 are available/);
  const sdkErr = await generateText({
    model: createOpenAI({ baseURL: gatewayUrl, apiKey: s.token })('gpt-4o'),
    prompt: long,
    maxRetries: 0,
  }).then(() => null, (e) => e as Error);
  assert.match(String(sdkErr?.message), /needs [0-9.]+ credits and 0\.01 are available/);
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${s.id}`;
  assert.equal(n, 0, 'a refusal holds nothing');
});

Deno.test('a forced tool call, a JSON schema or JSON mode and x-ai-clamp: off are never cut: 402 when all of it does not fit', async () => {
  const s = await student('9.87');
  const tools = [{ type: 'function', function: { name: 'grade', parameters: { type: 'object', properties: {} } } }];
  const bodies: [string, Record<string, unknown>, Record<string, string>][] = [
    ['forced tool', { tools, tool_choice: 'required' }, {}],
    ['named tool', { tools, tool_choice: { type: 'function', function: { name: 'grade' } } }, {}],
    ['json schema', {
      response_format: { type: 'json_schema', json_schema: { name: 'g', schema: { type: 'object' } } },
    }, {}],
    ['json mode', { response_format: { type: 'json_object' } }, {}],
    ['header', {}, { 'x-ai-clamp': 'off' }],
  ];
  for (const [label, extra, headers] of bodies) {
    const res = await fetch(`${gatewayUrl}/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: long }], ...extra }),
    });
    const text = await res.text();
    assert.equal(res.status, 402, `${label}: ${text}`);
    assert.match(text, /are available/, label);
  }
  assert.equal(await balanceOf(s.id), '9.87', 'nothing was charged');
});
