// Codes attacked as a student would, with student tokens only (their own second account, an
// organisation they create themselves): one gift redeemed by two people at once, a refund racing
// a redemption, an organisation admin sponsoring themselves or coming back after removal, a
// replay after the code changed, and the text and numbers Postgres refuses.
import assert from 'node:assert/strict';
import { adminToken, api, assertLedgerInvariants, newAdmin, testDb, userToken } from '../helpers.ts';
import { codeOf, dataOf } from '../money.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { chargeOf, emulator } from '../purchases.ts';
import { buyGift, promo, redeem, student } from '../codes.ts';

const balance = async (token: string) =>
  ((await api('/credits/balance', { token })).body.data as { balance: string }).balance;

Deno.test('one gift redeemed by two accounts at once goes to exactly one', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  const [a, b] = [await student(), await student()];
  const rs = await Promise.all([redeem(a.token, g.code), redeem(b.token, g.code), redeem(a.token, g.code)]);
  const won = [await balance(a.token), await balance(b.token)];
  assert.deepEqual(won.sort(), ['0', '5000'], rs.map((r) => r.text).join('\n'));
  assert.ok(rs.filter((r) => r.status !== 200).every((r) => codeOf(r) === 'CODE_NOT_REDEEMABLE'));
  await assertLedgerInvariants();
});

// Found by this test: take_back_purchase listed the purchase's lots before it waited for their
// accounts, so a redemption committing meanwhile moved the credits out of its sight: the refund
// was taken from the buyer as debt and the redeemer kept the gift.
Deno.test("a full refund or a lost dispute racing a redemption of the gift leaves nobody the gift's credits", async () => {
  for (let i = 0; i < 4; i++) {
    const buyer = await student();
    const friend = await student();
    const g = await buyGift(buyer.token, 'mini');
    const charge = await chargeOf(g.session_id);
    await Promise.all([
      redeem(friend.token, g.code),
      i % 2
        ? emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' })
        : emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 }),
    ]);
    assert.equal(await balance(friend.token), '0');
    assert.equal(await balance(buyer.token), '0', 'nothing was spent, so nothing is owed');
  }
  await assertLedgerInvariants();
});

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

Deno.test('a replayed redemption answers what it answered, even after the code was disabled', async () => {
  const p = await promo({ credits: '3', budget: '30' });
  const s = await student();
  const k = crypto.randomUUID();
  const first = await redeem(s.token, p.code, k);
  await testDb`update billing.codes set status = 'disabled' where id = ${p.id}`;
  const replay = await redeem(s.token, p.code, k);
  assert.equal(replay.status, 200);
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.deepEqual(dataOf(replay), dataOf(first));
  assert.equal(await balance(s.token), '3');
  const other = await redeem(s.token, 'ABCDE-ABCDE-ABCDE-ABCDE', k);
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', 'a key names one request');
});

Deno.test('codes and amounts Postgres refuses are 400, never 5xx, and nothing is stored', async () => {
  const s = await student();
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '10');
  for (
    const code of [
      'ABCDE\u0000ABCDE-ABCDE-ABCDE',
      'ABCDE-ABCDE-ABCDE-ABCD\ud800',
      'ABCDE-ABCDE-ABCDE-ABCD\uffff',
      'A'.repeat(65),
      '',
    ]
  ) {
    const r = await redeem(s.token, code);
    assert.equal(r.status, 400, `${JSON.stringify(code)}: ${r.text}`);
  }
  for (const credits of ['1e2', '0x10', '-0', '0', 2 ** 63, '1.0000000000000000001']) {
    const r = await api(`/orgs/${org}/sponsor-codes`, {
      token: owner.token,
      headers: key(),
      body: { credits, user_id: s.id },
    });
    assert.equal(r.status, 400, `${credits}: ${r.text}`);
  }
  for (const path of [`/orgs/${org}/sponsor-codes/not-a-uuid`, `/orgs/${org}/sponsor-codes/${crypto.randomUUID()}`]) {
    const r = await api(path, { token: owner.token, method: 'DELETE' });
    assert.equal(r.status, 404, r.text);
  }
  // Another organisation's admin, or a student, cannot see or revoke this one's codes.
  const stranger = await person('stranger');
  assert.equal((await api(`/orgs/${org}/sponsor-codes`, { token: stranger.token })).status, 404);
  const [{ n }] = await testDb`select count(*)::int as n from billing.codes where org_id = ${org}`;
  assert.equal(n, 0);
});

Deno.test('an Idempotency-Key names one code: the same key for another code is 409, for the same one its answer', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', '100');
  const k = { 'idempotency-key': crypto.randomUUID() };
  const first = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: k,
    body: { credits: '10', user_id: student.id },
  });
  assert.equal(first.status, 201, first.text);
  const again = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: k,
    body: { credits: '10', user_id: student.id },
  });
  assert.equal(again.status, 200, again.text);
  assert.equal(dataOf(again).code, null, 'the code is shown once');
  assert.equal(dataOf(again).id, dataOf(first).id);
  const other = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: k,
    body: { credits: '90', user_id: student.id },
  });
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', other.text);
  assert.equal((await walletOf(owner.token, org)).balance, '90', 'one code set aside');
});

Deno.test('one key for a promo code and a sponsor code by the same person makes two codes, never a 5xx', async () => {
  const id = await newAdmin();
  const token = await userToken(id, { admin: true });
  const student = await person('student');
  const created = await api('/orgs', { token, body: { name: 'Admin Academy' } });
  const org = (created.body.data as { id: string }).id;
  const grant = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount: '50', reason: 'pilot' },
  });
  assert.equal(grant.status, 201, grant.text);
  const inv = await api(`/orgs/${org}/invitations`, { token, body: { email: student.email } });
  await api('/orgs/invitations/accept', {
    token: student.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  const k = { 'idempotency-key': crypto.randomUUID() };
  const p = await api('/admin/codes', { token, headers: k, body: { credits: '5', budget: '50' } });
  assert.equal(p.status, 201, p.text);
  const sp = await api(`/orgs/${org}/sponsor-codes`, {
    token,
    headers: k,
    body: { credits: '5', user_id: student.id },
  });
  assert.equal(sp.status, 201, sp.text);
  assert.notEqual(dataOf(sp).id, dataOf(p).id);
});
