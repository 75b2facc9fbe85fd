// Model-based test of school wallets (fast-check): random sequences of organisation grants and
// purchases, allowances, pooled caps, members' usage (single and batched), own grants and
// removals run against the real stack and a small model of who pays, compared after every
// step. The organisation funds by allowance or from a pool, paying before or after the
// members' own credits, as drawn per run. Its purchases are refunded and disputed after their
// credits were moved into allowances and spent: the model keeps totals only, so those steps
// assert where the credits were taken from and frozen, then take the balances back from the
// stack. ORG_MODEL_RUNS sets the number of runs.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  movedLotsOffProvenance,
  reportUsage,
  testDb,
} from '../support/helpers.ts';
import { key, person, school } from '../support/orgs.ts';
import { chargeOf, emulator } from '../support/purchases.ts';

const runs = Number(Deno.env.get('ORG_MODEL_RUNS') ?? 60);
const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };

// Credits in millionths: every amount here is a whole number of them.
const M = 1_000_000n;
function micro(s: string | null | undefined): bigint {
  if (s == null) return 0n;
  const [w, f = ''] = s.split('.');
  const sign = w.startsWith('-') ? -1n : 1n;
  return BigInt(w) * M + sign * BigInt((f + '000000').slice(0, 6));
}
/** gpt-4o-mini: (in × 0.15 + out × 0.60) × 4 / 1,000 credits. */
const price = (input: number, output: number) => BigInt(input) * 600n + BigInt(output) * 2400n;

interface Member {
  own: bigint;
  allowance: bigint;
  held: bigint; // of the allowance: what disputes froze there
  active: boolean;
  cap: bigint | null; // a monthly cap on the pool
  capSpent: bigint;
}
/** An organisation's purchase of the mini package (5,000 credits for 500 cents, no bonus). */
interface Purchase {
  refunded: bigint; // cents
  reversed: bigint; // credits taken back by refunds (micro)
  dispute: 'none' | 'open' | 'closed';
  /** While its dispute is open: Σ of its lots' remaining over every account (nothing spends them). */
  frozenLots: bigint;
}
interface Model {
  funding: 'allowance' | 'pool';
  paysFirst: boolean;
  wallet: bigint;
  walletHeld: bigint; // what disputes froze in the wallet
  members: Member[];
  purchases: Purchase[];
}
interface Person {
  id: string;
  token: string;
}
interface Real {
  org: string;
  owner: Person;
  admin: string;
  members: Person[];
  purchases: { id: string; charge: string }[];
}

/** One of the organisation's accounts (the wallet: member null) and one purchase's lots in it. */
interface Account {
  id: bigint;
  member: number | null;
  balance: bigint;
  held: bigint;
  lots: bigint; // Σ remaining of the purchase's lots here
  disputeHold: bigint; // the purchase's active dispute hold here
}
async function accountsOf(r: Real, purchase: string | null): Promise<Account[]> {
  const rows = await testDb`
    select a.id::text, a.member_id::text as member, trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      (select trim_scale(coalesce(sum(l.remaining), 0))::text from billing.lots l
       where l.account_id = a.id and l.purchase_id = ${purchase}) as lots,
      (select trim_scale(coalesce(sum(h.amount), 0))::text from billing.holds h join billing.purchases p on p.id = ${purchase}
       where h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute' and h.correlation_id = p.dispute_id) as hold
    from billing.accounts a where a.org_id = ${r.org} order by a.id`;
  return rows.map((x) => ({
    id: BigInt(x.id),
    member: x.member === null ? null : r.members.findIndex((p) => p.id === x.member),
    balance: micro(x.balance),
    held: micro(x.held),
    lots: micro(x.lots),
    disputeHold: micro(x.hold),
  }));
}
const walletRow = (accounts: Account[]) => accounts.find((a) => a.member === null) as Account;
/** Σ remaining of a purchase's lots in every account. */
async function lotsLeft(purchase: string) {
  const [{ left }] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as left from billing.lots l
    where l.purchase_id = ${purchase}`;
  return micro(left);
}

/**
 * Takes the organisation's balances and what disputes froze from the stack (after a step whose
 * effects were asserted where they happen), and each open dispute's lots.
 */
async function resync(m: Model, r: Real) {
  const accounts = await accountsOf(r, null);
  m.wallet = walletRow(accounts).balance;
  m.walletHeld = walletRow(accounts).held;
  for (const a of accounts) {
    if (a.member === null) continue;
    m.members[a.member].allowance = a.balance;
    m.members[a.member].held = a.held;
  }
  for (const [i, p] of m.purchases.entries()) {
    if (p.dispute === 'open') p.frozenLots = await lotsLeft(r.purchases[i].id);
  }
}

async function compare(m: Model, r: Real) {
  // What holds gave back in a removed member's allowance returns to the wallet with the minute
  // sweep (it may have run already).
  await testDb`select billing.sweep_ended_terms(1000)`;
  for (const x of m.members) {
    if (x.active || x.allowance <= x.held) continue;
    m.wallet += x.allowance - x.held;
    x.allowance = x.held;
  }
  const org = (await api(`/orgs/${r.org}`, { token: r.owner.token })).body.data as {
    wallet: { balance: string; held: string };
  };
  assert.equal(micro(org.wallet.balance), m.wallet, 'wallet');
  assert.equal(micro(org.wallet.held), m.walletHeld, "the wallet's held");
  for (const [i, p] of r.members.entries()) {
    const own = (await api('/credits/balance', { token: p.token })).body.data as { balance: string };
    assert.equal(micro(own.balance), m.members[i].own, `member ${i}'s own balance`);
    const seen = await api(`/orgs/${r.org}`, { token: p.token });
    if (!m.members[i].active) {
      assert.equal(seen.status, 404, 'a removed member sees nothing of the organisation');
      continue;
    }
    const allowance = (seen.body.data as { allowance: { balance: string; held: string } | null }).allowance;
    assert.equal(micro(allowance?.balance), m.members[i].allowance, `member ${i}'s allowance`);
    assert.equal(micro(allowance?.held), m.members[i].held, `member ${i}'s allowance held`);
  }
  // A removed member's allowance keeps what a dispute froze there.
  for (const a of await accountsOf(r, null)) {
    if (a.member === null || m.members[a.member].active) continue;
    assert.deepEqual(
      [a.balance, a.held],
      [m.members[a.member].allowance, m.members[a.member].held],
      'a removed allowance',
    );
  }
  // The organisation's own books: each account's balance is the sum of its entries; in each,
  // disputes hold at least every credit they froze (so nothing spends or moves those).
  const [{ off, unheld }] = await testDb`select
    count(*) filter (where a.balance <> (select coalesce(sum(e.amount), 0) from billing.entries e where e.account_id = a.id))::int as off,
    count(*) filter (where (select coalesce(sum(l.remaining), 0) from billing.lots l where l.account_id = a.id and l.frozen)
      > (select coalesce(sum(h.amount), 0) from billing.holds h where h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute'))::int as unheld
    from billing.accounts a where a.org_id = ${r.org}`;
  assert.equal(off, 0, 'Σ entries = balance on every organisation account');
  assert.equal(unheld, 0, 'disputes hold every frozen credit');
  for (const [i, p] of m.purchases.entries()) {
    if (p.dispute === 'open') {
      assert.equal(await lotsLeft(r.purchases[i].id), p.frozenLots, "a disputed purchase's lots are not spent");
    }
  }
  assert.deepEqual(await movedLotsOffProvenance(r.org), [], 'moved lots keep their provenance');
}

/** Which wallet pays a member's charge: the first in their order that can pay all of it. */
function payer(m: Model, i: number, amount: bigint): 'org' | 'own' | null {
  const x = m.members[i];
  const org = x.active &&
    (m.funding === 'allowance'
      ? x.allowance - x.held >= amount
      : m.wallet - m.walletHeld >= amount && (x.cap === null || x.capSpent + amount <= x.cap));
  const own = x.own >= amount;
  for (const source of m.paysFirst ? ['org', 'own'] as const : ['own', 'org'] as const) {
    if (source === 'org' ? org : own) return source;
  }
  return null;
}
function pay(m: Model, i: number, amount: bigint, source: 'org' | 'own') {
  const x = m.members[i];
  if (source === 'own') x.own -= amount;
  else if (m.funding === 'allowance') x.allowance -= amount;
  else {
    m.wallet -= amount;
    if (x.cap !== null) x.capSpent += amount;
  }
}

type Cmd = fc.AsyncCommand<Model, Real>;

/** A platform admin's grant: an adjustment never expires, a promotion in 365 days (moves keep either). */
class OrgGrant implements Cmd {
  constructor(readonly amount: number, readonly kind: 'adjustment' | 'promo_grant') {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api(`/orgs/${r.org}/grants`, {
      token: r.admin,
      body: { amount: String(this.amount), reason: 'model', kind: this.kind },
      headers: key(),
    });
    assert.equal(res.status, 201, res.text);
    m.wallet += BigInt(this.amount) * M;
    await compare(m, r);
  }
  toString = () => `OrgGrant(${this.amount}, ${this.kind})`;
}

class OrgBuy implements Cmd {
  check = (m: Readonly<Model>) => m.purchases.length < 2; // the checkout velocity rule: 5 per 10 minutes
  async run(m: Model, r: Real) {
    const co = await api('/checkout/sessions', {
      token: r.owner.token,
      body: { package_id: 'mini', org_id: r.org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    const { session_id, purchase_id } = co.body.data as { session_id: string; purchase_id: string };
    await emulator(`/_emulator/checkout/sessions/${session_id}/pay`);
    m.wallet += 5000n * M;
    m.purchases.push({ refunded: 0n, reversed: 0n, dispute: 'none', frozenLots: 0n });
    r.purchases.push({ id: purchase_id, charge: await chargeOf(session_id) });
    await compare(m, r);
  }
  toString = () => 'OrgBuy(mini)';
}

class OwnGrant implements Cmd {
  constructor(readonly member: number, readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api('/credits/grants', {
      token: r.admin,
      headers: key(),
      body: { user_id: r.members[this.member].id, amount: String(this.amount), reason: 'model', kind: 'adjustment' },
    });
    assert.equal(res.status, 201, res.text);
    m.members[this.member].own += BigInt(this.amount) * M;
    await compare(m, r);
  }
  toString = () => `OwnGrant(#${this.member}, ${this.amount})`;
}

class Fund implements Cmd {
  constructor(readonly member: number | null, readonly amount: number) {}
  check = (m: Readonly<Model>) =>
    m.funding === 'allowance' &&
    (this.member === null ? m.members.some((x) => x.active) : m.members[this.member].active);
  async run(m: Model, r: Real) {
    const res = await api(`/orgs/${r.org}/allowances`, {
      token: r.owner.token,
      headers: key(),
      body: {
        amount: String(this.amount),
        ...(this.member === null ? {} : { user_id: r.members[this.member].id }),
      },
    });
    const to = m.members.filter((x, i) => x.active && (this.member === null || i === this.member));
    const total = BigInt(this.amount) * M * BigInt(to.length);
    if (m.wallet - m.walletHeld >= total) {
      assert.equal(res.status, 201, res.text);
      m.wallet -= total;
      for (const x of to) x.allowance += BigInt(this.amount) * M;
    } else {
      assert.equal(res.status, 402, `all or nothing: ${res.text}`);
    }
    await compare(m, r);
  }
  toString = () => `Fund(${this.member === null ? 'everyone' : `#${this.member}`}, ${this.amount})`;
}

class SetCap implements Cmd {
  constructor(readonly member: number, readonly amount: number | null) {}
  check = (m: Readonly<Model>) => m.funding === 'pool' && m.members[this.member].active;
  async run(m: Model, r: Real) {
    const res = await api(`/orgs/${r.org}/members/${r.members[this.member].id}/cap`, {
      method: 'PUT',
      token: r.owner.token,
      body: { period: 'month', amount: this.amount === null ? null : String(this.amount) },
    });
    assert.equal(res.status, 200, res.text);
    const x = m.members[this.member];
    if (this.amount === null) x.cap = null;
    else {
      if (x.cap === null) x.capSpent = 0n; // a new cap counts from now
      x.cap = BigInt(this.amount) * M;
    }
    const caps = (res.body.data as { items: { spent: string }[] }).items;
    assert.deepEqual(caps.map((c) => micro(c.spent)), x.cap === null ? [] : [x.capSpent], 'cap spending');
    await compare(m, r);
  }
  toString = () => `SetCap(#${this.member}, ${this.amount})`;
}

class Use implements Cmd {
  constructor(readonly member: number, readonly input: number, readonly output: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await reportUsage('/credits/usage', {
      token: r.members[this.member].token,
      headers: key(),
      body: { model: 'gpt-4o-mini', input_tokens: this.input, output_tokens: this.output },
    });
    const amount = price(this.input, this.output);
    const source = payer(m, this.member, amount);
    if (source) {
      assert.equal(res.status, 201, `${source} should pay ${amount}: ${res.text}`);
      pay(m, this.member, amount, source);
    } else {
      assert.equal(res.status, 402, `nobody can pay ${amount}: ${res.text}`);
    }
    await compare(m, r);
  }
  toString = () => `Use(#${this.member}, ${this.input}/${this.output})`;
}

class Batch implements Cmd {
  constructor(readonly events: { member: number; input: number; output: number }[]) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const events = this.events.map((e) => ({
      event_id: crypto.randomUUID(),
      user_id: r.members[e.member].id,
      model: 'gpt-4o-mini',
      input_tokens: e.input,
      output_tokens: e.output,
      occurred_at: new Date().toISOString(),
    }));
    const res = await api('/credits/usage/batch', { headers: service, body: { events } });
    assert.equal(res.status, 200, res.text);
    const outcomes = (res.body.data as { outcomes: { status: string; org_id?: string }[] }).outcomes;
    // The batch takes each user's events together (by user id), in input order within them.
    const order = this.events.map((e, i) => ({ e, i }))
      .sort((a, b) => events[a.i].user_id.localeCompare(events[b.i].user_id) || a.i - b.i);
    for (const { e, i } of order) {
      const amount = price(e.input, e.output);
      const source = payer(m, e.member, amount);
      assert.equal(outcomes[i].status, source ? 'applied' : 'insufficient', `event ${i}`);
      assert.equal(outcomes[i].org_id ?? null, source === 'org' ? r.org : null, `event ${i}'s payer`);
      if (source) pay(m, e.member, amount, source);
    }
    await compare(m, r);
  }
  toString = () => `Batch(${this.events.map((e) => `#${e.member}:${e.input}/${e.output}`).join(', ')})`;
}

class Remove implements Cmd {
  constructor(readonly member: number) {}
  check = (m: Readonly<Model>) => m.members[this.member].active;
  async run(m: Model, r: Real) {
    const res = await api(`/orgs/${r.org}/members/${r.members[this.member].id}`, {
      method: 'DELETE',
      token: r.owner.token,
    });
    assert.equal(res.status, 200, res.text);
    const x = m.members[this.member];
    // What the allowance has available sweeps back; what a dispute froze stays for the dispute.
    const swept = max(x.allowance - x.held, 0n);
    m.wallet += swept;
    x.allowance -= swept;
    x.active = false;
    await compare(m, r);
  }
  toString = () => `Remove(#${this.member})`;
}

// ---------------------------------------------------------------- refunds and disputes
const min = (a: bigint, b: bigint) => (a < b ? a : b);
const max = (a: bigint, b: bigint) => (a > b ? a : b);
const PRICE = 500n; // cents
const CREDITS = 5000n * M;
const purchasesWhere = (m: Readonly<Model>, ok: (p: Purchase) => boolean) =>
  m.purchases.map((p, i) => [p, i] as const).filter(([p]) => ok(p));
const refundable = (p: Purchase) => p.dispute === 'none' && p.refunded < PRICE;

/**
 * A partial or full refund. Refunds reverse floor(credits × refunded ÷ paid): from the wallet's
 * own lots of the purchase first, then from the allowances its credits were moved to (in
 * account order, each up to its lots of it), the rest from the wallet (other credits, then debt).
 */
class Refund implements Cmd {
  constructor(readonly pick: number, readonly fraction: number) {}
  check = (m: Readonly<Model>) => m.purchases.some(refundable);
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, refundable);
    const [p, i] = open[this.pick % open.length];
    const left = PRICE - p.refunded;
    const cents = this.fraction >= 1 ? left : BigInt(Math.max(1, Math.floor(Number(left) * this.fraction)));
    const before = await accountsOf(r, r.purchases[i].id);
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/refund`, { amount: Number(cents) });
    p.refunded += cents;
    const target = CREDITS * p.refunded / PRICE / M * M; // whole credits
    const reversal = target - p.reversed;
    p.reversed = target;
    let beyond = reversal - walletRow(before).lots;
    const takes = before.map((a) => {
      const take = a.member === null ? 0n : min(a.lots, max(beyond, 0n));
      beyond -= take;
      return take;
    });
    const fromWallet = reversal - takes.reduce((sum, t) => sum + t, 0n);
    const after = await accountsOf(r, r.purchases[i].id);
    assert.deepEqual(
      after.map((a) => [a.member, a.balance, a.lots]),
      before.map((a, k) =>
        a.member === null
          ? [null, a.balance - fromWallet, a.lots - min(fromWallet, a.lots)]
          : [a.member, a.balance - takes[k], a.lots - takes[k]]
      ),
      "the refund takes the wallet's own lots of the purchase first, then the allowances'",
    );
    await resync(m, r);
    await compare(m, r);
  }
  toString = () => `Refund(#${this.pick}, ${this.fraction >= 1 ? 'all' : this.fraction.toFixed(2)})`;
}

/**
 * A dispute opens: every account holding the purchase's credits holds them (its lots of it),
 * the wallet the rest of what was bought, as far as its balance goes; from then on nothing
 * spends, holds or moves them (compare: their Σ stays, disputes hold every frozen credit).
 */
class DisputeOpen implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => m.purchases.some(refundable);
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, refundable);
    const [p, i] = open[this.pick % open.length];
    const before = await accountsOf(r, r.purchases[i].id);
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: 'open' });
    // Held here is only what other disputes froze (nobody holds organisation credits otherwise).
    const elsewhere = before.reduce((sum, a) => sum + (a.member === null ? 0n : a.lots), 0n);
    const freeze = (a: Account) => {
      const want = a.member === null ? CREDITS - p.reversed - elsewhere : a.lots;
      return max(min(want, a.balance - a.held), 0n);
    };
    const after = await accountsOf(r, r.purchases[i].id);
    assert.deepEqual(
      after.map((a) => [a.member, a.balance, a.lots, a.held, a.disputeHold]),
      before.map((a) => [a.member, a.balance, a.lots, a.held + freeze(a), freeze(a)]),
      "the dispute holds the purchase's credits in every account they are in, the rest of it in the wallet",
    );
    p.dispute = 'open';
    await resync(m, r);
    await compare(m, r);
  }
  toString = () => `DisputeOpen(#${this.pick})`;
}

/**
 * A dispute closes. Won: its holds are released and nothing else moves. Lost: what is left of
 * the purchase is taken back from wherever its credits are (each allowance loses its lots of it,
 * every lot of it ends at 0) and the rest from the wallet, which owes only what was spent of them.
 * Disputes still open keep holding every credit they froze (compare).
 */
class DisputeClose implements Cmd {
  constructor(readonly pick: number, readonly outcome: 'won' | 'lost') {}
  check = (m: Readonly<Model>) => m.purchases.some((p) => p.dispute === 'open');
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, (p) => p.dispute === 'open');
    const [p, i] = open[this.pick % open.length];
    const before = await accountsOf(r, r.purchases[i].id);
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: this.outcome });
    const after = await accountsOf(r, r.purchases[i].id);
    const elsewhere = before.reduce((sum, a) => sum + (a.member === null ? 0n : a.lots), 0n);
    const taken = (a: Account) =>
      this.outcome === 'won' ? 0n : a.member === null ? CREDITS - p.reversed - elsewhere : a.lots;
    assert.deepEqual(
      after.map((a) => [a.member, a.balance, a.lots, a.disputeHold]),
      before.map((a) => [a.member, a.balance - taken(a), this.outcome === 'won' ? a.lots : 0n, 0n]),
      `a ${this.outcome} dispute ${
        this.outcome === 'won' ? 'gives its credits back' : 'takes back what is left of them'
      }`,
    );
    if (!m.purchases.some((x) => x !== p && x.dispute === 'open')) {
      assert.deepEqual(after.map((a) => a.held), before.map((a) => a.held - a.disputeHold), 'its holds are released');
    }
    p.dispute = 'closed';
    await resync(m, r);
    await compare(m, r);
  }
  toString = () => `DisputeClose(#${this.pick}, ${this.outcome})`;
}

/** Both purchases disputed, the older first (its wallet hold may cover the other's credits); then the older closes. */
class OverlappingDisputes implements Cmd {
  constructor(readonly outcome: DisputeClose['outcome']) {}
  check = (m: Readonly<Model>) => m.purchases.filter(refundable).length >= 2;
  async run(m: Model, r: Real) {
    const [first] = purchasesWhere(m, refundable)[0];
    await new DisputeOpen(0).run(m, r);
    await new DisputeOpen(0).run(m, r);
    const open = purchasesWhere(m, (p) => p.dispute === 'open');
    await new DisputeClose(open.findIndex(([p]) => p === first), this.outcome).run(m, r);
  }
  toString = () => `OverlappingDisputes(${this.outcome})`;
}

const member = fc.integer({ min: 0, max: 1 });
// Charges of up to ~540 credits, against grants and allowances of up to a few thousand.
const input = fc.integer({ min: 1, max: 500_000 });
const output = fc.integer({ min: 0, max: 100_000 });
const commands = [
  fc.tuple(fc.integer({ min: 1, max: 3000 }), fc.constantFrom<OrgGrant['kind']>('adjustment', 'promo_grant'))
    .map(([a, k]) => new OrgGrant(a, k)),
  fc.constant(new OrgBuy()),
  fc.tuple(member, fc.integer({ min: 1, max: 1500 })).map(([i, a]) => new OwnGrant(i, a)),
  fc.tuple(fc.option(member, { nil: null }), fc.integer({ min: 1, max: 800 })).map(([i, a]) => new Fund(i, a)),
  fc.tuple(member, fc.option(fc.integer({ min: 1, max: 3000 }), { nil: null, freq: 3 })).map(([i, a]) =>
    new SetCap(i, a)
  ),
  fc.tuple(member, input, output).map(([i, n, o]) => new Use(i, n, o)),
  fc.array(fc.record({ member, input, output }), { minLength: 1, maxLength: 5 }).map((e) => new Batch(e)),
  member.map((i) => new Remove(i)),
  fc.tuple(fc.nat(), fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.95, noNaN: true })))
    .map(([i, f]) => new Refund(i, f)),
  fc.nat().map((i) => new DisputeOpen(i)),
  fc.tuple(fc.nat(), fc.constantFrom<DisputeClose['outcome']>('won', 'lost')).map(([i, o]) => new DisputeClose(i, o)),
  fc.constantFrom<DisputeClose['outcome']>('won', 'lost').map((o) => new OverlappingDisputes(o)),
];

Deno.test({
  name: `school wallets model: ${runs} random sequences agree with the model after every step`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<'allowance' | 'pool'>('allowance', 'pool'),
        fc.boolean(),
        // A school starts with a grant or none (then the first purchase's credits are what is
        // funded and spent), and often with a purchase of its own.
        fc.constantFrom(null, '300', '2000'),
        fc.boolean(),
        fc.commands([...commands, commands[1], ...commands.slice(3, 7), ...commands.slice(8)], {
          maxCommands: 20,
          size: 'max',
        }),
        async (funding, paysFirst, grant, bought, cmds) => {
          const [owner, ...members] = await Promise.all(['owner', 'ada', 'bo'].map(person));
          const org = await school(owner, members, funding, grant);
          if (!paysFirst) {
            const set = await api(`/orgs/${org}`, {
              method: 'PATCH',
              token: owner.token,
              body: { org_pays_first: false },
            });
            assert.equal(set.status, 200, set.text);
            assert.equal((set.body.data as { org_pays_first: boolean }).org_pays_first, false);
          }
          const model: Model = {
            funding,
            paysFirst,
            wallet: micro(grant),
            walletHeld: 0n,
            members: members.map(() => ({ own: 0n, allowance: 0n, held: 0n, active: true, cap: null, capSpent: 0n })),
            purchases: [],
          };
          const real: Real = { org, owner, admin: await adminToken(), members, purchases: [] };
          if (bought) await new OrgBuy().run(model, real);
          await fc.asyncModelRun(() => ({ model, real }), cmds);
        },
      ),
      { numRuns: runs },
    );
    await assertLedgerInvariants();
  },
});
