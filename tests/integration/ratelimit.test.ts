// Rate limits on the real Redis through the bridge, and the circuit breaker when Redis fails.
import assert from 'node:assert/strict';
import { clearOfWindowEdge, counting, env, newUser, userToken, withGateway } from '../support/helpers.ts';

type Res = { status: number; headers: Headers; body: Record<string, unknown> };
async function get(url: string, init: RequestInit & { client?: Deno.HttpClient } = {}): Promise<Res> {
  const res = await fetch(url, init);
  return { status: res.status, headers: res.headers, body: await res.json() };
}

// Each test that asserts limiter behaviour gets a gateway of its own: a fresh Redis breaker,
// untouched by the load earlier tests put on the shared one; those that count against a window
// use `counting` and start clear of the window's edge (helpers.ts says why).
Deno.test('checkout: 5 per minute per user; soft warning from the 4th; the 6th is 429 naming the wait', async () => {
  const token = await userToken(await newUser());
  const other = await userToken(await newUser());
  await withGateway(counting, async (url) => {
    await clearOfWindowEdge();
    const checkout = (t: string, p: string) =>
      get(`${url}/checkout/sessions`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${t}`,
          'idempotency-key': crypto.randomUUID(),
          'content-type': 'application/json',
        },
        body: JSON.stringify({ package_id: p }),
      });
    const results = [];
    for (const p of ['mini', 'starter', 'plus', 'pro', 'max', 'mini']) results.push(await checkout(token, p));
    assert.deepEqual(results.map((r) => r.status), [201, 201, 201, 201, 201, 429]);
    assert.deepEqual(results.map((r) => r.headers.get('x-ratelimit-warning') !== null), [
      false,
      false,
      false,
      true,
      true,
      false,
    ]);
    assert.deepEqual(results.slice(0, 5).map((r) => r.headers.get('x-ratelimit-remaining')), ['4', '3', '2', '1', '0']);
    const last = results[5];
    const error = last.body.error as Record<string, unknown>;
    assert.equal(error.code, 'RATE_LIMITED');
    assert.equal(error.type, 'rate_limit');
    assert.equal(error.retryable, true);
    const windowEnd = Math.ceil(Date.now() / 60_000) * 60_000;
    const expected = Math.ceil((windowEnd - Date.now()) / 1000);
    const wait = (error.details as { retry_after_seconds: number }).retry_after_seconds;
    assert.ok(Math.abs(wait - expected) <= 1, `retry_after_seconds ${wait} vs ${expected}`);
    assert.ok(Math.abs(Number(last.headers.get('x-ratelimit-reset')) - expected) <= 1);
    // A wait past the SDKs' own backoff (8 s) is named to no client as a delay to sit through.
    if (wait > 8) assert.equal(last.headers.get('retry-after'), null);
    else assert.equal(last.headers.get('retry-after'), String(wait));
    assert.equal(last.headers.get('x-ratelimit-limit'), '5');
    assert.equal((await checkout(other, 'mini')).status, 201, 'another user has their own budget');
  });
});

/** A loopback address of its own (Linux routes all of 127/8 to lo): fresh limit windows. */
const freshAddress = () =>
  `127.${1 + Math.floor(Math.random() * 254)}.${Math.floor(Math.random() * 256)}.${
    2 + Math.floor(Math.random() * 250)
  }`;

Deno.test('per-user default class, per-IP and global layers each refuse past their limit', async () => {
  const overrides = {
    ...counting,
    RATE_LIMIT_DEFAULT_PER_MIN: '3',
    RATE_LIMIT_IP_PER_MIN: '7',
    RATE_LIMIT_GLOBAL_PER_MIN: '1000000',
  };
  const tokens = await Promise.all([1, 2, 3].map(async () => await userToken(await newUser())));
  // Clients connect from addresses of their own: the gateway, like the platform, names the
  // socket's address in cf-connecting-ip, whatever the client sends.
  const [here, elsewhere] = [freshAddress(), freshAddress()].map((localAddress) =>
    Deno.createHttpClient({ localAddress })
  );
  try {
    await withGateway(overrides, async (url) => {
      await clearOfWindowEdge();
      const call = (token: string, client = here) =>
        get(`${url}/credits/balance`, { client, headers: { authorization: `Bearer ${token}` } });
      const a = [];
      for (let i = 0; i < 4; i++) a.push(await call(tokens[0]));
      assert.deepEqual(a.map((r) => r.status), [200, 200, 200, 429]);
      assert.equal(
        (a[3].body.error as Record<string, unknown>).details &&
          (a[3].body.error as { details: { layer: string } }).details.layer,
        'route_default',
      );
      // Same address, other users: the IP layer (7) runs out after 7 requests served in all (the
      // one refused above counted in no layer: a refused request spends no one's budget).
      const b = [
        await call(tokens[1]),
        await call(tokens[1]),
        await call(tokens[2]),
        await call(tokens[2]),
        await call(tokens[2]),
      ];
      assert.deepEqual(b.map((r) => r.status), [200, 200, 200, 200, 429]);
      assert.equal((b[4].body.error as { details: { layer: string } }).details.layer, 'ip');
      assert.equal((await call(tokens[2], elsewhere)).status, 200, 'another address is not affected');
    });
  } finally {
    here.close();
    elsewhere.close();
  }
  await withGateway({ ...counting, RATE_LIMIT_GLOBAL_PER_MIN: '2', RATE_LIMIT_IP_PER_MIN: '1000000' }, async (url) => {
    await clearOfWindowEdge();
    // The global window is shared by everything; a fresh limit value starts a fresh window.
    const rs = [];
    for (let i = 0; i < 3; i++) {
      rs.push(await get(`${url}/credits/balance`, { headers: { authorization: `Bearer ${tokens[2]}` } }));
    }
    assert.equal(rs[2].status, 429);
    assert.equal((rs[2].body.error as { details: { layer: string } }).details.layer, 'global');
  });
});

Deno.test('health checks, and the Stripe webhook, are outside the global, IP and route layers', async () => {
  await withGateway(
    { RATE_LIMIT_GLOBAL_PER_MIN: '1', RATE_LIMIT_IP_PER_MIN: '1', RATE_LIMIT_DEFAULT_PER_MIN: '1' },
    async (url) => {
      for (let i = 0; i < 5; i++) assert.equal((await get(`${url}/health/healthz`)).status, 200);
      for (let i = 0; i < 3; i++) {
        const r = await get(`${url}/stripe-webhook`, {
          method: 'POST',
          body: '{}',
          headers: { 'stripe-signature': 't=1,v1=00' },
        });
        assert.equal(r.status, 400, 'a bad signature, not a rate limit');
      }
    },
  );
});

/** A stand-in for Upstash that misbehaves on demand, or forwards to the real bridge. */
function flakyRedis() {
  const state = { mode: 'proxy' as 'proxy' | 'hang' | 'error' | 'garbage' };
  const upstream = env('UPSTASH_REDIS_REST_URL');
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    if (state.mode === 'hang') {
      await new Promise((r) => setTimeout(r, 2000));
      return new Response('late');
    }
    if (state.mode === 'error') return new Response('{"error":"boom"}', { status: 500 });
    if (state.mode === 'garbage') return new Response('<html>not redis</html>', { status: 200 });
    const url = new URL(req.url);
    return fetch(`${upstream}${url.pathname}`, { method: req.method, headers: req.headers, body: await req.text() });
  });
  return { state, url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

Deno.test('Redis hanging, failing or answering garbage: requests still succeed fast; the breaker opens and closes', async () => {
  const flaky = flakyRedis();
  const token = await userToken(await newUser());
  try {
    await withGateway(
      {
        UPSTASH_REDIS_REST_URL: flaky.url,
        REDIS_BREAKER_FAILURES: '3',
        REDIS_BREAKER_COOLDOWN_MS: '700',
        RATE_LIMIT_DEFAULT_PER_MIN: '1000',
      },
      async (url) => {
        const balance = () => get(`${url}/credits/balance`, { headers: { authorization: `Bearer ${token}` } });
        assert.ok((await balance()).headers.get('x-ratelimit-limit'), 'limits apply while Redis is healthy');
        for (const mode of ['hang', 'error', 'garbage'] as const) {
          flaky.state.mode = mode;
          const started = performance.now();
          const r = await balance();
          assert.equal(r.status, 200, `${mode}: the request failed`);
          assert.equal(
            r.headers.get('x-ratelimit-limit'),
            null,
            `${mode}: no misleading limit headers when failing open`,
          );
          assert.ok(performance.now() - started < 1000, `${mode}: took ${performance.now() - started} ms`);
        }
        const ready = await get(`${url}/health/readyz`);
        assert.equal(ready.status, 200, 'Redis alone never fails readiness');
        assert.equal((ready.body.data as { checks: { redis: { status: string } } }).checks.redis.status, 'open');

        flaky.state.mode = 'proxy';
        await new Promise((r) => setTimeout(r, 800)); // past the cool-down: the next call is the probe
        assert.ok((await balance()).headers.get('x-ratelimit-limit'), 'limits apply again');
        const after = await get(`${url}/health/readyz`);
        assert.equal((after.body.data as { checks: { redis: { status: string } } }).checks.redis.status, 'ok');
      },
    );
  } finally {
    await flaky.close();
  }
});

Deno.test('with Redis down, checkout falls back to a per-instance limit instead of failing open', async () => {
  const flaky = flakyRedis();
  flaky.state.mode = 'error';
  const token = await userToken(await newUser());
  try {
    await withGateway({ UPSTASH_REDIS_REST_URL: flaky.url, RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN: '2' }, async (url) => {
      const statuses = [];
      for (const p of ['mini', 'starter', 'plus']) {
        const r = await get(`${url}/checkout/sessions`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${token}`,
            'idempotency-key': crypto.randomUUID(),
            'content-type': 'application/json',
          },
          body: JSON.stringify({ package_id: p }),
        });
        statuses.push(r.status);
        if (r.status === 429) {
          assert.equal((r.body.error as { details: { layer: string } }).details.layer, 'local_fallback');
        }
      }
      assert.deepEqual(statuses, [201, 201, 429]);
    });
  } finally {
    await flaky.close();
  }
});

Deno.test('redis-server stopped mid-test: requests keep succeeding; restarted, limits apply again', async () => {
  const port = new URL(env('REDIS_URL')).port;
  const token = await userToken(await newUser());
  await withGateway({ REDIS_BREAKER_COOLDOWN_MS: '500' }, async (url) => {
    const balance = () => get(`${url}/credits/balance`, { headers: { authorization: `Bearer ${token}` } });
    assert.ok((await balance()).headers.get('x-ratelimit-limit'), 'limits apply before');
    await new Deno.Command('redis-cli', { args: ['-p', port, 'shutdown', 'nosave'] }).output();
    try {
      for (let i = 0; i < 8; i++) {
        assert.equal((await balance()).status, 200, 'Redis being down must never fail a request');
      }
      const ready = await get(`${url}/health/readyz`);
      assert.equal(ready.status, 200);
      assert.notEqual((ready.body.data as { checks: { redis: { status: string } } }).checks.redis.status, 'ok');
    } finally {
      await new Deno.Command('redis-server', {
        args: [
          '--port',
          port,
          '--bind',
          '127.0.0.1',
          '--save',
          '',
          '--appendonly',
          'no',
          '--daemonize',
          'yes',
          '--logfile',
          '/dev/null',
        ],
      }).output();
    }
    await new Promise((r) => setTimeout(r, 700)); // past the cool-down: the next call probes
    await balance();
    assert.ok((await balance()).headers.get('x-ratelimit-limit'), 'limits apply again after the restart');
  });
});

/** A Redis REST bridge of its own that delays every call like a network (REDIS_BRIDGE_DELAY_MS). */
async function delayedBridge(delay: string) {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/local/redis-bridge.ts'],
    env: { REDIS_REST_PORT: String(port), REDIS_BRIDGE_DELAY_MS: delay },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  for (let up = false; !up;) {
    up = await fetch(`${url}/healthz`).then((r) => r.body?.cancel().then(() => true) ?? true, () => false);
    if (!up) await new Promise((r) => setTimeout(r, 100));
  }
  return { url, close: async () => (child.kill('SIGKILL'), await child.status) };
}

Deno.test('at edge-to-Upstash latency (median 40 ms, p99 150 ms) limits stay on and the breaker never opens', async () => {
  const bridge = await delayedBridge('40:150');
  const requests = 160;
  try {
    await withGateway({ UPSTASH_REDIS_REST_URL: bridge.url, RATE_LIMIT_DEFAULT_PER_MIN: '1000000' }, async (url) => {
      let unlimited = 0;
      let sent = 0;
      // 8 connections from a cold start: the first wave also pays the script load.
      await Promise.all(Array.from({ length: 8 }, async () => {
        while (sent++ < requests) {
          const res = await fetch(`${url}/credits/balance`);
          await res.body?.cancel();
          if (!res.headers.get('x-ratelimit-limit')) unlimited++;
        }
      }));
      const redis = (await get(`${url}/health/readyz`)).body.data as {
        checks: { redis: { status: string; opened: number } };
      };
      assert.equal(redis.checks.redis.opened, 0, 'the breaker opened: limits and fraud checks went off');
      assert.equal(redis.checks.redis.status, 'ok');
      assert.ok(unlimited <= requests * 0.02, `${unlimited} of ${requests} requests ran without limits`);
    });
  } finally {
    await bridge.close();
  }
});

Deno.test('usage reports are limited per reporting server (its key), not per address it shares with others', async () => {
  await clearOfWindowEdge();
  await withGateway({ ...counting, RATE_LIMIT_CREDITS_USAGE_PER_MIN: '3' }, async (url) => {
    const user = await newUser();
    const report = async (key: string) => {
      const res = await fetch(`${url}/credits/usage`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${key}`,
          'content-type': 'application/json',
          'idempotency-key': crypto.randomUUID(),
        },
        body: JSON.stringify({ user_id: user, model: 'gpt-4o', input_tokens: 0, output_tokens: 0 }),
      });
      await res.body?.cancel();
      return res.status;
    };
    const service = env('SUPABASE_SERVICE_ROLE_KEY');
    const statuses = [await report(service), await report(service), await report(service), await report(service)];
    assert.deepEqual(statuses, [201, 201, 201, 429], 'the fourth report of one server in a minute');
    // Another server from the same address has its own budget (an unknown key is refused, not throttled).
    assert.equal(await report(`slk_${'0'.repeat(48)}`), 401);
  });
});
