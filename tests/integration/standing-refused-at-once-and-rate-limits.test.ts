// Server-Timing (off unless SERVER_TIMING=true; names and
// durations only) and the request path's promises: a user banned or deleted since their token was
// issued is refused at once on every route that moves credits (and every organisation action), rate
// limits exact under parallel requests (a refused request spends no layer's budget), nothing cached
// across users. Its attacks on the capture retries are in ai-gateway-settle-retry.test.ts.
import assert from 'node:assert/strict';
import { ask } from '../support/ai.ts';
import {
  adminToken,
  api,
  clearOfWindowEdge,
  counting,
  functionsUrl,
  key,
  newAdmin,
  student,
  testDb,
  userToken,
  withGateway,
} from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';
import { codeOf } from '../support/money.ts';
import { person, school, walletOf } from '../support/orgs.ts';

// ============================================================ banned or deleted since the token

/** Bans `userId` now (as the dashboard's "ban user" does): their token lives on for its hour. */
const ban = (userId: string) =>
  testDb`update auth.users set banned_until = now() + interval '1 day' where id = ${userId}`;

Deno.test('a banned user is refused at once on a money route despite the verified token (the control)', async () => {
  const s = await student('10');
  // The token is verified once and remembered (VerifiedTokens).
  const first = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1' } });
  assert.equal(first.status, 201, first.text);
  await ban(s.id);
  const after = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1' } });
  assert.equal(after.status, 401, after.text);
  assert.equal(codeOf(after), 'UNAUTHORIZED');
});

Deno.test("a banned school owner cannot move the school's wallet into allowances with the token they still hold", async () => {
  const owner = await person('owner');
  const pupil = await person('pupil'); // the owner's accomplice
  const org = await school(owner, [pupil], 'allowance', '100');
  // The owner's token is verified and remembered before the ban.
  assert.equal((await walletOf(owner.token, org)).balance, '100');
  await ban(owner.id);
  const r = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: pupil.id, amount: '100' },
  });
  // docs/api.md: "every route that moves credits also checks auth.users … banned … 401 at once".
  assert.equal(r.status, 401, `the banned owner moved the wallet: ${r.status} ${r.text}`);
  assert.equal(codeOf(r), 'UNAUTHORIZED');
});

Deno.test("a banned school owner cannot move the school's wallet into a sponsor code with the token they still hold", async () => {
  const owner = await person('owner');
  const pupil = await person('pupil');
  const org = await school(owner, [pupil], 'allowance', '100');
  assert.equal((await walletOf(owner.token, org)).balance, '100');
  await ban(owner.id);
  const r = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '100', user_id: pupil.id },
  });
  assert.equal(r.status, 401, `the banned owner moved the wallet into a code: ${r.status} ${r.text}`);
  assert.equal(codeOf(r), 'UNAUTHORIZED');
});

// ============================================================ Server-Timing

const functionNames = [
  'ai',
  'admin',
  'checkout',
  'credits',
  'health',
  'jobs',
  'notify',
  'orgs',
  'providers',
  'stripe-webhook',
];

/** Requests across every function, a student's: successes and refusals (401, 400, 402, 404, 409). */
async function sampleRequests(base: string, s: { id: string; token: string }) {
  const auth = { authorization: `Bearer ${s.token}` };
  const json = { ...auth, 'content-type': 'application/json' };
  const k = crypto.randomUUID();
  const reqs: [string, RequestInit][] = [
    ...functionNames.map((f): [string, RequestInit] => [`/${f}/no-such-route`, { headers: auth }]),
    ['/credits/balance', { headers: auth }],
    ['/credits/balance', { headers: { authorization: 'Bearer not.a.token' } }],
    ['/credits/balance', {}],
    ['/ai/v1/models', { headers: auth }],
    ['/jobs', { headers: auth }],
    ['/orgs', { headers: auth }],
    ['/health/healthz', {}],
    ['/admin/metrics', { headers: auth }],
    ['/credits/holds', { method: 'POST', headers: { ...json, 'idempotency-key': k }, body: '{"amount":"1"}' }],
    ['/credits/holds', { method: 'POST', headers: { ...json, 'idempotency-key': k }, body: '{"amount":"2"}' }],
    ['/credits/holds', { method: 'POST', headers: { ...json, ...key() }, body: '{"amount":"999999"}' }],
    ['/credits/holds', { method: 'POST', headers: { ...json, ...key() }, body: '{"amount":"-1"}' }],
    // Past AI_MAX_OUTPUT_TOKENS and not to be cut: refused (400).
    ['/ai/v1/chat/completions', {
      method: 'POST',
      headers: { ...json, 'x-ai-clamp': 'off' },
      body: JSON.stringify({ model: 'gpt-4o', messages: ask('hi'), max_tokens: 4096 * 100 }),
    }],
    ['/ai/v1/chat/completions', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ model: 'no-such-model', messages: ask('hi'), max_tokens: 8 }),
    }],
    ['/ai/v1/chat/completions', { method: 'POST', headers: json, body: '{"model":' }],
    ['/stripe-webhook', { method: 'POST', headers: { 'stripe-signature': 't=1,v1=00' }, body: '{}' }],
  ];
  const out: { path: string; status: number; code: string | undefined; timing: string | null; headers: string[] }[] =
    [];
  for (const [path, init] of reqs) {
    const res = await fetch(`${base}${path}`, init);
    const text = await res.text();
    let code: string | undefined;
    try {
      code = JSON.parse(text).error?.code;
    } catch { /* not JSON */ }
    out.push({
      path,
      status: res.status,
      code,
      timing: res.headers.get('server-timing'),
      headers: [...res.headers.keys()].filter((h) => !['server-timing', 'date', 'content-length'].includes(h)).sort(),
    });
  }
  return out;
}

Deno.test('Server-Timing is off by default on every function, and no request header or query turns it on', async () => {
  const s = await student('5');
  const auth = { authorization: `Bearer ${s.token}` };
  const asks: Record<string, string>[] = [
    { 'server-timing': 'on' },
    { 'x-server-timing': 'true' },
    { 'server_timing': 'true' },
    { 'timing-allow-origin': '*' },
  ];
  for (const f of functionNames) {
    for (const h of asks) {
      const res = await fetch(`${functionsUrl}/${f}/no-such-route?SERVER_TIMING=true&server_timing=true`, {
        headers: { ...auth, ...h },
      });
      await res.body?.cancel();
      assert.equal(res.headers.get('server-timing'), null, `${f} ${JSON.stringify(h)}`);
    }
  }
  for (const r of await sampleRequests(functionsUrl, s)) assert.equal(r.timing, null, r.path);
});

Deno.test('Server-Timing, when on, names only steps and durations (no ids, values or errors) and changes nothing else', async () => {
  const s = await student('5');
  const off = await sampleRequests(functionsUrl, s);
  let on: Awaited<ReturnType<typeof sampleRequests>> = [];
  await withGateway({ SERVER_TIMING: 'true' }, async (base) => {
    on = await sampleRequests(base, s);
  });
  const names = new Set(['auth', 'limit', 'body', 'count', 'begin', 'upstream', 'upstream_body', 'finish', 'sql']);
  for (const r of on) {
    assert.ok(r.timing, `${r.path}: sent`);
    const steps = r.timing.split(', ');
    assert.match(steps.at(-1)!, /^total;dur=\d+\.\d{2}$/, r.path);
    for (const step of steps.slice(0, -1)) {
      const m = /^([a-z_]+);dur=\d+\.\d{2}$/.exec(step);
      assert.ok(m && names.has(m[1]), `${r.path}: ${step}`);
    }
  }
  // The same requests answer the same (status, error code, headers) with it on as with it off.
  // (The repeated Idempotency-Key on the first hold is a second key per run: both runs see 201 then 409.)
  assert.deepEqual(
    on.map(({ path, status, code, headers }) => ({ path, status, code, headers })),
    off.map(({ path, status, code, headers }) => ({ path, status, code, headers })),
  );
});

// ============================================================ the request path's promises

Deno.test('a revoked server key is refused at once: a new report, the replay of an answered one, and a batch', async () => {
  const s = await student('10');
  const admin = await adminToken();
  const made = (await api('/admin/server-keys', { token: admin, body: { name: 'attack7 backend' } })).body.data as {
    id: string;
    secret: string;
  };
  const k = crypto.randomUUID();
  const report = (idem: string) =>
    api('/credits/usage', {
      token: made.secret,
      headers: { 'idempotency-key': idem },
      body: { user_id: s.id, model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
    });
  const batch = () =>
    api('/credits/usage/batch', {
      token: made.secret,
      body: {
        events: [{
          event_id: crypto.randomUUID(),
          user_id: s.id,
          occurred_at: new Date().toISOString(),
          model: 'gpt-4o',
          input_tokens: 50,
          output_tokens: 0,
        }],
      },
    });
  assert.equal((await report(k)).status, 201);
  const okBatch = await batch();
  assert.equal(okBatch.status, 200, okBatch.text);
  assert.equal((await api(`/admin/server-keys/${made.id}`, { method: 'DELETE', token: admin })).status, 200);
  for (const r of [await report(crypto.randomUUID()), await report(k), await batch()]) {
    assert.deepEqual([r.status, codeOf(r)], [401, 'UNAUTHORIZED'], r.text);
  }
  assert.deepEqual(await balanceOf(s.token), { balance: '8', held: '0', available: '8' });
});

Deno.test('a demoted admin is refused at once though the token (and its verification) lives on; tokens never cross users', async () => {
  const id = await newAdmin();
  const token = await userToken(id, { admin: true });
  assert.equal((await api('/admin/metrics', { token })).status, 200);
  await testDb`update auth.users set raw_app_meta_data = '{}'::jsonb where id = ${id}`;
  const demoted = await api('/admin/metrics', { token });
  assert.deepEqual([demoted.status, codeOf(demoted)], [403, 'FORBIDDEN'], demoted.text);
  // Two students read their own balances, in parallel and interleaved: each sees their own.
  const a = await student('3');
  const b = await student('7');
  const reads = await Promise.all(
    Array.from({ length: 20 }, (_, i) => (i % 2 ? b : a)).map((who) =>
      api('/credits/balance', { token: who.token }).then((r) => [who.id, (r.body.data as { balance: string }).balance])
    ),
  );
  for (const [who, balance] of reads) assert.equal(balance, who === a.id ? '3' : '7');
});

Deno.test('rate limits are exact under parallel requests: 30 at once against 10 a minute serve exactly 10', async () => {
  await clearOfWindowEdge();
  const s = await student('1');
  await withGateway({ ...counting, RATE_LIMIT_DEFAULT_PER_MIN: '10' }, async (base) => {
    const statuses = await Promise.all(
      Array.from(
        { length: 30 },
        () =>
          fetch(`${base}/credits/balance`, { headers: { authorization: `Bearer ${s.token}` } }).then(async (r) => {
            await r.body?.cancel();
            return r.status;
          }),
      ),
    );
    assert.deepEqual(
      { ok: statuses.filter((x) => x === 200).length, limited: statuses.filter((x) => x === 429).length },
      { ok: 10, limited: 30 - 10 },
    );
  });
});

Deno.test("one student's refused requests do not spend everyone's global budget", async () => {
  await clearOfWindowEdge();
  const attacker = await student('1');
  const victim = await student('1');
  // A global budget of g (40–99, so the counter is this run's own) a minute, 5 a minute per student
  // and route: the attacker sends g requests, is served 5; the rest are refused by their own layer.
  const global = String(40 + Math.floor(Math.random() * 60));
  await withGateway(
    { ...counting, RATE_LIMIT_DEFAULT_PER_MIN: '5', RATE_LIMIT_GLOBAL_PER_MIN: global },
    async (base) => {
      const g = Number(global);
      const get = (token: string) =>
        fetch(`${base}/credits/balance`, { headers: { authorization: `Bearer ${token}` } }).then(async (r) => {
          const body = await r.json();
          return { status: r.status, layer: body.error?.details?.layer as string | undefined };
        });
      const flood = await Promise.all(Array.from({ length: g }, () => get(attacker.token)));
      assert.equal(flood.filter((r) => r.status === 200).length, 5);
      // Served so far in this window: 5 of the global budget. The victim's first request is served.
      const v = await get(victim.token);
      assert.deepEqual(v, { status: 200, layer: undefined }, `the victim was refused by the ${v.layer} layer`);
    },
  );
});
