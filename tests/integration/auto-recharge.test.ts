// Auto-recharge: a card saved at Checkout, one recharge per crossing (never two in flight),
// charged off-session by the tick, credited only by the webhook; declines and authentication
// requests turn it off, and so does a dispute (the disputed card is forgotten); monthly limits;
// every change audited.
import assert from 'node:assert/strict';
import type { AutoRecharge } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, spend, testDb, tick, watchTick } from '../support/helpers.ts';
import { dataOf } from '../support/money.ts';
import { person } from '../support/orgs.ts';
import { balanceOf, chargeOf, emulator, pays, starterBuyer } from '../support/purchases.ts';

async function setAutoRecharge(token: string, body: Record<string, unknown>) {
  const r = await api('/credits/auto-recharge', { method: 'PUT', token, body });
  assert.equal(r.status, 200, r.text);
  return r.body.data as AutoRecharge;
}

const recharges = (user: string) =>
  testDb`select status, failure_code, purchase_id from billing.recharges where user_id = ${user} order by created_at`;
const savedCard = async (user: string) =>
  (await testDb`select payment_method_id from billing.saved_cards where user_id = ${user}`)[0].payment_method_id;

Deno.test('turning auto-recharge on needs a card saved at Checkout', async () => {
  const s = await starterBuyer(false);
  const r = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(r.status, 409);
  assert.equal((r.body.error as { code: string }).code, 'NO_SAVED_CARD');
});

Deno.test('a crossing queues one recharge; the tick charges the saved card; the webhook grants the credits', async () => {
  const s = await starterBuyer();
  const settings = await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '1000' });
  assert.deepEqual([settings.enabled, settings.card_saved, settings.recent.length], [true, true, 0]);
  await spend(s.token, 9000); // 990 left: below 1,000
  await watchTick();
  await spend(s.token, 10); // still below: the same crossing, no second recharge
  await watchTick();
  assert.deepEqual((await recharges(s.id)).map((r) => r.status), ['queued']);
  await tick();
  const [done] = await recharges(s.id);
  assert.equal(done.status, 'succeeded');
  assert.equal((await balanceOf(s.token)).balance, '5980', '980 + the mini package (5,000)');
  const [purchase] =
    await testDb`select origin, status, stripe_charge_id from billing.purchases where id = ${done.purchase_id}`;
  assert.deepEqual([purchase.origin, purchase.status], ['auto_recharge', 'paid']);
  const [lot] =
    await testDb`select category, cost_cents::int as cost from billing.lots where purchase_id = ${done.purchase_id}`;
  assert.deepEqual([lot.category, lot.cost], ['paid', 500], 'a paid lot at the price, as any purchase');

  // Back above the threshold re-arms it: the next crossing recharges again.
  await spend(s.token, 5000);
  await watchTick();
  assert.deepEqual((await recharges(s.id)).map((r) => r.status), ['succeeded', 'queued']);
  // A refund of the recharge converges like any purchase's (found by its charge's intent).
  await tick();
  await emulator(`/_emulator/charges/${purchase.stripe_charge_id}/refund`, { amount: 500 });
  assert.equal(
    (await balanceOf(s.token)).balance,
    '980',
    '980 + the second recharge (5,000) − the first, refunded (5,000)',
  );
  await assertLedgerInvariants();
});

Deno.test('parallel debits through the threshold, with ticks among them, queue exactly one recharge', async () => {
  const s = await starterBuyer();
  await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '9000' });
  await Promise.all([
    ...Array.from({ length: 20 }, () => spend(s.token, 100)),
    ...Array.from({ length: 5 }, () => watchTick()),
  ]);
  await watchTick();
  assert.equal((await recharges(s.id)).length, 1);
});

Deno.test('already below when turned on: a recharge is queued at once', async () => {
  const s = await starterBuyer();
  await spend(s.token, 9900);
  await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '500' });
  assert.deepEqual((await recharges(s.id)).map((r) => r.status), ['queued']);
});

for (const outcome of ['card_declined', 'authentication_required'] as const) {
  Deno.test(`${outcome}: the recharge fails, auto-recharge turns itself off with an email, until the student turns it on`, async () => {
    const s = await starterBuyer();
    await emulator(`/_emulator/payment_methods/${await savedCard(s.id)}/outcome`, { outcome });
    await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '1000' });
    await spend(s.token, 9500);
    await tick();
    const [failed] = await recharges(s.id);
    assert.deepEqual([failed.status, failed.failure_code], ['failed', outcome]);
    assert.equal((await balanceOf(s.token)).balance, '490', 'no credits without a payment');
    const after = (await api('/credits/auto-recharge', { token: s.token })).body.data as AutoRecharge;
    assert.deepEqual([after.enabled, after.disabled_reason], [false, outcome]);
    const [mail] = await testDb`select payload from billing.notification_outbox where user_id = ${s.id}
      and template = 'auto_recharge'`;
    assert.deepEqual([mail.payload.event, mail.payload.reason], ['disabled', outcome]);
    await spend(s.token, 100);
    await watchTick();
    assert.equal((await recharges(s.id)).length, 1, 'off: no further recharge');
    const audit =
      await testDb`select actor, change from billing.auto_recharge_audit where user_id = ${s.id} order by id`;
    assert.deepEqual(audit.map((a) => a.actor === null ? 'system' : 'student'), ['student', 'system']);

    // Only the student turns it back on; with a working card it recharges again.
    await emulator(`/_emulator/payment_methods/${await savedCard(s.id)}/outcome`, { outcome: 'succeeded' });
    await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '1000' });
    await tick();
    assert.equal((await balanceOf(s.token)).balance, '5390');
  });
}

Deno.test('the monthly limit stops recharges, with one email; the audit log says why', async () => {
  const s = await starterBuyer();
  await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '9000', monthly_max_count: 1 });
  await spend(s.token, 1000); // 8,990: below, the first recharge
  await tick(); // 13,990: above again, re-armed
  await spend(s.token, 5000); // 8,990: below again (the tick sees it rose above: re-armed), but one a month is the limit
  await spend(s.token, 100);
  await watchTick();
  const all = await recharges(s.id);
  assert.deepEqual(all.map((r) => r.status), ['succeeded']);
  const [limit] =
    await testDb`select change from billing.auto_recharge_audit where user_id = ${s.id} and actor is null`;
  assert.equal(limit?.change.skipped, 'monthly_limit');
  const mails =
    await testDb`select payload from billing.notification_outbox where user_id = ${s.id} and template = 'auto_recharge'`;
  assert.deepEqual(mails.map((m) => m.payload.event), ['monthly_limit']);
});

Deno.test('Checkout with save_card keeps the Stripe customer and card (ids only); without it, nothing is kept', async () => {
  const s = await starterBuyer();
  const [card] = await testDb`select customer_id, payment_method_id from billing.saved_cards where user_id = ${s.id}`;
  assert.match(card.customer_id, /^cus_/);
  assert.match(card.payment_method_id, /^pm_/);
  const t = await starterBuyer(false);
  assert.equal((await testDb`select 1 from billing.saved_cards where user_id = ${t.id}`).length, 0);
});

Deno.test('a refund never starts an auto-recharge: the card refunded is not charged again at once', async () => {
  const s = await starterBuyer();
  await setAutoRecharge(s.token, { enabled: true, package_id: 'mini', threshold: '1000' });
  const [purchase] =
    await testDb`select stripe_charge_id from billing.purchases where user_id = ${s.id} and status = 'paid'`;
  await emulator(`/_emulator/charges/${purchase.stripe_charge_id}/refund`, {});
  assert.equal((await balanceOf(s.token)).balance, '0', 'the refund took the credits back');
  await watchTick();
  assert.equal((await recharges(s.id)).length, 0, 'and queued no recharge');
  await assertLedgerInvariants();
});

Deno.test('a dispute turns auto-recharge off and forgets the card: the disputed card is never charged again to refill', async () => {
  const s = await person('student');
  const session = await pays(s.token, { package_id: 'starter', save_card: true });
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(on.status, 200, on.text);

  // The dispute's hold takes what is available to 0: before, that crossing queued a recharge.
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'open' });
  await watchTick();
  const [{ n }] = await testDb`select count(*)::int as n from billing.recharges where user_id = ${s.id}`;
  assert.equal(n, 0, 'no recharge queued');
  const settings = dataOf(await api('/credits/auto-recharge', { token: s.token })) as unknown as AutoRecharge;
  assert.deepEqual([settings.enabled, settings.disabled_reason, settings.card_saved], [false, 'dispute', false]);
  const again = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(again.status, 409, 'the card is gone: only an on-session payment saves one again');
  await assertLedgerInvariants();
});

Deno.test("a student's Checkout under an Idempotency-Key shaped like their queued recharge's purchase key blocks neither that recharge nor anyone else's", async () => {
  const mallory = await starterBuyer();
  await setAutoRecharge(mallory.token, { enabled: true, package_id: 'mini', threshold: '1000' });
  await spend(mallory.token, 9000);
  const victim = await starterBuyer();
  await setAutoRecharge(victim.token, { enabled: true, package_id: 'mini', threshold: '1000' });
  await spend(victim.token, 9000);
  await watchTick();
  const mine = await api('/credits/auto-recharge', { token: mallory.token });
  const [queued] = (dataOf(mine) as unknown as AutoRecharge).recent;
  assert.equal(queued.status, 'queued');
  // The purchase a recharge makes is keyed `recharge:<id>` for its user; a Checkout's is the
  // Idempotency-Key as sent. The student writes the recharge's key first.
  const squat = await api('/checkout/sessions', {
    token: mallory.token,
    headers: { 'idempotency-key': `recharge:${queued.id}` },
    body: { package_id: 'mini' },
  });
  assert.ok(squat.status < 500, squat.text);
  await tick();
  assert.deepEqual((await recharges(victim.id)).map((r) => r.status), ['succeeded'], "another student's recharge");
  assert.deepEqual((await recharges(mallory.id)).map((r) => r.status), ['succeeded'], 'their own recharge');
  await assertLedgerInvariants();
});
