// A whole (non-streamed) answer whose provider sends its headers and then stalls mid-body: the
// call's deadline (AI_CALL_MAX_SECONDS) ends it, charges nothing and leaves no hold.
import assert from 'node:assert/strict';
import { activeHolds, ask, callsOf, student } from '../support/ai.ts';
import { withGateway } from '../support/helpers.ts';

/** A provider that answers 200 with half a Chat Completions body, then writes nothing more. */
function stallingProvider() {
  const streams: ReadableStreamDefaultController<Uint8Array>[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        streams.push(c);
        c.enqueue(new TextEncoder().encode('{"id":"chatcmpl-stalled","object":"chat.completion","choices":['));
      },
    });
    return new Response(body, { headers: { 'content-type': 'application/json' } });
  });
  return {
    base: `http://127.0.0.1:${server.addr.port}/v1`,
    close: async () => {
      for (const c of streams) c.error(new Error('test over'));
      await server.shutdown();
    },
  };
}

Deno.test("a whole answer whose body stalls is ended at the call's deadline: 504 PROVIDER_TIMEOUT, nothing charged", async () => {
  const provider = stallingProvider();
  const s = await student();
  const deadlineSeconds = 10; // the shortest AI_CALL_MAX_SECONDS allows
  try {
    await withGateway({ AI_API_BASE: provider.base, AI_CALL_MAX_SECONDS: String(deadlineSeconds) }, async (url) => {
      const started = performance.now();
      // Bounded here too, so a gateway that never ends the call fails this assertion rather than hanging.
      const bound = new AbortController();
      const guard = setTimeout(() => bound.abort(), (deadlineSeconds + 10) * 1000);
      let res: Response;
      try {
        res = await fetch(`${url}/ai/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask('hello'), max_tokens: 16 }),
          signal: bound.signal,
        });
      } catch {
        assert.fail(`no answer within ${deadlineSeconds + 10} s: the stalled body was never ended`);
      } finally {
        clearTimeout(guard);
      }
      const elapsed = (performance.now() - started) / 1000;
      const body = await res.json();
      assert.equal(res.status, 504);
      assert.equal(body.error.code, 'PROVIDER_TIMEOUT');
      assert.ok(elapsed >= deadlineSeconds - 0.5 && elapsed < deadlineSeconds + 5, `answered after ${elapsed} s`);
    });
  } finally {
    await provider.close();
  }
  const [call] = await callsOf(s.id);
  assert.equal(call.status, 'failed');
  assert.equal(call.failure, 'PROVIDER_TIMEOUT');
  assert.equal(call.charged, '0');
  assert.equal(await activeHolds(s.id), 0);
});
