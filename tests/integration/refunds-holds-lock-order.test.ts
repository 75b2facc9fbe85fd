// A refund racing a redeemer's captures of holds an earlier refund left take-backs pending on.
// The refund locks the buyer's and the holders' accounts in id order (take_back_purchase); a
// capture locks only the redeemer's (what the hold spent of claimed credits is billed to the
// buyer by the minute's tick, billing.take_back_claims), so every answer succeeds and the money
// converges: what the redeemer's holds spent of the refunded credits the buyer owes.
import assert from 'node:assert/strict';
import { sweepExpiredHolds, testDb, until } from '../support/helpers.ts';
import { chargeOf, deliver, deliverWithRetries, emulator } from '../support/purchases.ts';
import { giftRedeemed } from '../support/disputed.ts';
import { capture, holdIdOf, ownAccount, placeHold, reservationInvariants } from '../support/reserved.ts';

Deno.test("a second partial refund racing the redeemer's captures of holds the first one claimed: every answer succeeds, the buyer owes what was spent", async () => {
  for (let round = 0; round < 5; round++) {
    const { s, t, g } = await giftRedeemed();
    const holds: string[] = [];
    for (let i = 0; i < 10; i++) {
      const h = await placeHold(t.token, '500');
      assert.equal(h.status, 201, h.text);
      holds.push(holdIdOf(h));
    }
    const ch = await chargeOf(g.session_id);
    await emulator(`/_emulator/charges/${ch}/refund`, { amount: 100 }); // 1,000 credits, all reserved: pending
    await until(
      'the first refund pending on the holds',
      async () =>
        (await testDb`select count(*)::int as n from billing.lot_take_backs where hold_id = any(${holds}::uuid[])`)[0]
          .n > 0,
    );
    const second = (await emulator(`/_emulator/charges/${ch}/refund`, { amount: 100, deliver: false })).events;
    const rs = await Promise.all([...second.map((e) => deliver(e)), ...holds.map((h) => capture(t.token, h))]);
    for (const r of rs) assert.ok(r.status < 300, JSON.stringify(r.body));
    for (const e of second) assert.equal((await deliverWithRetries(e)).status, 200);
    // Everything the redeemer had of the gift was spent: the buyer owes the 2,000 refunded, recorded
    // at the minute's tick.
    await sweepExpiredHolds();
    assert.deepEqual(await ownAccount(t.id), { balance: '0', held: '0' });
    assert.deepEqual(await ownAccount(s.id), { balance: '-2000', held: '0' });
    await reservationInvariants([s.id, t.id]);
  }
});
