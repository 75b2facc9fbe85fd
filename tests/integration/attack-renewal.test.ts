// The one-pass plan renewal (#35) attacked with student tokens only; the emulator's test
// controls stand in for Stripe and the card holder. Each attack held or was fixed.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, newUser, spend, testDb, userToken } from '../helpers.ts';
import { balanceOf, deliver, emulator, stripeApi } from '../purchases.ts';
import { chargeOfInvoice, planLots, renew, subscribeTo } from '../plans.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

/** Once at least `n` transactions wait on a lock (webhooks queued behind ours), and `settle` ms
 * later (the others of a batch arrive), how many do. */
async function lockWaiters(n: number, settle: number): Promise<number> {
  const waiting = async () =>
    (await testDb`select count(*)::int as n from pg_stat_activity
      where wait_event_type = 'Lock' and datname = current_database()`)[0].n as number;
  for (let i = 0; i < 200; i++) {
    if (await waiting() >= n) {
      await new Promise((r) => setTimeout(r, settle));
      return await waiting();
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`fewer than ${n} transactions came to wait on the account`);
}

/** The user's active dispute holds, in credits. */
async function disputeHeld(userId: string): Promise<string> {
  const [{ held }] = await testDb`select trim_scale(coalesce(sum(h.amount), 0))::text as held from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${userId} and h.purpose = 'dispute' and h.status = 'active'`;
  return held;
}

// Hole (fixed): a dispute opened while the renewal held the account read the grant's lots
// before waiting for the account, so the lot the renewal rolled its credits into was neither
// frozen nor under the dispute hold: the student spent them while the dispute was open.
Deno.test('a dispute opened while the renewal holds the account freezes what rolled over', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; basic rolls up to 2,000
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  await spend(s.token, 6000);
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const dispute = await emulator(`/_emulator/charges/${await chargeOfInvoice(invoice)}/dispute`, {
    outcome: 'open',
    deliver: false,
  });
  // The account is busy (our transaction stands in for a slow spend): the renewal queues for it
  // first, the dispute second; both run as soon as it is free, in that order.
  let inFlight: Promise<unknown>[] = [];
  await testDb.begin(async (tx) => {
    await tx`select 1 from billing.accounts a where a.user_id = ${s.id} for update`;
    inFlight = late.events.map((e) => deliver(e));
    const queued = await lockWaiters(1, 500);
    inFlight.push(...dispute.events.map((e) => deliver(e)));
    await lockWaiters(queued + 1, 500);
  });
  const statuses = (await Promise.all(inFlight) as { status: number }[]).map((r) => r.status);
  assert.deepEqual(statuses.filter((x) => x !== 200), [], statuses.join(','));
  for (const e of [...late.events, ...dispute.events]) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  // As when the dispute comes after the renewal: the 2,000 rolled over are frozen under its hold.
  assert.equal((await balanceOf(s.token)).balance, '12000', JSON.stringify(await planLots(s.id)));
  assert.equal(await disputeHeld(s.id), '2000', JSON.stringify(await planLots(s.id)));
  const [{ frozen }] = await testDb`select bool_and(l.frozen) as frozen from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id} and l.moved_from is not null`;
  assert.equal(frozen, true, 'the rolled-over lot is frozen with its grant');
});
