// Start-up and feature-flag behaviour of the purchase functions, and Stripe outages.
import assert from 'node:assert/strict';
import { api, env, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';

Deno.test('with FEATURE_B2C_CREDITS off, checkout routes answer 503 FEATURE_DISABLED', async () => {
  const token = await userToken(await newUser());
  await withGateway({ FEATURE_B2C_CREDITS: 'false' }, async (url) => {
    const res = await fetch(`${url}/checkout/packages`, { headers: { authorization: `Bearer ${token}` } });
    const body = await res.json();
    assert.equal(res.status, 503);
    assert.equal(body.error.code, 'FEATURE_DISABLED');
  });
});

Deno.test('a Stripe key of the other mode: the function starts and answers 503 CONFIG_MISSING naming the variable, not the key', async () => {
  const token = await userToken(await newUser());
  await withGateway({ STRIPE_MODE: 'live' }, async (url) => {
    const res = await fetch(`${url}/checkout/sessions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'idempotency-key': crypto.randomUUID(),
        'content-type': 'application/json',
      },
      body: JSON.stringify({ package_id: 'mini' }),
    });
    const text = await res.text();
    assert.equal(res.status, 503);
    const error = JSON.parse(text).error;
    assert.equal(error.code, 'CONFIG_MISSING');
    assert.deepEqual(error.details.variables, ['STRIPE_SECRET_KEY']);
    assert.ok(!text.includes(env('STRIPE_SECRET_KEY')));
  });
});

Deno.test('Stripe down at checkout → 502 STRIPE_UNAVAILABLE (retryable); the same key later makes one session', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const key = crypto.randomUUID();
  await emulator('/_emulator/faults', { down: true });
  let failed;
  try {
    failed = await api('/checkout/sessions', {
      token,
      headers: { 'idempotency-key': key },
      body: { package_id: 'mini' },
    });
  } finally {
    await emulator('/_emulator/faults', { down: false });
  }
  assert.equal(failed.status, 502);
  assert.equal((failed.body.error as Record<string, unknown>).code, 'STRIPE_UNAVAILABLE');
  assert.equal((failed.body.error as Record<string, unknown>).retryable, true);
  const [pending] = await testDb`select status, stripe_session_id from billing.purchases where user_id = ${id}`;
  assert.deepEqual({ ...pending }, { status: 'pending', stripe_session_id: null });

  const retry = await api('/checkout/sessions', {
    token,
    headers: { 'idempotency-key': key },
    body: { package_id: 'mini' },
  });
  assert.equal(retry.status, 201);
  const [{ n, sessions }] = await testDb`select count(*)::int as n, count(stripe_session_id)::int as sessions
    from billing.purchases where user_id = ${id}`;
  assert.deepEqual({ n, sessions }, { n: 1, sessions: 1 });
});

Deno.test('a pending purchase that never got a session is expired by the pg_cron job, not left forever', async () => {
  const id = await newUser();
  await testDb`insert into billing.purchases (user_id, package_id, request_key, price_cents, currency, credits, bonus_credits, created_at,
      package_version)
    values (${id}, 'mini', 'orphan', 500, 'usd', 5000, 0, now() - interval '2 hours', 1)`;
  const [{ expired }] = await testDb`select billing.expire_stale_purchases() as expired`;
  assert.ok(expired >= 1);
  const [p] = await testDb`select status from billing.purchases where user_id = ${id}`;
  assert.equal(p.status, 'expired');
});
