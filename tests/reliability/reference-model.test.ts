// The model tests' reference ledger (tests/support/model-rules.ts) against the worked examples of
// the rules of #77 that the integration tests state (disputes-freeze-locally,
// disputes-lost-settle-locally): if the reference disagrees with them, the model tests would
// judge the stack by the wrong rules. Pure: no stack needed.
import assert from 'node:assert/strict';
import { M, RefLedger } from '../support/model-rules.ts';

const c = (n: number) => BigInt(Math.round(n * 1_000_000));
const figures = (l: RefLedger, a: string) => [l.balance(a), l.held(a), l.available(a)];

/** S buys a gift of 5,000 that T redeems. */
function giftRedeemed() {
  const l = new RefLedger();
  l.buy('G', 'S');
  const escrow = l.grant('code', 5000n * M, { purchase: 'G', priority: 20 });
  l.move(escrow, 'T');
  return l;
}

Deno.test("reference: a gift's dispute freezes the redeemer's lot; a hold placed before captures normally", () => {
  const l = giftRedeemed();
  const h = l.reserve('T', 1000n * M);
  assert.ok(h);
  l.freeze('G', true);
  assert.deepEqual(figures(l, 'T'), [5000n * M, 1000n * M, 0n]);
  assert.equal(l.reserve('T', 1n * M), null, 'nothing free to reserve');
  assert.ok(l.capture(h, 600n * M));
  const [lot] = l.lotsOf('T');
  assert.deepEqual([lot.remaining, lot.reserved, lot.frozen], [4400n * M, 0n, true]);
  assert.deepEqual(figures(l, 'S'), [0n, 0n, 0n]);
});

Deno.test('reference: a frozen lot beside free credits: only the free ones are spent or reserved', () => {
  const l = giftRedeemed();
  l.grant('T', 300n * M, { priority: 10 });
  l.freeze('G', true);
  assert.equal(l.available('T'), 300n * M);
  const h = l.reserve('T', 300n * M);
  assert.ok(h);
  assert.equal(l.reserve('T', 1n * M), null);
  l.release(h);
  assert.equal(l.available('T'), 300n * M);
});

Deno.test("reference: a gift's lost dispute takes the free credits at once, the reserved part at the tick after the hold ends; the buyer owes what was spent", () => {
  const l = giftRedeemed();
  const charged = c(60); // 100,000 input tokens of gpt-4o-mini
  assert.ok(l.charge('T', charged));
  const h = l.reserve('T', 500n * M);
  assert.ok(h);
  l.freeze('G', true);
  l.freeze('G', false);
  l.takeBack('G', 5000n * M);
  assert.deepEqual([l.balance('T'), l.held('T')], [500n * M, 500n * M]);
  assert.ok(l.capture(h, 200n * M));
  assert.deepEqual([l.balance('T'), l.held('T')], [300n * M, 300n * M], 'what it returned stays reserved');
  l.takeBackClaims(); // pg_cron's minute tick
  assert.deepEqual([l.balance('T'), l.held('T')], [0n, 0n], 'the redeemer is never billed');
  assert.equal(l.balance('S'), -(charged + 200n * M), 'the buyer owes what was spent: the usage and the capture');
});

Deno.test('reference: a hold lapsing after a lost dispute returns its reservation, taken back then', () => {
  const l = giftRedeemed();
  const h = l.reserve('T', 1000n * M);
  assert.ok(h);
  l.takeBack('G', 5000n * M);
  assert.deepEqual([l.balance('T'), l.held('T')], [1000n * M, 1000n * M]);
  l.release(h);
  assert.deepEqual([l.balance('T'), l.held('T')], [1000n * M, 1000n * M], 'kept for the take-back');
  l.takeBackClaims(); // pg_cron's minute tick
  assert.deepEqual([l.balance('T'), l.held('T'), l.balance('S')], [0n, 0n, 0n]);
});

Deno.test('reference: the buyer pays what was spent of their purchase from their other credits first, then owes the rest', () => {
  const l = new RefLedger();
  l.buy('P', 'S');
  l.grant('S', 5000n * M, { purchase: 'P', priority: 20 });
  assert.ok(l.charge('S', 3000n * M));
  l.freeze('P', true);
  l.grant('S', 1000n * M, { priority: 10 });
  l.freeze('P', false);
  l.takeBack('P', 5000n * M);
  assert.equal(l.balance('S'), -2000n * M);
});

Deno.test('reference: a lot expires whole under a hold, which shrinks by what it reserved of it', () => {
  const l = new RefLedger();
  const promo = l.grant('T', 100n * M, { priority: 10, expiresAt: 1 });
  l.grant('T', 1000n * M, { priority: 20 });
  const h = l.reserve('T', 150n * M);
  assert.ok(h);
  l.expire(promo);
  assert.deepEqual([h.open, h.amount, l.balance('T'), l.held('T')], [true, 50n * M, 1000n * M, 50n * M]);
  const g = l.reserve('T', 60n * M);
  assert.ok(g);
  l.expire(l.lotsOf('T')[1]);
  assert.deepEqual([h.open, g.open], [false, false], 'a hold whose lots all expired ends');
});

Deno.test('reference: a capture above its hold is refused; work billed past its hold owes the excess from free credits, what other holds give up, frozen ones, then debt', () => {
  const l = new RefLedger();
  l.grant('T', 100n * M);
  const h = l.reserve('T', 60n * M);
  assert.ok(h);
  assert.equal(l.capture(h, 61n * M), false, 'a capture never passes its hold');
  const other = l.reserve('T', 30n * M);
  assert.ok(other);
  l.chargeWork(h, 75n * M); // 60 held, 10 free, 5 the other hold gives up at once
  assert.deepEqual([l.balance('T'), l.held('T'), l.available('T')], [25n * M, 25n * M, 0n]);
  assert.equal(other.amount, 25n * M, 'the other hold shrank by what it gave');
  assert.equal(l.claimsWaiting(), false, 'nothing waits on the tick');
  l.release(other);
  assert.deepEqual([l.balance('T'), l.held('T'), l.available('T')], [25n * M, 0n, 25n * M]);
  const last = l.reserve('T', 25n * M);
  assert.ok(last);
  l.chargeWork(last, 40n * M); // nothing left beside it: 15 of debt
  assert.deepEqual([l.balance('T'), l.debt.get('T')], [-15n * M, 15n * M]);
});

Deno.test("reference: an excess takes what other holds give up, frozen lots' reservations too, before frozen free credits", () => {
  const l = new RefLedger();
  l.buy('p', 'T');
  l.grant('T', 10n * M, { purchase: 'p' }); // first in spending order
  l.grant('T', 20n * M);
  const h = l.reserve('T', 5n * M); // 5 of the purchase's lot
  const other = l.reserve('T', 20n * M); // its other 5, then 15 of the grant
  assert.ok(h && other);
  l.freeze('p', true);
  l.chargeWork(h, 12n * M); // 5 held; the excess of 7: 5 free, 2 the other hold gives up of the frozen lot
  assert.equal(other.amount, 18n * M);
  assert.deepEqual([l.balance('T'), l.held('T'), l.debt.get('T') ?? 0n], [18n * M, 18n * M, 0n]);
});

Deno.test('reference: an excess takes a reservation no take-back names before one a refund claimed, hold by hold', () => {
  const l = new RefLedger();
  l.buy('p', 'T');
  l.grant('T', 10n * M, { priority: 10 }); // spent first
  l.grant('T', 100n * M, { purchase: 'p' });
  const z = l.reserve('T', 30n * M); // all 10 of the first lot, 20 of the purchase's
  const x = l.reserve('T', 10n * M);
  const w = l.reserve('T', 10n * M);
  assert.ok(z && x && w);
  l.takeBack('p', 65n * M); // 60 free at once; 5 pending, named on z (the oldest hold)
  l.chargeWork(w, 15n * M); // 10 held; the excess of 5 finds nothing free
  assert.deepEqual([z.amount, x.amount], [30n * M, 5n * M], 'x gives (newest, nothing named on it), not z');
});
