// Laundering a disputed card payment through organisations (issue #83), tried by someone who did
// not write the rule (docs/credit-lots.md § Refunds, disputes and debt): the payer S, who controls
// a second address H, tries to escape the suspension while the dispute is open, the debt after it
// is lost, to have another member or redeemer billed, or an unverified school treated as
// verified. The nine calls of the issue, the pool and sponsor-code variants and the verified
// school are in disputes-org-payer.test.ts; these are the other ways round it: what S set up
// before the dispute (codes, invitations), what S may still do during it, another admin's moves
// while it is open, a member's hold in flight, a refund during it, a second school, and the
// moment a school's verification is read.
import assert from 'node:assert/strict';
import { adminToken, api, key, spend, testDb, until } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import {
  accountOf,
  assertDisputed,
  join,
  person,
  school,
  schoolBoughtBy,
  usageBy,
  verifyOrg,
} from '../support/orgs.ts';
import { chargeOf, emulator, startCheckout } from '../support/purchases.ts';
import { issue, redeem } from '../support/codes.ts';
import { billing } from '../support/invoices.ts';
import { figures, loseDispute, openDispute } from '../support/disputed.ts';
import { capture, holdIdOf, placeHold, reservationInvariants } from '../support/reserved.ts';

type Person = Awaited<ReturnType<typeof person>>;

const fundAllowance = (token: string, org: string, user: string, amount: string) =>
  api(`/orgs/${org}/allowances`, { token, headers: key(), body: { amount, user_id: user } });

/** S owes exactly `spent` on their own account; nobody else's account is negative. */
async function assertOnlyPayerOwes(s: Person, org: string, spent: string, others: Person[]) {
  const f = await figures(s.id);
  assert.equal(f.balance, `-${spent}`, 'S owes what was spent of the purchase');
  const wallet = await accountOf(org, null);
  assert.ok(!wallet.balance.startsWith('-'), `the wallet owes nothing (${wallet.balance})`);
  for (const o of others) {
    const own = await figures(o.id);
    assert.ok(!own || !own.balance.startsWith('-'), `${o.email} is never billed (${own?.balance})`);
    const allowance = await accountOf(org, o.id);
    assert.ok(!allowance || !allowance.balance.startsWith('-'), `${o.email}'s allowance owes nothing`);
  }
  await reservationInvariants([s.id, ...others.map((o) => o.id)]);
}

// Who answers for a school's purchase is read from when it was paid (Stripe's charge time), not
// when the server learns of it (the webhook, or the success page's poll): a card payment made
// while the school was unverified, learned after an operator verified it (a webhook late by
// minutes or hours, as Stripe retries), is still its payer's.
Deno.test('a card payment made before the school was verified is answered for by its payer, however late the server learns of it', async () => {
  const s = await person('payer');
  const h = await person('second');
  const org = await school(s, [], 'allowance', null);
  const co = await startCheckout(s.token, 'mini', undefined, org);
  // S pays at Stripe; its events are not delivered yet.
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded', deliver: false });
  // Stripe times a charge in whole seconds; one in the verification's own second counts as after it.
  await new Promise((r) => setTimeout(r, 1100));
  await verifyOrg(org);
  const polled = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  assert.equal((dataOf(polled) as { status: string }).status, 'paid', polled.text);
  await join(s.token, org, h);
  assert.equal((await fundAllowance(s.token, org, h.id, '5000')).status, 201);
  await spend(h.token, 4000);
  await openDispute(co.session_id);
  assertDisputed(await usageBy(s.token), 'S paid before the school was verified: S is suspended');
  await loseDispute(co.session_id);
  await assertOnlyPayerOwes(s, org, '4000', [h]);
});

Deno.test('what a suspended payer set up before the dispute does nothing during it, and no admin moves the disputed credits', async () => {
  const s = await person('payer');
  const h = await person('second');
  const m = await person('member');
  const invitee = await person('invitee');
  const { org, purchase } = await schoolBoughtBy(s);
  await join(s.token, org, h, 'admin');
  await join(s.token, org, m);
  const codeOfS = await issue(s.token, org, { credits: '1000', user_id: m.id });
  const codeOfH = await issue(h.token, org, { credits: '1000', user_id: m.id });
  assert.equal(codeOfS.status, 201, codeOfS.text);
  assert.equal(codeOfH.status, 201, codeOfH.text);
  const invited = await api(`/orgs/${org}/invitations`, {
    token: s.token,
    body: { email: invitee.email, role: 'admin' },
  });
  assert.equal(invited.status, 201, invited.text);
  await openDispute(purchase.session_id);

  // Sent before: S's code and S's invitation no longer speak for the school; H's code is on hold.
  const bySCode = await redeem(m.token, (dataOf(codeOfS) as { code: string }).code);
  assert.equal(bySCode.status, 409, bySCode.text);
  const byHCode = await redeem(m.token, (dataOf(codeOfH) as { code: string }).code);
  assert.equal(byHCode.status, 409, byHCode.text);
  const accepted = await api('/orgs/invitations/accept', {
    token: invitee.token,
    body: { token: (invited.body.data as { token: string }).token },
  });
  assert.equal(accepted.status, 409, accepted.text);

  // S moves nothing of the school's: revoke, switch funding, remove, invoice, buy for it.
  const codeId = (dataOf(codeOfS) as { id: string }).id;
  assertDisputed(await api(`/orgs/${org}/sponsor-codes/${codeId}`, { token: s.token, method: 'DELETE' }), 'revoke');
  assertDisputed(await api(`/orgs/${org}`, { token: s.token, method: 'PATCH', body: { funding: 'pool' } }), 'pool');
  assertDisputed(await api(`/orgs/${org}/members/${m.id}`, { token: s.token, method: 'DELETE' }), 'remove');
  assertDisputed(
    await api(`/orgs/${org}/invoices`, { token: s.token, headers: key(), body: { package_id: 'mini', ...billing } }),
    'invoice',
  );
  assertDisputed(
    await api('/checkout/sessions', { token: s.token, headers: key(), body: { package_id: 'mini', org_id: org } }),
    'checkout for the school',
  );
  // H, in good standing, cannot move the frozen credits either: nothing else is in the wallet.
  const funded = await fundAllowance(h.token, org, m.id, '100');
  assert.equal(funded.status, 402, funded.text);
  const revoked = await api(`/orgs/${org}/sponsor-codes/${codeId}`, { token: h.token, method: 'DELETE' });
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal((await accountOf(org, null)).balance, '3000', 'the frozen escrow stays where it is');

  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, null)).balance, '0');
  const [{ n }] = await testDb`select count(*)::int as n from billing.accounts a
    where a.org_id = ${org} and a.balance <> 0`;
  assert.equal(n, 0, 'every account of the school holds nothing of it, and owes nothing');
  assert.equal((await figures(s.id)).balance, '0', 'nothing was spent: S owes nothing');
  await reservationInvariants([s.id, h.id, m.id]);
});

Deno.test("a member's hold on the disputed school credits, captured while the dispute is open, is owed by the payer", async () => {
  const s = await person('payer');
  const m = await person('member');
  const { org, purchase } = await schoolBoughtBy(s);
  await join(s.token, org, m);
  assert.equal((await fundAllowance(s.token, org, m.id, '5000')).status, 201);
  await spend(m.token, 1000);
  const hold = await placeHold(m.token, '3000');
  assert.equal(hold.status, 201, hold.text);
  await openDispute(purchase.session_id);
  // Work already under way finishes: the member (never suspended) captures 2,000 of it.
  const captured = await capture(m.token, holdIdOf(hold), '2000');
  assert.equal(captured.status, 200, captured.text);
  assertDisputed(await usageBy(s.token), 'S is suspended');
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, m.id)).balance, '0', "the allowance's 2,000 left is taken back");
  await assertOnlyPayerOwes(s, org, '3000', [m]);
});

Deno.test("a refund during an open dispute of a school's purchase, then its loss, leave the payer owing exactly what was spent", async () => {
  const s = await person('payer');
  const m = await person('member');
  const { org, purchase } = await schoolBoughtBy(s);
  await join(s.token, org, m);
  assert.equal((await fundAllowance(s.token, org, m.id, '4000')).status, 201);
  await spend(m.token, 3000);
  await openDispute(purchase.session_id);
  const [p] = await testDb`select id, price_cents + tax_cents as paid from billing.purchases
    where stripe_session_id = ${purchase.session_id}`;
  await emulator(`/_emulator/charges/${await chargeOf(purchase.session_id)}/refund`, { amount: p.paid / 2 });
  await until(
    'half refunded',
    async () => (await testDb`select amount_refunded_cents as c from billing.purchases where id = ${p.id}`)[0].c > 0,
  );
  // Half of 5,000 back: the 2,000 left (allowance and wallet) and 500 of what was spent, owed by S.
  assert.equal((await figures(s.id)).balance, '-500');
  assertDisputed(await usageBy(s.token), 'still disputed: S stays suspended');
  await loseDispute(purchase.session_id);
  await assertOnlyPayerOwes(s, org, '3000', [m]);
});

Deno.test("a payer's debt for a school's purchase is never taken from another school's allowance of theirs", async () => {
  const s = await person('payer');
  const h = await person('second');
  const other = await person('owner2');
  const { org, purchase } = await schoolBoughtBy(s);
  await join(s.token, org, h);
  assert.equal((await fundAllowance(s.token, org, h.id, '5000')).status, 201);
  await spend(h.token, 4000);
  // A second school, another owner's money, funds S as a member.
  const { org: org2 } = await schoolBoughtBy(other);
  await join(other.token, org2, s);
  assert.equal((await fundAllowance(other.token, org2, s.id, '2000')).status, 201);
  await openDispute(purchase.session_id);
  assertDisputed(await usageBy(s.token), "S cannot spend the other school's allowance while suspended");
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org2, s.id)).balance, '2000', "the other school's allowance pays nothing of S's debt");
  assert.equal((await accountOf(org2, null)).balance, '3000');
  await assertOnlyPayerOwes(s, org, '4000', [h]);
});

Deno.test('while the payer is suspended, another admin handing them ownership or switching to a pool moves nothing frozen', async () => {
  const s = await person('payer');
  const h = await person('second');
  const m = await person('member');
  const { org, purchase } = await schoolBoughtBy(s);
  await join(s.token, org, h, 'admin');
  assert.equal((await api(`/orgs/${org}/owner`, { token: s.token, body: { user_id: h.id } })).status, 200);
  assert.equal((await api(`/orgs/${org}/members/${s.id}`, { token: h.token, method: 'DELETE' })).status, 200);
  await join(h.token, org, s);
  await join(h.token, org, m);
  assert.equal((await fundAllowance(h.token, org, s.id, '2500')).status, 201);
  assert.equal((await fundAllowance(h.token, org, m.id, '2500')).status, 201);
  await spend(s.token, 1000);
  await spend(m.token, 1000);
  await openDispute(purchase.session_id);
  assert.equal((await api(`/orgs/${org}`, { token: h.token, method: 'PATCH', body: { funding: 'pool' } })).status, 200);
  assert.equal((await api(`/orgs/${org}/owner`, { token: h.token, body: { user_id: s.id } })).status, 200);
  // The allowances' frozen credits stayed where they were: not swept into the pool.
  assert.equal((await accountOf(org, null)).balance, '0');
  assert.equal((await accountOf(org, s.id)).balance, '1500');
  assert.equal((await usageBy(m.token)).status, 402, 'the pool holds nothing the dispute did not freeze');
  assertDisputed(await usageBy(s.token), 'S, now the owner, is suspended all the same');
  assertDisputed(await api(`/orgs/${org}/owner`, { token: s.token, body: { user_id: h.id } }), 'ownership');
  await loseDispute(purchase.session_id);
  await assertOnlyPayerOwes(s, org, '2000', [h, m]);
});

Deno.test("withdrawing a school's verification after a purchase does not move who answers for it: its wallet still does", async () => {
  const s = await person('payer');
  const m = await person('member');
  const { org, purchase } = await schoolBoughtBy(s, 'allowance', true);
  await join(s.token, org, m);
  assert.equal((await fundAllowance(s.token, org, m.id, '5000')).status, 201);
  await spend(m.token, 4000);
  const withdrawn = await api(`/orgs/${org}/verification`, {
    method: 'PUT',
    token: await adminToken(),
    body: { verified: false },
  });
  assert.equal(withdrawn.status, 200, withdrawn.text);
  await openDispute(purchase.session_id);
  assert.notEqual(codeOf(await usageBy(s.token)), 'ACCOUNT_DISPUTED', 'settled as it was paid');
  await loseDispute(purchase.session_id);
  assert.equal((await accountOf(org, null)).balance, '-4000', 'the wallet owes what its member spent');
  assert.ok(!(await figures(m.id))?.balance.startsWith('-'), 'the member is never billed');
  await reservationInvariants([s.id, m.id]);
});
