// Races on plan credits driven with a student's token and the Stripe emulator only: two plans'
// first invoices delivered at once must still honour one plan.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, spend, student, testDb } from '../support/helpers.ts';
import { balanceOf, deliver, deliverWithRetries, emulator, type SignedEvent, stripeApi } from '../support/purchases.ts';
import { change, chargeOfInvoice, planLots, renew, startPlan, subscribeTo } from '../support/plans.ts';

Deno.test('two plans paid from two tabs, their webhooks delivered at once: one plan is honoured, the other refused', async () => {
  for (let i = 0; i < 10; i++) {
    const s = await student();
    const basic = await startPlan(s.token, 'basic_monthly');
    const a = await emulator(`/_emulator/checkout/sessions/${basic.session_id}/pay`, {
      outcome: 'succeeded',
      deliver: false,
    }) as { events: SignedEvent[] };
    const pro = await startPlan(s.token, 'pro_monthly'); // basic's session completed: it cannot be expired
    const b = await emulator(`/_emulator/checkout/sessions/${pro.session_id}/pay`, {
      outcome: 'succeeded',
      deliver: false,
    }) as { events: SignedEvent[] };
    // Stripe delivers each subscription's events in parallel with the other's.
    await Promise.all([...a.events, ...b.events].map((e) => deliver(e)));
    // Retries of anything unfinished, as Stripe would.
    for (const e of [...a.events, ...b.events]) await deliver(e);
    const rows = await testDb<{ id: string; refused: boolean; granted: string }[]>`
      select s.id::text, s.refused_at is not null as refused,
        trim_scale(coalesce((select sum(g.credits) from billing.plan_grants g where g.subscription_id = s.id), 0))::text
          as granted
      from billing.subscriptions s where s.user_id = ${s.id} order by s.created_at`;
    assert.equal(rows.filter((r) => !r.refused).length, 1, `run ${i}: one live plan: ${JSON.stringify(rows)}`);
    const bal = (await balanceOf(s.token)).balance;
    assert.ok(bal === '10000' || bal === '35000', `run ${i}: one plan's credits, got ${bal} ${JSON.stringify(rows)}`);
    await assertLedgerInvariants();
  }
});

/** Time passes: the period's open plan lots are `ago` past their expiry (the sweep has not run). */
async function periodEnds(userId: string, ago = '1 hour'): Promise<void> {
  await testDb`with l as (update billing.lots x set expires_at = now() - ${ago}::interval
                          from billing.plan_lots pl join billing.accounts a on true
                          where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${userId} and x.open
                          returning x.account_id, x.expires_at)
               update billing.accounts a set next_expiry = (select min(expires_at) from l) from l where a.id = l.account_id`;
}

Deno.test('the sweep, the renewal and a full refund of the ending period at once converge on the in-order balance', async () => {
  for (let i = 0; i < 4; i++) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; basic rolls up to 2,000
    await spend(s.token, 6000); // 4,000 left
    const late = await renew(plan.stripe_subscription, 'paid', false);
    const [g] = await testDb`select invoice_id from billing.plan_grants where subscription_id = ${plan.subscription_id}
      order by period_end limit 1`;
    await periodEnds(s.id);
    const refund = await emulator(`/_emulator/charges/${await chargeOfInvoice(g.invoice_id)}/refund`, {
      deliver: false,
    });
    await Promise.all([
      testDb`select billing.expire_lots(500)`,
      ...[...late.events, ...refund.events].map((e) => deliverWithRetries(e)),
      testDb`select billing.expire_lots(500)`,
    ]);
    await testDb`select billing.expire_lots(500)`;
    await assertLedgerInvariants();
    // Every order: the 10,000 of period 1 taken back (4,000 expired or rolled, forgiven or
    // reversed; 6,000 spent, owed), period 2's 10,000 pay the debt.
    assert.equal((await balanceOf(s.token)).balance, '4000', `run ${i}: ${JSON.stringify(await planLots(s.id))}`);
  }
});

Deno.test('a partial refund and a lost dispute of the same plan invoice at once take back the grant exactly once', async () => {
  for (let i = 0; i < 3; i++) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 for 999 cents
    const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
    await spend(s.token, 3000);
    const charge = await chargeOfInvoice(invoice);
    const refund = await emulator(`/_emulator/charges/${charge}/refund`, { amount: 500, deliver: false });
    const open = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false });
    const lost = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false });
    await Promise.all([...refund.events, ...open.events, ...lost.events].map((e) => deliverWithRetries(e)));
    for (const e of [...refund.events, ...open.events, ...lost.events]) await deliverWithRetries(e);
    await assertLedgerInvariants();
    // All 10,000 go back: 7,000 from the lot, 3,000 spent are owed.
    assert.equal((await balanceOf(s.token)).balance, '-3000', `run ${i}: ${JSON.stringify(await planLots(s.id))}`);
    const [r] =
      await testDb`select trim_scale(credits_reversed)::text as c from billing.plan_grants where invoice_id = ${invoice}`;
    assert.equal(r.c, '10000');
  }
});

Deno.test('an upgrade sent while the renewal webhooks are delivered grants period 2 the new plan once', async () => {
  for (let i = 0; i < 4; i++) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly');
    const late = await renew(plan.stripe_subscription, 'paid', false);
    const [up] = await Promise.all([
      change(s.token, 'pro_monthly'),
      ...late.events.map((e) => deliverWithRetries(e)),
    ]);
    assert.equal(up.status, 202, up.text);
    for (const e of late.events) await deliverWithRetries(e);
    const grants = await testDb<{ billing_reason: string; credits: string }[]>`
      select billing_reason, trim_scale(credits)::text as credits from billing.plan_grants
      where subscription_id = ${plan.subscription_id} order by granted_at`;
    const period2 = grants.filter((g) => g.billing_reason !== 'subscription_create');
    assert.equal(period2.reduce((t, g) => t + Number(g.credits), 0), 35000, `run ${i}: ${JSON.stringify(grants)}`);
    await assertLedgerInvariants();
  }
});

Deno.test('an upgrade sent while a failed renewal is not yet heard of, then the renewal paid, grants what was paid for', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const failed = await renew(plan.stripe_subscription, 'failed', false); // past_due at Stripe; not heard yet
  const up = await change(s.token, 'pro_monthly');
  for (const e of failed.events) await deliverWithRetries(e);
  const paid = failed.invoice ? await emulator(`/_emulator/invoices/${failed.invoice}/pay`, {}) : { events: [] };
  for (const e of paid.events) await deliverWithRetries(e);
  const grants = await testDb<{ billing_reason: string; credits: string; amount_cents: number }[]>`
    select billing_reason, trim_scale(credits)::text as credits, amount_cents from billing.plan_grants
    where subscription_id = ${plan.subscription_id} order by granted_at`;
  const period2 = grants.filter((g) => g.billing_reason !== 'subscription_create');
  const cents = period2.reduce((t, g) => t + g.amount_cents, 0);
  const credits = period2.reduce((t, g) => t + Number(g.credits), 0);
  // The route saw the plan active (Stripe's past_due not heard yet): the upgrade's 2,000 cents
  // buy the 25,000 difference, the renewal paid late its 999 the basic 10,000: pro's price, pro's credits.
  assert.equal(up.status, 202, up.text);
  assert.deepEqual([cents, credits], [2999, 35000], JSON.stringify(grants));
  assert.equal((await balanceOf(s.token)).balance, '37000'); // and period 1's 2,000 rolled
  await assertLedgerInvariants();
});
