// Stripe Tax end to end against the emulator (10% for every address). STRIPE_AUTOMATIC_TAX is
// read once when a function starts, so the taxed sessions are opened through a second gateway
// started with it on (withGateway); Stripe's webhooks still reach the stack's own gateway, which
// needs no setting to record what Stripe charged. Tax is never credits nor revenue: a taxed
// gift's refund takes back the redeemer's share, a taxed upgrade grants what its price bought.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  functionsUrl,
  reportUsage,
  student,
  testDb,
  withGateway,
} from '../support/helpers.ts';
import { balanceOf, chargeOf, emulator, stripeApi } from '../support/purchases.ts';
import { chargeOfInvoice, renew } from '../support/plans.ts';
import { redeem } from '../support/codes.ts';
import { post, taxOn } from '../support/tax.ts';

type Json = Record<string, unknown>;

/** Today's B2C money from GET /admin/metrics, for the USD column. */
async function usdToday(): Promise<Json> {
  const day = new Date().toISOString().slice(0, 10);
  const next = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const r = await api(`/admin/metrics?from=${day}&to=${next}`, { token: await adminToken() });
  assert.equal(r.status, 200, r.text);
  const rows = (r.body.data as { total: { by_currency: Json[] } }).total.by_currency;
  return (rows.find((x) => x.currency === 'usd')?.b2c_credits ?? {}) as Json;
}

const chargeOfSession = async (session: Json) =>
  String((await stripeApi(`/v1/payment_intents/${session.payment_intent}`)).latest_charge);

Deno.test('with automatic tax on, a package purchase credits the net package, keeps the tax, and a refund with tax reverses its share', async () => {
  const s = await student();
  const before = await usdToday();
  await withGateway(taxOn, async (url) => {
    const co = await post(url, '/checkout/sessions', s.token, { package_id: 'starter' });
    const session = await stripeApi(`/v1/checkout/sessions/${co.session_id}`);
    assert.deepEqual(session.automatic_tax, {
      enabled: true,
      liability: { type: 'self' },
      provider: 'stripe',
      status: 'complete',
    });
    assert.equal(session.billing_address_collection, 'required');
    assert.equal(session.amount_subtotal, 999);
    assert.equal((session.total_details as Json).amount_tax, 100);
    assert.equal(session.amount_total, 1099);
    await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });

    const paid = await stripeApi(`/v1/checkout/sessions/${co.session_id}`);
    assert.equal(
      (await stripeApi(`/v1/payment_intents/${paid.payment_intent}`)).amount,
      1099,
      'the card paid the total',
    );
    assert.equal((await balanceOf(s.token)).balance, '9990', 'the package, not a credit more for the tax');
    const [p] = await testDb`select status, price_cents, tax_cents from billing.purchases where id = ${
      String(co.purchase_id)
    }`;
    assert.deepEqual({ ...p }, { status: 'paid', price_cents: 999, tax_cents: 100 });
    const [lot] = await testDb`select cost_cents::int as cost from billing.lots where purchase_id = ${
      String(co.purchase_id)
    }`;
    assert.equal(lot.cost, 999, 'the cost basis is the net price');
    const [receipt] = await testDb`select payload from billing.notification_outbox where dedupe_key = ${
      'receipt:' + String(co.purchase_id)
    }`;
    assert.equal(receipt.payload.tax_cents, 100, 'the receipt shows the tax');
    const status = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
    assert.equal((status.body.data as Json).tax_cents, 100, 'the purchase status shows the tax');

    const after = await usdToday();
    assert.equal(Number(after.gmv_cents ?? 0) - Number(before.gmv_cents ?? 0), 999, 'gmv counts the price only');
    assert.equal(
      Number(after.tax_collected_cents ?? 0) - Number(before.tax_collected_cents ?? 0),
      100,
      'tax shows apart',
    );

    // $5.00 of the $10.99 charged: floor(9,990 × 500 / 1,099) = 4,545 credits back (not 5,000 as
    // if the refund were all price), and 45¢ of it is tax.
    await emulator(`/_emulator/charges/${await chargeOfSession(paid)}/refund`, { amount: 500 });
    assert.equal((await balanceOf(s.token)).balance, String(9990 - 4545));
    const refunded = await usdToday();
    assert.equal(
      Number(refunded.refunds_cents) - Number(after.refunds_cents ?? 0),
      455,
      'refunded revenue excludes tax',
    );
    assert.equal(Number(refunded.tax_returned_cents) - Number(after.tax_returned_cents ?? 0), 45);
    // The rest of the charge back: every credit, and no more.
    await emulator(`/_emulator/charges/${await chargeOfSession(paid)}/refund`, {});
    assert.equal((await balanceOf(s.token)).balance, '0');
  });
  await assertLedgerInvariants();
});

Deno.test('with automatic tax on, a plan subscription is taxed: its first invoice, renewal and upgrade grant the plan', async () => {
  const s = await student();
  await withGateway(taxOn, async (url) => {
    const plan = await post(url, '/checkout/subscriptions', s.token, { plan_id: 'basic_monthly' });
    const session = await stripeApi(`/v1/checkout/sessions/${plan.session_id}`);
    assert.equal((session.automatic_tax as Json).enabled, true);
    assert.equal(session.amount_total, 999 + 100);
    await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { outcome: 'succeeded' });
    const sub = await stripeApi(
      `/v1/subscriptions/${(await stripeApi(`/v1/checkout/sessions/${plan.session_id}`)).subscription}`,
    );
    assert.equal((sub.automatic_tax as Json).enabled, true, 'the subscription keeps automatic tax');
    const invoice = await stripeApi(`/v1/invoices/${sub.latest_invoice}`);
    assert.deepEqual([invoice.subtotal, invoice.total, invoice.amount_paid], [999, 1099, 1099]);
    assert.equal((invoice.total_taxes as Json[])[0].amount, 100);

    assert.equal((await balanceOf(s.token)).balance, '10000', "the plan's credits arrive");
    const [g] = await testDb`select amount_cents, tax_cents from billing.plan_grants where invoice_id = ${
      String(invoice.id)
    }`;
    assert.deepEqual({ ...g }, { amount_cents: 999, tax_cents: 100 });

    // The renewal is taxed too (the subscription kept automatic tax) and grants the next period.
    const { invoice: renewal } = await renew(String(sub.id));
    const renewed = await stripeApi(`/v1/invoices/${renewal}`);
    assert.deepEqual([renewed.status, renewed.amount_paid], ['paid', 1099]);
    const [r] = await testDb`select amount_cents, tax_cents, credits > 0 as granted from billing.plan_grants
      where invoice_id = ${String(renewal)}`;
    assert.deepEqual({ ...r }, { amount_cents: 999, tax_cents: 100, granted: true });

    // An upgrade's proration invoice: taxed, its grant's cost the amount before tax.
    await post(url, '/checkout/subscription/change', s.token, { plan_id: 'pro_monthly' });
    const [u] = await testDb`select invoice_id, amount_cents, tax_cents from billing.plan_grants
      where subscription_id = ${String(plan.subscription_id)} and billing_reason = 'subscription_update'`;
    const proration = await stripeApi(`/v1/invoices/${u.invoice_id}`);
    assert.ok(u.tax_cents > 0, 'the proration was taxed');
    assert.deepEqual([u.amount_cents, u.tax_cents], [
      proration.subtotal,
      Number(proration.total) - Number(proration.subtotal),
    ]);
  });
  await assertLedgerInvariants();
});

Deno.test('with automatic tax off, Checkout requests carry no automatic_tax and nothing is taxed', async () => {
  const s = await student();
  const co = await post(functionsUrl, '/checkout/sessions', s.token, {
    package_id: 'starter',
  });
  const session = await stripeApi(`/v1/checkout/sessions/${co.session_id}`);
  assert.equal((session.automatic_tax as Json).enabled, false);
  assert.equal(session.billing_address_collection, null);
  assert.deepEqual([session.amount_total, (session.total_details as Json).amount_tax], [999, 0]);
  const plan = await post(functionsUrl, '/checkout/subscriptions', s.token, {
    plan_id: 'basic_monthly',
  });
  const planSession = await stripeApi(`/v1/checkout/sessions/${plan.session_id}`);
  assert.equal((planSession.automatic_tax as Json).enabled, false);
  assert.equal(planSession.amount_total, 999);
});

const spend = (token: string, input: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: input, output_tokens: 0 },
  });

Deno.test('a taxed gift refunded in part after its redemption takes back its share from the redeemer, never more', async () => {
  const [buyer, alt] = [await student(), await student()];
  await withGateway(taxOn, async (url) => {
    const co = await post(url, '/checkout/sessions', buyer.token, { package_id: 'mini', gift: true });
    const session = await stripeApi(`/v1/checkout/sessions/${co.session_id}`);
    assert.equal(session.amount_total, 550);
    await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
    const status = await api(`/checkout/sessions/${co.purchase_id}`, { token: buyer.token });
    const gift = (status.body.data as { gift: { code: string } }).gift;
    assert.equal((await redeem(alt.token, gift.code)).status, 200);
    assert.equal((await balanceOf(alt.token)).balance, '5000', 'the gift is the package, not its tax');
    assert.equal((await spend(alt.token, 200_000)).status, 201);
    const spent = 5000 - Number((await balanceOf(alt.token)).balance);
    const charge = await chargeOf(String(co.session_id));
    // 55 of 550 cents back (a tenth, tax included): a tenth of the credits, 500.
    await emulator(`/_emulator/charges/${charge}/refund`, { amount: 55 });
    assert.equal(Number((await balanceOf(alt.token)).balance), 5000 - spent - 500);
    assert.equal((await balanceOf(buyer.token)).balance, '0');
    // The rest lost in a dispute: the redeemer keeps nothing; the buyer owes what was spent.
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
    assert.equal((await balanceOf(alt.token)).balance, '0');
    assert.equal(Number((await balanceOf(buyer.token)).balance), -spent);
    const [p] = await testDb`select amount_refunded_cents, tax_cents, trim_scale(credits_refund_reversed)::text as r
                             from billing.purchases where id = ${String(co.purchase_id)}`;
    assert.deepEqual([p.amount_refunded_cents, p.tax_cents, p.r], [55, 50, '500']);
  });
  await assertLedgerInvariants();
});

Deno.test("a taxed upgrade's proration grants the credits its price bought, never its tax", async () => {
  const s = await student();
  await withGateway(taxOn, async (url) => {
    const plan = await post(url, '/checkout/subscriptions', s.token, { plan_id: 'basic_monthly' });
    await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { outcome: 'succeeded' });
    await post(url, '/checkout/subscription/change', s.token, { plan_id: 'pro_monthly' });
    const [u] = await testDb`select invoice_id, amount_cents, tax_cents, trim_scale(credits)::text as credits
      from billing.plan_grants where subscription_id = ${String(plan.subscription_id)}
      and billing_reason = 'subscription_update'`;
    const proration = await stripeApi(`/v1/invoices/${u.invoice_id}`);
    assert.ok(u.tax_cents > 0, 'taxed');
    // (35,000 − 10,000) × subtotal ÷ (2,999 − 999), rounded down.
    const expected = Math.min(25_000, Math.floor(25_000 * Number(proration.subtotal) / 2000 * 1e6) / 1e6);
    assert.equal(Number(u.credits), expected);
    assert.equal(Number((await balanceOf(s.token)).balance), 10_000 + expected);
    // All of the proration refunded: every credit it granted back, and its tax returned.
    const charge = await chargeOfInvoice(String(u.invoice_id));
    await emulator(`/_emulator/charges/${charge}/refund`, {});
    assert.equal((await balanceOf(s.token)).balance, '10000');
    const [g] = await testDb`select amount_refunded_cents from billing.plan_grants where invoice_id = ${u.invoice_id}`;
    assert.equal(g.amount_refunded_cents, Number(proration.amount_paid));
  });
  await assertLedgerInvariants();
});
