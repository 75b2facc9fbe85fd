// The gateway reads a provider's event stream as it comes, in reads of any size
// (supabase/functions/ai/protocol.ts: addRead, sseEvents): the events are the same however the
// bytes were cut, `\r\n` included when a read ends between the `\r` and the `\n`, and an event
// that arrives in many reads is scanned once, not again from its start at every read.
import assert from 'node:assert/strict';
import { addRead, type Sse, type SseBuffer, sseEvents } from '../../supabase/functions/ai/protocol.ts';

const stream = [
  'event: message_start\r\ndata: {"type":"message_start","text":"naïve ☕"}\r\n\r\n',
  ': keep-alive\r\n\r\n',
  'data: {"a":1}\r\n\r\n',
  'event: content_block_delta\r\ndata: {"x":\r\ndata: 2}\r\n\r\n',
  'data: [DONE]\r\n\r\n',
].join('');
const bytes = new TextEncoder().encode(stream);

/** The events of `bytes` read in the given pieces. */
function eventsOf(pieces: Uint8Array[]) {
  const buffer: SseBuffer = { text: '' };
  const decoder = new TextDecoder();
  const events: Sse[] = [];
  for (const piece of pieces) {
    addRead(buffer, decoder, piece);
    events.push(...sseEvents(buffer));
  }
  return { events, rest: buffer.text };
}

const inPieces = (size: number) =>
  Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => bytes.slice(i * size, (i + 1) * size));

Deno.test('the same events however the stream was cut, CRLF split between reads included', () => {
  const whole = eventsOf([bytes]);
  assert.deepEqual(whole.events.map((e) => [e.name, e.data]), [
    ['message_start', '{"type":"message_start","text":"naïve ☕"}'],
    [null, '{"a":1}'],
    ['content_block_delta', '{"x":\n2}'],
    [null, '[DONE]'],
  ]);
  assert.ok(whole.events.every((e) => !e.raw.includes('\r')), 'raw events end lines with \\n');
  for (let size = 1; size <= 40; size++) {
    assert.deepEqual(eventsOf(inPieces(size)), whole, `reads of ${size} bytes`);
  }
  // Every cut that falls between a \r and its \n.
  for (let at = stream.indexOf('\r\n'); at >= 0; at = stream.indexOf('\r\n', at + 1)) {
    const cut = new TextEncoder().encode(stream.slice(0, at + 1)).length;
    assert.deepEqual(eventsOf([bytes.slice(0, cut), bytes.slice(cut)]), whole, `cut after byte ${cut}`);
  }
});

Deno.test('an event sent in many reads is scanned once: each read is looked at from where the last stopped', () => {
  const big = `data: {"text":"${'x'.repeat(100_000)}"}\n\n`;
  const buffer: SseBuffer = { text: '' };
  const decoder = new TextDecoder();
  const encoded = new TextEncoder().encode(big);
  let found: Sse[] = [];
  for (let at = 0; at < encoded.length; at += 1000) {
    addRead(buffer, decoder, encoded.slice(at, at + 1000));
    found = [...sseEvents(buffer)];
    if (at + 1000 < encoded.length - 1) {
      assert.equal(found.length, 0);
      assert.equal(buffer.scanned, buffer.text.length - 1, 'the next search starts at the last char read');
    }
  }
  assert.equal(found.length, 1);
  assert.equal(found[0].data.length, 100_011);
  assert.equal(buffer.text, '');
});
