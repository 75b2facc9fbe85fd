// A plan invoice refunded or disputed reaches its credits wherever they are: its own lot, the
// lot they rolled into at the renewal, or (spent) the student's other credits and then debt.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, spawnGateway, spend, student, testDb } from '../support/helpers.ts';
import { balanceOf, deliver, emulator, type SignedEvent, stripeApi } from '../support/purchases.ts';
import { chargeOfInvoice, renew, startPlan, subscribeTo } from '../support/plans.ts';

const firstInvoice = async (sub: string) => String((await stripeApi(`/v1/subscriptions/${sub}`)).latest_invoice);

Deno.test('a partial refund of a plan invoice takes back its share of the credits', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const charge = await chargeOfInvoice(await firstInvoice(plan.stripe_subscription));
  // $3.00 of $9.99: floor(10,000 × 300 / 999) = 3,003 credits.
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 300 });
  assert.equal((await balanceOf(s.token)).balance, '6997');
  await assertLedgerInvariants();
});

Deno.test('a refund after the renewal reaches the credits that rolled over; what expired is forgiven', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const invoice = await firstInvoice(plan.stripe_subscription);
  await spend(s.token, 6000); // 4,000 left: 2,000 roll over, 2,000 expire
  await renew(plan.stripe_subscription);
  assert.equal((await balanceOf(s.token)).balance, '12000');
  await emulator(`/_emulator/charges/${await chargeOfInvoice(invoice)}/refund`, {});
  // 10,000 to take back: 2,000 from the rolled-over lot, 2,000 expired (forgiven), 6,000 spent
  // (owed: from the new period's credits).
  assert.equal((await balanceOf(s.token)).balance, '4000');
  const [g] =
    await testDb`select trim_scale(expiry_forgiven)::text as f from billing.plan_grants where invoice_id = ${invoice}`;
  assert.equal(g.f, '2000');
  await assertLedgerInvariants();
});

Deno.test('a dispute freezes what is left of the plan credits; lost, it takes them back', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const charge = await chargeOfInvoice(await firstInvoice(plan.stripe_subscription));
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  // Frozen, not held: nothing of it is available (issue #77: a dispute holds nothing).
  assert.deepEqual(await balanceOf(s.token), { balance: '10000', held: '0', available: '0' });
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test('a renewal paid after a later period granted (stale) is refunded in full and grants nothing', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const failed = await renew(plan.stripe_subscription, 'failed'); // period 2 unpaid
  await renew(plan.stripe_subscription); // period 3 paid: rolls over 2,000 of period 1's 10,000
  assert.equal((await balanceOf(s.token)).balance, '12000');
  // Stripe's retry of period 2's invoice succeeds late: it paid for a period the student has left.
  await emulator(`/_emulator/invoices/${failed.invoice}/pay`, {});
  const charge = await stripeApi(`/v1/charges/${await chargeOfInvoice(String(failed.invoice))}`);
  assert.equal(charge.refunded, true, 'its money goes back');
  assert.equal(charge.amount_refunded, 999);
  assert.equal((await balanceOf(s.token)).balance, '12000', 'and it grants nothing');
  const [g] = await testDb`select credits::int, amount_refunded_cents as refunded from billing.plan_grants
                           where invoice_id = ${failed.invoice}`;
  assert.deepEqual({ ...g }, { credits: 0, refunded: 999 });
  // The sale and its refund both reach the revenue: they net out.
  const [m] = await testDb`select coalesce(sum(e.amount_cents), 0)::int as net from billing.money_entries e
    join billing.money_transfers t on t.id = e.transfer_id
    where t.idempotency_key in (${`plan-invoice:${failed.invoice}`}, ${`plan-refund:${failed.invoice}:999`})
      and e.account = 'b2c_revenue'`;
  assert.equal(m.net, 0);
  await assertLedgerInvariants();
});

Deno.test('a refund whose charge.refunded arrives before the invoice.paid is retried until it reaches the credits', async () => {
  const s = await student();
  const plan = await startPlan(s.token, 'basic_monthly');
  const paid = (await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { deliver: false })).events;
  const sub = String((await stripeApi(`/v1/checkout/sessions/${plan.session_id}`)).subscription);
  const charge = await chargeOfInvoice(await firstInvoice(sub));
  const [refunded] = (await emulator(`/_emulator/charges/${charge}/refund`, { deliver: false })).events
    .filter((e: SignedEvent) => e.type === 'charge.refunded');
  // Reordered: the refund first. Its invoice is one of our plans' but not applied yet: 5xx, so Stripe retries.
  const early = await deliver(refunded);
  assert.equal(early.status, 500, JSON.stringify(early.body));
  const [event] = await testDb`select status, last_error from billing.stripe_events where id = ${refunded.id}`;
  assert.deepEqual({ ...event }, { status: 'failed', last_error: 'PLAN_INVOICE_PENDING' });
  for (const e of paid) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  // Stripe's retry: now it takes the credits back.
  assert.equal((await deliver(refunded)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '0');
  await assertLedgerInvariants();
});

Deno.test("a crash before a stale invoice's refund leaves its event unfinished; Stripe's retry refunds it once", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const failed = await renew(plan.stripe_subscription, 'failed');
  await renew(plan.stripe_subscription);
  const late = (await emulator(`/_emulator/invoices/${failed.invoice}/pay`, { deliver: false })).events;
  const paid = late.find((e: SignedEvent) => e.type === 'invoice.paid')!;
  for (const e of late.filter((x: SignedEvent) => x !== paid)) assert.equal((await deliver(e)).status, 200);
  // The gateway dies after the grant row commits and before the refund reaches Stripe.
  const gw = spawnGateway({ FAILPOINTS: 'webhook.before_stale_refund' });
  try {
    await gw.ready();
    const died = await fetch(`${gw.url}/stripe-webhook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': paid.signature },
      body: paid.payload,
    }).then((r) => r.status, () => 0);
    assert.equal(died, 0, 'no answer: the process died');
  } finally {
    await gw.kill();
  }
  const charge = await chargeOfInvoice(String(failed.invoice));
  assert.equal((await stripeApi(`/v1/charges/${charge}`)).refunded, false, 'not refunded yet');
  const [event] = await testDb`select status, last_error from billing.stripe_events where id = ${paid.id}`;
  assert.deepEqual({ ...event }, { status: 'failed', last_error: 'PLAN_REFUND_PENDING' }, 'so Stripe retries it');
  // Stripe's retry: the refund, once, and the event is done.
  const retry = await deliver(paid);
  assert.equal(retry.status, 200, JSON.stringify(retry.body));
  assert.equal((await stripeApi(`/v1/charges/${charge}`)).amount_refunded, 999);
  const [done] = await testDb`select status from billing.stripe_events where id = ${paid.id}`;
  assert.equal(done.status, 'processed');
  assert.equal((await deliver(paid)).body.data.duplicate, true);
  assert.equal((await balanceOf(s.token)).balance, '12000');
  await assertLedgerInvariants();
});
