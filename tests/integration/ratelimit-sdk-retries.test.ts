// Past the per-student AI limit, the SDKs apps use either retry after the right delay or fail
// soon with a message that says how long to wait (docs/rate-limits.md § SDKs past a limit). A
// fixed window's wait is up to a minute, which no SDK should sit through silently: a wait longer
// than the SDKs' own backoff is named to none of them as a delay (no Retry-After, no
// retry-after-ms), only in the message, details.retry_after_seconds and X-RateLimit-Reset, and
// the openai and Anthropic SDKs are told not to retry it (x-should-retry: false).
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { APICallError, generateText, RetryError } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { ask, student } from '../support/ai.ts';
import { clearOfWindowEdge, counting, withGateway } from '../support/helpers.ts';

/** Each test's global and IP windows of their own, so only the student's AI layer can refuse. */
const roomy = () => String(900_000_000 + Math.floor(Math.random() * 1_000_000));

/**
 * A gateway allowing one AI call a minute, and a student who has just spent it, at least 20 s
 * before the window's end: the next call's wait is longer than any SDK's own backoff.
 */
async function withSpentMinute(fn: (s: { base: string; url: string; token: string }) => Promise<void>) {
  await withGateway(
    {
      ...counting,
      RATE_LIMIT_AI_CHAT_PER_MIN: '1',
      RATE_LIMIT_GLOBAL_PER_MIN: roomy(),
      RATE_LIMIT_IP_PER_MIN: roomy(),
    },
    async (url) => {
      const s = await student();
      const base = `${url}/ai/v1`;
      await clearOfWindowEdge();
      const openai = new OpenAI({ baseURL: base, apiKey: s.token, maxRetries: 0 });
      await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2'), max_tokens: 8 });
      await fn({ base, url, token: s.token });
    },
  );
}

/** The wait a refusal's message names, in seconds ("… Retry in 48 s."). */
function namedWait(message: string): number {
  const m = /Retry in (\d+) s\.$/.exec(message);
  assert.ok(m, `the message names no wait: ${message}`);
  return Number(m[1]);
}

Deno.test('past the AI limit with a long wait, the openai and Anthropic SDKs at their default retries fail at once, saying how long to wait', async () => {
  await withSpentMinute(async ({ base, url, token }) => {
    const openai = new OpenAI({ baseURL: base, apiKey: token }); // maxRetries: 2, the default
    let t0 = Date.now();
    await assert.rejects(
      openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2'), max_tokens: 8 }),
      (e) => {
        assert.ok(e instanceof OpenAI.RateLimitError, String(e));
        const wait = namedWait(e.message);
        assert.ok(wait > 8 && wait <= 60, `a wait of ${wait} s`);
        assert.equal(Math.abs(Number(e.headers.get('x-ratelimit-reset')) - wait) <= 1, true);
        assert.equal((e.error as { details?: { retry_after_seconds?: number } }).details?.retry_after_seconds, wait);
        assert.equal(e.headers.get('x-should-retry'), 'false');
        assert.equal(e.headers.get('retry-after'), null, 'no delay any SDK would sit through');
        assert.equal(e.headers.get('retry-after-ms'), null);
        assert.equal(e.headers.get('x-ratelimit-remaining'), '0');
        return true;
      },
    );
    assert.ok(Date.now() - t0 < 5_000, `the openai SDK failed at once, not after ${Date.now() - t0} ms`);

    const anthropic = new Anthropic({ baseURL: url + '/ai', apiKey: token }); // maxRetries: 2, the default
    t0 = Date.now();
    await assert.rejects(
      anthropic.messages.create({
        model: 'claude-haiku-4-5',
        max_tokens: 8,
        messages: [{ role: 'user', content: 'hi' }],
      }),
      (e) => {
        assert.ok(e instanceof Anthropic.RateLimitError, String(e));
        assert.ok(namedWait(e.message) > 8, e.message);
        assert.ok(Number(e.headers.get('x-ratelimit-reset')) > 8);
        assert.equal(e.headers.get('retry-after'), null);
        return true;
      },
    );
    assert.ok(Date.now() - t0 < 5_000, `the Anthropic SDK failed at once, not after ${Date.now() - t0} ms`);
  });
});

Deno.test("past the AI limit with a long wait, the AI SDK at its default retries fails after its own short backoff with the gateway's message", async () => {
  await withSpentMinute(async ({ base, token }) => {
    const model = createOpenAI({ baseURL: base, apiKey: token }).chat('gpt-4o-mini');
    // maxRetries: 2, the default. It reads no x-should-retry, and a Retry-After under 60 s it
    // would wait out (most of the minute, twice); without one it backs off 2 s, then 4 s.
    const t0 = Date.now();
    await assert.rejects(generateText({ model, prompt: 'hi #standin words=2', maxOutputTokens: 8 }), (e) => {
      assert.ok(RetryError.isInstance(e), String(e));
      assert.equal(e.errors.length, 3, 'the first attempt and two retries');
      assert.ok(namedWait(e.message) > 8, e.message);
      const last = e.lastError;
      assert.ok(APICallError.isInstance(last), String(last));
      assert.equal(last.statusCode, 429);
      assert.equal(last.responseHeaders?.['retry-after'], undefined);
      assert.equal(last.responseHeaders?.['retry-after-ms'], undefined);
      return true;
    });
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 5_500 && elapsed < 15_000, `failed after ${elapsed} ms, not its own 2 s + 4 s backoff`);

    // With maxRetries: 0 it fails at once, with the same message.
    const t1 = Date.now();
    await assert.rejects(
      generateText({ model, prompt: 'hi #standin words=2', maxOutputTokens: 8, maxRetries: 0 }),
      (e) => {
        assert.ok(APICallError.isInstance(e), String(e));
        assert.equal(e.statusCode, 429);
        assert.ok(namedWait(e.message) > 8, e.message);
        return true;
      },
    );
    assert.ok(Date.now() - t1 < 5_000);
  });
});
