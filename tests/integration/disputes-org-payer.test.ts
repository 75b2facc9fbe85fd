// The buyer is who paid (docs/credit-lots.md § Refunds, disputes and debt): an organisation's
// purchase disputed suspends the user who paid it, whatever their role later, and after a loss
// they owe what was spent of it, wherever it was spent, exactly as if they had bought for
// themselves. A student with a second address cannot launder a disputed card payment through a
// school of their own: an allowance, the pool or a sponsor code. A school an operator verified
// answers for its own purchases from its wallet instead; its admins are not suspended for them
// and its other members are never billed.
import assert from 'node:assert/strict';
import { adminToken, api, assertLedgerInvariants, key, spend, testDb, until } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { accountOf, assertDisputed, join, person, schoolBoughtBy, usageBy, verifyOrg } from '../support/orgs.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { issue, redeem } from '../support/codes.ts';
import { coreInvariants, figures, loseDispute, openDispute } from '../support/disputed.ts';
import { billing, chargeIn, pay } from '../support/invoices.ts';
import { emulator } from '../support/purchases.ts';

type Person = Awaited<ReturnType<typeof person>>;

/**
 * The nine calls: S buys for a school of their own, invites H (S's second address) as an admin,
 * hands H the ownership; H removes S and invites S back as a member.
 */
async function handedToSecondAddress(funding: 'allowance' | 'pool') {
  const s = await person('payer');
  const h = await person('second');
  const { org, purchase } = await schoolBoughtBy(s, funding);
  await join(s.token, org, h, 'admin');
  const owner = await api(`/orgs/${org}/owner`, { token: s.token, body: { user_id: h.id } });
  assert.equal(owner.status, 200, owner.text);
  const removed = await api(`/orgs/${org}/members/${s.id}`, { token: h.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);
  return { s, h, org, purchase };
}

/** S is suspended: usage answers 403 ACCOUNT_DISPUTED. */
const assertSuspended = async (token: string) => assertDisputed(await usageBy(token), 'suspended');

/** After the loss S's own account owes what S spent of the school's purchase; the wallet owes nothing. */
async function assertPayerOwes(s: Person, org: string, spent: string) {
  const f = await figures(s.id);
  assert.equal(f.balance, `-${spent}`, 'S owes what was spent, as if S had bought for themselves');
  assert.equal(f.in_debt, true);
  const wallet = await accountOf(org, null);
  assert.ok(!wallet.balance.startsWith('-'), `the wallet owes nothing (${wallet.balance})`);
  await assertSuspendedNoMore(s.token);
  await coreInvariants([s.id]);
  await assertLedgerInvariants();
}

/** Closed, the dispute suspends no more: S is refused for debt, not for the dispute. */
async function assertSuspendedNoMore(token: string) {
  const r = await usageBy(token);
  assert.notEqual(codeOf(r), 'ACCOUNT_DISPUTED', r.text);
  assert.equal(r.status, 402, r.text);
}

Deno.test('a payer laundering a disputed purchase through an allowance of their own school is suspended, then owes it', async () => {
  const { s, h, org, purchase } = await handedToSecondAddress('allowance');
  await join(h.token, org, s);
  const funded = await api(`/orgs/${org}/allowances`, {
    token: h.token,
    headers: key(),
    body: { amount: '5000', user_id: s.id },
  });
  assert.equal(funded.status, 201, funded.text);
  await spend(s.token, 4000);
  await openDispute(purchase.session_id);
  await assertSuspended(s.token);
  // H did not pay: H is not suspended (a second address's own purchase would be their own).
  assert.equal((await usageBy(h.token)).status, 402, 'H has no credits of their own, and is not suspended');
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, s.id)).balance, '0', "the allowance's 1,000 left is taken back");
  await assertPayerOwes(s, org, '4000');
});

Deno.test("a payer laundering a disputed purchase through their own school's pool is suspended, then owes it", async () => {
  const { s, h, org, purchase } = await handedToSecondAddress('pool');
  await join(h.token, org, s);
  await spend(s.token, 4000);
  await openDispute(purchase.session_id);
  await assertSuspended(s.token);
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, null)).balance, '0', "the pool's 1,000 left is taken back");
  await assertPayerOwes(s, org, '4000');
});

Deno.test('a payer laundering a disputed purchase through a sponsor code of their own school is suspended, then owes it', async () => {
  const { s, h, org, purchase } = await handedToSecondAddress('allowance');
  await join(h.token, org, s);
  const code = await issue(h.token, org, { credits: '5000', user_id: s.id });
  assert.equal(code.status, 201, code.text);
  assert.equal((await redeem(s.token, (dataOf(code) as { code: string }).code)).status, 200);
  await spend(s.token, 4000);
  await openDispute(purchase.session_id);
  await assertSuspended(s.token);
  await loseDispute(purchase.session_id);
  await assertPayerOwes(s, org, '4000');
});

Deno.test("while an organisation's purchase is disputed, the admin who paid cannot move its money", async () => {
  const s = await person('payer');
  const other = await person('admin');
  const member = await person('member');
  const { org, purchase } = await schoolBoughtBy(s, 'allowance');
  await join(s.token, org, other, 'admin');
  await join(s.token, org, member);
  await openDispute(purchase.session_id);
  const refused = [
    await api(`/orgs/${org}/allowances`, {
      token: s.token,
      headers: key(),
      body: { amount: '10', user_id: member.id },
    }),
    await issue(s.token, org, { credits: '10', user_id: member.id }),
    await api(`/orgs/${org}/owner`, { token: s.token, body: { user_id: other.id } }),
  ];
  for (const r of refused) {
    assert.equal(r.status, 403, r.text);
    assert.equal(codeOf(r), 'ACCOUNT_DISPUTED', r.text);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = any(array[t.from_account_id, t.to_account_id]) where a.org_id = ${org} and a.member_id is not null`;
  assert.equal(n, 0, 'nothing reached the member');
});

Deno.test('a verified school answers for its own purchase: its payer is not suspended, its members never billed', async () => {
  const s = await person('payer');
  const member = await person('member');
  const { org, purchase } = await schoolBoughtBy(s, 'allowance', true);
  await join(s.token, org, member);
  const funded = await api(`/orgs/${org}/allowances`, {
    token: s.token,
    headers: key(),
    body: { amount: '5000', user_id: member.id },
  });
  assert.equal(funded.status, 201, funded.text);
  await spend(member.token, 4000);
  await openDispute(purchase.session_id);
  assert.notEqual(
    codeOf(await usageBy(s.token)),
    'ACCOUNT_DISPUTED',
    'the payer of a verified school is not suspended',
  );
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, null)).balance, '-4000', 'the wallet owes what its member spent');
  assert.equal((await balanceOf(member.token)).balance, '0', 'the member is never billed');
  const own = await figures(s.id);
  assert.ok(!own?.in_debt, 'the payer owes nothing');
  await assertLedgerInvariants();
});

Deno.test('PUT /orgs/:id/verification is for platform admins only, and names an organisation that exists', async () => {
  const s = await person('payer');
  const created = await api('/orgs', { token: s.token, body: { name: 'Own School' } });
  const org = (created.body.data as { id: string }).id;
  const byOwner = await api(`/orgs/${org}/verification`, { method: 'PUT', token: s.token, body: { verified: true } });
  assert.equal(byOwner.status, 403, byOwner.text);
  const admin = await adminToken();
  const missing = await api(`/orgs/${crypto.randomUUID()}/verification`, {
    method: 'PUT',
    token: admin,
    body: { verified: true },
  });
  assert.equal(missing.status, 404, missing.text);
  const bad = await api(`/orgs/${org}/verification`, { method: 'PUT', token: admin, body: { verified: 'yes' } });
  assert.equal(bad.status, 400, bad.text);
  const [{ verified_at }] = await testDb`select verified_at from billing.orgs where id = ${org}`;
  assert.equal(verified_at, null, 'refusals change nothing');
  const verified = await api(`/orgs/${org}/verification`, { method: 'PUT', token: admin, body: { verified: true } });
  assert.equal(verified.status, 200, verified.text);
  assert.equal(dataOf(verified).verified, true);
});

/**
 * O owns a school and bought once by card (so it may ask for invoices); A joins it as an admin
 * and asks for an invoice (A is its creator, so its buyer); M is a member.
 */
async function schoolWithAdminsInvoice() {
  const o = await person('owner');
  const a = await person('admin');
  const m = await person('member');
  const { org } = await schoolBoughtBy(o, 'allowance');
  await join(o.token, org, a, 'admin');
  await join(o.token, org, m);
  const asked = await api(`/orgs/${org}/invoices`, {
    token: a.token,
    headers: key(),
    body: { package_id: 'mini', ...billing },
  });
  assert.equal(asked.status, 201, asked.text);
  const inv = dataOf(asked) as { id: string; stripe_invoice_id: string; hosted_invoice_url: string | null };
  return { o, a, m, org, inv };
}

/** The invoice paid by card on its hosted page and its charge; undefined when it can no longer be paid. */
async function payByCard(inv: { stripe_invoice_id: string }) {
  try {
    return chargeIn((await pay(inv, 'card')).events);
  } catch {
    return undefined;
  }
}

Deno.test('an admin removed before their invoice is paid keeps its page to themselves; paid, they answer for it', async () => {
  const { o, a, m, org, inv } = await schoolWithAdminsInvoice();
  const removed = await api(`/orgs/${org}/members/${a.id}`, { token: o.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);
  // No one left in the school is handed A's payment page: whoever pays it now paid with A's page.
  const listed = await api(`/orgs/${org}/invoices`, { token: o.token });
  const seen = (listed.body.data as { items: Record<string, unknown>[] }).items.find((i) => i.id === inv.id);
  assert.equal(seen?.hosted_invoice_url ?? null, null, listed.text);
  const charge = await payByCard(inv);
  assert.ok(charge, 'the invoice stays payable on its page');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: o.token,
    headers: key(),
    body: { amount: '10000', user_id: m.id },
  });
  assert.equal(funded.status, 201, funded.text);
  await spend(m.token, 9000);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const status = async () =>
    (await testDb`select dispute_status from billing.purchases where id = ${inv.id}`)[0]?.dispute_status;
  await until('disputed', async () => (await status()) === 'open');
  await assertSuspended(a.token);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await until('lost', async () => (await status()) === 'lost');
  assert.equal((await figures(a.id)).in_debt, true, 'A, whose page paid it, owes what was spent of it');
  assert.equal((await balanceOf(m.token)).balance.startsWith('-'), false, 'the member is never billed');
  await assertLedgerInvariants();
});

Deno.test("an invoice's payment page is for the admin who answers for its payment, not another admin", async () => {
  const { o, inv } = await schoolWithAdminsInvoice();
  assert.ok(inv.hosted_invoice_url, 'A, who asked for it (and answers for its payment), has the link');
  const org = (await testDb`select org_id from billing.org_invoices where id = ${inv.id}`)[0].org_id as string;
  // Another admin (the owner) who could pay it with a card of theirs, dispute the charge and leave
  // A suspended and in debt for it must not be handed A's payment page.
  const listed = await api(`/orgs/${org}/invoices`, { token: o.token });
  assert.equal(listed.status, 200, listed.text);
  const seen = (listed.body.data as { items: Record<string, unknown>[] }).items.find((i) => i.id === inv.id);
  assert.ok(seen, listed.text);
  assert.equal(seen.hosted_invoice_url ?? null, null, "another admin is not given A's invoice's payment page");
  assert.equal(seen.invoice_pdf ?? null, null, "nor A's invoice's PDF (its bank details pay it too)");
});

Deno.test('a school verified after a purchase does not answer for it: who paid before still does', async () => {
  const { s, h, org, purchase } = await handedToSecondAddress('allowance');
  await join(h.token, org, s);
  const funded = await api(`/orgs/${org}/allowances`, {
    token: h.token,
    headers: key(),
    body: { amount: '5000', user_id: s.id },
  });
  assert.equal(funded.status, 201, funded.text);
  await spend(s.token, 4000);
  // The school, run by H now, looks real enough and an operator verifies it: a fact about who it
  // is from now on, not a transfer of what S's card paid before.
  await verifyOrg(org);
  await openDispute(purchase.session_id);
  await assertSuspended(s.token);
  await loseDispute(purchase.session_id);
  await assertPayerOwes(s, org, '4000');
});

Deno.test("a payer with credits of their own pays what was spent of their school's disputed purchase from them first", async () => {
  const { s, h, org, purchase } = await handedToSecondAddress('pool');
  await join(h.token, org, s);
  await buy(s.token, 'mini'); // S's own 5,000
  await until("S's own credits", async () => (await figures(s.id)).balance === '5000');
  await spend(s.token, 4000); // the pool pays first (org_pays_first)
  assert.equal((await figures(s.id)).balance, '5000', 'the pool paid, not S');
  await openDispute(purchase.session_id);
  await assertSuspended(s.token);
  await loseDispute(purchase.session_id);
  const f = await figures(s.id);
  assert.deepEqual(
    { balance: f.balance, in_debt: f.in_debt },
    { balance: '1000', in_debt: false },
    'owed from own credits',
  );
  assert.equal((await accountOf(org, null)).balance, '0', "the pool's 1,000 left is taken back");
  assert.equal((await usageBy(s.token)).status, 201, 'closed and paid: S spends again');
  await coreInvariants([s.id]);
  await assertLedgerInvariants();
});
