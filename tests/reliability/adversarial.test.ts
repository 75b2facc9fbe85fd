// Adversarial inputs, table-driven over every JSON route: wrong types, mass assignment, bad
// numbers (negative, zero, fractional, 1e308, NaN, 19+ fractional digits), 10 MB strings,
// control characters, SQL metacharacters, non-JSON. Each is a 4xx in the envelope and writes
// nothing. Then object-level authorization (another user's ids are 404) and tokens for users
// deleted since the token was issued.
import assert from 'node:assert/strict';
import { adminToken, env, functionsUrl, newUser, testDb, userToken } from '../support/helpers.ts';
import { newProvider } from '../support/providers.ts';
import { startCheckout } from '../support/purchases.ts';

const admin = await adminToken();
const service = env('SUPABASE_SERVICE_ROLE_KEY');

interface Route {
  path: string;
  valid: Record<string, unknown>;
  auth: 'user' | 'admin' | 'service' | 'owner';
  /** Fields whose value is checked against a pattern or range (not free text). */
  strict: string[];
  /** The body names the test's user as `user_id` (usage a trusted server reports for a user). */
  forUser?: true;
}

const provider = await newProvider();
const routes: Route[] = [
  {
    path: '/credits/usage',
    valid: { model: 'gpt-4o-mini', input_tokens: 10, output_tokens: 10 },
    // Reported by the product's server, naming the user (a user token is refused there).
    auth: 'service',
    forUser: true,
    strict: ['model', 'input_tokens', 'output_tokens'],
  },
  { path: '/credits/holds', valid: { amount: '1', ttl_seconds: 60 }, auth: 'user', strict: ['amount', 'ttl_seconds'] },
  {
    path: '/credits/grants',
    valid: { user_id: '00000000-0000-4000-8000-000000000001', amount: '1', reason: 'goodwill' },
    auth: 'admin',
    strict: ['user_id', 'amount'],
  },
  { path: '/checkout/sessions', valid: { package_id: 'mini' }, auth: 'user', strict: ['package_id'] },
  { path: '/jobs', valid: { type: 'ledger_export', input: {} }, auth: 'user', strict: ['type'] },
  {
    path: '/providers',
    valid: { name: 'Fund', email: 'fund@example.org', country: 'US' },
    auth: 'user',
    strict: ['email', 'country'],
  },
  {
    path: `/providers/${provider.id}/payments`,
    valid: { amount_cents: 5000, currency: 'usd', description: 'Award' },
    auth: 'owner',
    strict: ['amount_cents', 'currency'],
  },
  {
    path: '/credits/usage/batch',
    valid: {
      events: [{
        event_id: 'e1',
        user_id: '00000000-0000-4000-8000-000000000001',
        model: 'gpt-4o-mini',
        input_tokens: 1,
        output_tokens: 1,
        occurred_at: '2026-11-20T00:00:00Z',
      }],
    },
    auth: 'service',
    strict: ['events'],
  },
];

/** Bodies that must be refused, each with what it tries. Raw strings are sent as they are. */
function attacks(r: Route): [string, unknown | { raw: string }][] {
  const out: [string, unknown | { raw: string }][] = [
    ['an array', []],
    ['a string', 'x'],
    ['null', null],
    ['not JSON', { raw: '{"model": ' }],
    ['NaN', { raw: JSON.stringify(r.valid).replace(/:\s*("[^"]*"|\d+)/, ': NaN') }],
    ['mass assignment: user_id', { ...r.valid, user_id: crypto.randomUUID(), owner: true }],
    ['mass assignment: price', { ...r.valid, price: 0, price_cents: 1, balance: '1000000' }],
    ['a 10 MB string', { ...r.valid, [r.strict[0]]: 'x'.repeat(10 * 1024 * 1024) }],
  ];
  for (const f of r.strict) {
    for (
      const [what, v] of [
        ['negative', -1],
        ['zero', 0],
        ['fractional', 1.5],
        ['1e308', 1e308],
        ['19 fractional digits', '1.0000000000000000001'],
        ['a wrong type', { nested: true }],
        ['control characters', 'a\u0000b\u0007'],
        ['SQL metacharacters', "x'); drop table billing.transfers; --"],
        ['unicode tricks', 'ｇｐｔ\u202e4o'],
      ] as const
    ) {
      // A legitimately zero-or-positive integer field accepts 0; everything else must fail.
      if (what === 'zero' && ['input_tokens', 'output_tokens'].includes(f)) continue;
      out.push([`${f}: ${what}`, { ...r.valid, [f]: v }]);
    }
  }
  return out;
}

/**
 * What a user's requests have written. Idempotency keys are left out on purpose: a refusal
 * from SQL (e.g. UNKNOWN_MODEL) is stored under its key and replayed, as Stripe does.
 */
async function footprint(user: string) {
  const [f] = await testDb`select
    (select count(*) from billing.transfers t join billing.accounts a on a.id in (t.from_account_id, t.to_account_id)
      where a.user_id = ${user})::int as transfers,
    (select count(*) from billing.holds h join billing.accounts a on a.id = h.account_id where a.user_id = ${user})::int as holds,
    (select count(*) from billing.jobs where user_id = ${user})::int as jobs,
    (select count(*) from billing.purchases where user_id = ${user})::int as purchases,
    (select count(*) from billing.providers where owner_user_id = ${user})::int as providers,
    (select count(*) from billing.provider_payments where created_by = ${user})::int as payments`;
  return f;
}

for (const shape of routes) {
  Deno.test(`${shape.path}: every malformed body is a 4xx in the envelope and writes nothing`, async () => {
    const user = shape.auth === 'owner' ? provider.owner : await newUser();
    const route = shape.forUser ? { ...shape, valid: { ...shape.valid, user_id: user } } : shape;
    const token = route.auth === 'owner'
      ? provider.token
      : route.auth === 'admin'
      ? admin
      : route.auth === 'service'
      ? service
      : await userToken(user);
    const before = await footprint(user);
    for (const [what, body] of attacks(route)) {
      const raw = body && typeof body === 'object' && 'raw' in body
        ? (body as { raw: string }).raw
        : JSON.stringify(body);
      const res = await fetch(`${functionsUrl}${route.path}`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'idempotency-key': crypto.randomUUID(),
        },
        body: raw,
      });
      const text = await res.text();
      assert.ok(res.status >= 400 && res.status < 500, `${what}: ${res.status} ${text.slice(0, 200)}`);
      const envelope = JSON.parse(text);
      assert.equal(typeof envelope.error?.code, 'string', `${what}: the standard envelope`);
      assert.ok(!/drop table|stack|at file:/i.test(envelope.error.message), `${what}: nothing echoed or leaked`);
    }
    assert.deepEqual(await footprint(user), before, 'nothing written');
  });
}

Deno.test('free text keeps SQL metacharacters and unicode literally (parameters, never SQL)', async () => {
  const p = await newProvider();
  const description = "Robert'); drop table billing.provider_payments; -- ✓ naïve";
  const res = await fetch(`${functionsUrl}/providers/${p.id}/payments`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${p.token}`,
      'content-type': 'application/json',
      'idempotency-key': crypto.randomUUID(),
    },
    body: JSON.stringify({ amount_cents: 5000, currency: 'usd', description }),
  });
  assert.equal(res.status, 201);
  const { data } = await res.json();
  const [row] = await testDb`select description from billing.provider_payments where id = ${data.payment_id}`;
  assert.equal(row.description, description);
});

Deno.test("object-level authorization: another user's ids are 404 on every id-taking route", async () => {
  const owner = await newUser();
  const ownerToken = await userToken(owner);
  await testDb`select billing.grant_credits(${owner}, 100, 'adjustment', ${'adv-fund:' + owner})`;
  const hold = await (await fetch(`${functionsUrl}/credits/holds`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${ownerToken}`,
      'content-type': 'application/json',
      'idempotency-key': crypto.randomUUID(),
    },
    body: JSON.stringify({ amount: '5' }),
  })).json();
  const job = await (await fetch(`${functionsUrl}/jobs`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${ownerToken}`,
      'content-type': 'application/json',
      'idempotency-key': crypto.randomUUID(),
    },
    body: JSON.stringify({ type: 'ledger_export', input: {} }),
  })).json();
  const purchase = await startCheckout(ownerToken, 'mini');
  const stranger = await userToken(await newUser());
  const tries: [string, string][] = [
    ['POST', `/credits/holds/${hold.data.hold_id}/capture`],
    ['POST', `/credits/holds/${hold.data.hold_id}/release`],
    ['GET', `/jobs/${job.data.job_id}`],
    ['DELETE', `/jobs/${job.data.job_id}`],
    ['GET', `/jobs/${job.data.job_id}/result`],
    ['GET', `/checkout/sessions/${purchase.purchase_id}`],
    ['GET', `/checkout/sessions/${purchase.session_id}`],
  ];
  for (const [method, path] of tries) {
    const res = await fetch(`${functionsUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${stranger}`,
        'content-type': 'application/json',
        'idempotency-key': crypto.randomUUID(),
      },
      body: method === 'POST' ? '{}' : undefined,
    });
    const text = await res.text();
    assert.equal(res.status, 404, `${method} ${path}: ${text.slice(0, 120)}`);
    assert.ok(!text.includes(owner), 'nothing about the owner leaks');
  }
  const [h] = await testDb`select status from billing.holds where id = ${hold.data.hold_id}`;
  assert.equal(h.status, 'active', 'the stranger changed nothing');
});

Deno.test('a valid token for a deleted user is 401 on every writing route, never a 500', async () => {
  const gone = crypto.randomUUID();
  const ghost = await userToken(gone); // signed correctly, but no such user (any more)
  for (
    const [path, body, bearer] of [
      ['/jobs', { type: 'ledger_export', input: {} }, ghost],
      ['/checkout/sessions', { package_id: 'mini' }, ghost],
      // Usage is reported by the server, naming the user: a deleted user is refused all the same.
      ['/credits/usage', { user_id: gone, model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 1 }, service],
    ] as const
  ) {
    const res = await fetch(`${functionsUrl}${path}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${bearer}`,
        'content-type': 'application/json',
        'idempotency-key': crypto.randomUUID(),
      },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    assert.ok(res.status === 401 || res.status === 402, `${path}: ${res.status} ${text.slice(0, 150)}`);
  }
});
