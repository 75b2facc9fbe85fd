// Schools pay by invoice: an organisation's admin asks for a package on a Stripe invoice (net
// terms, PO number); paid, the wallet gets the package's lots exactly once, however the webhooks
// arrive; void and uncollectible credit nothing; a refund of the paid invoice reaches the credits.
// Who may ask for one, hostile text, the same request at once: here; what happens once it is
// sent: org-invoices-payments.
import assert from 'node:assert/strict';
import type { OrgInvoice } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, env, key, spawnGateway, testDb, withGateway } from '../support/helpers.ts';
import { codeOf, type Json } from '../support/money.ts';
import { join, person, school, verifyOrg, walletOf } from '../support/orgs.ts';
import { deliver, emulator, sign, stripeApi } from '../support/purchases.ts';
import {
  approveInvoicing,
  billing,
  chargeIn,
  openInvoice,
  pay,
  requestInvoice,
  requestWhileStripeDown,
  stripePost,
} from '../support/invoices.ts';

/** The wallet's lots from an invoice's purchase: category and cost (before tax). */
const lotsOf = (inv: { id: string }) =>
  testDb`select l.category, trim_scale(l.amount)::text as amount, trim_scale(l.cost_cents)::text as cost_cents
         from billing.lots l where l.purchase_id = ${inv.id} order by l.category`;

/** The organisation's invoices as its admin lists them. */
async function listed(token: string, org: string) {
  const r = await api(`/orgs/${org}/invoices`, { token });
  assert.equal(r.status, 200, r.text);
  return (r.body.data as { items: OrgInvoice[] }).items;
}

Deno.test('an admin invoices a package: open and sent with its PO number and terms, once per Idempotency-Key', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const headers = key();
  const body = { quantity: 2, po_number: 'PO-2026-17', days_until_due: 45 };
  const [first, second] = await Promise.all([1, 2].map(() => requestInvoice(owner.token, org, body, headers)));
  const made = [first, second].find((r) => r.status === 201) ?? first;
  assert.equal(made.status, 201, made.text);
  const inv = made.body.data as OrgInvoice;
  assert.deepEqual(
    [inv.status, inv.amount_cents, inv.tax_cents, inv.total_cents, inv.credits, inv.po_number, inv.days_until_due],
    ['open', 1000, 0, 1000, '10000', 'PO-2026-17', 45],
  );
  const days = (Date.parse(inv.due_at ?? '') - Date.now()) / 86_400_000;
  assert.ok(days > 44.9 && days <= 45, `due in 45 days (${days})`);

  const stripeInv = await stripeApi(`/v1/invoices/${inv.stripe_invoice_id}`);
  assert.equal(stripeInv.collection_method, 'send_invoice');
  assert.deepEqual(stripeInv.custom_fields, [{ name: 'PO number', value: 'PO-2026-17' }]);
  assert.deepEqual(
    (stripeInv.payment_settings as { payment_method_types: string[] }).payment_method_types,
    ['customer_balance', 'card'],
  );
  assert.deepEqual(stripeInv.metadata, {
    kind: 'org_invoice',
    org_id: org,
    org_invoice_id: inv.id,
    package_id: 'mini',
    quantity: '2',
  });
  assert.deepEqual(stripeInv.customer_address, { ...billing.billing_address, line2: null, state: null });
  assert.equal(stripeInv.customer_email, owner.email, "billed to the requester's own confirmed address");
  const pdf = await fetch(inv.invoice_pdf ?? '');
  assert.equal(pdf.headers.get('content-type'), 'application/pdf');
  assert.ok((await pdf.text()).startsWith('%PDF-'));

  // The other concurrent twin waited (409, retryable) or replayed; a retry replays the answer.
  const other = made === first ? second : first;
  assert.ok(other.status === 409 || (other.body.data as OrgInvoice)?.id === inv.id, other.text);
  const again = await requestInvoice(owner.token, org, body, headers);
  assert.equal(again.status, 201, again.text);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.equal((again.body.data as OrgInvoice).id, inv.id);
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invoices where org_id = ${org}`;
  assert.equal(n, 1, 'one invoice for one key');
  const reused = await requestInvoice(owner.token, org, { ...body, quantity: 3 }, headers);
  assert.equal(reused.status, 409, reused.text);
  assert.equal(codeOf(reused), 'IDEMPOTENCY_KEY_REUSED');
  assert.deepEqual(await walletOf(owner.token, org), { balance: '0', held: '0', available: '0' }, 'unpaid: nothing');
});

Deno.test('a paid invoice credits the wallet once, however many times and in whatever order invoice.paid arrives', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const inv = await openInvoice(owner.token, org, { package_id: 'plus' });
  const { events } = await pay(inv, 'customer_balance', false);
  const paid = events.find((e) => e.type === 'invoice.paid');
  assert.ok(paid);
  // Reordered (the invoice before its charge), replayed, and once more under a new event id:
  // all at the same time.
  const secret = env('STRIPE_WEBHOOK_SECRET').split(',')[0];
  const payload = paid.payload.replace(paid.id, `${paid.id}x`);
  const fresh = { payload, signature: await sign(payload, secret) };
  const deliveries = await Promise.all([paid, paid, fresh, ...[...events].reverse()].map(deliver));
  assert.ok(deliveries.every((d) => d.status === 200), JSON.stringify(deliveries));

  assert.deepEqual(await walletOf(owner.token, org), { balance: '26239.5', held: '0', available: '26239.5' });
  assert.deepEqual((await lotsOf(inv)).map((l) => [l.category, l.amount, l.cost_cents]), [
    ['paid', '24990', '2499'],
    ['promotional', '1249.5', '0'],
  ]);
  const [row] = await listed(owner.token, org);
  assert.deepEqual([row.id, row.status], [inv.id, 'paid']);
  assert.ok(row.paid_at);
  await assertLedgerInvariants();
});

Deno.test('members and outsiders can neither invoice an organisation nor list its invoices', async () => {
  const [owner, member, outsider] = await Promise.all(['owner', 'member', 'outsider'].map(person));
  const org = await school(owner, [member], 'allowance', null);
  const asMember = await requestInvoice(member.token, org);
  assert.equal(asMember.status, 403, asMember.text);
  assert.equal(codeOf(asMember), 'ORG_FORBIDDEN');
  const asOutsider = await requestInvoice(outsider.token, org);
  assert.equal(asOutsider.status, 404, asOutsider.text);
  assert.equal(codeOf(asOutsider), 'ORG_NOT_FOUND');
  const listMember = await api(`/orgs/${org}/invoices`, { token: member.token });
  assert.equal(listMember.status, 403, listMember.text);
  const listOutsider = await api(`/orgs/${org}/invoices`, { token: outsider.token });
  assert.equal(listOutsider.status, 404, listOutsider.text);
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invoices where org_id = ${org}`;
  assert.equal(n, 0, 'a refused request records nothing');
  const bad = await requestInvoice(owner.token, org, { days_until_due: 91, po_number: 'x'.repeat(65) });
  assert.equal(bad.status, 400, bad.text);
});

Deno.test('a voided invoice credits nothing; one marked uncollectible and then paid credits the wallet', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const voided = await openInvoice(owner.token, org);
  assert.equal((await stripePost(`/v1/invoices/${voided.stripe_invoice_id}/void`)).status, 'void');
  await assert.rejects(pay(voided), /The invoice is void/);

  const late = await openInvoice(owner.token, org, { quantity: 3 });
  const marked = await stripePost(`/v1/invoices/${late.stripe_invoice_id}/mark_uncollectible`);
  assert.equal(marked.status, 'uncollectible');
  let rows = await listed(owner.token, org);
  assert.deepEqual(rows.map((r) => [r.id, r.status]), [[late.id, 'uncollectible'], [voided.id, 'void']]);
  assert.equal((await walletOf(owner.token, org)).balance, '0');

  await pay(late, 'card');
  rows = await listed(owner.token, org);
  assert.deepEqual(rows.map((r) => r.status), ['paid', 'void']);
  assert.equal((await walletOf(owner.token, org)).balance, '15000');
  assert.equal((await lotsOf(voided)).length, 0, 'the voided invoice made no purchase');
  await assertLedgerInvariants();
});

Deno.test('with Stripe Tax the invoice adds tax, the lot costs the amount before it, and a refund takes the credits back', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  await approveInvoicing(org);
  await withGateway({ STRIPE_AUTOMATIC_TAX: 'true' }, async (url) => {
    const res = await fetch(`${url}/orgs/${org}/invoices`, {
      method: 'POST',
      headers: { authorization: `Bearer ${owner.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({ package_id: 'mini', quantity: 2, ...billing }),
    });
    const inv = (await res.json()).data as OrgInvoice;
    assert.equal(res.status, 201, JSON.stringify(inv));
    assert.deepEqual([inv.amount_cents, inv.tax_cents, inv.total_cents], [1000, 100, 1100], 'the emulator taxes 10%');
    const { events } = await pay(inv, 'card');
    assert.equal((await walletOf(owner.token, org)).balance, '10000');
    assert.deepEqual((await lotsOf(inv)).map((l) => l.cost_cents), ['1000'], 'tax is not what the credits cost');

    // Half of what was paid (tax included) back takes half the credits; the rest, the rest.
    await emulator(`/_emulator/charges/${chargeIn(events)}/refund`, { amount: 550 });
    assert.equal((await walletOf(owner.token, org)).balance, '5000');
    await emulator(`/_emulator/charges/${chargeIn(events)}/refund`, {});
    assert.equal((await walletOf(owner.token, org)).balance, '0');
    const [p] = await testDb`select amount_refunded_cents, tax_cents from billing.purchases where id = ${inv.id}`;
    assert.deepEqual([p.amount_refunded_cents, p.tax_cents], [1100, 100], 'the purchase keeps its tax beside it');
  });
  await assertLedgerInvariants();
});

Deno.test('Stripe down half-way: the request fails retryably, and its retry finishes the same invoice', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const headers = key();
  const down = await requestWhileStripeDown(owner.token, org, headers);
  assert.equal(down.status, 502, down.text);
  const [draft] = await testDb`select status from billing.org_invoices where org_id = ${org}`;
  assert.equal(draft.status, 'draft', 'the intent was recorded before Stripe');
  const retried = await requestInvoice(owner.token, org, {}, headers);
  assert.equal(retried.status, 201, retried.text);
  const rows = await listed(owner.token, org);
  assert.deepEqual(rows.map((r) => r.status), ['open']);
});

Deno.test('a request that dies after Stripe sent the invoice loses nothing: the webhooks open it, a retry answers it', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  await approveInvoicing(org);
  const headers = key();
  const gw = spawnGateway({ FAILPOINTS: 'org_invoice.after_stripe' });
  try {
    await gw.ready();
    const died = await fetch(`${gw.url}/orgs/${org}/invoices`, {
      method: 'POST',
      headers: { authorization: `Bearer ${owner.token}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ package_id: 'mini', ...billing }),
    }).then((r) => r.status, () => 'connection lost');
    assert.equal(died, 'connection lost');
  } finally {
    await gw.kill();
  }
  const [row] = await testDb`select id, status, stripe_invoice_id from billing.org_invoices where org_id = ${org}`;
  assert.equal(row.status, 'open', 'invoice.finalized and invoice.sent recorded what the request could not');
  // Its claim goes stale after a minute; then the same request answers the invoice it made.
  await testDb`update billing.idempotency_keys set locked_at = now() - interval '2 minutes'
               where user_id = ${owner.id} and action = 'orgs.invoices'`;
  const retried = await requestInvoice(owner.token, org, {}, headers);
  assert.equal(retried.status, 200, retried.text);
  assert.deepEqual(
    [(retried.body.data as OrgInvoice).id, (retried.body.data as OrgInvoice).stripe_invoice_id],
    [row.id, row.stripe_invoice_id],
  );
  await pay(retried.body.data as OrgInvoice);
  assert.equal((await walletOf(owner.token, org)).balance, '5000');
});

Deno.test("a dispute of a paid invoice's payment freezes its credits, and a lost one takes them back", async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const inv = await openInvoice(owner.token, org);
  const charge = chargeIn((await pay(inv, 'card')).events);
  assert.deepEqual(await walletOf(owner.token, org), { balance: '5000', held: '0', available: '5000' });
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  assert.deepEqual(
    await walletOf(owner.token, org),
    { balance: '5000', held: '0', available: '0' },
    'frozen, not held',
  );
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  assert.deepEqual(await walletOf(owner.token, org), { balance: '0', held: '0', available: '0' });
  const [p] = await testDb`select dispute_status from billing.purchases where id = ${inv.id}`;
  assert.equal(p.dispute_status, 'lost');
  await assertLedgerInvariants();
});

Deno.test("an invoice goes to the requester's own confirmed address only: another billing_email is refused, nothing recorded", async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const other = await requestInvoice(owner.token, org, { billing_email: 'accounts@evil.example' });
  assert.equal(other.status, 400, other.text);
  assert.equal(codeOf(other), 'BILLING_EMAIL_NOT_VERIFIED');
  assert.equal((other.body.error as { field: string }).field, 'billing_email');
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invoices where org_id = ${org}`;
  assert.equal(n, 0, 'nothing recorded');
  // Their own address, in any case, is theirs; without billing_email it is used.
  const inv = await openInvoice(owner.token, org, { billing_email: owner.email.toUpperCase() });
  const stripeInv = await stripeApi(`/v1/invoices/${inv.stripe_invoice_id}`);
  assert.equal(stripeInv.customer_email, owner.email);
  // An admin whose address is not confirmed is billed nowhere.
  await testDb`update auth.users set email_confirmed_at = null where id = ${owner.id}`;
  const unconfirmed = await requestInvoice(owner.token, org);
  assert.equal(unconfirmed.status, 400, unconfirmed.text);
  assert.equal(codeOf(unconfirmed), 'BILLING_EMAIL_NOT_VERIFIED');
});

Deno.test('a new organisation asks for invoices only after a card purchase or an operator approval', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100'); // granted credits are no card purchase
  const direct = () =>
    api(`/orgs/${org}/invoices`, { token: owner.token, body: { package_id: 'mini', ...billing }, headers: key() });
  const refused = await direct();
  assert.equal(refused.status, 403, refused.text);
  assert.equal(codeOf(refused), 'ORG_INVOICING_NOT_ALLOWED');
  // Only a platform admin approves: the organisation's own owner cannot.
  const self = await api(`/orgs/${org}/invoicing`, { token: owner.token, method: 'PUT', body: { approved: true } });
  assert.equal(self.status, 403, self.text);
  assert.equal((await direct()).status, 403);
  await approveInvoicing(org);
  assert.equal((await direct()).status, 201);
  await approveInvoicing(org, false);
  assert.equal(codeOf(await direct()), 'ORG_INVOICING_NOT_ALLOWED', 'an approval withdrawn stops new requests');
  // A paid card purchase for the organisation (Checkout) is enough on its own; a refunded one is not.
  const purchase = (refunded: number) =>
    testDb`insert into billing.purchases (user_id, package_id, request_key, price_cents, currency, credits, bonus_credits,
      org_id, origin, status, paid_at, amount_refunded_cents, package_version)
    values (${owner.id}, 'mini', ${crypto.randomUUID()}, 500, 'usd', 5000, 0, ${org}, 'checkout', 'paid', now(), ${refunded}, 1)`;
  await purchase(500);
  assert.equal(codeOf(await direct()), 'ORG_INVOICING_NOT_ALLOWED', 'a refunded card purchase proves no payer');
  await purchase(0);
  assert.equal((await direct()).status, 201);
});

Deno.test('invoice requests are limited per requester and per organisation per day', async () => {
  const [owner, admin] = await Promise.all(['owner', 'admin'].map(person));
  const org = await school(owner, [], 'allowance', null);
  await approveInvoicing(org);
  // Ten drafts today (as requests that died before Stripe leave them): the eleventh is refused.
  await testDb`insert into billing.org_invoices (org_id, package_id, quantity, credits, bonus_credits, amount_cents, currency,
      days_until_due, request_key, created_by, package_version)
    select ${org}, 'mini', 1, 5000, 0, 500, 'usd', 30, 'old-' || i, ${owner.id}, 1 from generate_series(1, 10) i`;
  const over = await requestInvoice(owner.token, org);
  assert.equal(over.status, 429, over.text);
  assert.equal(codeOf(over), 'INVOICE_LIMIT');
  assert.equal((over.body.error as { details: { scope: string } }).details.scope, 'requester');
  // Another admin of the same school has their own 10, but shares the organisation's 20 (ten more
  // asked for by a former admin).
  await testDb`insert into billing.org_members (org_id, user_id, role) values (${org}, ${admin.id}, 'admin')`;
  await testDb`insert into billing.org_admins (org_id, user_id) values (${org}, ${admin.id})`;
  const former = await person('former');
  await testDb`insert into billing.org_invoices (org_id, package_id, quantity, credits, bonus_credits, amount_cents, currency,
      days_until_due, request_key, created_by, package_version)
    select ${org}, 'mini', 1, 5000, 0, 500, 'usd', 30, 'other-' || i, ${former.id}, 1 from generate_series(1, 10) i`;
  const orgOver = await requestInvoice(admin.token, org);
  assert.equal(orgOver.status, 429, orgOver.text);
  assert.equal((orgOver.body.error as { details: { scope: string } }).details.scope, 'organisation');
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invoices where org_id = ${org}`;
  assert.equal(n, 20);
});

Deno.test('text Stripe prints refuses control, bidirectional and zero-width characters and links; countries are ISO 3166-1', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', null);
  const hostile = [
    'URGENT: pay at http://evil.example/pay',
    'see evil.example now',
    'www.pay-now',
    'hxxps://x',
    'mail accounts@evil.example',
    'PO\u202e1234',
    'PO\u2066x\u2069',
    'PO\u200b1',
    'PO\ufeff1',
    'PO\u0007',
    'line\nbreak',
    // Look-alikes and defanged links (NFKC folds full-width letters and dots before the check).
    'pay at evil\u3002com now',
    'evil\uff0ecom',
    '\uff48\uff54\uff54\uff50\uff53\uff1a\uff0f\uff0fevil',
    'hxxps evil[.]example/pay',
    'bit . ly/abc',
    '192.0.2.7/pay',
    'pay\uff20evil',
    'javascript:alert(1)',
    'PO\u3164x',
    'PO\u2800x',
    'PO\ue000',
  ];
  const fields: [string, (v: string) => Record<string, unknown>][] = [
    ['po_number', (v) => ({ po_number: v })],
    ['billing_address.line1', (v) => ({ billing_address: { ...billing.billing_address, line1: v } })],
    ['billing_address.line2', (v) => ({ billing_address: { ...billing.billing_address, line2: v } })],
    ['billing_address.city', (v) => ({ billing_address: { ...billing.billing_address, city: v } })],
    ['billing_address.state', (v) => ({ billing_address: { ...billing.billing_address, state: v } })],
  ];
  for (const [field, body] of fields) {
    // Every value on the PO, the first eleven on the other fields: under the route's 100 a minute.
    for (const v of field === 'po_number' ? hostile : hostile.slice(0, 11)) {
      const r = await requestInvoice(owner.token, org, body(v));
      assert.equal(r.status, 400, `${field} ${JSON.stringify(v)}: ${r.text}`);
      assert.equal((r.body.error as { field: string }).field, field, JSON.stringify(v));
    }
  }
  for (const country of ['ZZ', 'UK', 'EU', 'XX']) {
    const r = await requestInvoice(owner.token, org, { billing_address: { ...billing.billing_address, country } });
    assert.equal(r.status, 400, `${country}: ${r.text}`);
    assert.equal((r.body.error as { field: string }).field, 'billing_address.country');
  }
  // An organisation's name is Stripe's customer name: refused when made, and at invoice time when old.
  const named = await api('/orgs', { token: owner.token, body: { name: 'Pay at http://evil.example' } });
  assert.equal(named.status, 400, named.text);
  assert.equal((named.body.error as { field: string }).field, 'name');
  await testDb`update billing.orgs set name = ${'School \u202eevil.example'} where id = ${org}`;
  const oldName = await requestInvoice(owner.token, org);
  assert.equal(oldName.status, 400, oldName.text);
  assert.equal((oldName.body.error as { field: string }).field, 'name');
  const [{ sent }] = await testDb`select count(*)::int as sent from billing.org_invoices
    where org_id = ${org} and stripe_invoice_id is not null`;
  assert.equal(sent, 0, 'nothing reached Stripe');
  // Plain text is taken: accents, apostrophes, St. with a space, a GB address.
  await testDb`update billing.orgs set name = 'École Saint-Exupéry' where id = ${org}`;
  await openInvoice(owner.token, org, {
    po_number: "PO 2026/17 (St. Mary's)",
    billing_address: { line1: '12 Rue de l’Église', city: 'Zürich', postal_code: 'SW1A 1AA', country: 'GB' },
  });
});

Deno.test('an admin removed after a request failed half-way cannot finish it with the same Idempotency-Key', async () => {
  const [owner, admin] = await Promise.all(['owner', 'admin'].map(person));
  const org = await school(owner, [], 'allowance', null);
  await join(owner.token, org, admin, 'admin');
  const headers = key();
  const down = await requestWhileStripeDown(admin.token, org, headers);
  assert.equal(down.status, 502, down.text);
  const removed = await api(`/orgs/${org}/members/${admin.id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);

  // The retry names the attacker's own mailbox: were it honoured, the school's Stripe customer
  // and its invoice would be made out to it.
  const retried = await requestInvoice(admin.token, org, { billing_email: 'attacker@evil.test' }, headers);
  assert.equal(retried.status, 404, retried.text);
  assert.equal(codeOf(retried), 'ORG_NOT_FOUND');
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
