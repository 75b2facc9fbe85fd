// Past the per-student AI limit, the SDKs apps use either retry after the right delay or fail at
// once with a message that says how long to wait (docs/rate-limits.md § SDKs past a limit). A
// fixed window's wait is up to a minute: the openai and Anthropic SDKs are told not to retry a
// wait longer than their own backoff (x-should-retry: false), and every SDK reads the exact wait
// (retry-after-ms, Retry-After) when it does retry.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { APICallError, generateText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { ask, student } from '../support/ai.ts';
import { clearOfWindowEdge, counting, withGateway } from '../support/helpers.ts';

/** Each test's global and IP windows of their own, so only the student's AI layer can refuse. */
const roomy = () => String(900_000_000 + Math.floor(Math.random() * 1_000_000));

Deno.test('past the AI limit with a long wait, the SDKs at their default retries fail at once, saying how long to wait', async () => {
  await clearOfWindowEdge(); // at least 20 s of the window left: a wait no SDK should sit through silently
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
      const openai = new OpenAI({ baseURL: base, apiKey: s.token }); // maxRetries: 2, the default
      await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2'), max_tokens: 8 });

      let t0 = Date.now();
      await assert.rejects(
        openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2'), max_tokens: 8 }),
        (e) => {
          assert.ok(e instanceof OpenAI.RateLimitError, String(e));
          assert.match(e.message, /Retry in \d+ s/);
          const wait = Number(e.headers.get('retry-after-ms'));
          assert.ok(wait > 8_000 && wait <= 60_000, `retry-after-ms ${wait}`);
          assert.equal(Number(e.headers.get('retry-after')), Math.ceil(wait / 1000));
          assert.equal(e.headers.get('x-should-retry'), 'false');
          assert.equal(e.headers.get('x-ratelimit-remaining'), '0');
          return true;
        },
      );
      assert.ok(Date.now() - t0 < 5_000, `the openai SDK failed at once, not after ${Date.now() - t0} ms`);

      const anthropic = new Anthropic({ baseURL: url + '/ai', apiKey: s.token });
      t0 = Date.now();
      await assert.rejects(
        anthropic.messages.create({
          model: 'claude-haiku-4-5',
          max_tokens: 8,
          messages: [{ role: 'user', content: 'hi' }],
        }),
        (e) => e instanceof Anthropic.RateLimitError && /Retry in \d+ s/.test(e.message),
      );
      assert.ok(Date.now() - t0 < 5_000, `the Anthropic SDK failed at once, not after ${Date.now() - t0} ms`);

      // The AI SDK reads no x-should-retry: at its defaults it waits a Retry-After under 60 s;
      // with maxRetries: 0 it fails at once with the same message and headers.
      t0 = Date.now();
      await assert.rejects(
        generateText({
          model: createOpenAI({ baseURL: base, apiKey: s.token }).chat('gpt-4o-mini'),
          prompt: 'hi #standin words=2',
          maxOutputTokens: 8,
          maxRetries: 0,
        }),
        (e) => {
          assert.ok(APICallError.isInstance(e), String(e));
          assert.equal(e.statusCode, 429);
          assert.match(e.message, /Retry in \d+ s/);
          assert.ok(Number(e.responseHeaders?.['retry-after-ms']) > 8_000);
          return true;
        },
      );
      assert.ok(Date.now() - t0 < 5_000);
    },
  );
});
