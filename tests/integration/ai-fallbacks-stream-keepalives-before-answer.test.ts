// A stream tried with another upstream behind it waits for its answer's first event through
// keep-alive comments (docs/ai-gateway.md § Upstreams, "When the next is tried"), and:
// - the wait is bounded by the call's deadline (AI_CALL_MAX_SECONDS): an upstream that sends
//   keep-alives forever ends the call with 504 PROVIDER_TIMEOUT, nothing charged, the hold released;
// - once the answer began, every API's stream (Chat, Responses, Messages) reaches the student
//   whole and as the gateway relays it without fallbacks: its text, the Responses items' ids
//   sealed (the provider's never shown), charged once at the card for what the provider reported;
// - a student who left during the keep-alives of an upstream that then answers is charged that
//   answer once (the provider was already writing it): client_left, no other upstream asked.
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceOf, cardPrice, countingBackup, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, until, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';
const claude = 'claude-haiku-4-5';
const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * An upstream that sends `keepAlives` comments `everyMs` apart (forever if Infinity), then the
 * stand-in's answer to the same request, its first 400 bytes in 7-byte writes 5 ms apart.
 */
function keepAlivesThen(keepAlives: number, everyMs: number) {
  let hits = 0;
  const providerText: string[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    hits++;
    const path = new URL(req.url).pathname.replace(/^.*\/v1\//, '/v1/');
    const body = await req.text();
    const body$ = new ReadableStream<Uint8Array>({
      async start(c) {
        try {
          for (let i = 0; i < keepAlives; i++) {
            c.enqueue(encoder.encode(': OPENROUTER PROCESSING\n\n'));
            await sleep(everyMs);
          }
          const res = await fetch(`${standin}${path}`, { method: 'POST', headers: req.headers, body });
          const bytes = new Uint8Array(await res.arrayBuffer());
          providerText.push(new TextDecoder().decode(bytes));
          let at = 0;
          for (; at < Math.min(400, bytes.length); at += 7) {
            c.enqueue(bytes.slice(at, at + 7));
            await sleep(5);
          }
          c.enqueue(bytes.slice(at));
          c.close();
        } catch {
          // the gateway went away
        }
      },
    });
    return new Response(body$, { headers: { 'content-type': 'text/event-stream' } });
  });
  return {
    base: `http://127.0.0.1:${server.addr.port}/v1`,
    hits: () => hits,
    providerText,
    close: () => server.shutdown(),
  };
}

const fallbacks = (primary: string, backup: string, extra: Record<string, string> = {}) => ({
  AI_API_BASE: primary,
  AI_ANTHROPIC_BASE: primary,
  AI_UPSTREAMS: 'compat,backup',
  AI_UPSTREAM_BACKUP_BASE: backup,
  AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
  AI_UPSTREAM_BACKUP_SPEAKS: 'chat,responses,messages',
  AI_UPSTREAM_BACKUP_FALLBACK_FOR: `${model},${claude}`,
  AI_TIMEOUT_MS: '1000',
  ...extra,
});

const priceOfUsage = (m: string, u: Record<string, number>) =>
  cardPrice(m, {
    input: u.input_tokens,
    cached: u.cached_input_tokens,
    output: u.output_tokens,
    reasoning: u.reasoning_tokens,
  });

Deno.test('keep-alives forever before the answer: the call ends at its deadline, nothing charged', async () => {
  const s = await student('50');
  const primary = keepAlivesThen(Infinity, 300);
  const backup = countingBackup();
  try {
    await withGateway(fallbacks(primary.base, backup.base, { AI_CALL_MAX_SECONDS: '10' }), async (url) => {
      const t0 = Date.now();
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: ask('#standin words=5'), max_tokens: 50, stream: true }),
      });
      const text = await res.text();
      const took = Date.now() - t0;
      const [r] = await testDb`select status, failure, trim_scale(coalesce(charged, 0))::text as charged, tail_ms
        from billing.ai_calls where user_id = ${s.id} order by created_at desc limit 1`;
      assert.deepEqual(
        { status: res.status, call: r.status, failure: r.failure, charged: r.charged, backup: backup.hits() },
        { status: 504, call: 'failed', failure: 'PROVIDER_TIMEOUT', charged: '0', backup: 0 },
        text,
      );
      assert.ok(took >= 9_000 && took < 15_000, `the call took ${took} ms`);
    });
  } finally {
    await primary.close();
    await backup.close();
  }
  assert.equal(await balanceOf(s.id), '50');
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

const apis: [endpoint: string, m: string, body: Record<string, unknown>][] = [
  ['chat/completions', model, {
    messages: ask('#standin words=30'),
    max_tokens: 80,
    stream_options: { include_usage: true },
  }],
  ['responses', model, { input: '#standin words=30', max_output_tokens: 80 }],
  ['messages', claude, { messages: ask('#standin words=30'), max_tokens: 80 }],
];

for (const [endpoint, m, body] of apis) {
  Deno.test(`${endpoint}: keep-alives, then a first event in pieces: relayed whole and charged once`, async () => {
    const s = await student('50');
    const primary = keepAlivesThen(3, 200);
    const backup = countingBackup();
    try {
      await withGateway(fallbacks(primary.base, backup.base), async (url) => {
        const res = await fetch(`${url}/ai/v1/${endpoint}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: m, stream: true, ...body }),
        });
        const text = await res.text();
        assert.equal(res.headers.get('x-ai-answered-by'), `${m.startsWith('claude') ? 'anthropic' : 'openai'}/${m}`);
        assert.equal(backup.hits(), 0);
        // The answer's words, each once and in order.
        const words = [...text.matchAll(/word(\d+)/g)].map((w) => Number(w[1]));
        const deltas = text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)))
          .map((e) => e.choices?.[0]?.delta?.content ?? (e.type?.endsWith('.delta') ? e.delta : e.delta?.text) ?? '')
          .filter((t) => typeof t === 'string').join('');
        assert.equal(deltas.trim(), Array.from({ length: 30 }, (_, i) => `word${i + 1}`).join(' '), text);
        assert.ok(words.length >= 30);
        if (endpoint === 'responses') {
          // The provider's item ids never reach the student: each is sealed, the same everywhere.
          const provided = new Set(
            [...primary.providerText.join('').matchAll(/"id":"((?:msg|rs)_[^"]+)"/g)].map((x) => x[1]),
          );
          assert.ok(provided.size > 0);
          for (const id of provided) assert.ok(!text.includes(id), `the provider's id ${id} reached the student`);
        }
        const call = await settled(s.id);
        const [r] = await testDb`select status, upstream, attempts, client_left, tail_ms,
          trim_scale(coalesce(charged, 0))::text as charged from billing.ai_calls where id = ${call.id}`;
        assert.deepEqual(
          { status: r.status, upstream: r.upstream, attempts: r.attempts, left: r.client_left },
          { status: 'charged', upstream: m.startsWith('claude') ? 'anthropic' : 'openai', attempts: null, left: false },
        );
        assert.ok(r.tail_ms >= 0);
        assert.equal(r.charged, await priceOfUsage(m, call.usage as Record<string, number>));
        assert.equal(
          await balanceOf(s.id),
          (await testDb`select trim_scale(50 - ${r.charged}::numeric)::text as b`)[0].b,
        );
      });
    } finally {
      await primary.close();
      await backup.close();
    }
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });
}

Deno.test('a student who left during the keep-alives of an upstream that then answers is charged it once', async () => {
  const s = await student('50');
  const primary = keepAlivesThen(10, 300); // ~3 s of keep-alives, then the answer
  const backup = countingBackup();
  try {
    await withGateway(fallbacks(primary.base, backup.base), async (url) => {
      const hangUp = new AbortController();
      const sent = fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        signal: hangUp.signal,
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: ask('#standin words=40'), max_tokens: 100, stream: true }),
      }).then((r) => r.body?.cancel(), () => {});
      await until('the upstream asked', () => Promise.resolve(primary.hits() > 0));
      hangUp.abort();
      await sent;
      await settled(s.id, 30_000); // before the gateway is stopped
    });
  } finally {
    await primary.close();
    await backup.close();
  }
  const call = await settled(s.id);
  const [r] = await testDb`select status, upstream, client_left, trim_scale(coalesce(charged, 0))::text as charged
    from billing.ai_calls where user_id = ${s.id}`;
  assert.deepEqual(
    { status: r.status, upstream: r.upstream, left: r.client_left, backup: backup.hits(), calls: 1 },
    { status: 'charged', upstream: 'openai', left: true, backup: 0, calls: 1 },
  );
  assert.equal(r.charged, await priceOfUsage(model, call.usage as Record<string, number>));
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('a student who left while the next upstream was streaming its answer is charged that answer once', async () => {
  const s = await student('50');
  const backup = countingBackup();
  try {
    await withGateway(fallbacks(`${standin}/_standin/fail/502/v1`, backup.base), async (url) => {
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: ask('#standin words=40 delay=50'), max_tokens: 100, stream: true }),
      });
      const reader = res.body!.getReader();
      await reader.read(); // the answer began
      await reader.cancel();
      await settled(s.id, 30_000); // before the gateway is stopped
    });
  } finally {
    await backup.close();
  }
  const call = await settled(s.id);
  const [r] = await testDb`select status, upstream, attempts, client_left, usage_source,
    trim_scale(coalesce(charged, 0))::text as charged from billing.ai_calls where user_id = ${s.id}`;
  assert.deepEqual(
    { status: r.status, upstream: r.upstream, left: r.client_left, source: r.usage_source, backup: backup.hits() },
    { status: 'charged', upstream: 'backup', left: true, source: 'provider', backup: 1 },
  );
  assert.deepEqual((r.attempts as { failure: string }[]).map((a) => a.failure), ['PROVIDER_ERROR_502']);
  assert.equal(r.charged, await priceOfUsage(model, call.usage as Record<string, number>));
  assert.equal((call.usage as Record<string, number>).output_tokens > 20, true);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});
