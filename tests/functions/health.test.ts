// The health function in-process (its own file: with the Stripe SDK's types in the same
// program as ad-hoc Hono apps, TypeScript hits its instantiation-depth limit).
import assert from 'node:assert/strict';
import health from '../../supabase/functions/health/index.ts';

Deno.test('GET /health/healthz answers in-process without dependencies', async () => {
  const res = await health.fetch(new Request('http://local/health/healthz'));
  assert.equal(res.status, 200);
  assert.deepEqual((await res.json()).data, { status: 'ok' });
});
