// A 429's wait as the SDKs read it (supabase/functions/_shared/http/ratelimit.ts): a short wait
// is retried after exactly that delay; a long one (most of a fixed window) is named to none of
// them as a delay, so none sits through it silently: the openai and Anthropic SDKs, told not to
// retry, fail at once; the AI SDK, which would wait any Retry-After under 60 s, backs off briefly
// on its own and fails.
import assert from 'node:assert/strict';
import { retryHeaders, sdkRetryWaitMs } from '../../supabase/functions/_shared/http/ratelimit.ts';

Deno.test('a wait within the SDKs’ own backoff is retried after exactly that delay', () => {
  assert.deepEqual(retryHeaders(2_500), { 'Retry-After': '3', 'retry-after-ms': '2500', 'x-should-retry': 'true' });
  assert.deepEqual(retryHeaders(sdkRetryWaitMs), {
    'Retry-After': '8',
    'retry-after-ms': '8000',
    'x-should-retry': 'true',
  });
});

Deno.test('a longer wait names no delay to sit through and tells the SDKs not to retry', () => {
  assert.deepEqual(retryHeaders(48_001), { 'x-should-retry': 'false' });
  assert.deepEqual(retryHeaders(sdkRetryWaitMs + 1), { 'x-should-retry': 'false' });
});

Deno.test('a window that just ended asks for at least a second, never a negative wait', () => {
  assert.deepEqual(retryHeaders(-5), { 'Retry-After': '1', 'retry-after-ms': '0', 'x-should-retry': 'true' });
});
