// The shared app factory, in-process: envelope, request ids, CORS, errors.
import assert from 'node:assert/strict';
import { createApp, ok } from '../../supabase/functions/_shared/http/app.ts';
import { AppError } from '../../supabase/functions/_shared/errors.ts';
import { HTTPException } from 'hono/http-exception';

const app = createApp('probe');
app.get('/ok', (c) => ok(c, { hello: 'world' }));
app.get('/conflict', () => {
  throw new AppError('conflict', 'SOMETHING_CONFLICTS', 'It conflicts.', { details: { id: 'x' } });
});
app.get('/unreadable', () => {
  throw new HTTPException(400, { message: 'Malformed request.' }); // as a Hono helper would
});
app.get('/boom', () => {
  throw new Error('password=hunter2 at /srv/internal/path.ts:42');
});

const allowedOrigin = (Deno.env.get('CORS_ALLOWED_ORIGINS') ?? '').split(',')[0];

Deno.test('a success is wrapped in {data, metadata} with the request id and a timestamp', async () => {
  const res = await app.request('/probe/ok');
  const body = await res.json();
  assert.equal(res.status, 200);
  assert.deepEqual(body.data, { hello: 'world' });
  assert.equal(body.metadata.requestId, res.headers.get('x-request-id'));
  assert.ok(!Number.isNaN(Date.parse(body.metadata.timestamp)));
});

Deno.test('a well-formed X-Request-ID from the caller is kept', async () => {
  const res = await app.request('/probe/ok', { headers: { 'x-request-id': 'client-req-12345678' } });
  assert.equal(res.headers.get('x-request-id'), 'client-req-12345678');
  assert.equal((await res.json()).metadata.requestId, 'client-req-12345678');
});

Deno.test('a malformed X-Request-ID is replaced by a generated one', async () => {
  const res = await app.request('/probe/ok', { headers: { 'x-request-id': 'bad id with spaces' } });
  const id = res.headers.get('x-request-id') ?? '';
  assert.match(id, /^[0-9a-f-]{36}$/);
  await res.body?.cancel();
});

Deno.test('an AppError renders the error envelope with its status, code and details', async () => {
  const res = await app.request('/probe/conflict');
  const body = await res.json();
  assert.equal(res.status, 409);
  assert.deepEqual(body.error, {
    type: 'conflict',
    code: 'SOMETHING_CONFLICTS',
    message: 'It conflicts.',
    retryable: false,
    details: { id: 'x' },
  });
  assert.ok(body.metadata.requestId);
});

Deno.test('an unexpected error is a 500 that shows no internals', async () => {
  const res = await app.request('/probe/boom');
  const text = await res.text();
  assert.equal(res.status, 500);
  assert.equal(JSON.parse(text).error.code, 'INTERNAL_ERROR');
  assert.ok(!text.includes('hunter2') && !text.includes('/srv/internal'), 'internals leaked');
});

Deno.test('an unknown route is a 404 in the envelope', async () => {
  const res = await app.request('/probe/nope');
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error.code, 'NOT_FOUND');
});

Deno.test('CORS allows only listed origins', async () => {
  const allowed = await app.request('/probe/ok', { headers: { origin: allowedOrigin } });
  assert.equal(allowed.headers.get('access-control-allow-origin'), allowedOrigin);
  await allowed.body?.cancel();
  const other = await app.request('/probe/ok', { headers: { origin: 'https://evil.example' } });
  assert.equal(other.headers.get('access-control-allow-origin'), null);
  await other.body?.cancel();
});

Deno.test('a CORS preflight from a listed origin allows the Idempotency-Key header', async () => {
  const res = await app.request('/probe/ok', {
    method: 'OPTIONS',
    headers: { origin: allowedOrigin, 'access-control-request-method': 'POST' },
  });
  assert.equal(res.status, 204);
  assert.match(res.headers.get('access-control-allow-headers') ?? '', /idempotency-key/);
});

Deno.test('a CORS preflight from a listed origin allows what the AI SDKs send, and nothing else it asks for', async () => {
  const preflight = async (origin: string) => {
    const res = await app.request('/probe/ok', {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers':
          'authorization,content-type,x-stainless-os,X-Stainless-Retry-Count,anthropic-version,anthropic-dangerous-direct-browser-access,x-api-key,x-evil,cookie',
      },
    });
    await res.body?.cancel();
    return res.headers.get('access-control-allow-headers')?.split(',') ?? [];
  };
  assert.deepEqual(await preflight(allowedOrigin), [
    'authorization',
    'x-client-info',
    'apikey',
    'content-type',
    'idempotency-key',
    'x-request-id',
    'x-ai-clamp',
    'x-stainless-os',
    'x-stainless-retry-count',
    'anthropic-version',
    'anthropic-dangerous-direct-browser-access',
    'x-api-key',
  ]);
  assert.ok(!(await preflight('https://evil.example')).includes('x-stainless-os'), 'reflected for an unlisted origin');
});

Deno.test("a browser may read the gateway's own headers, the output cap among them", async () => {
  const res = await app.request('/probe/ok', { headers: { origin: allowedOrigin } });
  await res.body?.cancel();
  const exposed = (res.headers.get('access-control-expose-headers') ?? '').toLowerCase().split(',');
  for (
    const h of [
      'x-credits-held',
      'x-credits-charged',
      'x-ai-call-id',
      'x-ai-max-output-tokens',
      'x-gateway-overhead-ms',
    ]
  ) {
    assert.ok(exposed.includes(h), `${h} is not exposed`);
  }
});

Deno.test('a CORS preflight allows exactly the methods the routes answer', async () => {
  const preflight = async (routes: Array<'get' | 'delete' | 'patch' | 'put'>) => {
    const probe = createApp('probe');
    for (const method of routes) probe[method]('/x', (c) => ok(c, {})); // after the middleware, as every route is
    const res = await probe.request('/probe/x', {
      method: 'OPTIONS',
      headers: { origin: allowedOrigin, 'access-control-request-method': 'PATCH' },
    });
    await res.body?.cancel();
    return res.headers.get('access-control-allow-methods')?.split(',') ?? [];
  };
  assert.deepEqual(await preflight(['get', 'delete']), ['DELETE', 'GET', 'OPTIONS']);
  assert.deepEqual(await preflight(['get', 'patch', 'put']), ['GET', 'OPTIONS', 'PATCH', 'PUT']);
});

Deno.test("a framework's 4xx (HTTPException) is BAD_REQUEST in the envelope, with its status", async () => {
  const res = await app.request('/probe/unreadable');
  assert.equal(res.status, 400);
  const { error } = await res.json();
  assert.deepEqual([error.type, error.code, error.message], ['validation', 'BAD_REQUEST', 'Malformed request.']);
});
