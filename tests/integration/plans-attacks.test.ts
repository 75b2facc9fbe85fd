// Plans attacked with student tokens only: subscribing twice, changing what one does not have,
// switching plans around a renewal whose webhooks are late, the same invoice.paid 20 times at
// once, and cancelling then subscribing again.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, newUser, testDb, userToken } from '../helpers.ts';
import { codeOf } from '../money.ts';
import { balanceOf, deliver, emulator, type SignedEvent } from '../purchases.ts';
import { renew, startPlan, subscribeTo } from '../plans.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}
const key = () => ({ 'idempotency-key': crypto.randomUUID() });
const change = (token: string, plan_id: string) =>
  api('/checkout/subscription/change', { token, headers: key(), body: { plan_id } });

Deno.test('a student cannot hold two plans, nor change or cancel a plan they do not have', async () => {
  const s = await student();
  assert.equal(codeOf(await change(s.token, 'pro_monthly')), 'NO_PLAN');
  const cancel = await api('/checkout/subscription/cancel', { token: s.token, headers: key(), body: {} });
  assert.equal(codeOf(cancel), 'NO_PLAN');
  assert.equal(codeOf(await api('/checkout/portal', { token: s.token, body: {} })), 'NO_PLAN');
  const unknown = await api('/checkout/subscriptions', { token: s.token, headers: key(), body: { plan_id: 'gold' } });
  assert.equal(codeOf(unknown), 'PLAN_NOT_FOUND');
  await subscribeTo(s.token, 'basic_monthly');
  const again = await api('/checkout/subscriptions', {
    token: s.token,
    headers: key(),
    body: { plan_id: 'pro_monthly' },
  });
  assert.equal(again.status, 409);
  assert.equal(codeOf(again), 'PLAN_ALREADY_ACTIVE');
  assert.equal(codeOf(await change(s.token, 'pro_yearly')), 'PLAN_CHANGE_NOT_ALLOWED');
  assert.equal(codeOf(await change(s.token, 'gold')), 'PLAN_NOT_FOUND');
});

Deno.test('the same invoice.paid delivered 20 times at once grants once', async () => {
  const s = await student();
  const plan = await startPlan(s.token, 'pro_monthly');
  const paid = await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { deliver: false });
  const invoicePaid = paid.events.find((e) => e.type === 'invoice.paid') as SignedEvent;
  const results = await Promise.all(Array.from({ length: 20 }, () => deliver(invoicePaid)));
  assert.ok(results.every((r) => r.status === 200), JSON.stringify(results.map((r) => r.status)));
  assert.equal((await balanceOf(s.token)).balance, '35000');
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.plan_grants where subscription_id = ${plan.subscription_id}`;
  assert.equal(n, 1);
  await assertLedgerInvariants();
});

Deno.test('upgrading while the renewal webhooks are late pays and grants the new plan once for the new period', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const late = await renew(plan.stripe_subscription, 'paid', false); // Stripe renewed; we have not heard yet
  assert.equal((await change(s.token, 'pro_monthly')).status, 202);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  // Period 2: pro's 35,000 in all (the proration invoice first, the renewal adds nothing more).
  const grants = await testDb`select billing_reason, trim_scale(credits)::text as credits from billing.plan_grants
    where subscription_id = ${plan.subscription_id} order by granted_at`;
  const period2 = grants.filter((g) => g.billing_reason !== 'subscription_create');
  assert.equal(period2.reduce((t, g) => t + Number(g.credits), 0), 35000, JSON.stringify(grants));
  await assertLedgerInvariants();
});

Deno.test('cancel, then the period ends: no renewal, and a new plan may start; the old credits are not granted again', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await api('/checkout/subscription/cancel', { token: s.token, headers: key(), body: {} });
  // Renewing a plan set to cancel ends it (the emulator emits customer.subscription.deleted).
  assert.equal((await renew(plan.stripe_subscription)).invoice, null);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  const next = await subscribeTo(s.token, 'basic_monthly');
  assert.notEqual(next.subscription_id, plan.subscription_id);
  assert.equal((await balanceOf(s.token)).balance, '20000');
  const me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.subscription_id, next.subscription_id);
  await assertLedgerInvariants();
});
