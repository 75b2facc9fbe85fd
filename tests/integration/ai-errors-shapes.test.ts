// Each API's errors in its own shape: on /ai/v1/messages every error the gateway answers is
// Anthropic's (`{type: "error", error: {type, message}}`, this project's code and details inside,
// the sentence on top), so the Anthropic SDK's `err.message` is the sentence and `@ai-sdk/anthropic`
// says it too; the OpenAI routes keep OpenAI's (`{error: {message, type, code}}`). Every refusal
// says its own reason.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { APICallError, generateText } from 'ai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { gatewayUrl, standinCall, student } from '../support/ai.ts';
import { api } from '../support/helpers.ts';

const claude = 'claude-haiku-4-5';
const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;
const anthropicOf = (token: string) =>
  new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: token, maxRetries: 0 });
const ask = (text: string) => ({
  model: claude,
  max_tokens: 100,
  messages: [{ role: 'user' as const, content: text }],
});

/** The Anthropic SDK's error for a request, with what it read of the body. */
async function anthropicErrorOf(run: () => Promise<unknown>) {
  try {
    await run();
  } catch (err) {
    assert.ok(err instanceof Anthropic.APIError, String(err));
    return err as InstanceType<typeof Anthropic.APIError> & {
      error: {
        error: { type: string; code: string; message: string; details?: Record<string, unknown>; field?: string };
      };
    };
  }
  assert.fail('no error');
}

Deno.test('a 402 on /messages reads as Anthropic error: the sentence as err.message, its type, our code and details', async () => {
  const s = await student('0');
  const t = tag();
  const err = await anthropicErrorOf(() => anthropicOf(s.token).messages.create(ask(`#standin tag=${t}`)));
  assert.equal(err.status, 402);
  const sentence = err.error.error.message;
  assert.match(sentence, /credits/);
  assert.equal(err.message, `402 ${sentence}`);
  assert.equal(err.error.error.type, 'billing_error');
  assert.equal(err.error.error.code, 'INSUFFICIENT_CREDITS');
  assert.ok(err.error.error.details?.required);
  // @ai-sdk/anthropic reads the same body: the sentence with its figures (its request asks for
  // another maximum, so another figure).
  await assert.rejects(
    generateText({
      model: createAnthropic({ baseURL: gatewayUrl, apiKey: s.token })(claude),
      prompt: 'hi',
      maxRetries: 0,
    }),
    (e) =>
      APICallError.isInstance(e) && e.statusCode === 402 &&
      /^Not enough credits for this request: it needs [0-9.]+ credits and 0 are available\./.test(e.message),
  );
  assert.equal((await standinCall(t)).status, 'unknown');
});

Deno.test('every error /messages answers is in Anthropic shape: 400, 401, 429, 5xx, 405', async () => {
  const s = await student();
  const bad = await anthropicErrorOf(() => anthropicOf('not-a-token').messages.create(ask('hi')));
  assert.equal(bad.status, 401);
  assert.equal(bad.error.error.type, 'authentication_error');
  assert.equal(bad.message, `401 ${bad.error.error.message}`);

  // A refusal says its own reason: a cache lifetime Anthropic does not have, not "system is not in an accepted form".
  const ttl = await anthropicErrorOf(() =>
    anthropicOf(s.token).messages.create(
      {
        ...ask('hi'),
        system: [{ type: 'text', text: 'Be brief.', cache_control: { type: 'ephemeral', ttl: '2h' } }],
      } as unknown as Parameters<Anthropic['messages']['create']>[0],
    )
  );
  assert.equal(ttl.status, 400);
  assert.equal(ttl.error.error.type, 'invalid_request_error');
  assert.equal(ttl.error.error.field, 'system.0.cache_control.ttl');
  assert.match(ttl.message, /5m or 1h/);

  const failed = await anthropicErrorOf(() => anthropicOf(s.token).messages.create(ask('#standin fail=500')));
  assert.equal(failed.status, 502);
  assert.equal(failed.error.error.type, 'api_error');
  assert.equal(failed.error.error.code, 'PROVIDER_ERROR');

  // The per-student limit (60 calls a minute): the refusal past it is Anthropic's rate_limit_error.
  const limited = await student('0');
  let last = { status: 0, body: {} as Record<string, unknown> };
  for (let i = 0; i < 70 && last.status !== 429; i++) {
    last = await api('/ai/v1/messages', { token: limited.token, body: {} });
  }
  assert.equal(last.status, 429);
  assert.equal(last.body.type, 'error');
  assert.equal((last.body.error as { type: string }).type, 'rate_limit_error');
  assert.equal(typeof last.body.message, 'string');

  const get = await api('/ai/v1/messages', { token: s.token });
  assert.equal(get.status, 405);
  assert.equal(get.body.type, 'error');
  assert.equal((get.body.error as { code: string }).code, 'METHOD_NOT_ALLOWED');
});

Deno.test("the OpenAI routes keep OpenAI's error shape", async () => {
  const s = await student('0');
  const res = await api('/ai/v1/responses', { token: s.token, body: { model: 'gpt-4o-mini', input: 'hi' } });
  assert.equal(res.status, 402);
  assert.equal(res.body.type, undefined);
  const error = res.body.error as { code: string; message: string; type: string };
  assert.equal(error.code, 'INSUFFICIENT_CREDITS');
  assert.equal(error.type, 'payment_required');
  assert.match(error.message, /credits/);
});
