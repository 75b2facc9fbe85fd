// Plan rollover: at a renewal, what was left of the period at its end rolls up to the plan's cap
// into a new lot and the rest expires, whether the minute sweep (run here as pg_cron runs it) or
// the renewal comes first, however late the renewal is paid within the grace window, and beside
// debt, holds, parallel spending, refunds, disputes, voids, replays and the reports.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, reportUsage, spend, student, testDb } from '../support/helpers.ts';
import { dataOf, spendWith, sweep, voidCharge } from '../support/money.ts';
import { balanceOf, buy, chargeOf, deliver, deliverWithRetries, emulator, stripeApi } from '../support/purchases.ts';
import { breakage, chargeOfInvoice, planLots, renew, subscribeTo } from '../support/plans.ts';

/** Time passes: the period's open plan lots are `ago` past their expiry (the sweep has not run). */
async function periodEnds(userId: string, ago = '1 hour'): Promise<void> {
  await testDb`with l as (update billing.lots x set expires_at = now() - ${ago}::interval
                          from billing.plan_lots pl join billing.accounts a on true
                          where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${userId} and x.open
                          returning x.account_id, x.expires_at)
               update billing.accounts a set next_expiry = (select min(expires_at) from l) from l where a.id = l.account_id`;
}

/** Time passes, then the minute sweep runs (as pg_cron does). */
async function periodEndsAndSweeps(userId: string, ago = '1 hour'): Promise<void> {
  await periodEnds(userId, ago);
  await testDb`select billing.expire_lots(500)`;
}

// Credits brought back from breakage to pay a debt count against the rollover cap: the period's
// expired lots together (the grant, each rollover lot, each upgrade) pay at most one cap of debt,
// so a refunded package's spent credits are never forgiven out of breakage beyond the plan's rule.
Deno.test('a rollover that pays a debt counts what paid it against the cap', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; basic rolls up to 2,000
  await renew(plan.stripe_subscription); // period 2: 2,000 rolled (its own lot) + 10,000
  const mini = await buy(s.token, 'mini'); // 5,000 package credits, spent after the plan's
  const late = await renew(plan.stripe_subscription, 'paid', false); // period 3 charged, webhooks late
  await periodEndsAndSweeps(s.id); // period 2's two plan lots (12,000) expire
  assert.equal(await breakage(s.id), '20000'); // period 1's 8,000 over the cap, then period 2's 12,000
  await spend(s.token, 5000);
  await emulator(`/_emulator/charges/${await chargeOf(mini.session_id)}/refund`, {}); // 5,000 spent: owed
  assert.equal((await balanceOf(s.token)).balance, '-5000');
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  // 2,000 roll back from breakage and pay 2,000 of the debt; period 3's 10,000 pay the other 3,000.
  assert.equal((await balanceOf(s.token)).balance, '7000', JSON.stringify(await planLots(s.id)));
  assert.equal(await breakage(s.id), '18000', 'only the cap comes back from breakage');
});

/** A lot's expiry moved into the past by `ago` (days after its period ended), as time would. */
async function backdateBy(lot: string, ago: string): Promise<void> {
  await testDb`with l as (update billing.lots set expires_at = now() - ${ago}::interval where id = ${lot}
                          returning account_id, expires_at)
               update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
}

/** A student with basic's 10,000 of period 1, 4,000 of them left; period 2 charged, its webhooks withheld. */
async function fourThousandLeftAndLateRenewal() {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  const late = await renew(plan.stripe_subscription, 'paid', false);
  return { s, plan, late };
}

Deno.test('the renewal delivered while the sweep runs rolls the cap once, whichever commits first', async () => {
  for (let i = 0; i < 4; i++) {
    const { s, late } = await fourThousandLeftAndLateRenewal();
    await periodEnds(s.id);
    await Promise.all([
      testDb`select billing.expire_lots(500)`,
      ...late.events.map((e) => deliver(e)),
      testDb`select billing.expire_lots(500)`,
    ]);
    await testDb`select billing.expire_lots(500)`;
    await assertLedgerInvariants();
    assert.equal((await balanceOf(s.token)).balance, '12000', `run ${i}: ${JSON.stringify(await planLots(s.id))}`);
    assert.equal(await breakage(s.id), '2000', `run ${i}`);
  }
});

Deno.test('twenty spends at once with a late renewal after the period end never spend more than was left plus the new period', async () => {
  const { s, late } = await fourThousandLeftAndLateRenewal();
  await periodEnds(s.id);
  const spends = Array.from({ length: 20 }, () =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 700 * 50, output_tokens: 0 },
    }));
  const [results] = await Promise.all([Promise.all(spends), ...late.events.map((e) => deliver(e))]);
  await testDb`select billing.expire_lots(500)`;
  await assertLedgerInvariants();
  const ok = results.filter((r) => r.status === 201).length;
  assert.ok(results.every((r) => r.status === 201 || r.status === 402), results.map((r) => r.status).join(','));
  // Period 1's 4,000 left are past their end: 2,000 roll, 2,000 expire; period 2 brings 10,000.
  assert.equal(Number((await balanceOf(s.token)).balance) + ok * 700, 12000, `${ok} spends of 700 went through`);
  assert.equal(await breakage(s.id), '2000');
});

Deno.test('credits held at the period end roll as what was left: sweep first or renewal first, nothing is created', async () => {
  for (const sweepFirst of [true, false]) {
    const { s, late } = await fourThousandLeftAndLateRenewal();
    const h = await api('/credits/holds', {
      token: s.token,
      headers: key(),
      body: { amount: '3000', ttl_seconds: 3600 },
    });
    assert.equal(h.status, 201, h.text);
    const hold = (h.body.data as { hold_id: string }).hold_id;
    if (sweepFirst) await periodEndsAndSweeps(s.id);
    else await periodEnds(s.id);
    for (const e of late.events) assert.equal((await deliver(e)).status, 200);
    await testDb`select billing.expire_lots(500)`;
    const c = await api(`/credits/holds/${hold}/capture`, { token: s.token, headers: key(), body: { amount: '3000' } });
    await testDb`select billing.expire_lots(500)`;
    await assertLedgerInvariants();
    const [{ captured }] = await testDb`select coalesce(sum(t.amount), 0)::int as captured from billing.transfers t
      where t.hold_id = ${hold} and t.kind = 'hold_capture'`;
    // What was left at the end (4,000) rolls up to the cap (2,000); the rest expires, held or not.
    assert.equal(
      Number((await balanceOf(s.token)).balance) + captured,
      12000,
      `sweep first: ${sweepFirst}, capture ${c.status} ${captured}: ${JSON.stringify(await planLots(s.id))}`,
    );
  }
});

Deno.test('cancelling while the renewal webhooks are late: the paid period is granted once with its rollover, then the plan ends', async () => {
  const { s, plan, late } = await fourThousandLeftAndLateRenewal();
  const cancel = await api('/checkout/subscription/cancel', { token: s.token, headers: key(), body: {} });
  assert.equal(cancel.status, 202, cancel.text);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '12000');
  const end = await renew(plan.stripe_subscription); // the period ends: deleted, no invoice
  assert.equal(end.invoice, null);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '12000');
});

Deno.test('reports count a rollover as no new money: not granted, and what comes back from breakage is breakage given back', async () => {
  const { s, late } = await fourThousandLeftAndLateRenewal();
  await periodEndsAndSweeps(s.id);
  const [{ t0 }] = await testDb`select clock_timestamp() as t0`;
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  const [{ m, p }] = await testDb`select billing.revenue_metrics_live(${t0}, now() + interval '1 second') as m,
    billing.plan_metrics(${t0}, now() + interval '1 second') as p`;
  const usd = (m.credit_lots as { currency: string; paid_granted_cents: number; breakage_revenue_cents: number }[])
    .find((x) => x.currency === 'usd');
  assert.equal(usd?.paid_granted_cents, 999, 'only period 2 is new money');
  assert.equal(usd?.breakage_revenue_cents, -200, '2,000 of the 4,000 expired (399.6 cents) come back');
  assert.equal(p.credits_granted, '10000');
  assert.equal(p.credits_rolled_over, '2000');
  assert.equal(p.credits_expired, '-2000');
  const [lot] =
    await testDb`select trim_scale(l.cost_cents)::text as cost, l.priority, l.category, l.expires_at = s.current_period_end as at_end
    from billing.lots l join billing.subscriptions s on s.user_id = ${s.id}
    where l.moved_from is not null and l.account_id = (select id from billing.accounts where user_id = ${s.id})`;
  assert.deepEqual(lot, { cost: '199.8', priority: 5, category: 'paid', at_end: true });
  await assertLedgerInvariants();
});

Deno.test('a period disputed across its renewal rolls nothing: its frozen credits expire at its end; lost, what was spent is owed', async () => {
  for (const outcome of ['won', 'lost'] as const) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly');
    const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
    await spend(s.token, 6000);
    const late = await renew(plan.stripe_subscription, 'paid', false);
    const charge = await chargeOfInvoice(invoice);
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }); // 4,000 frozen
    await periodEndsAndSweeps(s.id); // a frozen lot expires when due like any lot
    for (const e of late.events) assert.equal((await deliver(e)).status, 200);
    assert.equal((await balanceOf(s.token)).balance, '10000', 'the frozen 4,000 did not roll: they expired');
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome });
    await testDb`select billing.expire_lots(500)`;
    await assertLedgerInvariants();
    // Won: nothing more. Lost: the 4,000 that expired are forgiven, the 6,000 spent are owed.
    assert.equal((await balanceOf(s.token)).balance, outcome === 'won' ? '10000' : '4000', outcome);
  }
});

Deno.test("a period's renewal webhooks arriving after the next period's grant nothing and roll nothing", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  const period2 = await renew(plan.stripe_subscription, 'paid', false);
  await periodEndsAndSweeps(s.id, '32 days'); // period 1 ended a month ago: past the grace window
  const period3 = await renew(plan.stripe_subscription, 'paid', false);
  for (const e of period3.events) assert.equal((await deliver(e)).status, 200);
  for (const e of period2.events) assert.equal((await deliver(e)).status, 200);
  for (const e of period3.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '10000', JSON.stringify(await planLots(s.id)));
  assert.equal(await breakage(s.id), '4000');
});

Deno.test('a second renewal invoice for the same period (voided and reissued, paid after the sweep) rolls nothing again', async () => {
  const { s, late } = await fourThousandLeftAndLateRenewal();
  await periodEndsAndSweeps(s.id);
  for (const e of late.events) assert.equal((await deliver(e)).status, 200); // 2,000 back from breakage, rolled
  await spend(s.token, 12000);
  const [sub] = await testDb`select s.*, extract(epoch from s.current_period_start)::bigint as ps,
    extract(epoch from s.current_period_end)::bigint as pe from billing.subscriptions s where s.user_id = ${s.id}`;
  // Stripe's state for a reissued invoice of the same period (the emulator cannot reissue one).
  const state = {
    subscription: {
      id: sub.stripe_subscription_id,
      status: 'active',
      customer: sub.stripe_customer_id,
      cancel_at_period_end: false,
      current_period_start: Number(sub.ps),
      current_period_end: Number(sub.pe),
      metadata: { subscription_id: sub.id, user_id: s.id, plan_id: 'basic_monthly' },
    },
    invoice: {
      id: `in_reissued_${crypto.randomUUID()}`,
      status: 'paid',
      billing_reason: 'subscription_cycle',
      amount_paid: 999,
      amount_due: 999,
      currency: 'usd',
      attempted: true,
      period_start: Number(sub.ps),
      period_end: Number(sub.pe),
      plan_id: 'basic_monthly',
      price: null,
    },
  };
  const [{ outcome }] = await testDb`select billing.sync_subscription(${testDb.json(state)}) as outcome`;
  assert.equal(outcome, 'plan_credits_granted');
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '0', JSON.stringify(await planLots(s.id)));
  assert.equal(await breakage(s.id), '2000');
});

Deno.test("the renewal and a full refund of the ending period's invoice at once converge on the in-order balance", async () => {
  for (let i = 0; i < 3; i++) {
    const { s, plan, late } = await fourThousandLeftAndLateRenewal();
    const [g] =
      await testDb`select invoice_id from billing.plan_grants where subscription_id = ${plan.subscription_id}`;
    await periodEndsAndSweeps(s.id);
    const refund = await emulator(`/_emulator/charges/${await chargeOfInvoice(g.invoice_id)}/refund`, {
      deliver: false,
    });
    // Two events' transactions may deadlock: Postgres aborts one, which answers 5xx and is sent again.
    await Promise.all([...late.events, ...refund.events].map((e) => deliverWithRetries(e)));
    await assertLedgerInvariants();
    // Either order: the 4,000 that expired are forgiven or rolled then taken back, the 6,000
    // spent are owed out of period 2's 10,000.
    assert.equal((await balanceOf(s.token)).balance, '4000', `run ${i}: ${JSON.stringify(await planLots(s.id))}`);
  }
});

// A partial refund or a dispute won before the period ended does not stop the period rolling over
// when the sweep expired it first (as when the renewal comes first). Only what a refund or dispute
// forgave as expired, or a lost dispute, stays in breakage.
Deno.test('a period partly refunded, or disputed and won, before its end still rolls over when the sweep was first', async () => {
  for (const how of ['refund', 'won'] as const) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly');
    const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
    await spend(s.token, 6000); // 4,000 left
    const charge = await chargeOfInvoice(invoice);
    if (how === 'refund') {
      await emulator(`/_emulator/charges/${charge}/refund`, { amount: 100 }); // floor(10,000 × 100 / 999) = 1,001 back
    } else {
      await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
      await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
    }
    const left = how === 'refund' ? '2999' : '4000';
    assert.equal((await balanceOf(s.token)).balance, left, how);
    const late = await renew(plan.stripe_subscription, 'paid', false);
    await periodEndsAndSweeps(s.id);
    for (const e of late.events) assert.equal((await deliver(e)).status, 200);
    await assertLedgerInvariants();
    assert.equal((await balanceOf(s.token)).balance, '12000', `${how}: the cap rolls back from breakage`);
    assert.equal(await breakage(s.id), String(Number(left) - 2000), how);
  }
});

// The rollover is what was left at the period's end when the renewal is paid within the grace
// window (3 days), whether the sweep ran or not; after the window nothing rolls.
Deno.test('a renewal retried after the grace window rolls nothing over, whether the sweep ran or not', async () => {
  for (const swept of [false, true]) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly');
    const failed = await renew(plan.stripe_subscription, 'failed');
    // Four days pass: period 1 is over, then the card works and Stripe's retry pays period 2.
    const [lot] = await planLots(s.id);
    await backdateBy(lot.id, '4 days');
    if (swept) await testDb`select billing.expire_lots(500)`;
    await emulator(`/_emulator/invoices/${failed.invoice}/pay`, {});
    const b = await balanceOf(s.token);
    await assertLedgerInvariants();
    assert.equal(b.balance, '10000', `period 2 only (swept: ${swept}): ${JSON.stringify(await planLots(s.id))}`);
    assert.equal(await breakage(s.id), '10000', 'all of period 1 expired');
  }
});

Deno.test('a renewal retried within the grace window rolls what was left at the period end, swept or not, and expires the rest', async () => {
  for (const swept of [false, true]) {
    const s = await student();
    const plan = await subscribeTo(s.token, 'basic_monthly');
    await spend(s.token, 9000); // 1,000 left: all of it rolls (basic's cap is 2,000)
    const failed = await renew(plan.stripe_subscription, 'failed');
    const [lot] = await planLots(s.id);
    await backdateBy(lot.id, '2 days');
    if (swept) await testDb`select billing.expire_lots(500)`;
    await emulator(`/_emulator/invoices/${failed.invoice}/pay`, {});
    const b = await balanceOf(s.token);
    await assertLedgerInvariants();
    assert.equal(b.balance, '11000', `swept: ${swept}: ${JSON.stringify(await planLots(s.id))}`);
    const lots = await planLots(s.id);
    const rolled = lots.find((l) => l.moved_from === lot.id);
    assert.equal(rolled?.amount, '1000', 'the rollover lot keeps its provenance');
    assert.equal(await breakage(s.id), '0', 'nothing of period 1 stays expired');
  }
});

Deno.test('a renewal paid an hour after the period ended (as Stripe charges renewals) rolls over what the sweep expired', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000); // 4,000 left: basic rolls over up to 2,000
  // Stripe makes the renewal invoice at the period's end and charges it about an hour later
  // (the draft's finalisation delay); meanwhile the period is over and the minute sweep runs.
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const [lot] = await planLots(s.id);
  await backdateBy(lot.id, '1 hour');
  await testDb`select billing.expire_lots(500)`; // the scheduled sweep (pg_cron, every minute)
  assert.equal(await breakage(s.id), '4000');
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  // Replayed: nothing comes back twice.
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  const b = await balanceOf(s.token);
  await assertLedgerInvariants();
  assert.equal(b.balance, '12000', `rollover lost: ${JSON.stringify(await planLots(s.id))}`);
  assert.equal(await breakage(s.id), '2000', 'what the cap leaves stays expired');
  const lots = await planLots(s.id);
  assert.equal(lots.find((l) => l.moved_from === lot.id)?.amount, '2000');
});

Deno.test("a refunded period's expired credits do not come back at its renewal", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const [lot] = await planLots(s.id);
  await backdateBy(lot.id, '1 hour');
  await testDb`select billing.expire_lots(500)`;
  // The period's invoice is refunded in full: the 4,000 that expired are forgiven, 6,000 owed.
  const [g] = await testDb`select invoice_id from billing.plan_grants where subscription_id = ${plan.subscription_id}`;
  await testDb`select billing.sync_plan_charge(${
    testDb.json({ invoice_id: g.invoice_id, charge_id: 'ch_test_rollover', amount_refunded: 999 })
  })`;
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  const b = await balanceOf(s.token);
  await assertLedgerInvariants();
  assert.equal(b.balance, '4000', `period 2 less the debt, nothing rolled: ${JSON.stringify(await planLots(s.id))}`);
});

Deno.test('a period swept, a charge of it voided, then the renewal: only the cap comes back from breakage, and later voids expire', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 a period; up to 2,000 roll over
  const charges: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await spendWith(s.token, crypto.randomUUID(), 2000);
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const late = await renew(plan.stripe_subscription, 'paid', false); // period 2 charged, webhooks late
  await periodEnds(s.id);
  await sweep(); // 4,000 expire
  const v1 = await voidCharge(charges[0]); // 2,000 back into the expired lot: breakage at once
  assert.equal(v1.status, 200, v1.text);
  assert.equal((await balanceOf(s.token)).balance, '0');
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '12000', 'period 2 and the 2,000 the rule rolls, no more');
  assert.equal(await breakage(s.id), '4000');
  for (const c of charges.slice(1)) {
    const v = await voidCharge(c);
    assert.equal(v.status, 200, v.text);
    await sweep();
  }
  await assertLedgerInvariants();
  assert.equal(
    (await balanceOf(s.token)).balance,
    '12000',
    'charges of the ended period voided late give nothing spendable',
  );
  assert.equal(await breakage(s.id), '8000');
});
