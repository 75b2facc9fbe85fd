// A plan invoice's dispute holds what a package's does (#55, attack round 13): the whole grant
// less what was reversed and what expired, spent credits included, as far as the balance goes;
// so a lost dispute leaves a plan's student owing no more than a package's. The part beyond the
// grant's lots is paid, should the dispute be lost, only by credits for any model: a plan for
// some models lends its list to the lots it freezes, never to that part.
import assert from 'node:assert/strict';
import { adminToken, api, key, spend, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { subscribeTo } from '../support/plans.ts';
import { creditPerToken } from '../support/ai.ts';
import { grantLot } from '../support/lots.ts';
import { chargeTokens, coreInvariants, disputePlan, figures, planCharge } from '../support/disputed.ts';

/** The dispute's holds on the student's account: amount and the lists that may cover each. */
const disputeHolds = async (userId: string) =>
  (await testDb`select trim_scale(h.amount)::text as amount, h.metadata -> 'covers' as covers
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.purpose = 'dispute' and h.status = 'active' order by h.amount desc`)
    .map((h) => ({ ...h }));

Deno.test('a plan disputed after its credits were spent holds the spent part too: lost, the student owes what a package would', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 for any model
  await spend(s.token, 6000);
  await buy(s.token, 'mini'); // 5,000 more
  await until('the package paid', async () => (await balanceOf(s.token)).balance === '9000');
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open');
  // 4,000 left of the grant, and 5,000 of the 6,000 it spent: as far as the balance goes.
  await until('the dispute held', async () => (await figures(s.id)).held === '9000');
  assert.deepEqual(await disputeHolds(s.id), [{ amount: '5000', covers: null }, { amount: '4000', covers: null }]);
  const r = await chargeTokens(s.token, 'gpt-4o-mini', 1); // nothing is free to spend
  assert.equal(r.status, 402, r.text);
  await disputePlan(charge, 'lost');
  await until('the dispute lost', async () => (await figures(s.id)).held === '0');
  // 10,000 taken back from 9,000: 1,000 owed, as a package of 10,000 would leave.
  assert.equal((await figures(s.id)).balance, '-1000');
  await coreInvariants([s.id]);
});

Deno.test('a plan for some models disputed: its lots keep their list; the spent part is covered by credits for any model only', async () => {
  const m = await creditPerToken();
  const id = `t_plan_${crypto.randomUUID().slice(0, 8)}`;
  const admin = await adminToken();
  const made = await api('/admin/plans', {
    token: admin,
    headers: key(),
    body: {
      id,
      name: 'For m',
      price_cents: 900,
      interval: 'month',
      credits: '1000',
      applies_to: [m],
      sort_order: 9000,
      reason: 'a test plan',
    },
  });
  assert.equal(made.status, 201, made.text);
  try {
    const s = await student();
    const plan = await subscribeTo(s.token, id); // 1,000 for m
    assert.equal((await chargeTokens(s.token, m, 600)).status, 201);
    assert.equal((await grantLot(s.id, '500', 'promo_grant', { applies_to: [m] })).status, 201); // 500 more for m
    assert.equal((await grantLot(s.id, '5000', 'promo_grant')).status, 201); // 5,000 for any model
    await disputePlan(await planCharge(plan.stripe_subscription), 'open');
    await until('the dispute held', async () => (await figures(s.id)).held === '1000');
    // The 400 left in the plan's lots may be paid by them (their list); the 600 it spent only by credits for any model.
    assert.deepEqual(await disputeHolds(s.id), [{ amount: '600', covers: null }, { amount: '400', covers: [[m]] }]);
    // Everything free is spent on m: the 500 for m first, so 600 for any model stay to pay the dispute.
    const r = await chargeTokens(s.token, m, 4900);
    assert.equal(r.status, 201, r.text);
    const spent = await figures(s.id);
    assert.deepEqual([spent.balance, spent.for_some, spent.for_any], ['1000', '400', '600']);
    await disputePlan(await planCharge(plan.stripe_subscription), 'lost');
    await until('the dispute lost', async () => (await figures(s.id)).held === '0');
    const f = await figures(s.id);
    assert.deepEqual([f.balance, f.in_debt], ['0', false], 'the 400 from its lots, the 600 from credits for any model');
    await coreInvariants([s.id]);
  } finally {
    await api(`/admin/plans/${id}/retire`, { token: admin, body: { reason: 'test done' } });
  }
});
