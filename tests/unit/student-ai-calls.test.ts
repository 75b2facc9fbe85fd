// The student page's "Your AI calls" (examples/student/ai-calls.ts): how a call's tokens read.
// Every kind the call was billed for is shown, so a call that wrote a prompt cache (billed above
// the input price) or reasoned does not look overpriced for its input and output.
import assert from 'node:assert/strict';
import { type AiCall, tokensText } from '../../examples/student/ai-calls.ts';

const call = (usage: AiCall['usage']): AiCall => ({
  id: 'c',
  created_at: '2026-11-27T00:00:00Z',
  model: 'claude-haiku-4-5',
  endpoint: 'messages',
  outcome: 'charged',
  code: null,
  usage,
  charged: '1',
  duration_ms: 10,
});

Deno.test('a call shows its cache reads and writes (both lifetimes) and reasoning beside its input and output', () => {
  assert.equal(
    tokensText(call({
      input_tokens: 12,
      cached_input_tokens: 300,
      cache_write_tokens: 4000,
      cache_write_1h_tokens: 1000,
      output_tokens: 35,
      reasoning_tokens: 8,
    })),
    '12 in, 300 read from cache, 5,000 written to cache / 35 out, 8 reasoning',
  );
});

Deno.test('a call without cache or reasoning reads as input and output alone; no usage is a dash', () => {
  assert.equal(
    tokensText(call({ input_tokens: 120, cached_input_tokens: 0, output_tokens: 35, reasoning_tokens: 0 })),
    '120 in / 35 out',
  );
  assert.equal(tokensText(call(null)), '—');
});
