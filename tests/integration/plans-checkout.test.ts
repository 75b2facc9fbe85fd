// Starting a plan (POST /checkout/subscriptions, the portal): one plan per student however many
// Checkouts or tabs are opened, an Idempotency-Key bound to its plan, redirects only to the
// allowlist, and a plan's Checkout session never read as a package purchase. The emulator's test
// controls stand in for Stripe and the card network.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, student, testDb } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { balanceOf, deliver, emulator, stripeApi } from '../support/purchases.ts';
import { change, chargeOfInvoice, startPlan, subscribeTo } from '../support/plans.ts';

Deno.test('a second plan Checkout expires the first: two plans cannot both be paid from two tabs', async () => {
  const s = await student();
  const basic = await startPlan(s.token, 'basic_monthly');
  const pro = await startPlan(s.token, 'pro_monthly'); // basic's session expires at Stripe
  assert.notEqual(basic.session_id, pro.session_id);
  const first = await stripeApi(`/v1/checkout/sessions/${basic.session_id}`);
  assert.equal(first.status, 'expired');
  await emulator(`/_emulator/checkout/sessions/${pro.session_id}/pay`, { outcome: 'succeeded' });
  const [row] = await testDb`select status from billing.subscriptions where id = ${pro.subscription_id}`;
  assert.equal(row.status, 'active');
  // Back to basic's tab: a new Checkout, not the expired one, and refused while pro is live.
  const again = await api('/checkout/subscriptions', {
    token: s.token,
    headers: key(),
    body: { plan_id: 'basic_monthly' },
  });
  assert.equal(again.status, 409, again.text);
  assert.equal(codeOf(again), 'PLAN_ALREADY_ACTIVE');
  await assertLedgerInvariants();
});

Deno.test('a second plan paid anyway (its Checkout completed before the other opened) is cancelled at Stripe and refunded, never granted', async () => {
  const s = await student();
  const basic = await startPlan(s.token, 'basic_monthly');
  // Basic is paid at Stripe, but its webhooks are late: this service still sees it open.
  const late = await emulator(`/_emulator/checkout/sessions/${basic.session_id}/pay`, {
    outcome: 'succeeded',
    deliver: false,
  }) as { events: { payload: string; signature: string }[] };
  const pro = await startPlan(s.token, 'pro_monthly'); // expiring basic's session fails: it completed
  await emulator(`/_emulator/checkout/sessions/${pro.session_id}/pay`, { outcome: 'succeeded' });
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  const session = await stripeApi(`/v1/checkout/sessions/${basic.session_id}`);
  const sub = await stripeApi(`/v1/subscriptions/${session.subscription}`);
  assert.equal(sub.status, 'canceled', 'the second live subscription is cancelled at Stripe');
  const charge = await chargeOfInvoice(String(session.invoice));
  const ch = await stripeApi(`/v1/charges/${charge}`);
  assert.equal(ch.amount_refunded, 999, 'its invoice is refunded');
  const [row] = await testDb`select status, refused_at is not null as refused from billing.subscriptions
    where id = ${basic.subscription_id}`;
  assert.equal(row.refused, true, JSON.stringify(row));
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.plan_grants where subscription_id = ${basic.subscription_id}`;
  assert.equal(n, 0);
  assert.equal((await balanceOf(s.token)).balance, '35000'); // pro's only
  const me = (await api('/checkout/subscription', { token: s.token })).body.data as Record<string, unknown>;
  assert.equal(me.plan_id, 'pro_monthly');
  await assertLedgerInvariants();
});

Deno.test('cancelling does not let a student start a second plan in the same period', async () => {
  const s = await student();
  await subscribeTo(s.token, 'basic_monthly');
  const cancel = await api('/checkout/subscription/cancel', { token: s.token, headers: key(), body: {} });
  assert.equal(cancel.status, 202, cancel.text);
  const again = await api('/checkout/subscriptions', {
    token: s.token,
    headers: key(),
    body: { plan_id: 'pro_monthly' },
  });
  assert.equal(codeOf(again), 'PLAN_ALREADY_ACTIVE');
  // Nor upgrade to a fresh grant after cancelling and then changing their mind twice.
  assert.equal((await change(s.token, 'pro_monthly')).status, 202);
  assert.equal((await change(s.token, 'basic_monthly')).status, 202);
  assert.equal((await change(s.token, 'pro_monthly')).status, 202);
  assert.equal((await balanceOf(s.token)).balance, '35000');
  await assertLedgerInvariants();
});

Deno.test('ten Checkouts for one plan at once share one session', async () => {
  const s = await student();
  const rs = await Promise.all(
    Array.from(
      { length: 10 },
      () => api('/checkout/subscriptions', { token: s.token, headers: key(), body: { plan_id: 'basic_monthly' } }),
    ),
  );
  assert.ok(rs.every((r) => r.status === 200 || r.status === 201), rs.map((r) => `${r.status} ${r.text}`).join('\n'));
  assert.equal(new Set(rs.map((r) => (r.body.data as { session_id: string }).session_id)).size, 1);
});

Deno.test('a subscribe key reused for another plan is refused', async () => {
  const s = await student();
  const h = key();
  await startPlan(s.token, 'basic_monthly', h['idempotency-key']);
  const again = await api('/checkout/subscriptions', { token: s.token, headers: h, body: { plan_id: 'pro_monthly' } });
  assert.equal(codeOf(again), 'IDEMPOTENCY_KEY_REUSED');
});

Deno.test('redirects off the allowlist are refused for Checkout and the portal, and no 5xx on odd URLs', async () => {
  const s = await student();
  for (
    const url of [
      'https://evil.example/x',
      'javascript:alert(1)',
      'data:text/html,hi',
      'http://127.0.0.1.evil.example/',
    ]
  ) {
    const r = await api('/checkout/subscriptions', {
      token: s.token,
      headers: key(),
      body: { plan_id: 'basic_monthly', success_url: url },
    });
    assert.ok(r.status >= 400 && r.status < 500, `${url}: ${r.status} ${r.text}`);
  }
  await subscribeTo(s.token, 'basic_monthly');
  for (const url of ['https://evil.example/x', 'javascript:alert(1)']) {
    const r = await api('/checkout/portal', { token: s.token, body: { return_url: url } });
    assert.ok(r.status >= 400 && r.status < 500, `${url}: ${r.status} ${r.text}`);
  }
  // Someone else's Stripe ids cannot ride along: the bodies are strict.
  const other = await api('/checkout/portal', { token: s.token, body: { customer: 'cus_someone_else' } });
  assert.equal(other.status, 400, other.text);
  for (
    const body of [{ plan_id: 'basic_monthly\u0000' }, { plan_id: 'x'.repeat(65) }, { plan_id: 1e2 }, { plan_id: [] }, {
      plan_id: 'pro_monthly',
      extra: 1,
    }]
  ) {
    const r = await api('/checkout/subscription/change', { token: s.token, headers: key(), body });
    assert.ok(r.status >= 400 && r.status < 500, `${JSON.stringify(body)}: ${r.status} ${r.text}`);
  }
});

Deno.test('a plan Checkout session is no package purchase: looked up by its owner or another student, it answers 404', async () => {
  const a = await student();
  const b = await student();
  const plan = await subscribeTo(a.token, 'basic_monthly');
  for (const who of [a, b]) {
    const r = await api(`/checkout/sessions/${plan.session_id}`, { token: who.token });
    assert.equal(r.status, 404, r.text);
  }
  assert.equal((await balanceOf(a.token)).balance, '10000');
  assert.equal((await balanceOf(b.token)).balance, '0');
  const mine = (await api('/checkout/subscription', { token: b.token })).body.data;
  assert.equal(mine, null, 'B sees no plan of A');
});
