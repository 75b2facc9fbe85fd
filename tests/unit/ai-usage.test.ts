// The AI adapter reports usage as the disjoint kinds the rate card prices (docs/pricing.md):
// OpenAI-style prompt_tokens include the cached ones, completion_tokens the reasoning ones.
import assert from 'node:assert/strict';
import { disjointUsage } from '../../supabase/functions/_shared/adapters/ai.ts';

Deno.test('cached and reasoning tokens are taken out of input and output, never counted twice', () => {
  assert.deepEqual(
    disjointUsage({
      prompt_tokens: 1000,
      prompt_tokens_details: { cached_tokens: 400 },
      completion_tokens: 300,
      completion_tokens_details: { reasoning_tokens: 120 },
    }),
    { input_tokens: 600, cached_input_tokens: 400, output_tokens: 180, reasoning_tokens: 120 },
  );
});

Deno.test('a provider answer with odd counts never yields a negative or fractional kind', () => {
  assert.deepEqual(
    disjointUsage({
      prompt_tokens: 10.7,
      prompt_tokens_details: { cached_tokens: 50 },
      completion_tokens: -3,
      completion_tokens_details: { reasoning_tokens: '9' },
    }),
    { input_tokens: 0, cached_input_tokens: 10, output_tokens: 0, reasoning_tokens: 0 },
  );
  assert.deepEqual(disjointUsage(undefined), {
    input_tokens: 0,
    cached_input_tokens: 0,
    output_tokens: 0,
    reasoning_tokens: 0,
  });
});
