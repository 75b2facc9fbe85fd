// The rate limiter costs one Redis command, in one HTTP round trip, per request: every layer
// (global, IP, user × route) is counted by one script. Counted at a proxy in front of the
// Redis REST bridge, as Upstash would bill and as the edge would wait for it.
import assert from 'node:assert/strict';
import { env, newUser, userToken, withGateway } from '../support/helpers.ts';

/** Forwards to the real bridge, counting the requests and the commands that run the limiter. */
function countingRedis() {
  const seen = { requests: 0, limiterCommands: 0 };
  const upstream = env('UPSTASH_REDIS_REST_URL');
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const body = await req.text();
    const commands: unknown[][] = url.pathname === '/' ? [JSON.parse(body)] : JSON.parse(body);
    const limiter = commands.filter((c) => /^EVAL/i.test(String(c[0])));
    if (limiter.length > 0) {
      seen.requests++;
      seen.limiterCommands += limiter.length;
    }
    const res = await fetch(`${upstream}${url.pathname}`, { method: req.method, headers: req.headers, body });
    return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
  });
  return { seen, url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

Deno.test('every limiter layer of a request is one Redis command in one round trip', async () => {
  const redis = countingRedis();
  const token = await userToken(await newUser());
  try {
    // Global and IP windows of their own (the limit is part of the key), so the user's layer is
    // the tightest whatever other traffic this Redis sees.
    const limits = {
      RATE_LIMIT_DEFAULT_PER_MIN: '1000',
      RATE_LIMIT_GLOBAL_PER_MIN: '987654321',
      RATE_LIMIT_IP_PER_MIN: '987654321',
    };
    await withGateway({ UPSTASH_REDIS_REST_URL: redis.url, ...limits }, async (url) => {
      const balance = () => fetch(`${url}/credits/balance`, { headers: { authorization: `Bearer ${token}` } });
      const first = await balance(); // loads the script into Redis (EVALSHA, then EVAL once)
      await first.body?.cancel();
      assert.equal(first.headers.get('x-ratelimit-limit'), '1000', 'the user × route layer is the tightest');
      redis.seen.requests = 0;
      redis.seen.limiterCommands = 0;
      for (let i = 0; i < 20; i++) {
        const res = await balance();
        await res.body?.cancel();
        assert.equal(res.status, 200);
        assert.ok(res.headers.get('x-ratelimit-remaining'), 'limited');
      }
      assert.deepEqual(redis.seen, { requests: 20, limiterCommands: 20 });
    });
  } finally {
    await redis.close();
  }
});
