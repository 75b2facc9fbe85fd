// Sponsor codes: an organisation's owner or admin sets credits aside for one named student. The
// credits leave the wallet for the code's escrow at issue (so the wallet's later spending cannot
// break the promise), keep their provenance when the student redeems them, and go back to the
// wallet when the code is revoked or its window closes. Only the named student can redeem it.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, movedLotsOffProvenance, testDb } from '../helpers.ts';
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
  const org = await school(owner, [], 'allowance', '100');
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
  const org = await school(owner, [], 'allowance', '100');
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
  const org = await school(owner, [], 'allowance', '50');
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
  const org = await school(owner, [], 'allowance', '40');
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
  const org = await school(owner, [], 'allowance', null);
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
  const org = await school(owner, [], 'allowance', null);
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
