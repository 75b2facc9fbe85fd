// A function deployed without a secret it needs still starts, and answers 503 CONFIG_MISSING
// naming the variables (never any value); /health/readyz says the same; functions that need
// nothing missing go on working.
import assert from 'node:assert/strict';
import { env, newUser, userToken, withGateway } from '../support/helpers.ts';

type Json = Record<string, unknown>;

async function call(url: string, path: string, init: RequestInit = {}) {
  const res = await fetch(`${url}${path}`, init);
  const text = await res.text();
  return { status: res.status, text, body: JSON.parse(text) as Json };
}

const blanked = { STRIPE_SECRET_KEY: '', NOTIFY_WEBHOOK_SECRET: '' };
const secretValues = [
  env('STRIPE_SECRET_KEY'),
  env('STRIPE_WEBHOOK_SECRET'),
  ...env('NOTIFY_WEBHOOK_SECRET').split(','),
];

function assertConfigMissing(r: { status: number; text: string; body: Json }, variable: string) {
  assert.equal(r.status, 503, r.text);
  const error = r.body.error as Json;
  assert.equal(error.code, 'CONFIG_MISSING');
  assert.equal(error.retryable, false);
  assert.ok((error.details as { variables: string[] }).variables.includes(variable), r.text);
  for (const v of secretValues) assert.ok(!r.text.includes(v), 'no secret value in the answer');
}

Deno.test('functions missing a secret start and answer 503 CONFIG_MISSING naming it; readyz agrees', async () => {
  const token = await userToken(await newUser());
  await withGateway(blanked, async (url) => {
    const json = { 'content-type': 'application/json' };
    assertConfigMissing(
      await call(url, '/stripe-webhook', {
        method: 'POST',
        headers: { ...json, 'stripe-signature': 't=1,v1=00' },
        body: '{}',
      }),
      'STRIPE_SECRET_KEY',
    );
    assertConfigMissing(
      await call(url, '/checkout/sessions', {
        method: 'POST',
        headers: { ...json, authorization: `Bearer ${token}`, 'idempotency-key': crypto.randomUUID() },
        body: JSON.stringify({ package_id: 'mini' }),
      }),
      'STRIPE_SECRET_KEY',
    );
    assertConfigMissing(
      await call(url, '/notify/send', {
        method: 'POST',
        headers: { ...json, 'x-signature': `t=${Math.floor(Date.now() / 1000)},v1=00` },
        body: '{}',
      }),
      'NOTIFY_WEBHOOK_SECRET',
    );

    const ready = await call(url, '/health/readyz');
    assert.equal(ready.status, 503);
    const stripeCheck = (ready.body.data ?? (ready.body.error as Json).details) as Json;
    assert.match(
      JSON.stringify(stripeCheck),
      /"stripe_config":\{"status":"failing"[^}]*"error":"config_missing","variables":\["STRIPE_SECRET_KEY"\]/,
    );

    const balance = await call(url, '/credits/balance', { headers: { authorization: `Bearer ${token}` } });
    assert.equal(balance.status, 200, 'a function that needs nothing missing still works');
  });
});
