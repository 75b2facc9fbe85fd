// Sponsor codes: an organisation's owner or admin sets credits aside for one named student. The
// credits leave the wallet for the code's escrow at issue (so the wallet's later spending cannot
// break the promise), keep their provenance when the student redeems them, and go back to the
// wallet when the code is revoked (even racing the redemption) or its window closes, or once a
// dispute holding the escrow is won. Only the named student can redeem it; an Idempotency-Key
// names one code; what Postgres refuses is a 400. Who may be sponsored: codes-sponsor-self.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  key,
  movedLotsOffProvenance,
  newAdmin,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { person, school, verifyOrg, walletOf } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { balance, issue, redeem } from '../support/codes.ts';

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
  const { session_id: session } = await buy(owner.token, 'mini', org);
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

/** An organisation that bought 5,000 credits (mini, 500¢) and parked 3,000 behind a code. */
async function parked() {
  const owner = await person('owner');
  const friend = await person('friend');
  const org = await school(owner, [friend], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases: the owner may act while it is disputed
  const { session_id: session } = await buy(owner.token, 'mini', org);
  const made = dataOf(await issue(owner.token, org, { credits: '3000', user_id: friend.id })) as {
    code: string;
    id: string;
  };
  return { owner, friend, org, session, ...made };
}

const escrowOf = async (codeId: string) => {
  const [{ balance, held }] =
    await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.code_id = ${codeId}`;
  return { balance, held };
};

Deno.test('a revoke racing the redemption: the credits end in exactly one place', async () => {
  for (let i = 0; i < 4; i++) {
    const owner = await person('owner');
    const friend = await person('friend');
    const org = await school(owner, [friend], 'allowance', '100');
    const made = dataOf(await issue(owner.token, org, { credits: '60', user_id: friend.id })) as {
      code: string;
      id: string;
    };
    const [r, v] = await Promise.all([
      redeem(friend.token, made.code),
      api(`/orgs/${org}/sponsor-codes/${made.id}`, { token: owner.token, method: 'DELETE' }),
    ]);
    assert.ok([r.status, v.status].filter((s) => s === 200).length === 1, `${r.text}\n${v.text}`);
    const got = await balance(friend.token);
    const wallet = (await walletOf(owner.token, org)).balance;
    assert.deepEqual([got, wallet], r.status === 200 ? ['60', '40'] : ['0', '100']);
  }
  await assertLedgerInvariants();
});

// return_sponsor_escrow moves back only what no dispute holds and marks the code revoked (or
// void); a dispute won later releases its hold inside the escrow of a code nobody can redeem or
// revoke again, so the sweep also returns what is free in the escrows of closed codes (else the
// credits would stay there for ever, counted in the liability, out of the organisation's wallet).
Deno.test('a sponsor code revoked while a dispute holds its escrow gives the credits back once the dispute is won', async () => {
  const p = await parked();
  const charge = await chargeOf(p.session);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const revoked = await api(`/orgs/${p.org}/sponsor-codes/${p.id}`, { token: p.owner.token, method: 'DELETE' });
  assert.equal(revoked.status, 200, revoked.text);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  await testDb`select billing.close_expired_sponsor_codes(1000)`;
  const escrow = await escrowOf(p.id);
  assert.equal(
    (await walletOf(p.owner.token, p.org)).balance,
    '5000',
    `escrow after the won dispute: ${JSON.stringify(escrow)}`,
  );
  assert.equal(escrow.balance, '0');
  await assertLedgerInvariants();
});

Deno.test("a lost dispute of the organisation's purchase reaches sponsored credits, redeemed before it opened or while it was open", async () => {
  for (const redeemWhen of ['before', 'while open'] as const) {
    const owner = await person('owner');
    const student = await person('student');
    const org = await school(owner, [student], 'allowance', null);
    // The organisation buys 5,000 credits (mini, 500¢) and parks all of them behind a code.
    const { session_id: session } = await buy(owner.token, 'mini', org);
    const { code } = dataOf(await issue(owner.token, org, { credits: '5000', user_id: student.id })) as {
      code: string;
    };
    const charge = await chargeOf(session);
    if (redeemWhen === 'before') assert.equal((await redeem(student.token, code)).status, 200);
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
    if (redeemWhen === 'while open') {
      const r = await redeem(student.token, code);
      assert.ok(r.status === 200 || r.status >= 400 && r.status < 500, r.text);
    }
    // While the dispute is open nothing of the purchase can be spent or parked in a hold.
    const bal = (await api('/credits/balance', { token: student.token })).body.data as { available: string };
    assert.equal(bal.available, '0', `${redeemWhen}: the disputed credits are frozen in the student's account`);
    const parked = await api('/credits/holds', {
      token: student.token,
      headers: key(),
      body: { amount: '100', ttl_seconds: 3600 },
    });
    assert.equal(parked.status, 402, `${redeemWhen}: ${parked.text}`);
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
    const [{ left }] = await testDb`select trim_scale(coalesce(sum(a.balance), 0))::text as left from billing.accounts a
      left join billing.codes c on c.id = a.code_id
      where a.user_id = ${student.id} or a.org_id = ${org} or c.org_id = ${org}`;
    assert.equal(left, '0', `${redeemWhen}: the lost dispute took the purchase back wherever it went`);
  }
  await assertLedgerInvariants();
});
