// Adversarial webhook deliveries beyond the signature basics (purchases-webhooks covers
// garbled, stale, wrong-secret, missing and re-serialised): timestamps from the future,
// duplicated headers, huge bodies, signed non-JSON. Each refusal stores nothing.
import assert from 'node:assert/strict';
import { env, functionsUrl, newUser, testDb, userToken } from '../support/helpers.ts';
import { balanceOf, emulator, sign, type SignedEvent, startCheckout } from '../support/purchases.ts';

const secret = env('STRIPE_WEBHOOK_SECRET').split(',')[0];

async function post(body: string, signatures: string[]) {
  const headers = new Headers({ 'content-type': 'application/json' });
  for (const s of signatures) headers.append('stripe-signature', s);
  const res = await fetch(`${functionsUrl}/stripe-webhook`, { method: 'POST', headers, body });
  return { status: res.status, body: await res.json() };
}

async function completion() {
  const token = await userToken(await newUser());
  const co = await startCheckout(token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  return { token, e: events.find((x) => x.type === 'checkout.session.completed') as SignedEvent };
}

Deno.test('refused with 400 and nothing stored: future timestamps, a garbled duplicate header, signed non-JSON', async () => {
  const { token, e } = await completion();
  const now = Math.floor(Date.now() / 1000);
  const cases: [string, string, string[]][] = [
    ['a timestamp 330 s in the future', e.payload, [await sign(e.payload, secret, now + 330)]],
    ['a timestamp a day in the future', e.payload, [await sign(e.payload, secret, now + 86_400)]],
    ['two headers, both garbled', e.payload, [e.signature.replace(/v1=../, 'v1=00'), 't=1,v1=deadbeef']],
    ['a signed body that is not JSON', '{"id": "evt_x", ', [await sign('{"id": "evt_x", ', secret)]],
  ];
  for (const [what, body, sigs] of cases) {
    const r = await post(body, sigs);
    assert.equal(r.status, 400, what);
    assert.equal(typeof r.body.error.code, 'string', what);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.stripe_events where id = ${e.id}`;
  assert.equal(n, 0);
  assert.equal((await balanceOf(token)).balance, '0');
});

Deno.test('a huge body is 413 before any work; the genuine header sent twice is still one credit', async () => {
  const { token, e } = await completion();
  const huge = JSON.stringify({ ...JSON.parse(e.payload), padding: 'x'.repeat(600 * 1024) });
  const big = await post(huge, [await sign(huge, secret)]);
  assert.equal(big.status, 413);
  assert.equal(big.body.error.code, 'PAYLOAD_TOO_LARGE');
  for (let i = 0; i < 2; i++) assert.equal((await post(e.payload, [e.signature, e.signature])).status, 200);
  assert.equal((await balanceOf(token)).balance, '5000');
});
