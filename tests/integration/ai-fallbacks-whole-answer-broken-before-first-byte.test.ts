// A whole (non-streamed) answer whose upstream sent its headers and then broke off, before any
// byte of it reached the student, is a failure before the answer's first byte (docs/ai-gateway.md
// § Upstreams, "When the next is tried": "all before the answer's first byte reaches the
// student"): the next upstream configured for the model answers, at the model's card, and the
// broken try is on the record as what it was, PROVIDER_ERROR_502 (as a stream broken before its
// first bytes), never PROVIDER_TIMEOUT.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { activeHolds, ask, priceOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

Deno.test('a whole answer broken after its headers, before anything reached the student, is answered by the next upstream', async () => {
  const s = await student('50');
  await withGateway({
    // 200 and a body that breaks before its first byte (scripts/local/ai-standin.ts: fail/broken).
    AI_API_BASE: `${standin}/_standin/fail/broken/v1`,
    AI_UPSTREAMS: 'compat,backup',
    AI_UPSTREAM_BACKUP_BASE: `${standin}/v1`,
    AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
    AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
    AI_TIMEOUT_MS: '1000',
  }, async (url) => {
    const res = await fetch(`${url}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: ask('#standin words=5'), max_tokens: 50 }),
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.equal(res.headers.get('x-ai-answered-by'), `backup/${model}`);
    const body = JSON.parse(text) as OpenAI.ChatCompletion;
    assert.match(body.choices[0].message.content ?? '', /word5/);
    const [r] = await testDb`select status, upstream, attempts, trim_scale(coalesce(charged, 0))::text as charged
      from billing.ai_calls where id = ${res.headers.get('x-ai-call-id')}`;
    assert.equal(r.status, 'charged');
    assert.equal(r.upstream, 'backup');
    assert.equal(r.charged, await priceOf(model, body.usage!));
    assert.deepEqual(
      (r.attempts as { upstream: string; failure: string }[]).map((a) => [a.upstream, a.failure]),
      [['openai', 'PROVIDER_ERROR_502']],
    );
  });
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});
