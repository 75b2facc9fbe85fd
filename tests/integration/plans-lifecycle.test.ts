// Plans through the real emulator and signed webhooks: subscribe, renew with rollover, a failed
// renewal, upgrade, downgrade, cancel, and the invoice events replayed and reordered.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, spend, student, testDb } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { balanceOf, deliver, emulator, type SignedEvent, stripeApi } from '../support/purchases.ts';
import { change, planLots, renew, startPlan, subscribeTo } from '../support/plans.ts';

const ofType = (events: SignedEvent[], type: string) => {
  const e = events.find((x) => x.type === type);
  if (!e) throw new Error(`no ${type} event`);
  return e;
};

Deno.test('subscribing grants the plan credits once, from invoice.paid, as a lot expiring at the period end', async () => {
  const s = await student();
  const plan = await startPlan(s.token, 'basic_monthly');
  assert.equal((await balanceOf(s.token)).balance, '0', 'nothing before payment');
  // The redirect back (success_url) without a payment grants nothing.
  assert.equal((await api('/checkout/subscription', { token: s.token })).body.data, null);
  const paid = await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { deliver: false });
  const invoicePaid = ofType(paid.events, 'invoice.paid');
  for (const e of paid.events) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  // invoice.paid again (a retry, a replay of its bytes with a fresh signature is the same event id).
  assert.equal((await deliver(invoicePaid)).body.data.duplicate, true);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  const me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.plan_id, 'basic_monthly');
  assert.equal(me.status, 'active');
  assert.equal(me.plan_credits_left, '10000');
  const [lot] = await testDb`select l.priority, l.cost_cents::int as cost, l.expires_at from billing.lots l
    join billing.plan_lots pl on pl.lot_id = l.id where pl.subscription_id = ${plan.subscription_id}`;
  assert.equal(lot.cost, 999);
  assert.equal(lot.expires_at.toISOString(), me.current_period_end);
  await assertLedgerInvariants();
});

Deno.test('a renewal rolls over what the rule allows into a new lot and expires the rest', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 5000); // 5,000 left; basic rolls over up to 2,000
  const r = await renew(plan.stripe_subscription);
  assert.ok(r.invoice);
  assert.equal((await balanceOf(s.token)).balance, '12000');
  const lots = await planLots(s.id);
  assert.equal(lots.length, 3);
  assert.deepEqual(lots.map((l) => [l.amount, l.remaining]), [['10000', '0'], ['2000', '2000'], ['10000', '10000']]);
  assert.equal(lots[1].moved_from, lots[0].id, 'the rolled-over lot keeps its provenance');
  const [{ expired }] = await testDb`select trim_scale(coalesce(sum(a.amount), 0))::text as expired
    from billing.lot_allocations a where a.lot_id = ${lots[0].id} and a.kind = 'expiry'`;
  assert.equal(expired, '3000');
  // The renewal writes its rollover and expiry itself (end_plan_lot): the account's entries stay
  // one chain, a version each in order, each balance_after the running sum.
  const chain = await testDb`select e.account_version::int as version, trim_scale(e.balance_after)::text as after,
      trim_scale(sum(e.amount) over (order by e.id))::text as running
    from billing.entries e join billing.accounts a on a.id = e.account_id where a.user_id = ${s.id} order by e.id`;
  assert.deepEqual(chain.map((c) => c.version), chain.map((_, i) => i + 1));
  assert.deepEqual(chain.map((c) => c.after), chain.map((c) => c.running));
  // Plan credits are spent first, the rolled-over ones (expiring with the new period) included.
  await spend(s.token, 100);
  assert.equal((await planLots(s.id))[1].remaining, '1900');
  await assertLedgerInvariants();
});

Deno.test('a failed renewal grants nothing and emails a link to update the card; paying later grants once', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const r = await renew(plan.stripe_subscription, 'failed');
  assert.equal((await balanceOf(s.token)).balance, '10000', 'only the first period');
  const me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.status, 'past_due');
  const mails = await testDb`select payload from billing.notification_outbox
    where user_id = ${s.id} and template = 'plan_payment_failed'`;
  assert.equal(mails.length, 1);
  assert.equal(mails[0].payload.invoice_id, r.invoice);
  // The student updates the card and Stripe retries: the renewal is granted, once.
  const retry = await emulator(`/_emulator/invoices/${r.invoice}/pay`, { deliver: false });
  for (const e of [...retry.events, ...retry.events]) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '12000');
  await assertLedgerInvariants();
});

Deno.test('an old invoice.paid delivered after the renewal neither grants again nor reopens its period', async () => {
  const s = await student();
  const plan = await startPlan(s.token, 'basic_monthly');
  const first = await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { deliver: false });
  const session = await stripeApi(`/v1/checkout/sessions/${plan.session_id}`);
  const sub = String(session.subscription);
  const renewal = await renew(sub, 'paid', false);
  // Reordered: the renewal's events first, then the first period's.
  for (const e of renewal.events) assert.equal((await deliver(e)).status, 200);
  for (const e of first.events) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '10000', 'the current period only');
  for (const e of [...first.events, ...renewal.events]) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  await assertLedgerInvariants();
});

Deno.test('an upgrade grants the difference at once; a downgrade waits for the next period', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const up = await api('/checkout/subscription/change', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { plan_id: 'pro_monthly' },
  });
  assert.equal(up.status, 202, up.text);
  assert.equal((await balanceOf(s.token)).balance, '35000', '10,000 + the 25,000 difference');
  const down = await api('/checkout/subscription/change', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { plan_id: 'basic_monthly' },
  });
  assert.equal(down.status, 202, down.text);
  assert.equal((await balanceOf(s.token)).balance, '35000', 'nothing taken back');
  // Upgrading again within the period: this period already had pro's credits.
  await api('/checkout/subscription/change', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { plan_id: 'pro_monthly' },
  });
  assert.equal((await balanceOf(s.token)).balance, '35000', 'no second difference in one period');
  await api('/checkout/subscription/change', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { plan_id: 'basic_monthly' },
  });
  await renew(plan.stripe_subscription);
  // Basic from now: 10,000, and up to 2,000 of the 35,000 left roll over.
  assert.equal((await balanceOf(s.token)).balance, '12000');
  await assertLedgerInvariants();
});

Deno.test('cancel at period end keeps the credits until then and renews no more', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const cancel = await api('/checkout/subscription/cancel', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {},
  });
  assert.equal(cancel.status, 202, cancel.text);
  let me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.cancel_at_period_end, true);
  assert.equal((await balanceOf(s.token)).balance, '10000');
  const end = await renew(plan.stripe_subscription);
  assert.equal(end.invoice, null);
  me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.status, 'canceled');
  const portal = await api('/checkout/portal', { token: s.token, body: {} });
  assert.equal(portal.status, 200, portal.text);
  assert.match(String((portal.body.data as Record<string, unknown>).url), /billing_portal/);
  await assertLedgerInvariants();
});

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
