// The typed client against a local server that fails on purpose, through real supabase-js:
// which failures are retried, that one Idempotency-Key serves every attempt of one operation,
// the backoff's bounds, typed errors, optimistic temp ids, and watchJob's pacing and abort.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { BillingError, createBillingClient, createUsageReporter, type RetryOptions } from '../../client/mod.ts';
import { backoffMs } from '../../client/retry.ts';

type Seen = { method: string; path: string; key: string | null; auth: string | null; body: string };
type Reply = { status: number; body?: unknown; headers?: Record<string, string> };

/** A server answering from `script` in order (the last answer repeats), recording each request. */
function failingServer(script: Reply[]) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    seen.push({
      method: req.method,
      path: url.pathname + url.search,
      key: req.headers.get('idempotency-key'),
      auth: req.headers.get('authorization'),
      body: await req.text(),
    });
    const r = script[Math.min(seen.length - 1, script.length - 1)];
    return new Response(JSON.stringify(r.body ?? {}), {
      status: r.status,
      headers: { 'content-type': 'application/json', ...r.headers },
    });
  });
  const base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  return { base, seen, close: () => server.shutdown() };
}

const envelope = (code: string, retryable: boolean) => ({
  error: { type: 'x', code, message: `${code} on purpose`, retryable, details: { why: 'test' } },
  metadata: { requestId: 'req-test-1234', timestamp: new Date().toISOString() },
});
const success = (data: unknown) => ({ data, metadata: { requestId: 'req-ok-1234', timestamp: '' } });
const charge = { transfer_id: '1', charged: '0.5', balance: '9.5', available: '9.5', rate_card_version: 1 };
const fast = { baseDelayMs: 5, maxDelayMs: 20 };

function supabaseAt(base: string, fetchImpl?: typeof fetch) {
  return createClient(base, 'anon-key', {
    accessToken: () => Promise.resolve('user-token'),
    global: fetchImpl ? { fetch: fetchImpl } : {},
  });
}
const client = (base: string, opts: RetryOptions = fast, fetchImpl?: typeof fetch) =>
  createBillingClient(supabaseAt(base, fetchImpl), opts);
/** The product's server reporting usage with a server key, over the same supabase-js client. */
const reporter = (base: string, opts: RetryOptions = fast, fetchImpl?: typeof fetch) =>
  createUsageReporter(supabaseAt(base, fetchImpl), serverKey, opts);
const serverKey = `slk_${'0'.repeat(48)}`;
const user_id = '00000000-0000-4000-8000-000000000001';

Deno.test('a retryable 503 and a 409 IDEMPOTENCY_KEY_IN_USE are retried with the same key, then succeed', async () => {
  const s = failingServer([
    { status: 503, body: envelope('DATABASE_UNAVAILABLE', true) },
    { status: 409, body: envelope('IDEMPOTENCY_KEY_IN_USE', true) },
    { status: 201, body: success(charge) },
  ]);
  try {
    const result = await reporter(s.base).recordUsage({ user_id, model: 'gpt-4o', input_tokens: 1, output_tokens: 1 });
    assert.deepEqual(result, { data: charge, error: null });
    assert.equal(s.seen.length, 3);
    assert.equal(new Set(s.seen.map((r) => r.key)).size, 1, 'one key for every attempt');
    assert.match(s.seen[0].key ?? '', /^[0-9a-f-]{36}$/);
    assert.equal(s.seen[0].auth, `Bearer ${serverKey}`, "the server key, never the user's token");
    assert.equal(JSON.parse(s.seen[0].body).user_id, user_id, 'naming the user who spent');
    assert.equal(s.seen[0].path, '/functions/v1/credits/usage');
  } finally {
    await s.close();
  }
});

Deno.test('a non-retryable error is answered at once as `{ data: null, error }`, never thrown', async () => {
  const s = failingServer([{ status: 400, body: envelope('VALIDATION_FAILED', false) }]);
  try {
    const { data, error: err } = await reporter(s.base).recordUsage({
      user_id,
      model: 'gpt-4o',
      input_tokens: -1,
      output_tokens: 1,
    });
    assert.equal(data, null);
    assert.ok(err instanceof BillingError);
    assert.equal(err.status, 400);
    assert.equal(err.code, 'VALIDATION_FAILED');
    assert.equal(err.retryable, false);
    assert.deepEqual(err.details, { why: 'test' });
    assert.equal(err.requestId, 'req-test-1234');
    assert.equal(s.seen.length, 1, 'never retried');
  } finally {
    await s.close();
  }
});

Deno.test('a network error is retried with the same key; attempts stop at maxAttempts', async () => {
  const s = failingServer([{ status: 201, body: success(charge) }]);
  let calls = 0;
  const flaky: typeof fetch = (input, init) => {
    calls++;
    return calls === 1 ? Promise.reject(new TypeError('connection reset')) : fetch(input, init);
  };
  try {
    const { error } = await reporter(s.base, fast, flaky).recordUsage({
      user_id,
      model: 'gpt-4o',
      input_tokens: 1,
      output_tokens: 1,
    });
    assert.equal(error, null);
    assert.equal(calls, 2);
    assert.equal(s.seen.length, 1);
  } finally {
    await s.close();
  }

  const down = failingServer([{ status: 503, body: envelope('DATABASE_UNAVAILABLE', true) }]);
  try {
    const { error: err } = await client(down.base, { ...fast, maxAttempts: 3 }).balance();
    assert.equal(err?.code, 'DATABASE_UNAVAILABLE');
    assert.equal(down.seen.length, 3);
    assert.equal(down.seen[0].key, null, 'reads carry no Idempotency-Key');
    assert.equal(down.seen[0].auth, 'Bearer user-token', "the user's token travels as supabase-js sends it");
    assert.ok(!('recordUsage' in client(down.base)), 'a browser never reports usage');
  } finally {
    await down.close();
  }
});

Deno.test('two logical operations get two keys', async () => {
  const s = failingServer([{ status: 201, body: success(charge) }]);
  try {
    const c = reporter(s.base);
    await c.recordUsage({ user_id, model: 'gpt-4o', input_tokens: 1, output_tokens: 1 });
    await c.recordUsage({ user_id, model: 'gpt-4o', input_tokens: 1, output_tokens: 1 });
    assert.notEqual(s.seen[0].key, s.seen[1].key);
  } finally {
    await s.close();
  }
});

Deno.test('backoff: full jitter under a doubling ceiling, capped, and never shorter than Retry-After', () => {
  const err = (retryAfter?: number) =>
    new BillingError(503, { type: 'x', code: 'X', message: '', retryable: true }, undefined, retryAfter);
  const top = { random: () => 0.999999 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((a) => Math.round(backoffMs(a, err(), top))), [
    250,
    500,
    1000,
    2000,
    4000,
    8000,
    8000,
  ]);
  assert.equal(backoffMs(3, err(), { random: () => 0 }), 0, 'full jitter reaches down to zero');
  assert.equal(backoffMs(0, err(3), { random: () => 0 }), 3000, 'Retry-After is a floor');
  assert.equal(backoffMs(0, err(60), { random: () => 0 }), 8000, 'and the cap still holds');
});

Deno.test('optimistic create: a temp id at once, the canonical id later; retries resend the same temp id', async () => {
  const s = failingServer([
    { status: 503, body: envelope('DATABASE_UNAVAILABLE', true) },
    { status: 202, body: success({ job_id: 'job-1', status: 'queued', poll_url: '/x', client_temp_id: 'echo' }) },
  ]);
  try {
    const pending = client(s.base).createJob({ type: 'ai_completion', input: {} });
    assert.match(pending.tempId, /^temp_[0-9a-f-]{36}$/);
    const accepted = await pending.done;
    assert.equal(accepted.data?.job_id, 'job-1');
    const sent = s.seen.map((r) => JSON.parse(r.body).client_temp_id);
    assert.deepEqual(sent, [pending.tempId, pending.tempId]);
  } finally {
    await s.close();
  }
});

Deno.test("watchJob follows the server's Retry-After, reports progress, and stops when finished or aborted", async () => {
  const job = (status: string, progress: number) =>
    success({ job_id: 'j', type: 'ai_completion', status, progress, checkpoints: [], client_temp_id: null });
  const s = failingServer([
    { status: 200, body: job('queued', 0), headers: { 'retry-after': '1' } },
    { status: 200, body: job('processing', 40), headers: { 'retry-after': '1' } },
    { status: 200, body: job('completed', 100) },
  ]);
  try {
    const progress: number[] = [];
    const started = Date.now();
    const done = await client(s.base).watchJob('j', { onProgress: (j) => progress.push(j.progress) });
    assert.equal(done.data?.status, 'completed');
    assert.deepEqual(progress, [0, 40, 100]);
    assert.ok(Date.now() - started >= 1900, 'waited Retry-After (1 s) twice');
  } finally {
    await s.close();
  }

  const slow = failingServer([{ status: 200, body: job('processing', 10), headers: { 'retry-after': '8' } }]);
  try {
    const abort = new AbortController();
    const started = Date.now();
    setTimeout(() => abort.abort(), 200);
    const { data, error } = await client(slow.base).watchJob('j', { signal: abort.signal });
    assert.deepEqual([data, error?.code], [null, 'ABORTED']);
    assert.ok(Date.now() - started < 2000, 'the abort ends the 8 s wait at once');
  } finally {
    await slow.close();
  }
});

Deno.test('nothing answering at all (no server) is `error.code` NETWORK_ERROR after the retries, never a throw', async () => {
  const s = failingServer([{ status: 200, body: success({}) }]);
  const base = s.base;
  await s.close(); // the port is closed now: every attempt is refused
  const { data, error } = await client(base, { ...fast, maxAttempts: 2 }).balance();
  assert.equal(data, null);
  assert.deepEqual([error?.code, error?.status, error?.retryable], ['NETWORK_ERROR', 0, true]);
});

Deno.test('a fetch that throws something unexpected is still answered as an error', async () => {
  const broken: typeof fetch = () => {
    throw new Error('not a fetch error');
  };
  const { data, error } = await client('http://127.0.0.1:9', { ...fast, maxAttempts: 1 }, broken).packages();
  assert.equal(data, null);
  assert.equal(error?.code, 'NETWORK_ERROR');
});

Deno.test("balance and lots as of an instant send `at` encoded (an offset's + survives); without it, none", async () => {
  const s = failingServer([{ status: 200, body: success({ items: [], next_cursor: null }) }]);
  try {
    const c = client(s.base);
    const at = '2026-11-03T10:00:00.123456+01:00';
    await c.balance({ at });
    await c.lots({ at, limit: 10 });
    await c.balance();
    await c.lots();
    assert.deepEqual(s.seen.map((x) => x.path), [
      '/functions/v1/credits/balance?at=2026-11-03T10%3A00%3A00.123456%2B01%3A00',
      '/functions/v1/credits/lots?at=2026-11-03T10%3A00%3A00.123456%2B01%3A00&limit=10',
      '/functions/v1/credits/balance',
      '/functions/v1/credits/lots',
    ]);
  } finally {
    await s.close();
  }
});

Deno.test('client/README.md lists every method of the client and the usage reporter, and none it lacks', async () => {
  const supabase = createClient('http://127.0.0.1:1', 'anon-key');
  const methods = [
    ...Object.keys(createBillingClient(supabase)),
    ...Object.keys(createUsageReporter(supabase, 'slk_' + '0'.repeat(48))),
  ];
  const readme = await Deno.readTextFile(new URL('../../client/README.md', import.meta.url));
  const list = readme.slice(readme.indexOf('Every route has a method'), readme.indexOf('Request and'));
  const named = new Set([...list.matchAll(/`([a-z][A-Za-z]+)`/g)].map((m) => m[1]));
  assert.deepEqual(methods.filter((m) => !named.has(m)), [], 'methods the README does not list');
  assert.deepEqual(
    [...named].filter((n) => !methods.includes(n) && n !== 'createUsageReporter'),
    [],
  );
});
