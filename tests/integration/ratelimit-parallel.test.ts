// Limits stay exact under parallel requests: a burst of a student's calls, all sent at once over
// real HTTP, is answered by exactly the limit and refused past it, however the calls interleave
// in the gateway and in Redis, and whichever instance serves them (hosted runs many). The one
// Lua script that counts every layer (ratelimit.ts) is what makes that so: a read-then-write
// counter would let every call of a burst read the same count.
import assert from 'node:assert/strict';
import { ask, callsOf, student } from '../support/ai.ts';
import { clearOfWindowEdge, counting, spawnGateway, withGateway } from '../support/helpers.ts';

const limit = 8;
/** Each test's global and IP windows of their own (the limit is part of the key), so only the student's layer can refuse. */
const roomy = () => String(900_000_000 + Math.floor(Math.random() * 1_000_000));
const overrides = () => ({
  ...counting,
  RATE_LIMIT_AI_CHAT_PER_MIN: String(limit),
  RATE_LIMIT_GLOBAL_PER_MIN: roomy(),
  RATE_LIMIT_IP_PER_MIN: roomy(),
});

type Answer = { status: number; headers: Headers; body: Record<string, unknown> };

/** One whole (non-streamed) AI call of `token` at the gateway `base`. */
async function aiCall(base: string, token: string): Promise<Answer> {
  const res = await fetch(`${base}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask('burst #standin words=3'), max_tokens: 16 }),
  });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

/** A 429 in the standard envelope, naming the student's AI layer and its wait within the window. */
function assertRateLimited(r: Answer) {
  assert.equal(r.status, 429);
  const error = r.body.error as Record<string, unknown>;
  assert.equal(error.type, 'rate_limit');
  assert.equal(error.code, 'RATE_LIMITED');
  assert.equal(error.retryable, true);
  assert.equal(typeof error.message, 'string');
  const { retry_after_seconds: seconds, ...layer } = error.details as Record<string, unknown>;
  assert.deepEqual(layer, { layer: 'route_ai_chat', limit });
  assert.ok(typeof seconds === 'number' && seconds >= 1 && seconds <= 60, `retry_after_seconds ${seconds}`);
  // Retry-After only for a wait the SDKs would sit through (8 s or less).
  assert.equal(r.headers.get('retry-after'), seconds <= 8 ? String(seconds) : null);
  assert.equal(r.headers.get('x-ratelimit-limit'), String(limit));
  assert.equal(r.headers.get('x-ratelimit-remaining'), '0');
  const metadata = r.body.metadata as Record<string, unknown>;
  assert.equal(typeof metadata.requestId, 'string');
  assert.equal(r.headers.get('x-request-id'), metadata.requestId);
}

/** Exactly `limit` answered, each with a remaining count of its own (limit−1 … 0), the rest refused. */
function assertExact(answers: Answer[], who: string) {
  const ok = answers.filter((r) => r.status === 200);
  const refused = answers.filter((r) => r.status !== 200);
  assert.equal(ok.length, limit, `${who}: ${ok.length} of ${answers.length} answered, the limit is ${limit}`);
  // Every answered call saw a count no other call saw: the counter moved once per call.
  assert.deepEqual(
    ok.map((r) => Number(r.headers.get('x-ratelimit-remaining'))).sort((a, b) => b - a),
    Array.from({ length: limit }, (_, i) => limit - 1 - i),
    `${who}: the answered calls' remaining counts`,
  );
  for (const r of refused) assertRateLimited(r);
}

Deno.test('a burst of 4× the per-student AI limit, all at once, is answered exactly the limit; two students never share a budget', async () => {
  const [a, b] = await Promise.all([student(), student()]);
  await withGateway(overrides(), async (base) => {
    await clearOfWindowEdge();
    // Both students' bursts interleave: 64 calls in flight together.
    const all = await Promise.all(
      Array.from({ length: 8 * limit }, (_, i) => aiCall(base, i % 2 === 0 ? a.token : b.token)),
    );
    assertExact(all.filter((_, i) => i % 2 === 0), 'student a');
    assertExact(all.filter((_, i) => i % 2 === 1), 'student b');
  });
  // A refused call never reached the provider or the ledger: each student has exactly `limit` calls, all charged.
  for (const s of [a, b]) {
    const calls = await callsOf(s.id);
    assert.equal(calls.length, limit);
    assert.ok(calls.every((c) => c.status === 'charged'), 'every answered call was charged');
  }
});

Deno.test('one student bursting at two gateway instances at once is answered exactly the limit in all', async () => {
  const s = await student();
  const env = overrides();
  const [one, two] = [spawnGateway(env), spawnGateway(env)];
  try {
    await Promise.all([one.ready(), two.ready()]);
    await clearOfWindowEdge();
    const all = await Promise.all(
      Array.from({ length: 4 * limit }, (_, i) => aiCall(i % 2 === 0 ? one.url : two.url, s.token)),
    );
    // Per-instance budgets would answer up to twice the limit.
    assertExact(all, 'two instances');
  } finally {
    await Promise.all([one.kill(), two.kill()]);
  }
  assert.equal((await callsOf(s.id)).length, limit);
});
