// A usage batch reports work a trusted server already did (docs/api.md POST /credits/usage/batch):
// it is billed whatever the user's standing, a suspended buyer's as a banned user's, and only from
// credits no dispute froze. The disputed purchase's lots are untouched, and a gift's redeemer in
// the same batch is charged as usual and told nothing of the buyer's dispute.
import assert from 'node:assert/strict';
import { fund, testDb, until } from '../support/helpers.ts';
import { buy } from '../support/purchases.ts';
import { giftRedeemed, openDispute } from '../support/disputed.ts';
import { batch, outcomesOf, usageEvent } from '../support/money.ts';
import { ownAccount, reservationInvariants } from '../support/reserved.ts';
import { student } from '../support/helpers.ts';

async function frozenLeft(purchaseSession: string) {
  const [r] = await testDb`select trim_scale(sum(l.remaining))::text as left from billing.lots l
    join billing.purchases p on p.id = l.purchase_id where p.stripe_session_id = ${purchaseSession} and l.frozen`;
  return r.left;
}

Deno.test("a usage batch bills a suspended buyer's reported work from credits no dispute froze", async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('paid', async () => (await ownAccount(s.id))?.balance === '5000');
  await fund(s.id, '1000'); // credits that are not the disputed purchase's
  await openDispute(p.session_id);

  const r = await batch([usageEvent(s.id, crypto.randomUUID(), 100), usageEvent(s.id, crypto.randomUUID(), 950)]);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(outcomesOf(r).map((o) => o.status), ['applied', 'insufficient'], r.text);
  assert.deepEqual(await ownAccount(s.id), { balance: '5900', held: '0' });
  assert.equal(await frozenLeft(p.session_id), '5000', 'nothing of the disputed purchase was drawn');
  await reservationInvariants([s.id]);
});

Deno.test("a gift's buyer suspended: both events of a batch are billed, the redeemer's naming no dispute", async () => {
  const { s, t, g } = await giftRedeemed();
  await fund(s.id, '1000');
  await fund(t.id, '1000');
  await openDispute(g.session_id);
  const r = await batch([usageEvent(s.id, crypto.randomUUID(), 10), usageEvent(t.id, crypto.randomUUID(), 10)]);
  assert.equal(r.status, 200, r.text);
  const [buyer, redeemer] = outcomesOf(r);
  assert.equal(redeemer.status, 'applied', r.text);
  assert.doesNotMatch(JSON.stringify(redeemer), /disput/i);
  assert.equal(buyer.status, 'applied', r.text);
  assert.deepEqual(await ownAccount(s.id), { balance: '990', held: '0' });
  await reservationInvariants([s.id, t.id]);
});
