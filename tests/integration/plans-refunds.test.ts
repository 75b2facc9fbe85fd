// A plan invoice refunded or disputed reaches its credits wherever they are: its own lot, the
// lot they rolled into at the renewal, or (spent) the student's other credits and then debt.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, newUser, spend, testDb, userToken } from '../helpers.ts';
import { balanceOf, emulator, stripeApi } from '../purchases.ts';
import { chargeOfInvoice, renew, subscribeTo } from '../plans.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

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
  assert.deepEqual(await balanceOf(s.token), { balance: '10000', held: '10000', available: '0' });
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});
