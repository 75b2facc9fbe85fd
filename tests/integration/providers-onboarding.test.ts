// Providers: creation with a Connect Express account, onboarding links, status from
// account.updated (duplicated and out of order), the Connect webhook secret, access and flags.
import assert from 'node:assert/strict';
import { adminToken, api, env, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';
import { deliver, emulator, sign } from '../support/purchases.ts';
import { createPayment, newProvider } from '../support/providers.ts';

Deno.test('a provider gets an Express account; the same Idempotency-Key replays it, not a second account', async () => {
  const token = await userToken(await newUser());
  const key = crypto.randomUUID();
  const body = { name: 'Grace Hopper Awards', email: 'awards@example.org', country: 'US' };
  const [a, b] = await Promise.all(
    [1, 2].map(() => api('/providers', { token, headers: { 'idempotency-key': key }, body })),
  );
  const done = [a, b].filter((r) => r.status === 201);
  assert.ok(done.length >= 1, `${a.status} ${b.status}`);
  const again = await api('/providers', { token, headers: { 'idempotency-key': key }, body });
  assert.equal(again.status, 201);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  const p = again.body.data as Record<string, unknown>;
  assert.match(String(p.stripe_account_id), /^acct_/);
  assert.equal(p.status, 'onboarding');
  assert.equal(p.charges_enabled, false);
  assert.ok((p.requirements_due as string[]).length > 0);
  const [{ n }] = await testDb`select count(*)::int as n from billing.providers where request_key = ${key}`;
  assert.equal(n, 1);
});

Deno.test('onboarding: link → account.updated → ready; payments are refused (409) until then', async () => {
  const p = await newProvider(false);
  const link = await api(`/providers/${p.id}/onboarding-link`, { token: p.token, body: {} });
  assert.equal(link.status, 201);
  assert.match(String((link.body.data as { url: string }).url), new RegExp(`/_emulator/connect/onboard/${p.account}$`));

  const early = await createPayment(p, 5000);
  assert.equal(early.status, 409);
  assert.equal((early.body.error as { code: string }).code, 'PROVIDER_NOT_READY');
  const [{ n }] = await testDb`select count(*)::int as n from billing.provider_payments where provider_id = ${p.id}`;
  assert.equal(n, 0, 'a refused payment writes nothing');

  await emulator(`/_emulator/accounts/${p.account}/onboard`, { outcome: 'complete' });
  const got = await api(`/providers/${p.id}`, { token: p.token });
  const data = got.body.data as Record<string, unknown>;
  assert.equal(data.status, 'ready');
  assert.equal(data.charges_enabled, true);
  assert.equal(data.payouts_enabled, true);
  assert.deepEqual(data.requirements_due, []);
  assert.equal((await createPayment(p, 5000)).status, 201);
});

Deno.test("account.updated events duplicated and out of order converge on Stripe's current state", async () => {
  const p = await newProvider(false);
  const first = await emulator(`/_emulator/accounts/${p.account}/onboard`, { outcome: 'restricted', deliver: false });
  const second = await emulator(`/_emulator/accounts/${p.account}/onboard`, { outcome: 'complete', deliver: false });
  for (const e of [...second.events, ...first.events, ...second.events]) assert.equal((await deliver(e)).status, 200);
  const data = (await api(`/providers/${p.id}`, { token: p.token })).body.data as Record<string, unknown>;
  assert.equal(data.status, 'ready', 'the older event re-fetches the account and so cannot roll it back');
});

Deno.test('a Connect event signed with the platform secret is refused when a Connect secret is set', async () => {
  const p = await newProvider(false);
  const { events } = await emulator(`/_emulator/accounts/${p.account}/onboard`, {
    outcome: 'complete',
    deliver: false,
  });
  const [e] = events;
  const wrong = await sign(e.payload, env('STRIPE_WEBHOOK_SECRET').split(',')[0]);
  const refused = await deliver({ payload: e.payload, signature: wrong });
  assert.equal(refused.status, 400);
  assert.equal(refused.body.error.code, 'SIGNATURE_INVALID');
  assert.equal((await deliver(e)).status, 200);
});

/** A provider's routes its owner (or an admin now) reaches, with the body each takes. */
const providerRoutes = (id: string) =>
  [
    [`/providers/${id}`, undefined],
    [`/providers/${id}/payments`, undefined],
    [`/providers/${id}/payouts`, undefined],
    // A Connect onboarding link lets whoever opens it set the account's payout details.
    [`/providers/${id}/onboarding-link`, {}],
  ] as const;

Deno.test("another user's provider is a 404 on every route; an admin sees it", async () => {
  const p = await newProvider();
  const stranger = await userToken(await newUser());
  const admin = await adminToken();
  for (
    const [path, body] of [
      ...providerRoutes(p.id),
      [`/providers/${crypto.randomUUID()}`, undefined],
      ['/providers/not-a-uuid', undefined],
    ] as const
  ) {
    const r = await api(path, { token: stranger, body });
    assert.equal(r.status, 404, path);
    assert.equal((r.body.error as { code: string }).code, 'PROVIDER_NOT_FOUND');
    assert.ok(!r.text.includes(p.account), 'nothing about the provider leaks');
  }
  const paid = await api(`/providers/${p.id}/payments`, {
    token: stranger,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount_cents: 5000, currency: 'usd', description: 'x' },
  });
  assert.equal(paid.status, 404);
  assert.equal((await api(`/providers/${p.id}`, { token: admin })).status, 200);
});

Deno.test('bad input is a 400 in the envelope and creates nothing; owner_user_id is for admins only', async () => {
  const owner = await newUser();
  const token = await userToken(owner);
  for (
    const body of [
      { name: '', email: 'a@example.org', country: 'US' },
      { name: 'X', email: 'not-an-email', country: 'US' },
      { name: 'X', email: 'a@example.org', country: 'usa' },
      { name: 'X\u0000', email: 'a@example.org', country: 'US' },
      { name: 'X', email: 'a@example.org', country: 'US', stripe_account_id: 'acct_x' },
    ]
  ) {
    const r = await api('/providers', { token, headers: { 'idempotency-key': crypto.randomUUID() }, body });
    assert.equal(r.status, 400, JSON.stringify(body));
  }
  const forOther = await api('/providers', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { name: 'X', email: 'a@example.org', country: 'US', owner_user_id: await newUser() },
  });
  assert.equal(forOther.status, 403);
  const [{ n }] = await testDb`select count(*)::int as n from billing.providers where owner_user_id = ${owner}`;
  assert.equal(n, 0);

  const admin = await adminToken();
  const byAdmin = await api('/providers', {
    token: admin,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { name: 'X', email: 'a@example.org', country: 'US', owner_user_id: owner },
  });
  assert.equal(byAdmin.status, 201);
  assert.equal((byAdmin.body.data as { owner_user_id: string }).owner_user_id, owner);
});

Deno.test('with FEATURE_B2B_PROVIDER_PAYMENTS off, provider routes answer 503 and B2C checkout still works', async () => {
  const token = await userToken(await newUser());
  await withGateway({ FEATURE_B2B_PROVIDER_PAYMENTS: 'false' }, async (url) => {
    const res = await fetch(`${url}/providers/${crypto.randomUUID()}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const body = await res.json();
    assert.equal(res.status, 503);
    assert.equal(body.error.code, 'FEATURE_DISABLED');
    const packages = await fetch(`${url}/checkout/packages`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(packages.status, 200);
    await packages.body?.cancel();
  });
});

Deno.test("an admin demoted since their token was issued is a stranger to other users' providers", async () => {
  const p = await newProvider();
  const demoted = await adminToken();
  const id = JSON.parse(atob(demoted.split('.')[1].replaceAll('-', '+').replaceAll('_', '/'))).sub;
  assert.equal((await api(`/providers/${p.id}`, { token: demoted })).status, 200, 'an admin sees it');
  await testDb`update auth.users set raw_app_meta_data = '{}'::jsonb where id = ${id}`;
  for (const [path, body] of providerRoutes(p.id)) {
    const r = await api(path, { token: demoted, body });
    assert.equal(r.status, 404, `${path}: ${r.text}`);
    assert.ok(!r.text.includes(p.account), 'nothing about the provider leaks');
  }
  // Nor does the token's old claim create a provider for another user.
  const other = await newUser();
  const made = await api('/providers', {
    token: demoted,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { name: 'Not Theirs', email: 'x@example.org', country: 'US', owner_user_id: other },
  });
  assert.equal(made.status, 403, made.text);
});

Deno.test('an Idempotency-Key whose stored answer expired, sent with another provider: 409 IDEMPOTENCY_KEY_REUSED, never the old provider as if created', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const key = crypto.randomUUID();
  const body = { name: 'Lovelace Tutoring', email: 'ada@example.org', country: 'US' };
  const first = await api('/providers', { token, headers: { 'idempotency-key': key }, body });
  assert.equal(first.status, 201, first.text);
  const firstId = (first.body.data as Record<string, unknown>).provider_id;
  assert.match(String(firstId), /^[0-9a-f-]{36}$/);
  // A day later the stored answer is gone (its 24 hours passed); the provider is kept.
  const expire = () =>
    testDb`update billing.idempotency_keys set expires_at = now() - interval '1 second'
    where user_id = ${id} and action = 'providers.create' and key = ${key}`;
  await expire();
  const other = await api('/providers', {
    token,
    headers: { 'idempotency-key': key },
    body: { name: 'Babbage Bursaries', email: 'charles@example.org', country: 'GB' },
  });
  assert.notEqual(
    (other.body.data as Record<string, unknown> | undefined)?.provider_id,
    firstId,
    'answered with the old provider',
  );
  assert.equal(other.status, 409, other.text);
  assert.equal((other.body.error as { code: string }).code, 'IDEMPOTENCY_KEY_REUSED');
  await expire();
  const same = await api('/providers', { token, headers: { 'idempotency-key': key }, body });
  assert.equal(same.status, 201, same.text);
  assert.equal((same.body.data as Record<string, unknown>).provider_id, firstId);
  const [{ n }] = await testDb`select count(*)::int as n from billing.providers where owner_user_id = ${id}`;
  assert.equal(n, 1);
});
