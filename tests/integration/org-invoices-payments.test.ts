// A school's invoice once sent (invoice.* webhooks): paid, it credits the wallet once, and only
// the invoice the signed event names; voided it cannot be paid, uncollectible then paid twice it
// credits once; a full refund arriving before invoice.paid leaves nothing; a refund after the
// wallet funded allowances and a sponsor code reaches them; with tax, a refund in many parts takes
// back exactly what one would, and revenue keeps out the tax.
import assert from 'node:assert/strict';
import type { OrgInvoice } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, env, key, testDb, withGateway } from '../support/helpers.ts';
import { person, school, usage, verifyOrg, walletOf } from '../support/orgs.ts';
import { deliver, emulator, sign } from '../support/purchases.ts';
import { approveInvoicing, billing, chargeIn, openInvoice, pay, stripePost } from '../support/invoices.ts';
import { post, taxOn } from '../support/tax.ts';

type Json = Record<string, unknown>;

Deno.test("a signed invoice.paid rewritten to name another organisation's invoice credits neither wrongly", async () => {
  const [a, b] = await Promise.all(['a', 'b'].map(person));
  const orgA = await school(a, [], 'allowance', null);
  const orgB = await school(b, [], 'allowance', null);
  const invA = await openInvoice(a.token, orgA);
  const invB = await openInvoice(b.token, orgB);
  // Org B's paid invoice event with org A's row id in its metadata (as a tampered payload would
  // carry it) — signed, so only the re-fetch decides.
  const { events } = await pay(invB, 'card', false);
  const paid = events.find((e) => e.type === 'invoice.paid');
  assert.ok(paid);
  const tampered = paid.payload.replaceAll(invB.id, invA.id).replaceAll(orgB, orgA).replace(paid.id, `${paid.id}t`);
  const secret = env('STRIPE_WEBHOOK_SECRET').split(',')[0];
  const d = await deliver({ payload: tampered, signature: await sign(tampered, secret) });
  assert.ok(d.status < 500, JSON.stringify(d));
  await Promise.all(events.map(deliver));
  assert.equal((await walletOf(a.token, orgA)).balance, '0', "A's invoice is unpaid");
  assert.equal((await walletOf(b.token, orgB)).balance, '5000');
  const [rowA] = await testDb`select status from billing.org_invoices where id = ${invA.id}`;
  assert.equal(rowA.status, 'open');
  await assertLedgerInvariants();
});

Deno.test('a refund of a paid invoice after the wallet funded allowances and a sponsor code reaches them', async () => {
  const [owner, ada, bo] = await Promise.all(['owner', 'ada', 'bo'].map(person));
  const org = await school(owner, [ada, bo], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const inv = await openInvoice(owner.token, org);
  const charge = chargeIn((await pay(inv, 'card')).events);
  assert.equal((await walletOf(owner.token, org)).balance, '5000');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    body: { amount: '2000', user_id: ada.id },
    headers: key(),
  });
  assert.equal(funded.status, 201, funded.text);
  const sponsored = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    body: { credits: '2000', user_id: bo.id },
    headers: key(),
  });
  assert.equal(sponsored.status, 201, sponsored.text);
  const redeemed = await api('/credits/codes/redeem', {
    token: bo.token,
    body: { code: (sponsored.body.data as { code: string }).code },
    headers: key(),
  });
  assert.equal(redeemed.status, 200, redeemed.text);
  assert.equal((await usage(ada.token)).status, 201);
  await emulator(`/_emulator/charges/${charge}/refund`, {});
  // Every credit of the invoice is back wherever it went; the wallet owes what Ada spent.
  const [{ left }] = await testDb`select coalesce(trim_scale(sum(l.remaining)), 0)::text as left
                                  from billing.lots l where l.purchase_id = ${inv.id}`;
  assert.equal(left, '0', 'no credit of the refunded invoice is left anywhere');
  const bal = await testDb`select trim_scale(a.balance)::text as b from billing.accounts a where a.user_id = ${bo.id}`;
  assert.equal(bal[0].b, '0', "Bo's sponsored credits are taken back");
  assert.equal((await walletOf(owner.token, org)).balance, '-3');
  await assertLedgerInvariants();
});

Deno.test('with tax, an invoice refunded in many small parts takes back exactly what one refund would; revenue keeps out tax', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  await approveInvoicing(org);
  await withGateway(taxOn, async (url) => {
    const body = { package_id: 'mini', ...billing };
    const inv = await post<OrgInvoice & { stripe_invoice_id: string }>(url, `/orgs/${org}/invoices`, owner.token, body);
    assert.deepEqual([inv.amount_cents, inv.tax_cents, inv.total_cents], [500, 50, 550]);
    const { events } = await pay(inv, 'card');
    for (let i = 0; i < 7; i++) await emulator(`/_emulator/charges/${chargeIn(events)}/refund`, { amount: 3 });
    // 21 of 550 cents back: floor(5000 × 21 / 550) = 190 credits.
    assert.equal((await walletOf(owner.token, org)).balance, '4810');
    await emulator(`/_emulator/charges/${chargeIn(events)}/dispute`, { outcome: 'open' });
    await emulator(`/_emulator/charges/${chargeIn(events)}/dispute`, { outcome: 'lost' });
    assert.equal((await walletOf(owner.token, org)).balance, '0');
    const [{ metrics }] =
      await testDb`select billing.revenue_metrics(now() - interval '1 hour', now() + interval '1 minute') as metrics`;
    const mine = (metrics.organisations as Json[]).find((o) => o.org_id === org);
    assert.ok(mine);
    assert.deepEqual([mine.gmv_cents, (mine.refunds_cents as number) + (mine.disputes_lost_cents as number)], [
      500,
      500,
    ], 'tax is neither GMV nor refunded revenue');
  });
  await assertLedgerInvariants();
});

Deno.test('a voided invoice cannot be paid, and an uncollectible one paid twice over credits once', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const late = await openInvoice(owner.token, org);
  await stripePost(`/v1/invoices/${late.stripe_invoice_id}/mark_uncollectible`);
  const [first, second] = await Promise.allSettled([pay(late, 'card'), pay(late, 'customer_balance')]);
  assert.ok(first.status === 'fulfilled' || second.status === 'fulfilled');
  assert.equal((await walletOf(owner.token, org)).balance, '5000');
  await assert.rejects(
    stripePost(`/v1/invoices/${late.stripe_invoice_id}/void`).then((r) => {
      if (r.error) throw new Error('refused');
      return r;
    }),
  );
  assert.equal((await walletOf(owner.token, org)).balance, '5000');
  await assertLedgerInvariants();
});

Deno.test('a full refund delivered before its invoice.paid leaves the wallet with nothing', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const inv = await openInvoice(owner.token, org);
  const { events } = await pay(inv, 'card', false);
  // The refund's events arrive first; each re-fetch sees a paid and refunded invoice.
  const refund = await emulator(`/_emulator/charges/${chargeIn(events)}/refund`, { deliver: false });
  const first = await Promise.all(refund.events.map(deliver));
  assert.ok(first.every((d) => d.status === 200), JSON.stringify(first));
  assert.equal((await walletOf(owner.token, org)).balance, '0');
  await Promise.all([...events, ...events].map(deliver));
  assert.deepEqual(await walletOf(owner.token, org), { balance: '0', held: '0', available: '0' });
  const [p] = await testDb`select amount_refunded_cents, trim_scale(credits_refund_reversed)::text as r
                           from billing.purchases where id = ${inv.id}`;
  assert.deepEqual([p.amount_refunded_cents, p.r], [500, '5000']);
  await assertLedgerInvariants();
});
