// Sponsor codes: an organisation's owner or admin sets credits aside for one named student. The
// credits leave the wallet for the code's escrow at issue (so the wallet's later spending cannot
// break the promise), keep their provenance when the student redeems them, and go back to the
// wallet when the code is revoked or its window closes. Only the named student can redeem it.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, movedLotsOffProvenance, testDb, userToken } from '../helpers.ts';
import { codeOf, dataOf } from '../money.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { redeem } from '../codes.ts';
import { chargeOf, emulator } from '../purchases.ts';

async function issue(token: string, org: string, body: Record<string, unknown>) {
  return await api(`/orgs/${org}/sponsor-codes`, { token, headers: key(), body });
}

Deno.test('a sponsor code moves credits from the wallet at issue; the named student redeems them', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', '100');
  const r = await issue(owner.token, org, { credits: '30', user_id: student.id, note: 'travel grant' });
  assert.equal(r.status, 201, r.text);
  const { code, id } = dataOf(r) as { code: string; id: string };
  assert.equal((await walletOf(owner.token, org)).balance, '70', 'set aside at issue');
  const redeemed = await redeem(student.token, code);
  assert.equal(redeemed.status, 200, redeemed.text);
  assert.equal(dataOf(redeemed).credits, '30');
  assert.equal(dataOf(redeemed).org_id, org);
  const list = await api(`/orgs/${org}/sponsor-codes`, { token: owner.token });
  const row = (list.body.data as { items: Record<string, unknown>[] }).items.find((x) => x.id === id);
  assert.equal(row?.status, 'redeemed');
  assert.deepEqual(await movedLotsOffProvenance(), []);
  await assertLedgerInvariants();
});

Deno.test('a sponsor code named by email is redeemed by that address only; anyone else finds no such code', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const other = await person('other');
  const org = await school(owner, [student], 'allowance', '100');
  const r = await issue(owner.token, org, { credits: '10', email: student.email.toUpperCase() });
  const { code } = dataOf(r) as { code: string };
  const stolen = await redeem(other.token, code);
  assert.equal(stolen.status, 404, stolen.text);
  assert.equal(codeOf(stolen), 'CODE_NOT_FOUND');
  const byOwner = await redeem(owner.token, code);
  assert.equal(codeOf(byOwner), 'CODE_NOT_FOUND', 'not even its issuer');
  assert.equal((await redeem(student.token, code)).status, 200);
});

Deno.test('a sponsor code needs the credits now: a wallet short of them refuses (402), and members cannot issue', async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'allowance', '10');
  const short = await issue(owner.token, org, { credits: '11', user_id: member.id });
  assert.equal(short.status, 402, short.text);
  const [{ n }] = await testDb`select count(*)::int as n from billing.codes where org_id = ${org}`;
  assert.equal(n, 0, 'nothing is left behind');
  const byMember = await issue(member.token, org, { credits: '1', user_id: member.id });
  assert.equal(byMember.status, 403, byMember.text);
  const outsider = await person('outsider');
  assert.equal((await issue(outsider.token, org, { credits: '1', user_id: outsider.id })).status, 404);
});

Deno.test('revoking a sponsor code gives its credits back to the wallet; the code then redeems nothing', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', '50');
  const { code, id } = dataOf(await issue(owner.token, org, { credits: '20', user_id: student.id })) as {
    code: string;
    id: string;
  };
  const revoked = await api(`/orgs/${org}/sponsor-codes/${id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal((await walletOf(owner.token, org)).balance, '50');
  const again = await api(`/orgs/${org}/sponsor-codes/${id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(again.status, 200, 'revoking again answers the same');
  const r = await redeem(student.token, code);
  assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE');
  await assertLedgerInvariants();
});

Deno.test('a sponsor code past its window returns to the wallet at the sweep', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', '40');
  const { code, id } = dataOf(await issue(owner.token, org, { credits: '15', user_id: student.id })) as {
    code: string;
    id: string;
  };
  await testDb`update billing.codes set valid_from = now() - interval '2 days', valid_until = now() - interval '1 second'
               where id = ${id}`;
  await testDb`select billing.close_expired_sponsor_codes(1000)`;
  assert.equal((await walletOf(owner.token, org)).balance, '40');
  assert.equal(codeOf(await redeem(student.token, code)), 'CODE_NOT_REDEEMABLE');
  await assertLedgerInvariants();
});

Deno.test("a refund of the organisation's purchase reaches credits parked in a sponsor code and redeemed by the student", async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', null);
  // The organisation buys 5,000 credits (mini, 500¢), then parks 3,000 behind a code.
  const co = await api('/checkout/sessions', {
    token: owner.token,
    headers: key(),
    body: { package_id: 'mini', org_id: org },
  });
  assert.equal(co.status, 201, co.text);
  const session = (co.body.data as { session_id: string }).session_id;
  await emulator(`/_emulator/checkout/sessions/${session}/pay`, { outcome: 'succeeded' });
  const { code } = dataOf(await issue(owner.token, org, { credits: '3000', user_id: student.id })) as { code: string };
  // An invitee who has not joined yet may be named (they must join before redeeming).
  const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: 'nobody@school.test' } });
  assert.equal(invited.status, 201, invited.text);
  const parked = await issue(owner.token, org, { credits: '1000', email: 'nobody@school.test' });
  assert.equal(parked.status, 201);
  assert.equal((await redeem(student.token, code)).status, 200);
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 500 });
  const bal = (await api('/credits/balance', { token: student.token })).body.data as { balance: string };
  assert.equal(bal.balance, '0', "the student's sponsored credits came from the refunded purchase");
  const [{ escrow }] =
    await testDb`select trim_scale(coalesce(sum(a.balance), 0))::text as escrow from billing.accounts a
    join billing.codes c on c.id = a.code_id where c.org_id = ${org}`;
  assert.equal(escrow, '0', 'nor does an unredeemed code keep them');
  assert.equal((await walletOf(owner.token, org)).balance, '0');
  await assertLedgerInvariants();
});

Deno.test('a sponsor code whose escrowed credits expired is refused as expired, not refunded', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', null);
  // Promotional credits that end in two seconds: they keep their expiry in the escrow.
  await testDb`select billing.grant_credits(null, 30, 'promo_grant', ${'expiring:' + org}, null, null, '{}'::jsonb,
    jsonb_build_object('category', 'promotional', 'expires_at', now() + interval '2 seconds'), billing.org_wallet_id(${org}))`;
  const { code } = dataOf(await issue(owner.token, org, { credits: '30', user_id: student.id })) as { code: string };
  await new Promise((done) => setTimeout(done, 2500));
  const r = await redeem(student.token, code);
  assert.equal(r.status, 409, r.text);
  assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE');
  assert.equal((r.body.error as { details: { reason: string } }).details.reason, 'expired');
  await assertLedgerInvariants();
});

/** `who` is invited to `org` as `role` and accepts. */
async function join(ownerToken: string, org: string, who: { token: string; email: string }, role = 'member') {
  const inv = await api(`/orgs/${org}/invitations`, { token: ownerToken, body: { email: who.email, role } });
  assert.equal(inv.status, 201, inv.text);
  const ok = await api('/orgs/invitations/accept', {
    token: who.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  assert.equal(ok.status, 200, ok.text);
}

Deno.test("an admin cannot move the wallet's credits to their own outside account through a sponsor code", async () => {
  const [owner, admin, outside] = await Promise.all(['owner', 'admin', 'outside'].map(person));
  const org = await school(owner, [], 'allowance', '5000');
  await join(owner.token, org, admin, 'admin');
  for (const body of [{ credits: '3000', user_id: outside.id }, { credits: '3000', email: outside.email }]) {
    const r = await issue(admin.token, org, body);
    assert.equal(r.status, 404, r.text);
    assert.equal(codeOf(r), 'MEMBER_NOT_FOUND');
  }
  assert.equal((await walletOf(owner.token, org)).balance, '5000', 'nothing set aside');
  // A code made before the rule (named for the outside account) is refused at redemption.
  const pupil = await person('pupil');
  await join(owner.token, org, pupil);
  const { code, id } = dataOf(await issue(admin.token, org, { credits: '3000', user_id: pupil.id })) as {
    code: string;
    id: string;
  };
  await testDb`update billing.codes set for_user = ${outside.id} where id = ${id}`;
  const r = await redeem(outside.token, code);
  assert.equal(r.status, 409, r.text);
  assert.equal((r.body.error as { details: { reason: string } }).details.reason, 'members only');
  assert.equal(
    await testDb`select 1 from billing.accounts where user_id = ${outside.id} and balance > 0`.then((x) => x.length),
    0,
  );
  // Removed, the admin's unredeemed codes give their credits back at once (no sweep needed).
  const removed = await api(`/orgs/${org}/members/${admin.id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);
  assert.equal((await walletOf(owner.token, org)).balance, '5000');
  const [{ status }] = await testDb`select status from billing.codes where id = ${id}`;
  assert.equal(status, 'void');
  await assertLedgerInvariants();
});

Deno.test('a sponsor code may name an invitee, who redeems it once a member; a member removed redeems nothing', async () => {
  const [owner, invitee, kept] = await Promise.all(['owner', 'invitee', 'kept'].map(person));
  const org = await school(owner, [kept], 'allowance', '100');
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: invitee.email } });
  assert.equal(inv.status, 201, inv.text);
  const { code } = dataOf(await issue(owner.token, org, { credits: '10', email: invitee.email })) as { code: string };
  const early = await redeem(invitee.token, code);
  assert.equal((early.body.error as { details: { reason: string } }).details.reason, 'members only', early.text);
  const accepted = await api('/orgs/invitations/accept', {
    token: invitee.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  assert.equal(accepted.status, 200, accepted.text);
  assert.equal((await redeem(invitee.token, code)).status, 200, 'a member now');
  // A member removed before redeeming: the code's credits go back with the removal.
  const { code: keptCode } = dataOf(await issue(owner.token, org, { credits: '20', user_id: kept.id })) as {
    code: string;
  };
  assert.equal((await walletOf(owner.token, org)).balance, '70');
  await api(`/orgs/${org}/members/${kept.id}`, { token: owner.token, method: 'DELETE' });
  assert.equal((await walletOf(owner.token, org)).balance, '90');
  assert.equal(codeOf(await redeem(kept.token, keptCode)), 'CODE_NOT_REDEEMABLE');
  await assertLedgerInvariants();
});

Deno.test('issuer and redeemer cannot be one person under two accounts (the same confirmed address, case aside)', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  // A second account of the owner's, with the owner's address in other case, joined as a member.
  const id = crypto.randomUUID();
  await testDb`insert into auth.users (id, email, email_confirmed_at) values (${id}, ${owner.email.toUpperCase()}, now())`;
  const twin = {
    id,
    email: owner.email.toUpperCase(),
    token: await userToken(id, { claims: { email: owner.email.toUpperCase() } }),
  };
  await testDb`select billing.set_member_role(${org}, ${id}, 'member')`;
  const r = await issue(owner.token, org, { credits: '50', user_id: twin.id });
  assert.equal(r.status, 403, r.text);
  assert.equal(codeOf(r), 'ORG_FORBIDDEN');
  // Nor an allowance: the funder's own second account is no member to fund.
  const allowance = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { amount: '50', user_id: twin.id },
  });
  assert.equal(allowance.status, 404, allowance.text);
  // A code that names the twin anyway (made before the rule) is refused when the twin redeems it.
  const pupil = await person('pupil');
  await join(owner.token, org, pupil);
  const made = dataOf(await issue(owner.token, org, { credits: '50', user_id: pupil.id })) as {
    code: string;
    id: string;
  };
  await testDb`update billing.codes set for_user = ${twin.id} where id = ${made.id}`;
  const taken = await redeem(twin.token, made.code);
  assert.equal((taken.body.error as { details: { reason: string } }).details.reason, 'not for its issuer', taken.text);
  assert.equal((await walletOf(owner.token, org)).balance, '50', 'only the one code set aside, unredeemed');
});

Deno.test('a code for an invitee whose invitation is revoked goes back to the wallet at the sweep', async () => {
  const [owner, invitee] = await Promise.all(['owner', 'invitee'].map(person));
  const org = await school(owner, [], 'allowance', '100');
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: invitee.email } });
  const { id } = dataOf(await issue(owner.token, org, { credits: '25', email: invitee.email })) as { id: string };
  assert.equal((await walletOf(owner.token, org)).balance, '75');
  const revoked = await api(`/orgs/${org}/invitations/${(inv.body.data as { id: string }).id}`, {
    token: owner.token,
    method: 'DELETE',
  });
  assert.equal(revoked.status, 200, revoked.text);
  await testDb`select billing.close_expired_sponsor_codes(1000)`;
  assert.equal((await walletOf(owner.token, org)).balance, '100');
  const [{ status }] = await testDb`select status from billing.codes where id = ${id}`;
  assert.equal(status, 'void');
  await assertLedgerInvariants();
});

Deno.test('an admin cannot sponsor a member they invited themselves (a second account under any address), nor a Gmail alias of their own', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '1000');
  // The owner makes Mallory an admin; she invites her own second account, at an unrelated address.
  const id = crypto.randomUUID();
  const mallory = { id, email: `mallory.${id.slice(0, 8)}@gmail.com` };
  await testDb`insert into auth.users (id, email, email_confirmed_at) values (${id}, ${mallory.email}, now())`;
  const admin = { ...mallory, token: await userToken(id, { claims: { email: mallory.email } }) };
  await join(owner.token, org, admin, 'admin');
  const alt = await person('alt');
  await join(admin.token, org, alt);
  const own = await issue(admin.token, org, { credits: '500', user_id: alt.id });
  assert.deepEqual([own.status, codeOf(own)], [403, 'ORG_FORBIDDEN'], own.text);
  // Addresses reaching her own mailbox are her: a +tag, Gmail's dots, googlemail.com.
  for (
    const alias of [
      mallory.email.replace('@', '+alt@'),
      mallory.email.replace('mallory.', 'm.a.l.l.o.r.y.'),
      mallory.email.replace('gmail.com', 'googlemail.com'),
    ]
  ) {
    const twin = crypto.randomUUID();
    await testDb`insert into auth.users (id, email, email_confirmed_at) values (${twin}, ${alias}, now())`;
    await join(owner.token, org, { email: alias, token: await userToken(twin, { claims: { email: alias } }) });
    const r = await issue(admin.token, org, { credits: '500', user_id: twin });
    assert.deepEqual([r.status, codeOf(r)], [403, 'ORG_FORBIDDEN'], `${alias}: ${r.text}`);
  }
  // A member the owner invited is sponsored as before.
  const pupil = await person('pupil');
  await join(owner.token, org, pupil);
  assert.equal((await issue(admin.token, org, { credits: '50', user_id: pupil.id })).status, 201);
  assert.equal((await walletOf(owner.token, org)).balance, '950');
});
