// Attacking schools' invoices (POST/GET /orgs/:id/invoices, invoice.* webhooks) as a student
// with their own organisations: who may ask for or finish one, hostile text, the same request
// at once, amounts and ids that are not the row's, and refunds after the wallet funded members.
import assert from 'node:assert/strict';
import type { OrgInvoice } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, env, testDb, withGateway } from '../helpers.ts';
import { key, person, school, usage, walletOf } from '../orgs.ts';
import { deliver, emulator, sign, stripeApi } from '../purchases.ts';
import { post, taxOn } from '../tax.ts';
import { approveInvoicing, billing, chargeIn, openInvoice, pay, requestInvoice, stripePost } from '../invoices.ts';

type Json = Record<string, unknown>;
const code = (r: { body: Json }) => ((r.body.error ?? {}) as { code?: string }).code;

/** `who` joins `org` as an admin through an emailed invitation. */
async function addAdmin(ownerToken: string, org: string, who: { token: string; email: string }) {
  const invited = await api(`/orgs/${org}/invitations`, {
    token: ownerToken,
    body: { email: who.email, role: 'admin' },
  });
  assert.equal(invited.status, 201, invited.text);
  const { token } = invited.body.data as { token: string };
  const accepted = await api('/orgs/invitations/accept', { token: who.token, body: { token } });
  assert.equal(accepted.status, 200, accepted.text);
}

Deno.test('an admin removed after a request failed half-way cannot finish it with the same Idempotency-Key', async () => {
  const [owner, admin] = await Promise.all(['owner', 'admin'].map(person));
  const org = await school(owner, [], 'allowance', null);
  await addAdmin(owner.token, org, admin);
  const headers = key();
  await emulator('/_emulator/faults', { down: true });
  let down;
  try {
    down = await requestInvoice(admin.token, org, {}, headers);
  } finally {
    await emulator('/_emulator/faults', { down: false });
  }
  assert.equal(down.status, 502, down.text);
  const removed = await api(`/orgs/${org}/members/${admin.id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);

  // The retry names the attacker's own mailbox: were it honoured, the school's Stripe customer
  // and its invoice would be made out to it.
  const retried = await requestInvoice(admin.token, org, { billing_email: 'attacker@evil.test' }, headers);
  assert.equal(retried.status, 404, retried.text);
  assert.equal(code(retried), 'ORG_NOT_FOUND');
  const [row] = await testDb`select status, stripe_invoice_id from billing.org_invoices where org_id = ${org}`;
  assert.deepEqual([row.status, row.stripe_invoice_id], ['draft', null], 'nothing was sent for a former admin');
  const [o] = await testDb`select stripe_customer_id from billing.orgs where id = ${org}`;
  if (o.stripe_customer_id) {
    const customer = await stripeApi(`/v1/customers/${o.stripe_customer_id}`);
    assert.notEqual(customer.email, 'attacker@evil.test');
  }
});

Deno.test('hostile text in the PO number, email and address is 400 with nothing stored, never a 5xx', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const serverLog = `${(await testDb`show data_directory`)[0].data_directory}/server.log`;
  const logStart = (await Deno.stat(serverLog)).size;
  const marker = `po-${crypto.randomUUID().slice(0, 8)}`;
  const nasty = [`${marker}\u0000b`, `${marker}\ud800b`, marker.repeat(1_000), ''];
  const bodies: Json[] = [];
  for (const s of nasty) {
    bodies.push({ po_number: s });
    bodies.push({ billing_email: `${s}@school.test` });
    bodies.push({ billing_address: { ...billing.billing_address, line1: s } });
    bodies.push({ billing_address: { ...billing.billing_address, city: s } });
    bodies.push({ billing_address: { ...billing.billing_address, postal_code: s } });
    bodies.push({ package_id: s });
  }
  bodies.push({ quantity: 0 }, { quantity: 101 }, { quantity: 1.5 }, { quantity: '2' }, { quantity: 2 ** 63 });
  bodies.push({ days_until_due: 0 }, { days_until_due: -1 }, { days_until_due: '1e1' });
  bodies.push({ billing_address: { ...billing.billing_address, country: 'us' } }, { billing_address: null });
  bodies.push({ amount_cents: 1 }, { org_id: crypto.randomUUID() }, { credits: '1000000' });
  for (const b of bodies) {
    const r = await requestInvoice(owner.token, org, b);
    assert.equal(r.status, 400, `${JSON.stringify(b).slice(0, 80)}: ${r.status} ${r.text.slice(0, 200)}`);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invoices where org_id = ${org}`;
  assert.equal(n, 0, 'nothing recorded');
  // A hostile but valid PO number is kept as given and reaches Stripe as given (a bidirectional
  // override or a noncharacter is refused: org-invoices.test.ts).
  const po = '<script>"; drop--';
  const inv = await openInvoice(owner.token, org, { po_number: po });
  assert.equal(inv.po_number, po);
  const stripeInv = await stripeApi(`/v1/invoices/${inv.stripe_invoice_id}`);
  assert.deepEqual(stripeInv.custom_fields, [{ name: 'PO number', value: po }]);
  const file = await Deno.open(serverLog);
  await file.seek(logStart, Deno.SeekMode.Start);
  const log = new TextDecoder().decode(await new Response(file.readable).arrayBuffer());
  assert.ok(!log.includes(marker), 'none of the hostile values reached the Postgres log');
});

Deno.test('the same invoice request 20 times at once makes one invoice; 9 keys make 9, all under one customer', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const headers = key();
  const same = await Promise.all(Array.from({ length: 20 }, () => requestInvoice(owner.token, org, {}, headers)));
  assert.ok(same.every((r) => [200, 201, 409].includes(r.status)), same.map((r) => r.status).join(','));
  const ids = new Set(same.filter((r) => r.status < 300).map((r) => (r.body.data as OrgInvoice).id));
  assert.equal(ids.size, 1, 'one invoice answered');
  // The requester's daily limit is 10 (the first one included).
  const many = await Promise.all(Array.from({ length: 9 }, () => requestInvoice(owner.token, org)));
  assert.ok(many.every((r) => r.status === 201 || r.status === 502), many.map((r) => r.status).join(','));
  const rows = await testDb`select status, stripe_invoice_id from billing.org_invoices where org_id = ${org}`;
  assert.equal(rows.length, 10);
  const [o] = await testDb`select stripe_customer_id from billing.orgs where id = ${org}`;
  for (const r of rows.filter((r) => r.stripe_invoice_id)) {
    const inv = await stripeApi(`/v1/invoices/${r.stripe_invoice_id}`);
    assert.equal(inv.customer, o.stripe_customer_id, "every invoice under the organisation's one customer");
  }
  assert.equal(new Set(rows.map((r) => r.stripe_invoice_id)).size, rows.length, 'no two rows share a Stripe invoice');
});

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
