// A token outlives its user and its role for up to an hour. Admin and money-moving routes
// check the user's current state in the database: a revoked admin gets 403 at once, and a
// deleted, soft-deleted or banned user gets 401, with nothing changed.
import assert from 'node:assert/strict';
import { api, env, fund, newAdmin, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';

type Json = Record<string, unknown>;
const codeOf = (r: { body: Json }) => (r.body.error as Json).code;
const post = (token: string, path: string, body: unknown) =>
  api(path, { token, body, headers: { 'idempotency-key': crypto.randomUUID() } });
/** Usage the product's server reports for the user `token` names (a user token is refused there). */
const report = (token: string, body: unknown) =>
  reportUsage('/credits/usage', { token, body, headers: { 'idempotency-key': crypto.randomUUID() } });

async function grantsTo(userId: string) {
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id = t.to_account_id where a.user_id = ${userId}`;
  return n;
}

Deno.test('an admin whose role was removed gets 403 at once on admin routes and grants', async () => {
  const adminId = await newAdmin();
  const token = await userToken(adminId, { admin: true });
  const student = await newUser();
  assert.equal((await api('/admin/ops', { token })).status, 200);
  await testDb`update auth.users set raw_app_meta_data = '{}' where id = ${adminId}`;

  const ops = await api('/admin/ops', { token });
  assert.equal(ops.status, 403);
  assert.equal(codeOf(ops), 'FORBIDDEN');
  const grant = await post(token, '/credits/grants', {
    user_id: student,
    amount: '100',
    reason: 'a test grant',
    kind: 'promo_grant',
  });
  assert.equal(grant.status, 403);
  assert.equal(await grantsTo(student), 0, 'nothing was granted');
});

Deno.test('a deleted admin gets 401 on admin routes, grants and provider creation', async () => {
  const adminId = await newAdmin();
  const token = await userToken(adminId, { admin: true });
  const student = await newUser();
  await testDb`delete from auth.users where id = ${adminId}`;

  for (
    const r of [
      await api('/admin/metrics', { token }),
      await post(token, '/credits/grants', {
        user_id: student,
        amount: '100',
        reason: 'a test grant',
        kind: 'promo_grant',
      }),
      await post(token, '/providers', { name: 'Gone Foundation', email: 'gone@example.com', country: 'US' }),
    ]
  ) {
    assert.equal(r.status, 401, r.text);
    assert.equal(codeOf(r), 'UNAUTHORIZED');
  }
  assert.equal(await grantsTo(student), 0);
  const [{ n }] = await testDb`select count(*)::int as n from billing.providers where owner_user_id = ${adminId}`;
  assert.equal(n, 0, 'no provider was created');
});

/** The /health routes for administrators. */
const healthAdminRoutes = [
  ['/health/alerts', 'GET'],
  ['/health/slo', 'GET'],
  ['/health/metrics', 'GET'],
  ['/health/deep', 'POST'],
] as const;

Deno.test('the /health admin routes refuse a revoked admin (403) and a deleted one (401); the metrics token still scrapes', async () => {
  const revoked = await newAdmin();
  const deleted = await newAdmin();
  const tokens = [await userToken(revoked, { admin: true }), await userToken(deleted, { admin: true })];
  assert.equal((await api('/health/alerts', { token: tokens[0] })).status, 200, 'an admin in good standing');
  await testDb`update auth.users set raw_app_meta_data = '{}' where id = ${revoked}`;
  await testDb`delete from auth.users where id = ${deleted}`;
  for (const [path, method] of healthAdminRoutes) {
    const [r403, r401] = [await api(path, { method, token: tokens[0] }), await api(path, { method, token: tokens[1] })];
    assert.deepEqual([r403.status, codeOf(r403)], [403, 'FORBIDDEN'], `${method} ${path}: ${r403.text}`);
    assert.deepEqual([r401.status, codeOf(r401)], [401, 'UNAUTHORIZED'], `${method} ${path}: ${r401.text}`);
  }
  const scraped = await api('/health/metrics', { headers: { authorization: `Bearer ${env('METRICS_TOKEN')}` } });
  assert.equal(scraped.status, 200, 'a Prometheus scrape needs no user');
});

Deno.test('a soft-deleted or banned user cannot move credits with a token issued before', async () => {
  for (const change of ['deleted_at = now()', "banned_until = now() + interval '1 day'"]) {
    const id = await newUser();
    await fund(id, '10');
    const token = await userToken(id);
    await testDb.unsafe(`update auth.users set ${change} where id = $1`, [id]);
    for (
      const r of [
        // Usage comes from the server, naming the user: SQL still refuses an inactive user
        // (USER_NOT_ACTIVE, answered 401 UNAUTHORIZED) whoever reports it.
        await report(token, { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 }),
        await post(token, '/credits/holds', { amount: '1' }),
        await post(token, '/jobs', { type: 'ledger_export', input: {} }),
      ]
    ) {
      assert.equal(r.status, 401, `${change}: ${r.text}`);
      assert.equal(codeOf(r), 'UNAUTHORIZED');
    }
    const [b] = await testDb`select balance::text, held::text from billing.accounts where user_id = ${id}`;
    assert.deepEqual({ ...b }, { balance: '10.000000000000000000', held: '0.000000000000000000' }, change);
  }
});

Deno.test('a ban that has ended lets the user spend again', async () => {
  const id = await newUser();
  await fund(id, '10');
  await testDb`update auth.users set banned_until = now() - interval '1 minute' where id = ${id}`;
  const r = await report(await userToken(id), { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 });
  assert.equal(r.status, 201, r.text);
});

Deno.test("every admin route, reads and writes, refuses a student's token that claims admin when the database does not (403); nothing moves to the student or their organisation", async () => {
  const id = await newUser();
  const student = await userToken(id);
  const org = await api('/orgs', { token: student, body: { name: 'Claimed Admin Study Group' } });
  assert.equal(org.status, 201, org.text);
  const orgId = (org.body.data as Json).id as string;
  assert.match(orgId, /^[0-9a-f-]{36}$/);
  const some = crypto.randomUUID();
  const routes: [string, string, unknown?][] = [
    ['GET', '/admin/catalog'],
    ['GET', '/admin/metrics'],
    ['GET', '/admin/margins'],
    ['GET', '/admin/ops'],
    ['GET', '/admin/codes'],
    ['POST', '/admin/codes', { kind: 'promo', credits: '1000', max_redemptions: 1 }],
    ['GET', '/admin/model-access'],
    ['GET', '/admin/server-keys'],
    ['POST', '/admin/server-keys', { name: 'mine' }],
    ['POST', `/admin/charges/${some}/void`, { reason: 'mine' }],
    ['GET', '/admin/corrections'],
    ['GET', '/admin/rate-cards'],
    ['GET', '/admin/dashboard'],
    ['GET', '/providers/reconciliation'],
    ['PUT', `/orgs/${orgId}/invoicing`, { approved: true }],
    ['POST', `/orgs/${orgId}/grants`, { amount: '1000', reason: 'mine' }],
    ['POST', '/checkout/refunds', { purchase_id: some, reason: 'mine' }],
    ['GET', '/health/slo'],
    ['GET', '/health/alerts'],
    ['GET', '/health/metrics'],
    ['PUT', `/credits/caps/users/${id}`, { period: 'day', amount: null }],
    ['POST', '/credits/grants', { user_id: id, amount: '1000', reason: 'mine', kind: 'promo_grant' }],
  ];
  for (const [method, path, body] of routes) {
    // A fresh token each time (the same unbacked claim), so the per-user rate limit never answers first.
    const claimed = await userToken(id, { admin: true });
    const r = await api(path, { method, token: claimed, body, headers: { 'idempotency-key': crypto.randomUUID() } });
    assert.equal(r.status, 403, `${method} ${path}: ${r.status} ${r.text.slice(0, 200)}`);
  }
  assert.equal(await grantsTo(id), 0);
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id = t.to_account_id where a.org_id = ${orgId}`;
  assert.equal(n, 0);
});
