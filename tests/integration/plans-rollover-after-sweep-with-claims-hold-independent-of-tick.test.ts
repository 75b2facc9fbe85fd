// A period's renewal paid after the minute sweep expired its plan lot (Stripe charges a renewal
// about an hour after the period ends) rolls over what was left at the period's end, up to the
// plan's cap, back from breakage (docs/plans-and-codes.md § Rollover and the expiry sweep). When a
// partial refund of the period's invoice claimed what a hold reserved and that hold ended before
// the period did, what it returned waits in a claims hold for pg_cron's tick
// (docs/credit-lots.md § Refunds, disputes and debt 1): the sweep leaves it in the lot for the
// tick. What the student ends with must not depend on whether the tick ran before the renewal's
// webhooks arrived or after them. Students' tokens over HTTP, Stripe events through the emulator's
// signed webhooks; the database only to move time and run the minute's jobs as pg_cron does.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, awayFromCron, student, sweepExpiredHolds, testDb } from '../support/helpers.ts';
import { balanceOf, deliver, emulator } from '../support/purchases.ts';
import { breakage, planLots, planPeriodEnded, renew, subscribeTo } from '../support/plans.ts';
import { planCharge } from '../support/disputed.ts';
import { holdIdOf, placeHold, release, reservationInvariants } from '../support/reserved.ts';

async function run(tickFirst: boolean) {
  await awayFromCron(40_000); // pg_cron's own tick would choose the order for us
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; rolls over up to 2,000
  const h = await placeHold(s.token, '9000', 3600);
  assert.equal(h.status, 201, h.text);
  // Half the invoice refunded: floor(10,000 × 500 / 999) = 5,005 credits back: the 1,000 free at
  // once, 4,005 claimed of the hold's reservation.
  await emulator(`/_emulator/charges/${await planCharge(plan.stripe_subscription)}/refund`, { amount: 500 });
  assert.deepEqual(await balanceOf(s.token), { balance: '9000', held: '9000', available: '0' });
  assert.equal((await release(s.token, holdIdOf(h))).status, 200);
  // The claims hold keeps the 4,005; 4,995 are the student's.
  assert.deepEqual(await balanceOf(s.token), { balance: '9000', held: '4005', available: '4995' });
  await new Promise((r) => setTimeout(r, 2000)); // the hold ended before the period did
  // The period ends; the renewal is charged later, its webhooks not yet delivered; the sweep runs.
  const late = await renew(plan.stripe_subscription, 'paid', false);
  await planPeriodEnded(s.id, '1 second'); // just after the hold ended
  await testDb`select billing.expire_lots(500)`; // the minute sweep
  assert.equal(await breakage(s.id), '4995');
  if (tickFirst) await sweepExpiredHolds(); // the minute's tick before the renewal
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  if (!tickFirst) await sweepExpiredHolds(); // the minute's tick after it
  await assertLedgerInvariants();
  await reservationInvariants([s.id]);
  return { balance: await balanceOf(s.token), breakage: await breakage(s.id), lots: await planLots(s.id) };
}

Deno.test("a renewal after the sweep rolls the period's 2,000 over whether the refund's tick ran before it or after it", async () => {
  const before = await run(true);
  const after = await run(false);
  // The period had 4,995 left at its end once the refund's 5,005 were taken: 2,000 roll, 10,000 new.
  assert.deepEqual(before.balance, { balance: '12000', held: '0', available: '12000' }, JSON.stringify(before.lots));
  assert.deepEqual(
    after.balance,
    before.balance,
    `the tick after the renewal changed what the student can spend: ${JSON.stringify(after.lots)}`,
  );
  assert.equal(after.breakage, before.breakage, 'breakage depends on when the tick ran');
});
