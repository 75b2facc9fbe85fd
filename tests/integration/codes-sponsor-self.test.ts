// Sponsor codes cannot move an organisation's credits to its own admins: not to themselves, a
// second account of theirs (outside the organisation, under the same confirmed address, a Gmail
// alias, or a member they invited), nor back to an admin after removal.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, testDb, userToken } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { join, person, school, walletOf } from '../support/orgs.ts';
import { balance, issue, redeem } from '../support/codes.ts';

Deno.test('an organisation admin cannot sponsor themselves, before or after issuing', async () => {
  const owner = await person('owner');
  const admin = await person('admin');
  const org = await school(owner, [admin], 'allowance', '100');
  // Make the member an admin (the owner invites them again as one).
  const again = await api(`/orgs/${org}/invitations`, {
    token: owner.token,
    body: { email: admin.email, role: 'admin' },
  });
  const token = (again.body.data as { token: string }).token;
  assert.equal((await api('/orgs/invitations/accept', { token: admin.token, body: { token } })).status, 200);
  for (const body of [{ credits: '50', user_id: admin.id }, { credits: '50', email: owner.email }]) {
    const r = await api(`/orgs/${org}/sponsor-codes`, { token: admin.token, headers: key(), body });
    assert.equal(r.status, 403, r.text);
    assert.equal(codeOf(r), 'ORG_FORBIDDEN');
  }
  // A student named first, then made an admin, redeems nothing: the promotion gave the code's
  // credits back to the wallet.
  const later = await person('later');
  const joined = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: later.email } });
  await api('/orgs/invitations/accept', {
    token: later.token,
    body: { token: (joined.body.data as { token: string }).token },
  });
  const code = (dataOf(
    await api(`/orgs/${org}/sponsor-codes`, {
      token: owner.token,
      headers: key(),
      body: { credits: '10', user_id: later.id },
    }),
  ) as { code: string }).code;
  const inv = await api(`/orgs/${org}/invitations`, {
    token: owner.token,
    body: { email: later.email, role: 'admin' },
  });
  await api('/orgs/invitations/accept', {
    token: later.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  const r = await redeem(later.token, code);
  assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE', r.text);
  assert.equal((await walletOf(owner.token, org)).balance, '100', 'promoted, the code named for them went back');
});

Deno.test("an admin's second account outside the organisation cannot be sponsored, and a removed admin's codes go back at once", async () => {
  const owner = await person('owner');
  const admin = await person('admin');
  const friend = await person('friend'); // the admin's second account, no member
  const pupil = await person('pupil');
  const org = await school(owner, [pupil], 'allowance', '100');
  const inv = await api(`/orgs/${org}/invitations`, {
    token: owner.token,
    body: { email: admin.email, role: 'admin' },
  });
  await api('/orgs/invitations/accept', {
    token: admin.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  const outside = await api(`/orgs/${org}/sponsor-codes`, {
    token: admin.token,
    headers: key(),
    body: { credits: '60', user_id: friend.id },
  });
  assert.equal(outside.status, 404, outside.text);
  assert.equal(codeOf(outside), 'MEMBER_NOT_FOUND');
  const byEmail = await api(`/orgs/${org}/sponsor-codes`, {
    token: admin.token,
    headers: key(),
    body: { credits: '60', email: friend.email },
  });
  assert.equal(codeOf(byEmail), 'MEMBER_NOT_FOUND', 'nor by an address that is neither a member nor invited');
  assert.equal((await walletOf(owner.token, org)).balance, '100');
  // A code for a real member, then its issuer is removed: the credits are back before any sweep.
  const code = (dataOf(
    await api(`/orgs/${org}/sponsor-codes`, {
      token: admin.token,
      headers: key(),
      body: { credits: '60', user_id: pupil.id },
    }),
  ) as { code: string }).code;
  const removed = await api(`/orgs/${org}/members/${admin.id}`, { token: owner.token, method: 'DELETE' });
  assert.equal(removed.status, 200, removed.text);
  assert.equal((await walletOf(owner.token, org)).balance, '100', 'removal swept the code back');
  const r = await redeem(pupil.token, code);
  assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE', r.text);
  assert.equal(await balance(pupil.token), '0');
  await assertLedgerInvariants();
});

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
