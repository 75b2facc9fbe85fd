// The gateway's own time on every answer (as LiteLLM's x-litellm-overhead-duration-ms): from the
// request's arrival to the provider call, in ms, always sent, whole and streamed, and readable by
// a browser; and after the provider: from its last byte to the settling, in the call record and
// a stream's final usage event (docs/ai-gateway.md § The flow of one call).
import assert from 'node:assert/strict';
import { gatewayUrl, settled, student } from '../support/ai.ts';
import { api } from '../support/helpers.ts';

Deno.test('every answer says the gateway time before the provider in x-gateway-overhead-ms, whole and streamed', async () => {
  const s = await student('100');
  for (const stream of [false, true]) {
    const started = performance.now();
    const res = await fetch(`${gatewayUrl}/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.token}`,
        'content-type': 'application/json',
        origin: 'http://127.0.0.1:54330',
      },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'hi #standin words=3' }],
        stream,
      }),
    });
    await res.text();
    const took = performance.now() - started;
    const overhead = Number(res.headers.get('x-gateway-overhead-ms'));
    assert.equal(res.status, 200);
    assert.ok(overhead > 0 && overhead < took, `${overhead} ms of the ${took.toFixed(1)} ms the answer took`);
    assert.match(String(res.headers.get('access-control-expose-headers')), /X-Gateway-Overhead-Ms/i);
  }
  await settled(s.id);
});

type Logged = { first_token_ms: number; duration_ms: number; tail_ms: number | null };

Deno.test("the gateway's time after the provider's last byte: in the call record, and a stream's final usage event", async () => {
  const s = await student('100');
  const messages = [{ role: 'user' as const, content: 'hi #standin words=5 delay=100' }];
  const streamed = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  let closingTail: unknown;
  for await (const chunk of streamed) {
    if (chunk.usage) closingTail = (chunk.usage as unknown as Record<string, unknown>).gateway_tail_ms;
  }
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages });
  await settled(s.id);
  const r = await api('/ai/v1/calls?limit=2', { token: s.token });
  assert.equal(r.status, 200, r.text);
  const [whole, stream] = (r.body.data as { items: Logged[] }).items;
  for (const [call, name] of [[stream, 'streamed'], [whole, 'whole']] as const) {
    assert.ok(call.tail_ms !== null && call.tail_ms >= 0, `${name}: recorded ${call.tail_ms}`);
    // Counted from the last byte, not the first: the stand-in took 100 ms between events.
    const afterFirst = call.duration_ms - call.first_token_ms;
    assert.ok(
      call.tail_ms <= afterFirst - (name === 'streamed' ? 300 : 0) + 1,
      `${name}: ${call.tail_ms} ms after the last byte, ${afterFirst} after the first`,
    );
  }
  assert.equal(closingTail, stream.tail_ms, "the stream's final usage event says the record's figure");
});
