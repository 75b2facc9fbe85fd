// The Upstash-compatible REST bridge, driven by the real @upstash/redis client.
import assert from 'node:assert/strict';
import { Redis } from '@upstash/redis';
import { Ratelimit } from '@upstash/ratelimit';
import { env } from '../support/helpers.ts';

const url = env('UPSTASH_REDIS_REST_URL');
const redis = new Redis({ url, token: env('UPSTASH_REDIS_REST_TOKEN'), enableTelemetry: false });
const plain = new Redis({
  url,
  token: env('UPSTASH_REDIS_REST_TOKEN'),
  responseEncoding: false,
  enableTelemetry: false,
});
const key = (name: string) => `test:bridge:${crypto.randomUUID()}:${name}`;

Deno.test('strings, numbers and missing keys round-trip (base64 and plain encodings)', async () => {
  for (const client of [redis, plain]) {
    const k = key('s');
    assert.equal(await client.set(k, 'hello world'), 'OK');
    assert.equal(await client.get(k), 'hello world');
    await client.set(k, 42);
    assert.equal(await client.get(k), 42);
    assert.equal(await client.incrby(k, 8), 50);
    assert.equal(await client.get(key('missing')), null);
  }
});

Deno.test('values are binary-safe: unicode, emoji, NUL and CR/LF survive', async () => {
  const k = key('bin');
  const value = 'zażółć 🎓 a\u0000b\r\nc "quoted" \\ end';
  await redis.set(k, value);
  assert.equal(await redis.get(k), value);
  assert.equal(await redis.strlen(k), new TextEncoder().encode(value).length);
});

Deno.test('arrays and hashes come back as arrays and objects', async () => {
  const l = key('list');
  await redis.rpush(l, 'a', 'b', 'c');
  assert.deepEqual(await redis.lrange(l, 0, -1), ['a', 'b', 'c']);
  const h = key('hash');
  await redis.hset(h, { name: 'ada', credits: 3 });
  assert.deepEqual(await redis.hgetall(h), { name: 'ada', credits: 3 });
});

Deno.test('a pipeline runs its commands in order and returns each result', async () => {
  const k = key('p');
  const p = redis.pipeline();
  p.set(k, 1);
  p.incr(k);
  p.get(k);
  assert.deepEqual(await p.exec(), ['OK', 2, 2]);
});

Deno.test('multi-exec runs atomically and returns each result', async () => {
  const k = key('m');
  const tx = redis.multi();
  tx.incr(k);
  tx.incr(k);
  tx.expire(k, 60);
  assert.deepEqual(await tx.exec(), [1, 2, 1]);
});

Deno.test('a Redis error is thrown as an error naming the failure', async () => {
  const k = key('wrongtype');
  await redis.rpush(k, 'x');
  await assert.rejects(() => redis.incr(k), /WRONGTYPE/);
});

Deno.test('a wrong token is refused', async () => {
  const bad = new Redis({ url, token: 'not-the-token', enableTelemetry: false });
  await assert.rejects(() => bad.get('x'), /Unauthorized/);
});

Deno.test('EVALSHA of an unknown script fails with NOSCRIPT; after SCRIPT LOAD it runs', async () => {
  const script = 'return redis.call("INCRBY", KEYS[1], ARGV[1])';
  await redis.scriptFlush();
  const sha = 'ffffffffffffffffffffffffffffffffffffffff';
  await assert.rejects(() => redis.evalsha(sha, [key('x')], [1]), /NOSCRIPT/);
  const loaded = await redis.scriptLoad(script);
  const k = key('e');
  assert.equal(await redis.evalsha(loaded, [k], [5]), 5);
});

Deno.test('@upstash/ratelimit works through the bridge, falling back to EVAL after a script flush', async () => {
  await redis.scriptFlush();
  // An hour's window: a 10 s one could turn over between the four calls on a slow CI run and let the fourth through.
  const limiter = new Ratelimit({ redis, limiter: Ratelimit.fixedWindow(3, '1 h'), prefix: key('rl') });
  const results = [];
  for (let i = 0; i < 4; i++) results.push((await limiter.limit('user-1')).success);
  assert.deepEqual(results, [true, true, true, false]);
});
