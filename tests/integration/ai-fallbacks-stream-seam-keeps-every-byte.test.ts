// A stream tried with another upstream behind it reaches the student whole: every byte the
// provider wrote after its answer began, in order, nothing lost, changed or repeated where the
// try's wait for the answer's first event hands over to the relay (docs/ai-gateway.md §
// Upstreams, "When the next is tried": "A try with another upstream behind it reaches the
// student only once its answer began"). A read may end inside a character of several UTF-8
// bytes (é, €, an emoji) right after the first event: that character is the student's too.
import assert from 'node:assert/strict';
import { activeHolds, ask, priceOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';
const encoder = new TextEncoder();

const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
  `data: ${
    JSON.stringify({
      id: 'chatcmpl-seam',
      object: 'chat.completion.chunk',
      created: 1,
      model,
      choices: [{ index: 0, delta, finish_reason: finish }],
    })
  }\n\n`;
const usage = { prompt_tokens: 9, completion_tokens: 6, total_tokens: 15 };

/** An upstream answering with `parts` (bytes), one write each, 40 ms apart. */
function writes(parts: Uint8Array[]) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    const queue = [...parts];
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        await new Promise((r) => setTimeout(r, 40));
        const next = queue.shift();
        if (next === undefined) c.close();
        else c.enqueue(next);
      },
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, close: () => server.shutdown() };
}

const cases: [name: string, char: string][] = [['é (2 bytes)', 'é'], ['€ (3 bytes)', '€'], ['😀 (4 bytes)', '😀']];

for (const [name, char] of cases) {
  Deno.test(`a read ending inside ${name} after the first event: the student gets the character`, async () => {
    const s = await student('50');
    const whole = encoder.encode(
      chunk({ role: 'assistant', content: 'Hi' }) + chunk({ content: ` ${char} there` }) + chunk({}, 'stop') +
        `data: ${
          JSON.stringify({
            id: 'chatcmpl-seam',
            object: 'chat.completion.chunk',
            created: 1,
            model,
            choices: [],
            usage,
          })
        }\n\n` + 'data: [DONE]\n\n',
    );
    // The first write: the first event whole, then the next event up to the middle of `char`.
    const charAt = encoder.encode(chunk({ role: 'assistant', content: 'Hi' })).length +
      encoder.encode(chunk({ content: ` ${char}` }).split(char)[0]).length;
    const primary = writes([
      encoder.encode(': OPENROUTER PROCESSING\n\n'),
      whole.slice(0, charAt + 1),
      whole.slice(charAt + 1),
    ]);
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
          body: JSON.stringify({
            model,
            messages: ask('say hi'),
            max_tokens: 50,
            stream: true,
            stream_options: { include_usage: true },
          }),
        });
        const text = await res.text();
        assert.equal(res.headers.get('x-ai-answered-by'), `openai/${model}`, text);
        const content = text.split('\n').filter((l) => l.startsWith('data: {'))
          .map((l) => JSON.parse(l.slice(6)).choices?.[0]?.delta?.content ?? '').join('');
        assert.equal(content, `Hi ${char} there`, text);
        const [r] = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged
          from billing.ai_calls where id = ${res.headers.get('x-ai-call-id')}`;
        assert.equal(r.status, 'charged');
        assert.equal(r.charged, await priceOf(model, usage));
      });
    } finally {
      await primary.close();
    }
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });
}
