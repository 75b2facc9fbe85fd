// Model-based test of codes (fast-check), beside the ledger's own model (model.test.ts): random
// sequences of promo redemptions by several students at once, gifts bought through Checkout
// (the Stripe emulator, signed webhooks) and redeemed by two students racing for them, spending
// from the redeemed credits, and refunds and disputes of the gifts before and after redemption,
// run against the real stack and a small in-memory model, compared after every step: every
// student's balance and held credits, and each code's redemptions. Where the order of racing
// requests decides who wins, the real outcome is taken and the model checks that it is one the
// rules allow. A failure prints the shrunk sequence. CODES_MODEL_RUNS sets the number of runs.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { api, assertLedgerInvariants, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { chargeOf, emulator } from '../support/purchases.ts';
import { buyGift, promo, redeem } from '../support/codes.ts';

const runs = Number(Deno.env.get('CODES_MODEL_RUNS') ?? 15);
const packages = { mini: { price: 500, credits: 5000 }, starter: { price: 999, credits: 9990 } } as const;
type Pkg = keyof typeof packages;
type Who = 'buyer' | 'ada' | 'bo';

/** A lot in a student's account: a promo code's (priority 10, expires) or a gift's (paid, 20). */
interface Lot {
  gift: number | null;
  remaining: number;
}
interface Gift {
  pkg: Pkg;
  refundedCents: number;
  reversed: number; // credits a refund or a lost dispute took back
  escrow: number; // what the code still holds
  redeemedBy: Who | null;
  dispute: 'none' | 'open' | 'closed';
  /** While disputed: what the buyer's own balance has frozen for the gift's credits already spent. */
  buyerHold: number;
}
interface Model {
  promo: { credits: number; cap: number; redeemedBy: Set<Who> };
  gifts: Gift[];
  lots: Record<Who, Lot[]>;
  /** Debt or other balance change outside lots (the buyer owes what a redeemer spent). */
  owed: Record<Who, number>;
  /** Redemption requests each student sent: the route takes 10 a minute per user. */
  sent: Record<Who, number>;
}
const withinRateLimit = (m: Readonly<Model>, who: Who[]) =>
  people.every((w) => m.sent[w] + who.filter((x) => x === w).length <= 10);
interface Real {
  users: Record<Who, { id: string; token: string }>;
  promo: { id: string; code: string };
  gifts: { code: string; session: string; charge: string }[];
}

const people: Who[] = ['buyer', 'ada', 'bo'];
const frozen = (m: Model, l: Lot) => l.gift !== null && m.gifts[l.gift].dispute === 'open';
const balanceOf = (m: Model, w: Who) => m.lots[w].reduce((s, l) => s + l.remaining, 0) + m.owed[w];
const buyerHeld = (m: Model) => m.gifts.reduce((s, g) => s + (g.dispute === 'open' ? g.buyerHold : 0), 0);
const heldOf = (m: Model, w: Who) =>
  m.lots[w].filter((l) => frozen(m, l)).reduce((s, l) => s + l.remaining, 0) + (w === 'buyer' ? buyerHeld(m) : 0);

/** What of gift i is no longer anywhere (spent by its redeemer): the buyer owes it if the dispute is lost. */
function spentOf(m: Model, i: number) {
  const g = m.gifts[i];
  const left = g.redeemedBy === null ? g.escrow : (m.lots[g.redeemedBy].find((l) => l.gift === i) as Lot).remaining;
  return packages[g.pkg].credits - g.reversed - left;
}

/**
 * A disputed gift's spent credits are frozen in the buyer's balance, as far as it goes beyond what
 * earlier disputes froze there: when one opens, and, for those still open, topped up (older first)
 * after another closes.
 */
function freezeForBuyer(m: Model, i: number) {
  const g = m.gifts[i];
  const room = Math.max(balanceOf(m, 'buyer') - buyerHeld(m), 0);
  g.buyerHold += Math.max(Math.min(spentOf(m, i) - g.buyerHold, room), 0);
}

async function compare(m: Model, r: Real) {
  for (const w of people) {
    const b = (await api('/credits/balance', { token: r.users[w].token })).body.data as {
      balance: string;
      held: string;
    };
    assert.equal(Number(b.balance), balanceOf(m, w), `${w}'s balance`);
    assert.equal(Number(b.held), heldOf(m, w), `${w}'s held credits`);
  }
  const [c] = await testDb`select redeemed_count, trim_scale(redeemed_credits)::text as credits from billing.codes
                           where id = ${r.promo.id}`;
  assert.equal(c.redeemed_count, m.promo.redeemedBy.size, 'promo redemptions');
  assert.equal(Number(c.credits), m.promo.redeemedBy.size * m.promo.credits, 'promo credits granted');
  assert.ok(m.promo.redeemedBy.size <= m.promo.cap, 'never past the cap');
}

type Cmd = fc.AsyncCommand<Model, Real>;

/** Several students redeem the promo code at once, some twice: each at most once, never past the cap. */
class RedeemPromo implements Cmd {
  constructor(readonly who: Who[]) {}
  check = (m: Readonly<Model>) => withinRateLimit(m, this.who);
  async run(m: Model, r: Real) {
    for (const w of this.who) m.sent[w]++;
    const res = await Promise.all(this.who.map((w) => redeem(r.users[w].token, r.promo.code)));
    for (const w of new Set(this.who)) {
      const mine = res.filter((_, i) => this.who[i] === w);
      const ok = mine.filter((x) => x.status === 200);
      if (m.promo.redeemedBy.has(w) || ok.length) {
        // Redeemed (now or before): every answer of theirs is 200, one grant.
        assert.equal(ok.length, mine.length, `${w}: ${mine.map((x) => x.text).join(' ')}`);
        assert.equal(new Set(ok.map((x) => dataOf(x).transfer_id)).size, 1, 'one redemption, one answer');
        if (!m.promo.redeemedBy.has(w)) {
          m.promo.redeemedBy.add(w);
          m.lots[w].push({ gift: null, remaining: m.promo.credits });
        }
      } else {
        assert.ok(mine.every((x) => codeOf(x) === 'CODE_EXHAUSTED'), mine.map((x) => x.text).join(' '));
      }
    }
    const wanting = new Set(this.who).size;
    assert.ok(
      m.promo.redeemedBy.size <= m.promo.cap && (m.promo.redeemedBy.size === m.promo.cap ||
        [...new Set(this.who)].every((w) => m.promo.redeemedBy.has(w))),
      `cap ${m.promo.cap}, ${wanting} wanted it`,
    );
    await compare(m, r);
  }
  toString = () => `RedeemPromo(${this.who})`;
}

class BuyGift implements Cmd {
  constructor(readonly pkg: Pkg) {}
  check = (m: Readonly<Model>) => m.gifts.length < 2;
  async run(m: Model, r: Real) {
    const g = await buyGift(r.users.buyer.token, this.pkg);
    r.gifts.push({ code: g.code, session: g.session_id, charge: await chargeOf(g.session_id) });
    m.gifts.push({
      pkg: this.pkg,
      refundedCents: 0,
      reversed: 0,
      escrow: packages[this.pkg].credits,
      redeemedBy: null,
      dispute: 'none',
      buyerHold: 0,
    });
    await compare(m, r);
  }
  toString = () => `BuyGift(${this.pkg})`;
}

/** Ada and Bo race for a gift: one gets what its escrow holds, or nobody when it cannot give. */
class RedeemGift implements Cmd {
  constructor(readonly i: number) {}
  check = (m: Readonly<Model>) => m.gifts.length > 0 && withinRateLimit(m, ['ada', 'bo']);
  async run(m: Model, r: Real) {
    m.sent.ada++;
    m.sent.bo++;
    const i = this.i % m.gifts.length;
    const g = m.gifts[i];
    const [a, b] = await Promise.all((['ada', 'bo'] as const).map((w) => redeem(r.users[w].token, r.gifts[i].code)));
    const can = g.redeemedBy === null && g.escrow > 0 && g.dispute !== 'open';
    if (!can) {
      // Nobody new gets it (the one who redeemed it hears its first answer again).
      for (const [w, x] of [['ada', a], ['bo', b]] as const) {
        if (g.redeemedBy === w) assert.equal(x.status, 200, x.text);
        else assert.equal(codeOf(x), 'CODE_NOT_REDEEMABLE', x.text);
      }
    } else {
      const winners = [a, b].filter((x) => x.status === 200);
      assert.equal(winners.length, 1, `${a.text} ${b.text}`);
      const w: Who = a.status === 200 ? 'ada' : 'bo';
      assert.equal(Number(dataOf(winners[0]).credits), g.escrow);
      m.lots[w].push({ gift: i, remaining: g.escrow });
      g.redeemedBy = w;
      g.escrow = 0;
    }
    await compare(m, r);
  }
  toString = () => `RedeemGift(${this.i})`;
}

/** A student spends: what is not frozen, promotional credits first, then gifts in the order received. */
class Spend implements Cmd {
  constructor(readonly who: 'ada' | 'bo', readonly credits: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const available = balanceOf(m, this.who) - heldOf(m, this.who);
    const res = await reportUsage('/credits/usage', {
      token: r.users[this.who].token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { model: 'gpt-4o', input_tokens: this.credits * 50, output_tokens: 0 },
    });
    if (available < this.credits) {
      assert.equal(res.status, 402, res.text);
    } else {
      assert.equal(res.status, 201, res.text);
      let left = this.credits;
      const order = [...m.lots[this.who]].filter((l) => !frozen(m, l))
        .sort((x, y) => (x.gift === null ? 0 : 1) - (y.gift === null ? 0 : 1));
      for (const l of order) {
        const take = Math.min(left, l.remaining);
        l.remaining -= take;
        left -= take;
      }
    }
    await compare(m, r);
  }
  toString = () => `Spend(${this.who}, ${this.credits})`;
}

/** Takes back `amount` of gift i: from its escrow, or the redeemer's lot of it; the rest the buyer owes. */
function takeBack(m: Model, i: number, amount: number) {
  const g = m.gifts[i];
  if (g.redeemedBy === null) {
    g.escrow -= amount;
  } else {
    const lot = m.lots[g.redeemedBy].find((l) => l.gift === i) as Lot;
    const take = Math.min(amount, lot.remaining);
    lot.remaining -= take;
    m.owed.buyer -= amount - take;
  }
  g.reversed += amount;
}

/** A refund of part or all of a gift (cumulative, as Stripe reports it). */
class Refund implements Cmd {
  constructor(readonly i: number, readonly share: number) {}
  check = (m: Readonly<Model>) => m.gifts.some((g) => g.dispute === 'none' && g.refundedCents < packages[g.pkg].price);
  async run(m: Model, r: Real) {
    const open = m.gifts.map((g, i) => [g, i] as const).filter(([g]) =>
      g.dispute === 'none' && g.refundedCents < packages[g.pkg].price
    );
    const [g, i] = open[this.i % open.length];
    const { price, credits } = packages[g.pkg];
    const cents = Math.max(1, Math.min(price - g.refundedCents, Math.round(price * this.share)));
    await emulator(`/_emulator/charges/${r.gifts[i].charge}/refund`, { amount: cents });
    g.refundedCents += cents;
    takeBack(m, i, Math.floor(credits * g.refundedCents / price) - g.reversed);
    await compare(m, r);
  }
  toString = () => `Refund(${this.i}, ${this.share.toFixed(2)})`;
}

/** A dispute of a gift: opened (its credits frozen wherever they are), then won, or lost at once or later. */
class Dispute implements Cmd {
  constructor(readonly i: number, readonly outcome: 'open' | 'won' | 'lost') {}
  check = (m: Readonly<Model>) =>
    m.gifts.some((g) =>
      this.outcome === 'won' ? g.dispute === 'open' : g.dispute !== 'closed' &&
        g.refundedCents < packages[g.pkg].price
    );
  async run(m: Model, r: Real) {
    const can = m.gifts.map((g, i) => [g, i] as const).filter(([g]) =>
      this.outcome === 'won' ? g.dispute === 'open' : g.dispute !== 'closed' && g.refundedCents < packages[g.pkg].price
    );
    const [g, i] = can[this.i % can.length];
    const outcome = this.outcome === 'open' && g.dispute === 'open' ? 'lost' : this.outcome;
    await emulator(`/_emulator/charges/${r.gifts[i].charge}/dispute`, { outcome });
    if (outcome === 'open') {
      g.dispute = 'open';
      freezeForBuyer(m, i);
    } else {
      g.dispute = 'closed';
      g.buyerHold = 0;
      if (outcome === 'lost') takeBack(m, i, packages[g.pkg].credits - g.reversed);
      m.gifts.forEach((x, j) => x.dispute === 'open' && freezeForBuyer(m, j));
    }
    await compare(m, r);
  }
  toString = () => `Dispute(${this.i}, ${this.outcome})`;
}

const who = fc.constantFrom<Who>('ada', 'bo', 'buyer');
const commands = [
  fc.array(who, { minLength: 1, maxLength: 5 }).map((w) => new RedeemPromo(w)),
  fc.constantFrom<Pkg>('mini', 'starter').map((p) => new BuyGift(p)),
  fc.nat().map((i) => new RedeemGift(i)),
  fc.nat().map((i) => new RedeemGift(i)),
  fc.tuple(fc.constantFrom<'ada' | 'bo'>('ada', 'bo'), fc.integer({ min: 1, max: 6000 })).map(([w, n]) =>
    new Spend(w, n)
  ),
  fc.tuple(fc.nat(), fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.95, noNaN: true }))).map(([i, s]) =>
    new Refund(i, s)
  ),
  fc.tuple(fc.nat(), fc.constantFrom<Dispute['outcome']>('open', 'won', 'lost')).map(([i, o]) => new Dispute(i, o)),
];

Deno.test({
  name: `codes model: ${runs} random sequences of redemptions, gifts, refunds and disputes agree with the model`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 1, max: 3 }),
        fc.commands(commands, { maxCommands: 10, size: 'max' }),
        async (credits, cap, cmds) => {
          const users = {} as Real['users'];
          for (const w of people) {
            const id = await newUser();
            users[w] = { id, token: await userToken(id) };
          }
          const real: Real = {
            users,
            promo: await promo({ credits: String(credits), max_redemptions: cap }),
            gifts: [],
          };
          const model: Model = {
            promo: { credits, cap, redeemedBy: new Set() },
            gifts: [],
            lots: { buyer: [], ada: [], bo: [] },
            owed: { buyer: 0, ada: 0, bo: 0 },
            sent: { buyer: 0, ada: 0, bo: 0 },
          };
          await fc.asyncModelRun(() => ({ model, real }), cmds);
          if (Deno.env.get('CODES_MODEL_LOG')) console.log(String(cmds));
        },
      ),
      { numRuns: runs },
    );
    await assertLedgerInvariants();
  },
});
