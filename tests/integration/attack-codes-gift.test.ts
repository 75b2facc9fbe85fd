// Gifts attacked as a student would: with their own second account as the redeemer, parking the
// gift's credits in a hold before disputing the purchase, and reusing a gift's Idempotency-Key
// for an ordinary checkout.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env } from '../helpers.ts';
import { codeOf, dataOf } from '../money.ts';
import { chargeOf, emulator } from '../purchases.ts';
import { buyGift, redeem, student } from '../codes.ts';

const balance = async (
  token: string,
) => ((await api('/credits/balance', { token })).body.data as { balance: string; held: string; available: string });

Deno.test("a gift parked in its redeemer's hold is still reached by a lost dispute: the hold captures nothing", async () => {
  const buyer = await student();
  const alt = await student(); // the buyer's second account
  const g = await buyGift(buyer.token, 'mini'); // 5,000 credits
  assert.equal((await redeem(alt.token, g.code)).status, 200);
  const h = await api('/credits/holds', {
    token: alt.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {
      amount: '5000',
      ttl_seconds: 600,
    },
  });
  assert.equal(h.status, 201, h.text);
  await emulator(`/_emulator/charges/${await chargeOf(g.session_id)}/dispute`, { outcome: 'lost' });
  const c = await api(`/credits/holds/${dataOf(h).hold_id}/capture`, {
    token: alt.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount: '5000' },
  });
  assert.notEqual(c.status, 200, `the hold captured the disputed gift: ${c.text}`);
  assert.equal((await balance(alt.token)).balance, '0');
  assert.equal((await balance(buyer.token)).balance, '0', 'nothing was spent, so nothing is owed');
  await assertLedgerInvariants();
});

Deno.test('a gift redeemed by its own buyer and then refunded leaves nothing behind', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  const r = await redeem(buyer.token, g.code);
  assert.equal(r.status, 200, r.text);
  await emulator(`/_emulator/charges/${await chargeOf(g.session_id)}/refund`, { amount: 500 });
  assert.equal((await balance(buyer.token)).balance, '0');
  const again = await redeem((await student()).token, g.code);
  assert.equal(codeOf(again), 'CODE_NOT_REDEEMABLE', again.text);
  await assertLedgerInvariants(); // check_lots included
});

// begin_checkout does not compare `gift` when it finds the purchase a key made; the request's
// hash (the Idempotency-Key contract) refuses the other kind first.
Deno.test("a gift's Idempotency-Key reused for an ordinary checkout is 409 IDEMPOTENCY_KEY_REUSED", async () => {
  const s = await student();
  const k = { 'idempotency-key': crypto.randomUUID() };
  const gift = await api('/checkout/sessions', {
    token: s.token,
    headers: k,
    body: { package_id: 'mini', gift: true },
  });
  assert.equal(gift.status, 201, gift.text);
  const plain = await api('/checkout/sessions', { token: s.token, headers: k, body: { package_id: 'mini' } });
  assert.equal(plain.status, 409, `an ordinary checkout answered the gift's session: ${plain.text}`);
  assert.equal(codeOf(plain), 'IDEMPOTENCY_KEY_REUSED');
});

Deno.test("an ordinary checkout's Idempotency-Key reused for a gift is 409 IDEMPOTENCY_KEY_REUSED", async () => {
  const s = await student();
  const k = { 'idempotency-key': crypto.randomUUID() };
  const plain = await api('/checkout/sessions', { token: s.token, headers: k, body: { package_id: 'mini' } });
  assert.equal(plain.status, 201, plain.text);
  const gift = await api('/checkout/sessions', {
    token: s.token,
    headers: k,
    body: { package_id: 'mini', gift: true },
  });
  assert.equal(codeOf(gift), 'IDEMPOTENCY_KEY_REUSED', gift.text);
});

Deno.test('a gift whose checkout expired unpaid never shows a code', async () => {
  const s = await student();
  const r = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'mini', gift: true },
  });
  const co = dataOf(r) as { purchase_id: string; session_id: string };
  const exp = await fetch(`${env('STRIPE_API_BASE')}/_emulator/checkout/sessions/${co.session_id}/expire`, {
    method: 'POST',
    body: '{}',
  });
  await exp.body?.cancel();
  const st = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  const gift = (st.body.data as { gift: { code: string | null; status: string } }).gift;
  assert.equal(gift.code, null, st.text);
  assert.notEqual(gift.status, 'active', st.text);
});
