// Which upstream answers and what it is asked is the operator's (AI_UPSTREAMS, _FALLBACK_FOR)
// and the card's, never the student's (docs/ai-gateway.md § Upstreams); the one choice a student
// has is fallback models, each checked as the model is (ai-fallback-models.test.ts). A student's
// other OpenRouter-style routing fields (`route`, `provider`, `transforms`, `plugins`), a pricier
// tier and headers naming an upstream reach no fallback host: it gets the card's model, the
// schema's fields and the operator's key only, and the call is charged at the card.
import assert from 'node:assert/strict';
import { activeHolds, ask, priceOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

/** A fallback host that keeps what it was sent and answers as the stand-in. */
function recordingBackup() {
  const seen: { body: Record<string, unknown>; headers: Record<string, string> }[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const body = await req.json();
    seen.push({ body, headers: Object.fromEntries(req.headers) });
    return fetch(`${standin}/v1/chat/completions`, {
      method: 'POST',
      headers: req.headers,
      body: JSON.stringify(body),
    });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, seen, close: () => server.shutdown() };
}

Deno.test("a student's routing fields and headers never reach a fallback host; the card's model is asked and charged", async () => {
  const s = await student('50');
  const backup = recordingBackup();
  try {
    await withGateway({
      AI_API_BASE: `${standin}/_standin/fail/503/v1`,
      AI_UPSTREAMS: 'compat,backup',
      AI_UPSTREAM_BACKUP_BASE: backup.base,
      AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
      AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
    }, async (url) => {
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${s.token}`,
          'content-type': 'application/json',
          'x-ai-upstream': 'openai',
          'x-portkey-provider': 'anthropic',
          'http-referer': 'https://example.com',
          'x-title': 'steer',
        },
        body: JSON.stringify({
          model,
          messages: ask('#standin words=3'),
          max_tokens: 20,
          route: 'fallback',
          provider: { order: ['openai'], allow_fallbacks: true },
          transforms: ['middle-out'],
          plugins: [{ id: 'web' }],
          service_tier: 'priority',
          reasoning: { effort: 'high' },
          upstream: 'backup',
        }),
      });
      const body = await res.json();
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-ai-answered-by'), `backup/${model}`);
      const [r] = await testDb`select upstream, trim_scale(charged)::text as charged from billing.ai_calls
        where id = ${res.headers.get('x-ai-call-id')}`;
      assert.equal(r.upstream, 'backup');
      assert.equal(r.charged, await priceOf(model, body.usage));
    });
  } finally {
    await backup.close();
  }
  assert.equal(backup.seen.length, 1);
  const [{ body, headers }] = backup.seen;
  assert.deepEqual(Object.keys(body).sort(), ['max_completion_tokens', 'messages', 'model', 'stream']);
  assert.equal(body.model, model);
  assert.equal(headers.authorization, `Bearer ${env('AI_API_KEY')}`);
  for (const h of ['x-ai-upstream', 'x-portkey-provider', 'http-referer', 'x-title']) {
    assert.equal(headers[h], undefined);
  }
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});
