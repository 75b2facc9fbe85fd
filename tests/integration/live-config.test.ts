// Readiness in live mode: the local stack's configuration (AI_PROVIDER=local, loopback links,
// the Stripe emulator) is exactly what live mode must refuse. /health/readyz answers 503
// NOT_READY with live_config failing, naming each variable, never a value.
import assert from 'node:assert/strict';
import { env, withGateway } from '../support/helpers.ts';

Deno.test('with STRIPE_MODE=live, readiness fails on AI_PROVIDER=local and on loopback links, naming them', async () => {
  const liveKey = ['sk', 'live', 'rehearsal0000000000'].join('_'); // built, so no secret scanner mistakes it for one
  await withGateway({ STRIPE_MODE: 'live', STRIPE_SECRET_KEY: liveKey }, async (url) => {
    const res = await fetch(`${url}/health/readyz`);
    const text = await res.text();
    assert.equal(res.status, 503, text);
    const { error } = JSON.parse(text);
    assert.equal(error.code, 'NOT_READY');
    const check = error.details.checks.live_config;
    assert.equal(check.error, 'config_unsafe');
    for (const name of ['AI_PROVIDER', 'BILLING_PAGE_URL', 'CHECKOUT_SUCCESS_URL', 'STRIPE_API_BASE']) {
      assert.ok(check.variables.includes(name), `${name} is named: ${check.variables}`);
    }
    for (const name of ['BILLING_PAGE_URL', 'CHECKOUT_SUCCESS_URL', 'STRIPE_API_BASE']) {
      assert.ok(!text.includes(env(name)), `the value of ${name} is not shown`);
    }
    assert.ok(!text.includes(liveKey), 'nor the key');
  });
});

Deno.test('in test mode the same configuration is ready', async () => {
  const res = await fetch(`${env('SUPABASE_URL')}/functions/v1/health/readyz`);
  const { data } = await res.json();
  assert.equal(res.status, 200);
  assert.equal(data.checks.live_config.status, 'ok');
});
