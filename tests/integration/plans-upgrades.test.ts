// Plan changes (POST /checkout/subscription/change): an upgrade charges its proration and grants
// the credits that price bought, once, however often or in whatever order it is asked or its
// webhooks arrive; a downgrade waits for the next period; a declined or past-due plan changes
// nothing. The emulator's test controls stand in for Stripe and the card network.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, reportUsage, spend, student, testDb } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { balanceOf, deliver, emulator, stripeApi } from '../support/purchases.ts';
import { change, renew, subscribeTo } from '../support/plans.ts';

type Invoice = { id: string; status: string; amount_paid: number; billing_reason: string };
async function invoicesOf(sub: string): Promise<Invoice[]> {
  const list = await stripeApi(`/v1/invoices?subscription=${sub}`) as { data: Invoice[] };
  return list.data.reverse(); // oldest first
}

async function grantsOf(subscriptionId: string) {
  return await testDb<{ invoice_id: string; billing_reason: string; credits: string; amount_cents: number }[]>`
    select invoice_id, billing_reason, trim_scale(credits)::text as credits, amount_cents
    from billing.plan_grants where subscription_id = ${subscriptionId} order by granted_at`;
}

Deno.test('an upgrade while the renewal is unpaid (past_due) is refused (409 PLAN_PAST_DUE): nothing charged, nothing granted', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // $9.99 → 10,000
  const failed = await renew(plan.stripe_subscription, 'failed'); // period 2's $9.99 not paid: past_due
  assert.ok(failed.invoice);
  const me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.status, 'past_due');
  // Were the upgrade allowed, Stripe would invoice only the difference (pro − basic) for period 2,
  // whose grant must not be pro's whole 35,000 (the renewal that "already got" basic's 10,000 was
  // never paid). It is refused; the SQL grants at most the difference anyway.
  const up = await change(s.token, 'pro_monthly');
  assert.equal(up.status, 409, up.text);
  assert.equal(codeOf(up), 'PLAN_PAST_DUE');
  const invoices = await invoicesOf(plan.stripe_subscription);
  const paidForPeriod2 = invoices.filter((i) => i.billing_reason !== 'subscription_create' && i.status === 'paid')
    .reduce((t, i) => t + i.amount_paid, 0);
  const grants = await grantsOf(plan.subscription_id);
  const creditsForPeriod2 = grants.filter((g) => g.billing_reason !== 'subscription_create')
    .reduce((t, g) => t + Number(g.credits), 0);
  await emulator(`/_emulator/invoices/${failed.invoice}/void`, {});
  await assertLedgerInvariants();
  assert.equal(paidForPeriod2, 0, invoices.map((i) => `${i.billing_reason} ${i.status} ${i.amount_paid}`).join(', '));
  assert.equal(creditsForPeriod2, 0, JSON.stringify(grants));
});

Deno.test('downgrading then upgrading back in one period charges nothing more and grants nothing more', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'pro_monthly'); // $29.99 → 35,000 for period 1
  assert.equal((await change(s.token, 'basic_monthly')).status, 202); // from the next period: no refund
  assert.equal((await change(s.token, 'pro_monthly')).status, 202); // back: Stripe prorates basic → pro
  const invoices = await invoicesOf(plan.stripe_subscription);
  const paid = invoices.filter((i) => i.status === 'paid').reduce((t, i) => t + i.amount_paid, 0);
  const grants = await grantsOf(plan.subscription_id);
  assert.equal(grants.reduce((t, g) => t + Number(g.credits), 0), 35000, JSON.stringify(grants));
  await assertLedgerInvariants();
  // Period 1 was paid for at pro's price already: a further ~$20.00 would be charged for nothing.
  assert.equal(
    paid,
    2999,
    `paid ${paid} cents for one period of pro: ${
      invoices.map((i) => `${i.billing_reason} ${i.amount_paid}`).join(', ')
    }`,
  );
});

Deno.test('twenty upgrades at once charge one proration and grant the difference once', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const rs = await Promise.all(Array.from({ length: 20 }, () => change(s.token, 'pro_monthly')));
  assert.ok(rs.every((r) => r.status === 202 || r.status === 200 || r.status === 409), rs.map((r) => r.status).join());
  const invoices = await invoicesOf(plan.stripe_subscription);
  assert.equal(invoices.filter((i) => i.billing_reason === 'subscription_update' && i.amount_paid > 0).length, 1);
  assert.equal((await balanceOf(s.token)).balance, '35000');
  await assertLedgerInvariants();
});

Deno.test('upgrade, downgrade, upgrade around a renewal grants each period its plan once', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  assert.equal((await change(s.token, 'pro_monthly')).status, 202); // period 1: +25,000
  assert.equal((await change(s.token, 'basic_monthly')).status, 202);
  assert.equal((await change(s.token, 'pro_monthly')).status, 202); // period 1 already had pro's 35,000
  await spend(s.token, 35000);
  await renew(plan.stripe_subscription); // period 2 on pro: 35,000, nothing left to roll
  assert.equal((await change(s.token, 'basic_monthly')).status, 202);
  assert.equal((await change(s.token, 'pro_monthly')).status, 202);
  const grants = await grantsOf(plan.subscription_id);
  const credits = grants.reduce((t, g) => t + Number(g.credits), 0);
  assert.equal(credits, 70000, JSON.stringify(grants));
  assert.equal((await balanceOf(s.token)).balance, '35000');
  await assertLedgerInvariants();
});

Deno.test('the upgrade credits spent, then the proration charge disputed and lost, leave the student owing them', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  assert.equal((await change(s.token, 'pro_monthly')).status, 202);
  await spend(s.token, 35000);
  const upgrade = (await invoicesOf(plan.stripe_subscription)).find((i) => i.billing_reason === 'subscription_update');
  assert.ok(upgrade);
  const payments = await stripeApi(`/v1/invoice_payments?invoice=${upgrade.id}`) as {
    data: { payment: { payment_intent: string } }[];
  };
  const pi = await stripeApi(`/v1/payment_intents/${payments.data[0].payment.payment_intent}`);
  await emulator(`/_emulator/charges/${pi.latest_charge}/dispute`, { outcome: 'open' });
  await emulator(`/_emulator/charges/${pi.latest_charge}/dispute`, { outcome: 'lost' });
  const b = await balanceOf(s.token);
  assert.equal(b.balance, '-25000', JSON.stringify(b));
  // In debt, the student cannot spend.
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
  });
  assert.equal(r.status, 402, r.text);
  await assertLedgerInvariants();
});

Deno.test('a plan change reusing an idempotency key with another plan is refused', async () => {
  const s = await student();
  await subscribeTo(s.token, 'basic_monthly');
  const h = key();
  assert.equal((await change(s.token, 'pro_monthly', h)).status, 202);
  const again = await change(s.token, 'basic_monthly', h);
  assert.equal(again.status, 409, again.text);
  assert.equal(codeOf(again), 'IDEMPOTENCY_KEY_REUSED');
  assert.equal((await balanceOf(s.token)).balance, '35000');
});

/**
 * A basic subscriber's upgrade to pro one day before the period ends, as the webhook would apply
 * it: the emulator's clock cannot reach the end of a period, so Stripe's answer is given to
 * billing.sync_subscription directly: the proration invoice for the last day, (29.99 − 9.99) ×
 * 1/30 = $0.67, paid. `price` is the charged line's price when the invoice names one. Answers the
 * upgrade's grant.
 */
async function lastDayUpgrade(price?: { id: string; unit_amount: number; currency: string; interval: string }) {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const [row] = await testDb<{ stripe_customer_id: string; start: number; end: number }[]>`
    select stripe_customer_id, extract(epoch from current_period_start)::bigint as start,
      extract(epoch from current_period_end)::bigint as end
    from billing.subscriptions where id = ${plan.subscription_id}`;
  const end = Number(row.end);
  const state = {
    kind: 'subscription',
    subscription: {
      id: plan.stripe_subscription,
      status: 'active',
      customer: row.stripe_customer_id,
      cancel_at_period_end: false,
      current_period_start: Number(row.start),
      current_period_end: end,
      metadata: { subscription_id: plan.subscription_id, user_id: s.id, plan_id: 'pro_monthly' },
    },
    invoice: {
      id: `in_lastday_${crypto.randomUUID().replaceAll('-', '')}`,
      status: 'paid',
      billing_reason: 'subscription_update',
      amount_paid: 67,
      amount_due: 67,
      currency: 'usd',
      attempted: true,
      period_start: end - 86400,
      period_end: end,
      plan_id: 'pro_monthly',
      ...(price ? { price } : {}),
    },
  };
  const [{ outcome }] = await testDb`select billing.sync_subscription(${testDb.json(state)}) as outcome`;
  assert.equal(outcome, 'plan_credits_granted');
  const grants = await grantsOf(plan.subscription_id);
  const upgrade = grants.find((g) => g.billing_reason === 'subscription_update');
  await assertLedgerInvariants();
  return upgrade;
}

Deno.test('an upgrade with one day left (Stripe prorates the charge to 1/30) grants the share of the difference it paid for', async () => {
  const upgrade = await lastDayUpgrade();
  // $0.67 buys one day of pro: 25,000 × 67 ÷ 2,000 = 837.5 credits (the cents paid over the full
  // price difference: Stripe rounds the day's 66.67 cents up), not 25,000 (= $20.00 of pro).
  assert.equal(upgrade?.credits, '837.5', `67 cents granted ${upgrade?.credits} credits`);
});

Deno.test('the one-day upgrade refunded in full takes back all 837.5 credits it granted, the half included', async () => {
  const upgrade = await lastDayUpgrade();
  assert.ok(upgrade);
  const [{ user_id }] = await testDb`select s.user_id from billing.plan_grants g
    join billing.subscriptions s on s.id = g.subscription_id where g.invoice_id = ${upgrade.invoice_id}`;
  const [before] =
    await testDb`select trim_scale(balance)::text as balance from billing.accounts where user_id = ${user_id}`;
  // Stripe reports the whole 67 cents refunded (the server's sync_plan_charge, state re-fetched).
  const state = { invoice_id: upgrade.invoice_id, charge_id: `ch_lastday_${crypto.randomUUID()}`, amount_refunded: 67 };
  await testDb`select billing.sync_plan_charge(${testDb.json(state)})`;
  const [after] =
    await testDb`select trim_scale(balance)::text as balance from billing.accounts where user_id = ${user_id}`;
  assert.equal(Number(before.balance) - Number(after.balance), 837.5, `${before.balance} → ${after.balance}`);
  await assertLedgerInvariants();
});

Deno.test('an upgrade invoice grants the plan its charged price belongs to, not the plan its metadata names', async () => {
  // The metadata says pro, but the line charged basic's price.
  const upgrade = await lastDayUpgrade({ id: 'price_basic', unit_amount: 999, currency: 'usd', interval: 'month' });
  // Basic to basic is no upgrade: the 67 cents are recorded, no credits come with them.
  assert.equal(upgrade?.credits, '0', `67 cents granted ${upgrade?.credits} credits`);
});

Deno.test('rollover after upgrades never exceeds the renewing plan rule, nor compounds over two renewals', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  assert.equal((await change(s.token, 'pro_monthly')).status, 202); // 35,000 unspent in period 1
  await renew(plan.stripe_subscription); // pro: floor(35,000 × 0.25) = 8,750 roll, + 35,000
  assert.equal((await balanceOf(s.token)).balance, '43750');
  await renew(plan.stripe_subscription); // still at most 8,750 in all, not 8,750 per lot
  assert.equal((await balanceOf(s.token)).balance, '43750');
  assert.equal((await change(s.token, 'basic_monthly')).status, 202);
  await renew(plan.stripe_subscription); // basic: up to 2,000 roll, + 10,000
  assert.equal((await balanceOf(s.token)).balance, '12000');
  await assertLedgerInvariants();
});

async function declinedUpgrade() {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const sub = await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`);
  const card = String(sub.default_payment_method);
  await emulator(`/_emulator/payment_methods/${card}/outcome`, { outcome: 'card_declined' });
  const up = await change(s.token, 'pro_monthly');
  await emulator(`/_emulator/payment_methods/${card}/outcome`, { outcome: 'succeeded' });
  return { s, plan, up };
}

Deno.test('a declined card on an upgrade answers 402 CARD_DECLINED, not a 5xx', async () => {
  const { s, up } = await declinedUpgrade();
  assert.equal((await balanceOf(s.token)).balance, '10000');
  // The student's own declined card is theirs to fix (402), not a server error.
  assert.equal(up.status, 402, up.text);
  assert.equal(codeOf(up), 'CARD_DECLINED');
});

Deno.test('(emulator fidelity) a declined upgrade leaves the plan as it was; the next renewal grants the old plan', async () => {
  const { s, plan } = await declinedUpgrade();
  const after = await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`) as {
    metadata: Record<string, string>;
  };
  await spend(s.token, 10000);
  await renew(plan.stripe_subscription); // basic's $9.99 charged for period 2
  const grants = await testDb`select billing_reason, trim_scale(credits)::text as credits from billing.plan_grants
    where subscription_id = ${plan.subscription_id} order by granted_at`;
  await assertLedgerInvariants();
  // Stripe keeps a declined pending update (metadata included, API 2026-05-27 on) off the
  // subscription; the emulator applies the metadata before declining, so the renewal invoice
  // says pro_monthly at basic's price: PAYMENT_AMOUNT_MISMATCH, the student paid and got nothing.
  assert.deepEqual(
    grants.map((g) => g.credits),
    ['10000', '10000'],
    `metadata after the decline: ${after.metadata.plan_id}`,
  );
  assert.equal(after.metadata.plan_id, 'basic_monthly', 'the declined upgrade changed the plan in the metadata');
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
