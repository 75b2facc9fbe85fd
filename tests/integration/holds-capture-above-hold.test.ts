// docs/credit-lots.md § Spending order 6: a capture the server prices (a job's, the gateway's) may
// come out above its hold: it takes all of it and draws the excess as a charge does. A capture a
// caller names above its hold is 400 CAPTURE_EXCEEDS_HOLD and changes nothing.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, fund, student, testDb } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { capture, holdIdOf, placeHold } from '../support/reserved.ts';
import { claimedJob, completeJob, figures } from '../support/disputed.ts';

Deno.test('a capture named above its hold is 400 CAPTURE_EXCEEDS_HOLD and changes nothing', async () => {
  const s = await student('100');
  const hold = holdIdOf(await placeHold(s.token, '30'));
  const before = await figures(s.id);
  const over = await capture(s.token, hold, '31');
  assert.equal(over.status, 400, over.text);
  assert.equal(codeOf(over), 'CAPTURE_EXCEEDS_HOLD', over.text);
  assert.deepEqual(await figures(s.id), before, 'nothing moved');
  const [h] = await testDb`select status, trim_scale(amount)::text as amount from billing.holds where id = ${hold}`;
  assert.deepEqual({ ...h }, { status: 'active', amount: '30' });
  assert.equal((await capture(s.token, hold, '30')).status, 200, 'the hold still captures in full');
  await assertLedgerInvariants();
});

Deno.test("a job's capture priced above its hold takes the hold and draws the excess as a charge does", async () => {
  const s = await student(null);
  await fund(s.id, '100');
  const job = await claimedJob(s.id, 'w-above', 10);
  await completeJob(job, 'w-above', 25);
  const [h] = await testDb`select h.status, trim_scale(h.captured_amount)::text as captured
    from billing.jobs j join billing.holds h on h.id = j.hold_id where j.id = ${job}`;
  assert.deepEqual({ ...h }, { status: 'captured', captured: '10' }, 'the hold is taken whole');
  const f = await figures(s.id);
  assert.equal(f.balance, '75', 'the excess of 15 is drawn from free credits: 100 − 25');
  assert.equal(f.held, '0');
  await assertLedgerInvariants();
});
