// Provider payments: destination charges with the platform's 3% fee (rounded half to even),
// webhooks in any order and any number of times, refunds with the fee refund, and payouts.
import assert from 'node:assert/strict';
import { adminToken, api, testDb } from '../support/helpers.ts';
import { deliver, emulator, stripeApi } from '../support/purchases.ts';
import {
  assertMoneyInvariants,
  createPayment,
  moneyOf,
  newProvider,
  paidPayment,
  type Payment,
} from '../support/providers.ts';

Deno.test('the fee is round-half-even(amount × 300 / 10,000), fixed at creation and sent to Stripe', async () => {
  const p = await newProvider();
  // 50¢ → 1.5 → 2; 51¢ → 1.53 → 2; 150¢ → 4.5 → 4; 250¢ → 7.5 → 8; 1,650¢ → 49.5 → 50;
  // $999,999.99 → 2,999,999.97 → 3,000,000.
  for (const [amount, fee] of [[50, 2], [51, 2], [150, 4], [250, 8], [1650, 50], [99_999_999, 3_000_000]]) {
    const r = await createPayment(p, amount);
    assert.equal(r.status, 201, r.text);
    const pay = r.body.data as Payment;
    assert.equal(pay.platform_fee_cents, fee, `fee of ${amount}¢`);
    assert.match(pay.url, /\/_emulator\/checkout\/cs_test_/);
  }
  // Below Stripe's minimum charge: refused here, with a clear error, before Stripe is asked.
  for (const amount of [1, 33, 0, -5, 12.5, 1e308]) {
    const r = await createPayment(p, amount);
    assert.equal(r.status, 400, `${amount}`);
    assert.equal((r.body.error as { code: string }).code, 'VALIDATION_FAILED');
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.provider_payments where provider_id = ${p.id}`;
  assert.equal(n, 6);
});

Deno.test('paid: the money ledger splits the amount between the provider and the platform fee, once', async () => {
  const p = await newProvider();
  const { pay, events, charge } = await paidPayment(p, 12_345, false);
  // Deliver everything twice, newest first: one posting, the same result.
  for (const e of [...events].reverse().concat(events)) assert.equal((await deliver(e)).status, 200);
  const fee = 370; // 12,345 × 0.03 = 370.35
  assert.equal(pay.platform_fee_cents, fee);
  assert.deepEqual(await moneyOf(p.id), { provider: 12_345 - fee, fees: fee, payouts: 0, transfers: 1 });

  const stripeCharge = await stripeApi(`/v1/charges/${charge}`);
  assert.equal(stripeCharge.application_fee_amount, fee);
  assert.equal((stripeCharge.transfer_data as { destination: string }).destination, p.account);

  const listed = await api(`/providers/${p.id}/payments`, { token: p.token });
  const [row] = (listed.body.data as { items: Record<string, unknown>[] }).items;
  assert.equal(row.status, 'paid');
  assert.equal(row.fee_collected_cents, fee);
  assert.equal(row.url, null, 'a paid payment no longer offers its checkout URL');
  const got = await api(`/providers/${p.id}`, { token: p.token });
  assert.deepEqual((got.body.data as { balances: unknown }).balances, [{
    currency: 'usd',
    amount_cents: 12_345 - fee,
  }]);
  await assertMoneyInvariants();
});

Deno.test('the same payment request retried (same key) makes one payment and one Checkout Session', async () => {
  const p = await newProvider();
  const key = crypto.randomUUID();
  const results = await Promise.all(Array.from({ length: 5 }, () => createPayment(p, 5_000, key)));
  const ok = results.filter((r) => r.status === 201);
  assert.ok(ok.length >= 1);
  for (const r of results) assert.ok([201, 409].includes(r.status), `${r.status} ${r.text}`);
  assert.equal(new Set(ok.map((r) => (r.body.data as Payment).session_id)).size, 1);
  const [{ n }] = await testDb`select count(*)::int as n from billing.provider_payments where provider_id = ${p.id}`;
  assert.equal(n, 1);
  const other = await createPayment(p, 6_000, key);
  assert.equal(other.status, 409, 'a reused key with another body is refused');
});

Deno.test('refund: part of a payment is refunded with the fee pro rata; the ledger follows Stripe', async () => {
  const p = await newProvider();
  const { pay, charge } = await paidPayment(p, 10_000);
  const admin = await adminToken();
  const refund = await api(`/providers/${p.id}/payments/${pay.payment_id}/refunds`, {
    token: admin,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount_cents: 4_000 },
  });
  assert.equal(refund.status, 202, refund.text);
  // Stripe refunds 40% of the 300¢ fee: 120¢ back to the payer from the platform, 3,880¢ from the provider.
  const fee = await stripeApi(`/v1/application_fees/${(await stripeApi(`/v1/charges/${charge}`)).application_fee}`);
  assert.equal(fee.amount_refunded, 120);
  assert.deepEqual(await moneyOf(p.id), { provider: 9_700 - 3_880, fees: 300 - 120, payouts: 0, transfers: 2 });
  const [row] = await testDb`select amount_refunded_cents::int as r, fee_refunded_cents::int as f
    from billing.provider_payments where id = ${pay.payment_id}`;
  assert.deepEqual({ ...row }, { r: 4_000, f: 120 });

  // The owner may not refund (admins only), and another refund of the rest empties the payment.
  const byOwner = await api(`/providers/${p.id}/payments/${pay.payment_id}/refunds`, {
    token: p.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {},
  });
  assert.equal(byOwner.status, 403);
  await emulator(`/_emulator/charges/${charge}/refund`, {});
  assert.deepEqual(await moneyOf(p.id), { provider: 0, fees: 0, payouts: 0, transfers: 3 });
  await assertMoneyInvariants();
});

Deno.test('payouts: paid leaves the provider balance, failed puts it back; both listed', async () => {
  const p = await newProvider();
  await paidPayment(p, 20_000); // provider keeps 19,400
  const paid = await emulator(`/_emulator/accounts/${p.account}/payouts`, {
    outcome: 'paid',
    amount: 15_000,
    deliver: false,
  });
  // payout.paid before payout.created, each twice: the same end state.
  for (const e of [...paid.events].reverse().concat(paid.events)) assert.equal((await deliver(e)).status, 200);
  assert.deepEqual(await moneyOf(p.id), { provider: 4_400, fees: 600, payouts: 15_000, transfers: 2 });

  await emulator(`/_emulator/accounts/${p.account}/payouts`, { outcome: 'failed', amount: 4_400 });
  const money = await moneyOf(p.id);
  assert.equal(money.provider, 4_400, 'a failed payout returns to the balance');
  assert.equal(money.payouts, 15_000);

  const listed = await api(`/providers/${p.id}/payouts`, { token: p.token });
  const payouts =
    (listed.body.data as { items: { status: string; amount_cents: number; failure_code: string | null }[] })
      .items;
  assert.deepEqual(payouts.map((x) => [x.status, x.amount_cents]).sort(), [['failed', 4_400], ['paid', 15_000]]);
  assert.equal(payouts.find((x) => x.status === 'failed')?.failure_code, 'account_closed');
  await assertMoneyInvariants();
});

Deno.test('an expired provider checkout ends expired and moves no money', async () => {
  const p = await newProvider();
  const r = await createPayment(p, 7_000);
  const pay = r.body.data as Payment;
  await emulator(`/_emulator/checkout/sessions/${pay.session_id}/expire`, {});
  const [row] = await testDb`select status from billing.provider_payments where id = ${pay.payment_id}`;
  assert.equal(row.status, 'expired');
  assert.equal((await moneyOf(p.id)).transfers, 0);
});
