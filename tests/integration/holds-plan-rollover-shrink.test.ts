// A plan's renewal rolls over what its rule allows and expires the rest (57-plan-credits.sql);
// what live holds reserved of the ending lot is carried into the new lot up to what rolls, and
// by the rest the holds shrink, newest first (issue #77, spending rule 7; shed_reservations). A
// hold shrunk by an expiry gives back the spend-cap room of what it gave up (as the lot sweep,
// billing.expire_due_lots, does), and a hold shrunk to nothing has ended: whatever a refund left
// pending on it (billing.lot_take_backs) is taken at pg_cron's minute tick (billing.take_back_claims),
// as for any other ending.
import assert from 'node:assert/strict';
import { api, student, sweepExpiredHolds, testDb, until } from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';
import { planCharge } from '../support/disputed.ts';
import { planLots, renew, subscribeTo } from '../support/plans.ts';
import { holdIdOf, ownAccount, placeHold, release, reservationInvariants } from '../support/reserved.ts';

const capsOf = async (token: string) =>
  ((await api('/credits/caps', { token })).body.data as { items: { spent: string; remaining: string }[] }).items
    .map((c) => ({ spent: c.spent, remaining: c.remaining }));

const holdOf = async (id: string) =>
  (await testDb`select status, trim_scale(amount)::text as amount from billing.holds where id = ${id}`)[0];

Deno.test('a hold the renewal shrinks gives back the cap room of what expired under it; released, the cap shows nothing spent', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; rolls over up to 2,000
  await until('granted', async () => (await ownAccount(s.id))?.balance === '10000');
  const capped = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'month', amount: '50000' },
  });
  assert.equal(capped.status, 200, capped.text);
  const h = await placeHold(s.token, '10000', 3600);
  assert.equal(h.status, 201, h.text);
  assert.deepEqual(await capsOf(s.token), [{ spent: '10000', remaining: '40000' }]);

  await renew(plan.stripe_subscription, 'paid');
  await until('renewed', async () => (await planLots(s.id)).length === 3);
  // 2,000 rolled over, carried with the hold; 8,000 expired under it.
  assert.deepEqual({ ...await holdOf(holdIdOf(h)) }, { status: 'active', amount: '2000' });
  assert.deepEqual(
    await capsOf(s.token),
    [{ spent: '2000', remaining: '48000' }],
    'the 8,000 that expired were never spent',
  );

  assert.equal((await release(s.token, holdIdOf(h))).status, 200);
  assert.deepEqual(await capsOf(s.token), [{ spent: '0', remaining: '50000' }], 'nothing was ever spent');
  await reservationInvariants([s.id]);
});

Deno.test("a hold the renewal shrinks to nothing has ended: the refund's take-back pending on it is settled at the tick, none left behind", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await until('granted', async () => (await ownAccount(s.id))?.balance === '10000');
  const old = await placeHold(s.token, '2000', 3600); // the oldest hold keeps what rolls over
  const newest = await placeHold(s.token, '8000', 3600); // the newest gives way first
  assert.equal(newest.status, 201, newest.text);
  // Half the invoice refunded: 5,000 credits back, none free: all pending on the two holds.
  await emulator(`/_emulator/charges/${await planCharge(plan.stripe_subscription)}/refund`, { amount: 500 });
  const pendingOn = async (hold: string) =>
    (await testDb`select trim_scale(coalesce(sum(amount), 0))::text as n from billing.lot_take_backs
      where hold_id = ${hold}`)[0].n as string;
  await until('the refund pending on the holds', async () => (await pendingOn(holdIdOf(newest))) !== '0');

  await renew(plan.stripe_subscription, 'paid');
  await until('renewed', async () => (await planLots(s.id)).length === 3);
  assert.deepEqual({ ...await holdOf(holdIdOf(newest)) }, { status: 'released', amount: '8000' });
  await sweepExpiredHolds(); // the minute's tick takes back what waited on it
  assert.equal(await pendingOn(holdIdOf(newest)), '0', 'an ended hold keeps no pending take-back');
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.lot_take_backs x join billing.holds h on h.id = x.hold_id
    where h.status <> 'active' and h.account_id = (select id from billing.accounts where user_id = ${s.id} and org_id is null)`;
  assert.equal(n, 0);
  await release(s.token, holdIdOf(old));
  await reservationInvariants([s.id]);
});
