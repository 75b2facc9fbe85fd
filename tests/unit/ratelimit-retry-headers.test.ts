// A 429's wait as the SDKs read it (supabase/functions/_shared/http/ratelimit.ts): a short wait
// is retried after exactly that delay; a long one (most of a fixed window) is failed at once by
// the SDKs that read x-should-retry, rather than sat through silently.
import assert from 'node:assert/strict';
import { retryHeaders, sdkRetryWaitMs } from '../../supabase/functions/_shared/http/ratelimit.ts';

Deno.test('a wait within the SDKs’ own backoff is retried after exactly that delay', () => {
  assert.deepEqual(retryHeaders(2_500), { 'Retry-After': '3', 'retry-after-ms': '2500', 'x-should-retry': 'true' });
  assert.equal(retryHeaders(sdkRetryWaitMs)['x-should-retry'], 'true');
});

Deno.test('a longer wait tells the SDKs not to retry, and still says how long', () => {
  assert.deepEqual(retryHeaders(48_001), { 'Retry-After': '49', 'retry-after-ms': '48001', 'x-should-retry': 'false' });
  assert.equal(retryHeaders(sdkRetryWaitMs + 1)['x-should-retry'], 'false');
});

Deno.test('a window that just ended asks for at least a second, never a negative wait', () => {
  assert.deepEqual(retryHeaders(-5), { 'Retry-After': '1', 'retry-after-ms': '0', 'x-should-retry': 'true' });
});
