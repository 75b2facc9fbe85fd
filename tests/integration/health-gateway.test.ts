// The skeleton end to end over real HTTP: the gateway, its JWKS, liveness and readiness.
import assert from 'node:assert/strict';
import { api, supabaseUrl, withGateway } from '../support/helpers.ts';

Deno.test('GET /functions/v1/health/healthz answers 200 through the gateway', async () => {
  const { status, body, headers } = await api('/health/healthz');
  assert.equal(status, 200);
  assert.deepEqual(body.data, { status: 'ok' });
  assert.ok(headers.get('x-request-id'));
});

Deno.test('GET /functions/v1/health/readyz is 200 with the database and JWKS checks ok', async () => {
  const { status, body } = await api('/health/readyz');
  assert.equal(status, 200);
  const data = body.data as { checks: Record<string, { status: string }> };
  assert.equal(data.checks.database.status, 'ok');
  assert.equal(data.checks.jwks.status, 'ok');
});

Deno.test('the gateway serves the JWKS with one ES256 public key and no private part', async () => {
  const res = await fetch(`${supabaseUrl}/auth/v1/.well-known/jwks.json`);
  const { keys } = await res.json();
  assert.equal(keys.length, 1);
  assert.equal(keys[0].alg, 'ES256');
  assert.equal(keys[0].d, undefined);
});

Deno.test('an unknown function is a 404 in the envelope', async () => {
  const { status, body } = await api('/no-such-function/x');
  assert.equal(status, 404);
  assert.equal((body.error as { code: string }).code, 'FUNCTION_NOT_FOUND');
});

Deno.test('readyz is 503 naming the database when the database does not answer', async () => {
  const nowhere = 'postgresql://postgres:postgres@127.0.0.1:1/postgres';
  await withGateway({ SUPABASE_DB_URL: nowhere, DB_POOLER_URL: nowhere }, async (url) => {
    const res = await fetch(`${url}/health/readyz`);
    const body = await res.json();
    assert.equal(res.status, 503);
    assert.equal(body.error.code, 'NOT_READY');
    assert.match(body.error.message, /database/);
    assert.equal(body.error.retryable, true);
    assert.equal(body.error.details.checks.jwks.status, 'ok');
    assert.ok(!JSON.stringify(body).includes('postgres:postgres'), 'the connection string leaked');
  });
});
