// A dispute freezes its purchase's lots wherever they are (issue #77, disputes rule 1): the
// buyer's, a gift code's redeemer's, a member's allowance. Frozen free credits cannot be drawn,
// reserved or moved; a hold that reserved them before the freeze captures normally; a hold past
// its TTL lapses as any other (no dispute exception), and what it reserved stays frozen.
import assert from 'node:assert/strict';
import { api, fund, key, student, until } from '../support/helpers.ts';
import { buy } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import { dispute, openDispute, purchaseDisputeStatus } from '../support/disputed.ts';
import { schoolAllowanceFunded } from '../support/orgs.ts';
import {
  capture,
  holdIdOf,
  holdPassesTtl,
  lotsOfPurchase,
  ownAccount,
  placeHold,
  release,
  reservationInvariants,
} from '../support/reserved.ts';

const available = async (token: string) =>
  ((await api('/credits/balance', { token })).body.data as { available: string }).available;

/** S buys a gift of 5,000 that T redeems: the gift's lot is T's. */
async function redeemedGift() {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await ownAccount(t.id)).balance === '5000');
  return { s, t, g };
}

Deno.test("a gift's dispute freezes the redeemer's lot: its free credits cannot be spent or reserved; a hold placed before captures normally", async () => {
  const { s, t, g } = await redeemedGift();
  const h = await placeHold(t.token, '1000');
  assert.equal(h.status, 201, h.text);
  await openDispute(g.session_id);

  const [lot] = await lotsOfPurchase(g.session_id);
  assert.deepEqual([lot.user_id, lot.frozen, lot.remaining, lot.reserved], [t.id, true, '5000', '1000']);
  assert.equal(await available(t.token), '0', 'frozen credits are not available');
  const spent = await api('/credits/holds', { token: t.token, headers: key(), body: { amount: '1' } });
  assert.equal(spent.status, 402, `nothing free to reserve: ${spent.text}`);
  assert.doesNotMatch(spent.text, /disput/i, "the redeemer is not told of the buyer's dispute");

  const c = await capture(t.token, holdIdOf(h), '600');
  assert.equal(c.status, 200, `a hold placed before the freeze captures normally: ${c.text}`);
  const [after] = await lotsOfPurchase(g.session_id);
  assert.deepEqual([after.frozen, after.remaining, after.reserved], [true, '4400', '0']);
  assert.equal(await available(t.token), '0', 'what the capture returned is frozen again');
  assert.deepEqual(await ownAccount(s.id), { balance: '0', held: '0' }, 'the buyer is not touched by the freeze');
  await reservationInvariants([s.id, t.id]);
});

Deno.test('a frozen lot beside free credits: only the free ones are spent, reserved or released back', async () => {
  const { t, g } = await redeemedGift();
  await fund(t.id, '300'); // T's own credits, free
  await openDispute(g.session_id);
  assert.equal(await available(t.token), '300');
  const h = await placeHold(t.token, '300');
  assert.equal(h.status, 201, h.text);
  assert.equal((await placeHold(t.token, '1')).status, 402, 'the frozen gift reserves nothing');
  assert.equal((await release(t.token, holdIdOf(h))).status, 200);
  assert.equal(await available(t.token), '300');
  const [lot] = await lotsOfPurchase(g.session_id);
  assert.deepEqual([lot.frozen, lot.remaining, lot.reserved], [true, '5000', '0']);
  await reservationInvariants([t.id]);
});

Deno.test('a hold that reserved frozen credits lapses at its TTL like any hold: its reservation returns, still frozen', async () => {
  const { t, g } = await redeemedGift();
  const h = await placeHold(t.token, '1000');
  assert.equal(h.status, 201, h.text);
  await openDispute(g.session_id);
  await holdPassesTtl(holdIdOf(h));
  const [lot] = await lotsOfPurchase(g.session_id);
  assert.deepEqual([lot.frozen, lot.remaining, lot.reserved], [true, '5000', '0']);
  assert.deepEqual(await ownAccount(t.id), { balance: '5000', held: '0' });
  assert.equal(await available(t.token), '0');
  await reservationInvariants([t.id]);
});

Deno.test('won: the frozen flags clear and the redeemer may spend the gift again', async () => {
  const { t, g } = await redeemedGift();
  await openDispute(g.session_id);
  assert.equal(await available(t.token), '0');
  await dispute(g.session_id, 'won');
  await until('won', async () => (await purchaseDisputeStatus(g.session_id)) === 'won');
  const [lot] = await lotsOfPurchase(g.session_id);
  assert.equal(lot.frozen, false);
  assert.equal(await available(t.token), '5000');
  await reservationInvariants([t.id]);
});

Deno.test("an organisation's purchase moved into a member's allowance freezes there; the wallet's other credits stay free", async () => {
  const { owner, member, purchase: p } = await schoolAllowanceFunded();
  await openDispute(p.session_id);
  const lots = await lotsOfPurchase(p.session_id);
  assert.ok(lots.length >= 2, JSON.stringify(lots));
  assert.ok(lots.every((l) => l.frozen), `frozen wherever they are: ${JSON.stringify(lots)}`);
  assert.ok(lots.some((l) => l.member_id === member.id), 'one of them is the allowance');
  const used = await api('/credits/holds', { token: member.token, headers: key(), body: { amount: '1' } });
  assert.equal(used.status, 402, used.text);
  assert.doesNotMatch(used.text, /disput/i, "a member is not told of the organisation's dispute");
  await reservationInvariants([owner.id, member.id]);
});

Deno.test("the buyer's own purchase freezes in the buyer's account (and the buyer is suspended meanwhile)", async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('paid', async () => (await ownAccount(s.id))?.balance === '5000');
  const h = await placeHold(s.token, '500');
  assert.equal(h.status, 201, h.text);
  await openDispute(p.session_id);
  const [lot] = await lotsOfPurchase(p.session_id);
  assert.deepEqual([lot.user_id, lot.frozen, lot.reserved], [s.id, true, '500']);
  await holdPassesTtl(holdIdOf(h));
  const [after] = await lotsOfPurchase(p.session_id);
  assert.deepEqual([after.frozen, after.remaining, after.reserved], [true, '5000', '0']);
  await reservationInvariants([s.id]);
});
