// Attacking Stripe Tax as a student: a taxed gift refunded after its redemption, a taxed
// upgrade's proration, partial refunds then a dispute, and whether any of it counts tax as
// credits or as revenue. Taxed sessions open through a second gateway with the setting on.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, reportUsage, testDb, withGateway } from '../helpers.ts';
import { balanceOf, chargeOf, emulator, stripeApi } from '../purchases.ts';
import { chargeOfInvoice } from '../plans.ts';
import { redeem } from '../codes.ts';
import { post, student, taxOn } from '../tax.ts';

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
