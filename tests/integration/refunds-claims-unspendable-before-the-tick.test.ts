// What a refund claimed of a student's hold is never spendable while it waits for pg_cron's
// minute tick (docs/credit-lots.md § Refunds, disputes and debt 1): released in the same breath as
// a burst of charges and holds, only the unclaimed credits go; the claims hold refuses the
// student's own capture and release; the tick then takes back exactly what was claimed. Students'
// tokens over HTTP, the Stripe emulator's signed refund; the database is read for the hold's id.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, awayFromCron, student, sweepExpiredHolds, testDb } from '../support/helpers.ts';
import { spendWith } from '../support/money.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';
import { capture, holdIdOf, placeHold, release } from '../support/reserved.ts';

/** A usage charge of exactly `credits`. */
const use = (token: string, credits: number) => spendWith(token, crypto.randomUUID(), credits);

/** A student who bought mini (5,000), held 4,500 of it, then had 3,000 refunded: 2,500 claimed. */
async function claimedHold() {
  await awayFromCron(); // pg_cron's own tick would take the claims back mid-test
  const s = await student();
  const session = (await buy(s.token, 'mini')).session_id;
  const h = await placeHold(s.token, '4500', 3600);
  assert.equal(h.status, 201, h.text);
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 300 });
  assert.deepEqual(await balanceOf(s.token), { balance: '4500', held: '4500', available: '0' });
  return { ...s, hold: holdIdOf(h) };
}

Deno.test('a release racing twenty charges and holds for the whole former balance: only the 2,000 unclaimed credits go, the tick takes the 2,500 back', async () => {
  const s = await claimedHold();
  const sizes = [4500, 2000, 500, 500, 500];
  const [released, ...answers] = await Promise.all([
    release(s.token, s.hold),
    ...sizes.flatMap((n) => [use(s.token, n), placeHold(s.token, String(n), 3600), use(s.token, n), use(s.token, n)]),
  ]);
  assert.equal(released.status, 200, released.text);
  for (const r of answers) assert.ok([201, 402].includes(r.status), r.text);
  // Per size: a charge, a hold, two charges.
  const went = (hold: boolean) =>
    answers.reduce((sum, r, i) => sum + (r.status === 201 && (i % 4 === 1) === hold ? sizes[Math.floor(i / 4)] : 0), 0);
  const [charged, held] = [went(false), went(true)];
  assert.ok(charged + held <= 2000, `${charged} charged and ${held} held of the 2,000 not claimed`);
  assert.deepEqual(await balanceOf(s.token), {
    balance: String(4500 - charged),
    held: String(2500 + held),
    available: String(2000 - charged - held),
  });
  await assertLedgerInvariants();
  await sweepExpiredHolds(); // pg_cron's minute tick
  assert.deepEqual(await balanceOf(s.token), {
    balance: String(2000 - charged),
    held: String(held),
    available: String(2000 - charged - held),
  });
  await assertLedgerInvariants();
});

Deno.test("the claims hold is not the student's: its capture and release are refused and change nothing", async () => {
  const s = await claimedHold();
  assert.equal((await release(s.token, s.hold)).status, 200);
  const [claims] = await testDb`select h.id::text from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${s.id} and h.purpose = 'claims' and h.status = 'active'`;
  for (
    const r of [
      await capture(s.token, claims.id),
      await capture(s.token, claims.id, '1'),
      await release(s.token, claims.id),
    ]
  ) {
    assert.equal(r.status, 403, r.text);
    assert.equal((r.body.error as { code: string }).code, 'HOLD_NOT_USER_MANAGED', r.text);
  }
  assert.deepEqual(await balanceOf(s.token), { balance: '4500', held: '2500', available: '2000' });
  await sweepExpiredHolds();
  assert.deepEqual(await balanceOf(s.token), { balance: '2000', held: '0', available: '2000' });
  await assertLedgerInvariants();
});
