// A stream's first bytes, for the fallbacks, are the answer's: bytes that carry none of it (an
// SSE keep-alive comment such as OpenRouter's ": OPENROUTER PROCESSING" or Anthropic's ping, an
// error event in place of the answer, or an end that reported no usage) leave nothing the student
// can use, so an upstream that sends them and then breaks off (or errs) has failed before the
// answer's first byte reached the student (docs/ai-gateway.md § Upstreams, "When the next is
// tried": "… all before the answer's first byte reaches the student"). The next upstream
// configured for the model answers, at the model's card.
import assert from 'node:assert/strict';
import { activeHolds, ask, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';
const encoder = new TextEncoder();

/** An upstream answering 200 and an event stream that sends `chunks`, then breaks off. */
function sendsThenBreaks(chunks: string[]) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        const next = chunks.shift();
        await new Promise((r) => setTimeout(r, 30));
        if (next === undefined) c.error(new Error('broken'));
        else c.enqueue(encoder.encode(next));
      },
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, close: () => server.shutdown() };
}

const cases: [name: string, chunks: string[]][] = [
  ['a keep-alive comment', [': OPENROUTER PROCESSING\n\n']],
  ['an error event', ['data: {"error":{"message":"upstream overloaded","code":502}}\n\n']],
  ["Anthropic's ping", ['event: ping\ndata: {"type": "ping"}\n\n']],
  ['an end that reported no usage', ['data: [DONE]\n\n']],
];

for (const [name, chunks] of cases) {
  Deno.test(`a stream whose first bytes are ${name}, then a break, is answered by the next upstream`, async () => {
    const s = await student('50');
    const primary = sendsThenBreaks([...chunks]);
    try {
      await withGateway({
        AI_API_BASE: primary.base,
        AI_UPSTREAMS: 'compat,backup',
        AI_UPSTREAM_BACKUP_BASE: `${standin}/v1`,
        AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
        AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
        AI_TIMEOUT_MS: '1000',
      }, async (url) => {
        const res = await fetch(`${url}/ai/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, messages: ask('#standin words=5'), max_tokens: 50, stream: true }),
        });
        const text = await res.text();
        assert.equal(res.headers.get('x-ai-answered-by'), `backup/${model}`, text);
        assert.match(text, /word5/);
        const [r] = await testDb`select status, upstream, attempts from billing.ai_calls
          where id = ${res.headers.get('x-ai-call-id')}`;
        assert.equal(r.status, 'charged');
        assert.equal(r.upstream, 'backup');
        assert.deepEqual((r.attempts as { upstream: string }[] | null)?.map((a) => a.upstream), ['openai']);
      });
    } finally {
      await primary.close();
    }
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });
}
