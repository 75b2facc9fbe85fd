// A whole (non-streamed) answer is the provider's answer only if its body is one: a JSON object
// that is not the provider's error. A 200 whose body is an error object (as OpenRouter sends for
// a failure after its headers: `{"error":{"message":…,"code":502}}`) or JSON that is no object
// at all (`null`) is the provider's failure before reporting usage: nothing is charged for it,
// the hold is released (docs/ai-gateway.md § Failure and abort rules: "the provider answers an
// error … before reporting usage: nothing; hold released"), and with a fallback upstream
// configured for the model the next upstream answers, at the model's card ("an upstream fails
// before the answer began … the answer's, at the model's card; the failed try nothing"). A
// streamed answer whose first event is an error already goes this way; a whole one must too.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { activeHolds, ask, balanceOf, priceOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

/** An upstream answering 200 with `body` as its JSON text. */
function answers200(body: string) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    return new Response(body, { headers: { 'content-type': 'application/json' } });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, close: () => server.shutdown() };
}

const bodies: [name: string, body: string][] = [
  ['an error object', JSON.stringify({ error: { message: 'Upstream overloaded', code: 502 } })],
  ['null', 'null'],
];

for (const [name, body] of bodies) {
  Deno.test(`a whole answer that is ${name} (200), with a fallback behind it: the next upstream answers`, async () => {
    const s = await student('50');
    const primary = answers200(body);
    try {
      await withGateway({
        AI_API_BASE: primary.base,
        AI_UPSTREAMS: 'compat,backup',
        AI_UPSTREAM_BACKUP_BASE: `${standin}/v1`,
        AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
        AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
        AI_TIMEOUT_MS: '2000',
      }, async (url) => {
        const res = await fetch(`${url}/ai/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, messages: ask('#standin words=5'), max_tokens: 50 }),
        });
        const text = await res.text();
        const [r] = await testDb`select status, upstream, trim_scale(coalesce(charged, 0))::text as charged
          from billing.ai_calls where user_id = ${s.id} order by created_at desc limit 1`;
        assert.deepEqual(
          { status: res.status, answeredBy: res.headers.get('x-ai-answered-by'), call: r.status, upstream: r.upstream },
          { status: 200, answeredBy: `backup/${model}`, call: 'charged', upstream: 'backup' },
          text,
        );
        const answer = JSON.parse(text) as OpenAI.ChatCompletion;
        assert.match(answer.choices[0].message.content ?? '', /word5/);
        assert.equal(r.charged, await priceOf(model, answer.usage!));
      });
    } finally {
      await primary.close();
    }
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });

  Deno.test(`a whole answer that is ${name} (200) from the only upstream: nothing charged, hold released`, async () => {
    const s = await student('50');
    const primary = answers200(body);
    try {
      await withGateway({ AI_API_BASE: primary.base, AI_TIMEOUT_MS: '2000' }, async (url) => {
        const res = await fetch(`${url}/ai/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, messages: ask('#standin words=5'), max_tokens: 50 }),
        });
        const text = await res.text();
        const [r] = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged
          from billing.ai_calls where user_id = ${s.id} order by created_at desc limit 1`;
        assert.deepEqual(
          {
            status: res.status,
            call: r?.status,
            charged: r?.charged,
            balance: await balanceOf(s.id),
            holds: await activeHolds(s.id),
          },
          { status: 502, call: 'failed', charged: '0', balance: '50', holds: 0 },
          text,
        );
      });
    } finally {
      await primary.close();
    }
    await assertLedgerInvariants();
  });
}
