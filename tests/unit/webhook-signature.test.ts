// The Stripe-Signature timestamp is read exactly as stripe-node reads it.
import assert from 'node:assert/strict';
import Stripe from 'stripe';
import { signedTimestamp } from '../../supabase/functions/stripe-webhook/signature.ts';

const stripe = new Stripe('sk_test_unit', { httpClient: Stripe.createFetchHttpClient() });
const secret = 'whsec_unit_test_secret';
const payload = '{"id":"evt_unit","object":"event"}';
const now = Math.floor(Date.now() / 1000);

Deno.test('a genuine header names the timestamp it was signed at, also when the header arrives twice', async () => {
  const header = await stripe.webhooks.generateTestHeaderStringAsync({ payload, secret, timestamp: now });
  assert.equal(signedTimestamp(header), now);
  assert.equal(signedTimestamp(`${header}, ${header}`), now);
});

Deno.test('the timestamp checked is the one the SDK verifies, and two different ones are refused', async () => {
  const future = now + 10_000;
  const signedFuture = await stripe.webhooks.generateTestHeaderStringAsync({ payload, secret, timestamp: future });
  const attack = `t=${now},${signedFuture}`;
  // The SDK verifies this header against the later time: checking the first t= let it through.
  const event = await stripe.webhooks.constructEventAsync(payload, attack, secret);
  assert.equal(event.id, 'evt_unit');
  assert.equal(signedTimestamp(attack), null);
  assert.equal(signedTimestamp(`t=${future},t=${now},v1=00`), null);
  assert.equal(signedTimestamp(`t=${now}, t=${now + 1},v1=00`), null);
});

Deno.test('a header without a usable timestamp names none', () => {
  for (const h of ['', 'v1=00', 't=,v1=00', 't=abc,v1=00', 't=-5,v1=00', 't', ' t=5,v1=00']) {
    assert.equal(signedTimestamp(h), null, JSON.stringify(h));
  }
});
