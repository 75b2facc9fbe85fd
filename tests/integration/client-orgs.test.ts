// The typed client's organisation methods (through real supabase-js) against the running stack:
// an owner creates a school, invites, renames it, funds allowances, caps a pool, reads the
// members, the usage report and the ledger; a student accepts and sees their allowance; each
// answer has the shape the contract types say.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { BillingError, createBillingClient } from '../../client/mod.ts';
import { adminToken, api, supabaseUrl, testDb } from '../helpers.ts';
import { key, person } from '../orgs.ts';

const billingFor = (token: string) =>
  createBillingClient(createClient(supabaseUrl, 'anon-key', { accessToken: () => Promise.resolve(token) }), {
    baseDelayMs: 5,
    maxDelayMs: 20,
  });

Deno.test('the client runs an organisation: invitations, allowances, caps, members, usage and ledger', async () => {
  const [owner, ada] = await Promise.all([person('client-owner'), person('client-ada')]);
  const admin = billingFor(owner.token);
  const student = billingFor(ada.token);

  const org = await admin.createOrg({ name: 'Client Academy' });
  assert.deepEqual([org.role, org.funding, org.org_pays_first, org.wallet?.balance], ['owner', 'allowance', true, '0']);
  const renamed = await admin.updateOrg(org.id, { name: 'Client Academy II', org_pays_first: false });
  assert.deepEqual([renamed.name, renamed.org_pays_first], ['Client Academy II', false]);

  const invitation = await admin.invite(org.id, { email: ada.email });
  assert.deepEqual([invitation.status, invitation.role, invitation.email], ['pending', 'member', ada.email]);
  assert.match(invitation.token, /^[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(await student.acceptInvitation(invitation.token), { org_id: org.id, status: 'accepted' });
  const again = await admin.invite(org.id, { email: 'later@school.test' });
  assert.equal(
    (await billingFor((await person('later')).token).declineInvitation(again.token).catch((e) => e)).code,
    'INVITATION_NOT_FOUND',
    'only the addressee can answer',
  );

  const granted = await api(`/orgs/${org.id}/grants`, {
    token: await adminToken(),
    body: { amount: '100', reason: 'client test' },
    headers: key(),
  });
  assert.equal(granted.status, 201, granted.text);
  const funded = await admin.fundAllowances(org.id, { amount: '30' });
  assert.deepEqual(funded.funded.map((f) => [f.user_id, f.amount]), [[ada.id, '30']]);
  assert.equal(funded.wallet.available, '70');
  assert.deepEqual((await student.org(org.id)).allowance, { balance: '30', held: '0', available: '30' });
  assert.equal((await student.org(org.id)).wallet, null, 'a member does not see the wallet');
  await assert.rejects(
    student.fundAllowances(org.id, { amount: '1' }),
    (e: unknown) => e instanceof BillingError && e.code === 'ORG_FORBIDDEN' && e.status === 403,
  );

  // The organisation pays after the student's own credits (org_pays_first: false); she has none.
  const charged = await student.recordUsage({ model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000 });
  const members = await admin.members(org.id);
  const mine = members.find((m) => m.user_id === ada.id);
  assert.equal(mine?.allowance?.balance, String(30 - Number(charged.charged)));
  assert.deepEqual(members.map((m) => m.role).sort(), ['member', 'owner']);
  const usage = await admin.orgUsage(org.id, { from: '2026-01-01T00:00:00Z', to: '2100-01-01T00:00:00Z' });
  assert.deepEqual(usage.map((r) => [r.member_id, r.model, r.credits, r.charges]), [[
    ada.id,
    'gpt-4o-mini',
    charged.charged,
    1,
  ]]);
  const ledger = await admin.orgLedger(org.id, { limit: 10 });
  assert.deepEqual(ledger.map((e) => e.kind), ['allowance', 'adjustment']);
  assert.equal(ledger[0].member_id, ada.id);

  // A pool caps each member.
  await admin.updateOrg(org.id, { funding: 'pool' });
  const [cap] = await admin.setMemberCap(org.id, ada.id, { period: 'week', amount: '5' });
  assert.deepEqual([cap.period, cap.cap, cap.spent], ['week', '5', '0']);
  assert.deepEqual((await admin.orgs()).map((o) => [o.id, o.role]), [[org.id, 'owner']]);

  const removed = await admin.removeMember(org.id, ada.id);
  assert.deepEqual(removed, { org_id: org.id, user_id: ada.id, active: false });
  await assert.rejects(student.org(org.id), (e: unknown) => e instanceof BillingError && e.code === 'ORG_NOT_FOUND');
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_members where org_id = ${org.id} and active`;
  assert.equal(n, 1, 'only the owner is left');
});
