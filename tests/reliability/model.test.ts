// Model-based test of the ledger (fast-check): random command sequences run against the real
// stack (HTTP, the Stripe emulator, signed webhooks) and against a small in-memory model of the
// rules of #77 (docs/credit-lots.md § Spending order, § Refunds, disputes and debt), compared
// after every step, with the database's invariants (tests/support/model-invariants.ts). Holds
// reserve specific lots' free credits when placed; captures post from the reservation; caps are
// set by the student and by an admin (and the student tries to lift the admin's); lots expire
// whole while held (the holds that reserved them shrink), before a spend, a capture or a
// re-hold; refunds take free credits at once and what holds reserved when they return it; a
// dispute freezes the purchase's lots and suspends the student (403 ACCOUNT_DISPUTED) until it
// is won (the lots thaw) or lost (settled as a refund; what was spent is owed, then debt); a
// bonus expires and its purchase is then refunded or disputed (what expired is forgiven, not
// taken again). An admin voids charges (twice at once), whose credits go back into the lots they
// drew (an expired lot's share expires again), and their cap room back. A failure prints the
// shrunk sequence. MODEL_RUNS sets the number of runs (200 here; ./scripts/soak runs thousands);
// MODEL_SEED replays one (the seed is printed); MODEL_OPS=old runs only what the SQL before #77
// follows.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { SpendCap } from '../../supabase/functions/_shared/contract/index.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  env,
  newUser,
  reportUsage,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { chargeOf, deliver, emulator, startCheckout } from '../support/purchases.ts';
import {
  compareBesideTick,
  type FrozenWatch,
  frozenWatch,
  modelSeed,
  newRules,
  stepInvariants,
} from '../support/model-invariants.ts';

const runs = Number(Deno.env.get('MODEL_RUNS') ?? 200);
const service = env('SUPABASE_SERVICE_ROLE_KEY');

// ---------------------------------------------------------------- money in micro-credits
const M = 1_000_000n;
/** An exact decimal string of credits in millionths (every amount here has ≤ 6 decimals). */
function micro(s: string): bigint {
  const [w, f = ''] = s.split('.');
  assert.ok(f.replace(/0+$/, '').length <= 6, `unexpected precision: ${s}`);
  const sign = w.startsWith('-') ? -1n : 1n;
  return BigInt(w) * M + sign * BigInt((f + '000000').slice(0, 6));
}
const floorDiv = (a: bigint, b: bigint) => (a >= 0n ? a / b : -((-a + b - 1n) / b));
/** Micro-credits as the API's decimal string. */
const credits = (x: bigint) => {
  const f = (x % M).toString().padStart(6, '0').replace(/0+$/, '');
  return `${x / M}${f ? `.${f}` : ''}`;
};
const DAY = 86_400_000;

const packages = {
  mini: { price: 500n, credits: 5000n * M, bonus: 0n },
  starter: { price: 999n, credits: 9990n * M, bonus: 0n },
  plus: { price: 2499n, credits: 24990n * M, bonus: 1249_500000n },
} as const;
type Pkg = keyof typeof packages;
/** A purchase's two lots: its credits (paid) and its bonus (promotional). */
type Part = 'credits' | 'bonus';

interface ModelPurchase {
  pkg: Pkg;
  refunded: bigint; // cents
  creditsReversed: bigint; // micro (whole credits)
  bonusReversed: bigint;
  dispute: 'none' | 'open' | 'closed';
  expired: Record<Part, bigint>; // what expired of its lots
  forgiven: Record<Part, bigint>; // what refunds and disputes did not take back because it had expired
}
/** A credit lot as the model sees it (spending order: priority, earliest expiry, oldest; only free credits). */
interface ModelLot {
  priority: number; // promotional 10, paid 20
  /** When it expires (ms): a purchase's bonus in 365 days, an expiring grant when it says; credits and adjustments never. */
  expiresAt: number | null;
  due: boolean; // its expires_at has passed (backdated): the next settle expires it
  purchase?: number; // index into purchases
  part?: Part; // which of the purchase's lots
  remaining: bigint;
  reserved: bigint; // what open holds reserved of it
}
type Owner = SpendCap['set_by'];
/** A monthly spend cap (micro-credits) and what counted against it; `gen` numbers the caps in creation order. */
interface ModelCap {
  amount: bigint;
  spent: bigint;
  gen: number;
}
interface ModelHold {
  amount: bigint;
  open: boolean;
  lots: Map<number, bigint>; // what it reserved of each lot (by index)
  /** Of what it reserved of a lot, what a refund or lost dispute takes back when this hold returns it. */
  pending: Map<number, bigint>;
  /** Of what it reserved of a lot, what the student's own debt claims when this hold returns it. */
  claimed: Map<number, bigint>;
  counted: number[]; // the caps (by gen) it counted against when placed
}
/** A usage charge: what it drew from each lot (by index) and the caps it counted against. */
interface ModelCharge {
  amount: bigint;
  draws: { lot: number; take: bigint }[];
  counted: number[];
  voided: boolean;
}
interface Model {
  charges: ModelCharge[];
  balance: bigint;
  held: bigint;
  purchases: ModelPurchase[];
  holds: ModelHold[];
  lots: ModelLot[]; // in grant order
  /** The student's own cap and the one an admin set on them: both apply. */
  caps: Record<Owner, ModelCap | null>;
  gens: number;
  /** next_expiry has passed: whatever settles the account first expires the due lots. */
  expiryDue: boolean;
  /**
   * Ended holds' take-backs waiting for pg_cron's tick (billing.take_back_claims), in the order the
   * holds ended, each with what it kept reserved for them (a claims hold: `lots`, `amount`).
   */
  waiting: ModelHold[];
}
interface Real {
  user: string;
  token: string;
  /** An admin of this run's own (rate limits are per user). */
  admin: string;
  purchases: { charge: string }[];
  holds: string[];
  /** The usage charges' transfer ids, as m.charges. */
  charges: string[];
  watch: FrozenWatch;
}

// ---------------------------------------------------------------- checking a step
/** The model against the database after a step, beside pg_cron's own minute tick (compareBesideTick). */
const compare = (m: Model, r: Real) =>
  compareBesideTick({ users: [r.user] }, () => claimsWaiting(m), () => takeBackClaims(m), () => compareOnce(m, r));

async function compareOnce(m: Model, r: Real) {
  // The balance as settling would leave it, even before anything settled the account.
  const b = (await api('/credits/balance', { token: r.token })).body.data as {
    balance: string;
    held: string;
    available: string;
  };
  // The minute sweep expires what is due (it may have already); the rows are compared after it.
  if (m.lots.some((l) => l.due && l.remaining > 0n)) await testDb`select billing.expire_lots(100000)`;
  // Every lot as the model drew and reserved it (before #77 a hold reserved no lot, so a charge
  // beside one drew other lots: MODEL_OPS=old compares them only until a hold is placed).
  const lots =
    (await testDb`select trim_scale(l.remaining)::text as remaining, trim_scale(l.reserved)::text as reserved,
      l.frozen from billing.lots l join billing.accounts a on a.id = l.account_id where a.user_id = ${r.user} order by l.id`)
      .map((l) => [micro(l.remaining), newRules ? micro(l.reserved) : 0n, newRules && l.frozen]);
  const caps = capsSeen(((await api('/credits/caps', { token: r.token })).body.data as { items: SpendCap[] }).items);
  const view = settled(m);
  assert.equal(micro(b.balance), view.balance, 'balance');
  assert.equal(micro(b.held), view.held, 'held');
  if (newRules && view.balance >= 0n) assert.equal(micro(b.available), available(view), 'available: Σ free credits');
  settle(m);
  if (newRules || m.holds.length === 0) assert.deepEqual(lots, lotsModelled(m), 'lots: remaining, reserved, frozen');
  await stepInvariants({ users: [r.user] }, r.watch); // the database's invariants
  assert.deepEqual(caps, capsModelled(m), 'caps and their spending');
}
const lotsModelled = (m: Model) =>
  m.lots.map((l) => [l.remaining, newRules ? l.reserved : 0n, newRules && isFrozen(m, l)]);

/** pg_cron's minute tick, at a random moment: what refunds claimed of ended holds is taken back. */
class Tick implements Cmd {
  check = () => true;
  async run(m: Model, r: Real) {
    await testDb`select billing.take_back_due_claims(100000)`;
    takeBackClaims(m);
    await compare(m, r);
  }
  toString = () => 'Tick';
}

// ---------------------------------------------------------------- caps
const owners = ['admin', 'self'] as const; // as GET /credits/caps lists them
const capsOf = (m: Model) => owners.flatMap((o) => m.caps[o] ?? []);
const capsSeen = (caps: SpendCap[]) => caps.map((c) => [c.set_by, micro(c.cap), micro(c.spent)]);
const capsModelled = (m: Model) => owners.flatMap((o) => m.caps[o] ? [[o, m.caps[o].amount, m.caps[o].spent]] : []);

/**
 * What can be spent or reserved: Σ free credits (remaining − reserved, none while frozen), less a
 * debt that sits beside what holds reserved (balance − held below zero); nothing in debt.
 */
const available = (m: Model) =>
  m.balance < 0n ? 0n : min(m.lots.reduce((sum, l) => sum + free(m, l), 0n), m.balance - m.held);
/** A disputed purchase's buyer is suspended: every money request of theirs is 403 ACCOUNT_DISPUTED. */
const suspended = (m: Readonly<Model>) => newRules && m.purchases.some((p) => p.dispute === 'open');
function assertSuspended(res: { status: number; body: Record<string, unknown>; text: string }) {
  assert.equal(res.status, 403, `a disputed buyer is suspended: ${res.text}`);
  assert.equal((res.body.error as { code: string }).code, 'ACCOUNT_DISPUTED', res.text);
}
/** Every cap applies: a charge must fit all of them. */
const fitsCap = (m: Model, amount: bigint) => capsOf(m).every((c) => c.spent + amount <= c.amount);
/** Counts a spend or a hold against every cap. */
const countCap = (m: Model, amount: bigint) => capsOf(m).forEach((c) => c.spent += amount);
/** What a hold did not spend goes back to the caps it counted against (a cap set since never counted it). */
const returnCap = (m: Model, hold: { counted: number[] }, amount: bigint) =>
  capsOf(m).filter((c) => hold.counted.includes(c.gen)).forEach((c) => c.spent = max(c.spent - amount, 0n));
/** The cap a refusal names: the least room left among those the charge would pass, the oldest first. */
const tightest = (m: Model, amount: bigint) =>
  capsOf(m).filter((c) => c.spent + amount > c.amount)
    .sort((a, b) => Number(a.amount - a.spent - (b.amount - b.spent)) || a.gen - b.gen)[0];
/** Setting a cap again keeps what was spent this period; a new one (or one set after removal) counts from now. */
function setCap(m: Model, owner: Owner, amount: bigint | null) {
  const cap = m.caps[owner];
  if (amount === null) m.caps[owner] = null;
  else if (cap) cap.amount = amount;
  else m.caps[owner] = { amount, spent: 0n, gen: ++m.gens };
}

// ---------------------------------------------------------------- lots
/** What the account owes beyond its lots (a debt): Σ remaining − balance. */
const debtOf = (m: Model) => max(m.lots.reduce((sum, l) => sum + l.remaining, 0n) - m.balance, 0n);
/** A grant's lot: what pays an existing debt is settled on arrival, the rest remains. Call before the balance moves. */
function grantLot(m: Model, amount: bigint, lot: Omit<ModelLot, 'remaining' | 'reserved'>) {
  const settled = min(amount, debtOf(m));
  m.lots.push({ ...lot, remaining: amount - settled, reserved: 0n });
}

const isFrozen = (m: Model, l: ModelLot) => l.purchase !== undefined && m.purchases[l.purchase].dispute === 'open';
const free = (m: Model, l: ModelLot) => (isFrozen(m, l) ? 0n : l.remaining - l.reserved);
/** The lots in spending order: priority, the earliest expiry (never last), the oldest. */
const spendingOrder = (m: Model, ls: ModelLot[] = m.lots) =>
  ls.map((l) => ({ l, seq: m.lots.indexOf(l) }))
    .sort((a, b) =>
      a.l.priority - b.l.priority || (a.l.expiresAt ?? Infinity) - (b.l.expiresAt ?? Infinity) || a.seq - b.seq
    ).map((x) => x.l);
/** Draws up to `amount` of free credits in spending order (a charge, or what the buyer owes); what they drew. */
function drawLots(m: Model, amount: bigint): { lot: number; take: bigint }[] {
  const draws: { lot: number; take: bigint }[] = [];
  for (const l of spendingOrder(m)) {
    const take = min(free(m, l), amount);
    if (take > 0n) draws.push({ lot: m.lots.indexOf(l), take });
    l.remaining -= take;
    amount -= take;
  }
  return draws;
}
/** A hold reserves `amount` of free credits in spending order (the caller checked they reach it). */
function reserveLots(m: Model, amount: bigint) {
  const lots = new Map<number, bigint>();
  for (const l of spendingOrder(m)) {
    const take = min(free(m, l), amount);
    if (take <= 0n) continue;
    l.reserved += take;
    lots.set(m.lots.indexOf(l), take);
    amount -= take;
  }
  return lots;
}
/**
 * A hold ends, `spent` of it captured (posted from its reservation, in spending order): each lot
 * gets back the rest of what it reserved, but what the take-backs pending on it and the debt's
 * claims wait on stays reserved, in a claims hold, for pg_cron's tick (takeBackClaims), and what
 * comes back beyond them to an account in debt pays it. The cap room of what it did not spend goes
 * back (of what it kept, at the tick).
 */
function endHold(m: Model, h: ModelHold, spent: bigint) {
  let left = spent;
  const posted = new Map<number, bigint>();
  for (const l of spendingOrder(m, [...h.lots.keys()].map((n) => m.lots[n]))) {
    const n = m.lots.indexOf(l);
    const take = min(left, h.lots.get(n) as bigint);
    posted.set(n, take);
    left -= take;
  }
  for (const [n, r] of h.lots) {
    m.lots[n].reserved -= r;
    m.lots[n].remaining -= posted.get(n) ?? 0n;
  }
  m.balance -= spent;
  const kept = takeClaims(h);
  for (const [n, r] of h.lots) {
    const l = m.lots[n];
    const back = r - (posted.get(n) ?? 0n);
    const keep = min(back, (kept.pending.get(n) ?? 0n) + (kept.claimed.get(n) ?? 0n));
    if (keep > 0n) kept.lots.set(n, keep);
    l.reserved += keep;
    kept.amount += keep;
    l.remaining -= min(debtOf(m), back - keep); // what comes back pays a debt first
  }
  if (kept.pending.size + kept.claimed.size > 0) m.waiting.push(kept);
  h.open = false; // ended first: what it owes is never claimed on itself
  h.lots.clear();
  returnCap(m, h, h.amount - spent - kept.amount);
  m.held += kept.amount - h.amount;
}
/** What waits on an ending hold, moved to a claims hold of its own (nothing kept yet). */
function takeClaims(h: ModelHold): ModelHold {
  const waits = { amount: 0n, open: true, lots: new Map(), pending: h.pending, claimed: h.claimed, counted: h.counted };
  h.pending = new Map();
  h.claimed = new Map();
  return waits;
}
/** The take-backs a live hold has on lots that expired under it: the tick's too. */
const dueOnLiveHold = (h: ModelHold) =>
  h.open && [...h.pending.keys(), ...h.claimed.keys()].some((n) => !h.lots.has(n));
/** Whether pg_cron's tick has take-backs to take. */
const claimsWaiting = (m: Readonly<Model>) => m.waiting.length > 0 || m.holds.some(dueOnLiveHold);
/**
 * pg_cron's tick (billing.take_back_claims): the account settled, then each ended hold's
 * take-backs in the order it ended (its claims hold released first), and a live hold's on lots
 * that expired under it: of what it kept of a lot, the refunds' take-backs first, then the
 * debt's claims; what they cannot get is owed, a refund's after what expired of its purchase is
 * forgiven.
 */
function takeBackClaims(m: Model) {
  if (!claimsWaiting(m)) return;
  settle(m);
  const entries = [...m.waiting, ...m.holds.filter(dueOnLiveHold)];
  m.waiting = [];
  for (const e of entries) {
    const live = m.holds.includes(e);
    if (!live) {
      for (const [n, k] of e.lots) m.lots[n].reserved -= k;
      m.held -= e.amount;
      returnCap(m, e, e.amount);
    }
    let owed = 0n;
    for (const n of new Set([...e.pending.keys(), ...e.claimed.keys()])) {
      if (live && e.lots.has(n)) continue; // still reserved by the live hold: taken when it ends
      const l = m.lots[n];
      let back = live ? 0n : e.lots.get(n) ?? 0n;
      const pending = e.pending.get(n) ?? 0n;
      const took = min(min(pending, back), l.remaining - l.reserved);
      l.remaining -= took;
      m.balance -= took;
      back -= took;
      const claimed = e.claimed.get(n) ?? 0n;
      const claim = min(min(claimed, back), l.remaining - l.reserved);
      l.remaining -= claim;
      m.balance -= claim;
      owed += forgiveExpired(m, l, pending - took) + claimed - claim;
      e.pending.delete(n);
      e.claimed.delete(n);
    }
    if (!live) {
      e.lots.clear();
      e.amount = 0n;
    }
    owe(m, owed);
  }
  // What the take-backs left of a lot past its expiry expires now (the tick settles again).
  for (const l of m.lots) if (l.due && l.remaining > l.reserved) expireLot(m, l);
}
/**
 * What the buyer owes (spent credits of a refunded or lost purchase): their frozen credits pay it
 * first (oldest first, as the reversal names them), then their free ones; then what their live
 * holds reserved is claimed (taken when each hold returns it); the rest is debt.
 */
function owe(m: Model, amount: bigint) {
  if (amount <= 0n) return;
  let left = amount;
  for (const l of m.lots.filter((x) => x.remaining > x.reserved && isFrozen(m, x))) {
    const take = min(l.remaining - l.reserved, left);
    l.remaining -= take;
    left -= take;
  }
  const free = m.lots.reduce((sum, l) => sum + (isFrozen(m, l) ? 0n : l.remaining - l.reserved), 0n);
  drawLots(m, min(left, free));
  let claims = 0n;
  for (const l of spendingOrder(m, m.lots.filter((x) => x.reserved > 0n))) {
    const n = m.lots.indexOf(l);
    for (const h of m.holds.filter((x) => x.open && x.lots.has(n))) {
      const take = min(left - min(left, free) - claims, unclaimed(h, n));
      h.claimed.set(n, (h.claimed.get(n) ?? 0n) + take);
      claims += take;
    }
  }
  m.balance -= amount - claims;
}
/** Of what a live hold reserved of a lot, what no take-back or claim waits on yet. */
const unclaimed = (h: ModelHold, n: number) =>
  (h.lots.get(n) ?? 0n) - (h.pending.get(n) ?? 0n) - (h.claimed.get(n) ?? 0n);
/** Of what a take-back of a purchase's lot cannot get, what is still owed: what expired of that part is forgiven. */
function forgiveExpired(m: Model, l: ModelLot, lack: bigint) {
  if (lack <= 0n || l.purchase === undefined || !l.part) return lack;
  const p = m.purchases[l.purchase];
  const f = min(lack, unforgiven(p, [l.part]));
  p.forgiven[l.part] += f;
  return lack - f;
}
const lotsOf = (m: Model, purchase: number) => m.lots.filter((l) => l.purchase === purchase);
/** The lot that expires next and can: open, not due yet (frozen or not: a frozen lot expires when due). */
const nextToExpire = (m: Model) =>
  m.lots.filter((l) => l.expiresAt !== null && !l.due && l.remaining > 0n)
    .sort((a, b) => (a.expiresAt ?? 0) - (b.expiresAt ?? 0))[0];

// ---------------------------------------------------------------- settling
/**
 * A lot expires whole, reserved or not: each hold that reserved it shrinks by that (it ends at 0),
 * but what claims holds keep of it (the tick's). The take-backs and claims waiting on it are the tick's too.
 */
function expireLot(m: Model, l: ModelLot) {
  const n = m.lots.indexOf(l);
  // What claims holds keep of it is the refunds' since before it fell due: the tick's, it stays.
  const kept = m.waiting.reduce((sum, h) => sum + (h.lots.get(n) ?? 0n), 0n);
  for (const h of m.holds.filter((x) => x.open)) {
    const r = h.lots.get(n);
    if (r === undefined) continue;
    h.lots.delete(n);
    h.amount -= r;
    m.held -= r;
    returnCap(m, h, r);
    if (h.amount === 0n && m.holds.includes(h)) {
      h.open = false; // ended: what waits on it is the tick's
      const waits = takeClaims(h);
      if (waits.pending.size + waits.claimed.size > 0) m.waiting.push(waits);
    }
  }
  if (l.purchase !== undefined && l.part) m.purchases[l.purchase].expired[l.part] += l.remaining - kept;
  m.balance -= l.remaining - kept;
  l.remaining = kept;
  l.reserved = kept;
}

/**
 * What billing.settled does before anything is spent, held, moved or captured once next_expiry
 * has passed: every due lot expires in full, held or not, frozen or not (the holds that reserved
 * it shrink).
 */
function settle(m: Model) {
  if (!m.expiryDue) return;
  for (const l of m.lots) if (l.due && l.remaining > 0n) expireLot(m, l);
  m.expiryDue = false;
}
/** The model as settling leaves it. A refused request rolls its settling back: commit it only on success. */
function settled(m: Model): Model {
  const s = structuredClone(m);
  settle(s);
  return s;
}

/** Judges a debit-like request on the settled model; on success the model becomes it, charged to the caps. */
function expectDebit(m: Model, price: bigint, res: { status: number; body: Record<string, unknown>; text: string }) {
  if (suspended(m)) {
    assertSuspended(res);
    return false;
  }
  const s = settled(m);
  if (available(s) >= price && fitsCap(s, price)) {
    assert.equal(res.status, 201, `expected success, available ${available(s)} ≥ ${price}, cap room: ${res.text}`);
    Object.assign(m, s);
    countCap(m, price);
    return true;
  }
  assert.equal(res.status, 402, `expected 402, available ${available(s)} < ${price} or over a cap: ${res.text}`);
  const error = res.body.error as { code: string; details: { cap?: string } };
  if (available(s) < price) assert.equal(error.code, 'INSUFFICIENT_CREDITS');
  else {
    assert.equal(error.code, 'SPEND_CAP_REACHED');
    assert.equal(micro(String(error.details.cap)), tightest(s, price).amount, 'the refusal names the strictest cap');
  }
  return false;
}

// ---------------------------------------------------------------- commands
type Cmd = fc.AsyncCommand<Model, Real>;

class Buy implements Cmd {
  constructor(readonly pkg: Pkg, readonly delivery: 'in_order' | 'twice' | 'reversed') {}
  // The checkout velocity rule allows 5 per 10 minutes; a suspended buyer does not buy here.
  check = (m: Readonly<Model>) => m.purchases.length < 4 && !suspended(m);
  async run(m: Model, r: Real) {
    const co = await startCheckout(r.token, this.pkg);
    const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
    const order = this.delivery === 'reversed'
      ? [...events].reverse()
      : this.delivery === 'twice'
      ? [...events, ...events]
      : events;
    for (const e of order) assert.equal((await deliver(e)).status, 200);
    const p = packages[this.pkg];
    const index = m.purchases.length;
    grantLot(m, p.credits, { priority: 20, expiresAt: null, due: false, purchase: index, part: 'credits' });
    m.balance += p.credits;
    if (p.bonus > 0n) {
      grantLot(m, p.bonus, {
        priority: 10,
        expiresAt: Date.now() + 365 * DAY,
        due: false,
        purchase: index,
        part: 'bonus',
      });
    }
    m.balance += p.bonus;
    m.purchases.push({
      pkg: this.pkg,
      refunded: 0n,
      creditsReversed: 0n,
      bonusReversed: 0n,
      dispute: 'none',
      expired: { credits: 0n, bonus: 0n },
      forgiven: { credits: 0n, bonus: 0n },
    });
    r.purchases.push({ charge: await chargeOf(co.session_id) });
    await compare(m, r);
  }
  toString = () => `Buy(${this.pkg}, ${this.delivery})`;
}

class Usage implements Cmd {
  constructor(readonly input: number, readonly output: number, readonly replay: boolean) {}
  check = () => true;
  async run(m: Model, r: Real) {
    // gpt-4o-mini: (in × 0.15 + out × 0.60) × 4 / 1,000 credits = in × 600 + out × 2,400 micro-credits.
    const price = BigInt(this.input) * 600n + BigInt(this.output) * 2400n;
    const send = (key: string) =>
      reportUsage('/credits/usage', {
        token: r.token,
        headers: { 'idempotency-key': key },
        body: { model: 'gpt-4o-mini', input_tokens: this.input, output_tokens: this.output },
      });
    const key = crypto.randomUUID();
    const first = await send(key);
    if (expectDebit(m, price, first)) {
      m.balance -= price;
      const draws = drawLots(m, price);
      m.charges.push({ amount: price, draws, counted: capsOf(m).map((c) => c.gen), voided: false });
      r.charges.push((first.body.data as { transfer_id: string }).transfer_id);
    }
    if (this.replay && !suspended(m)) {
      const again = await send(key);
      assert.equal(again.status, first.status, 'a replayed key answers the same');
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual((again.body as { data?: unknown }).data, (first.body as { data?: unknown }).data);
    }
    await compare(m, r);
  }
  toString = () => `Usage(${this.input} in, ${this.output} out${this.replay ? ', replayed' : ''})`;
}

class BatchUsage implements Cmd {
  constructor(readonly events: { input: number; output: number }[]) {}
  check = (m: Readonly<Model>) => !suspended(m);
  async run(m: Model, r: Real) {
    const batch = this.events.map((e) => ({
      event_id: crypto.randomUUID(),
      user_id: r.user,
      model: 'gpt-4o-mini',
      input_tokens: e.input,
      output_tokens: e.output,
      occurred_at: new Date().toISOString(),
    }));
    const res = await api('/credits/usage/batch', {
      headers: { authorization: `Bearer ${service}` },
      body: { events: batch },
    });
    assert.equal(res.status, 200, res.text);
    const outcomes = (res.body.data as { outcomes: { status: string }[] }).outcomes;
    settle(m); // a batch settles its accounts first, whatever each event's outcome
    this.events.forEach((e, i) => {
      const price = BigInt(e.input) * 600n + BigInt(e.output) * 2400n;
      const ok = available(m) >= price && fitsCap(m, price);
      const status = ok ? 'applied' : available(m) < price ? 'insufficient' : 'cap_reached';
      assert.equal(outcomes[i].status, status, `event ${i}`);
      if (ok) {
        countCap(m, price);
        m.balance -= price;
        drawLots(m, price);
      }
    });
    await compare(m, r);
  }
  toString = () => `BatchUsage(${this.events.map((e) => `${e.input}/${e.output}`).join(', ')})`;
}

/**
 * The tick drains the watch queue (billing.run_account_watch) at a random moment, beside a usage
 * charge: it moves no credit, and, the account at rest, its low-balance alert says exactly whether
 * what is available is below the threshold every run sets.
 */
class Watch implements Cmd {
  check = () => true;
  async run(m: Model, r: Real) {
    await Promise.all([testDb`select billing.run_account_watch(100000)`, new Usage(1, 0, false).run(m, r)]);
    await testDb`select billing.run_account_watch(100000)`;
    const [a] = await testDb`select low_balance_fired as fired, balance - held < low_balance_threshold as below
      from billing.accounts where user_id = ${r.user} and org_id is null`;
    assert.equal(a.fired, a.below, 'the low-balance alert as the account is');
    await compare(m, r);
  }
  toString = () => 'Watch';
}

class Grant implements Cmd {
  /** `days`: a promotional lot that expires then; null: an adjustment, which never expires. */
  constructor(readonly amount: number, readonly days: number | null) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const expiresAt = this.days === null ? null : Date.now() + this.days * DAY;
    const res = await api('/credits/grants', {
      token: r.admin,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: {
        user_id: r.user,
        amount: String(this.amount),
        reason: 'model test',
        kind: 'adjustment',
        ...(expiresAt === null
          ? {}
          : { lot: { category: 'promotional', expires_at: new Date(expiresAt).toISOString() } }),
      },
    });
    assert.equal(res.status, 201, res.text);
    grantLot(m, BigInt(this.amount) * M, { priority: 10, expiresAt, due: false });
    m.balance += BigInt(this.amount) * M;
    await compare(m, r);
  }
  toString = () => `Grant(${this.amount}${this.days === null ? '' : `, expires in ${this.days} days`})`;
}

/** A monthly cap, set or removed (null) by its owner: the student (PUT /credits/caps) or an admin. */
class SetCap implements Cmd {
  constructor(readonly owner: Owner, readonly amount: number | null, readonly timeZone: string) {}
  check = (m: Readonly<Model>) => this.owner === 'admin' || !suspended(m);
  async run(m: Model, r: Real) {
    const res = await api(this.owner === 'self' ? '/credits/caps' : `/credits/caps/users/${r.user}`, {
      method: 'PUT',
      token: this.owner === 'self' ? r.token : r.admin,
      body: { period: 'month', time_zone: this.timeZone, amount: this.amount === null ? null : String(this.amount) },
    });
    assert.equal(res.status, 200, res.text);
    setCap(m, this.owner, this.amount === null ? null : BigInt(this.amount) * M);
    assert.deepEqual(
      capsSeen((res.body.data as { items: SpendCap[] }).items),
      capsModelled(m),
      'caps and their spending',
    );
    await compare(m, r);
  }
  toString = () => `SetCap(${this.owner}, ${this.amount}, ${this.timeZone})`;
}

/**
 * The student tries to lift the cap an admin set on them with their own token: raising or
 * removing "the" monthly cap, re-sending it in another time zone, or calling the admin's route.
 * Whatever they do to their own cap, the admin's keeps its amount and its spending.
 */
class LiftAdminCap implements Cmd {
  constructor(readonly how: 'raise' | 'remove' | 'rezone' | 'admin_route') {}
  check = (m: Readonly<Model>) => m.caps.admin !== null && !suspended(m);
  async run(m: Model, r: Real) {
    const before = capsModelled(m).filter(([owner]) => owner === 'admin');
    const amount = this.how === 'remove' ? null : '1000000';
    const res = await api(this.how === 'admin_route' ? `/credits/caps/users/${r.user}` : '/credits/caps', {
      method: 'PUT',
      token: r.token,
      body: { period: 'month', amount, ...(this.how === 'rezone' ? { time_zone: 'Pacific/Kiritimati' } : {}) },
    });
    if (this.how === 'admin_route') assert.equal(res.status, 403, res.text);
    else {
      assert.equal(res.status, 200, res.text);
      setCap(m, 'self', amount === null ? null : BigInt(amount) * M);
      assert.deepEqual(
        capsSeen((res.body.data as { items: SpendCap[] }).items),
        capsModelled(m),
        'caps and their spending',
      );
    }
    const after = ((await api('/credits/caps', { token: r.token })).body.data as { items: SpendCap[] }).items;
    assert.deepEqual(capsSeen(after.filter((c) => c.set_by === 'admin')), before, "the admin's cap is as it was");
    await compare(m, r);
  }
  toString = () => `LiftAdminCap(${this.how})`;
}

/** Places a hold of `amount` (ttl in seconds) and checks the answer against the model; its index, if placed. */
async function placeHold(m: Model, r: Real, amount: bigint, ttl = 3600) {
  const res = await api('/credits/holds', {
    token: r.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount: credits(amount), ttl_seconds: ttl },
  });
  if (!expectDebit(m, amount, res)) return null;
  m.held += amount;
  m.holds.push({
    amount,
    open: true,
    counted: capsOf(m).map((c) => c.gen),
    lots: reserveLots(m, amount),
    pending: new Map(),
    claimed: new Map(),
  });
  r.holds.push((res.body.data as { hold_id: string }).hold_id);
  return m.holds.length - 1;
}
const openHolds = (m: Readonly<Model>) => m.holds.map((h, i) => [h, i] as const).filter(([h]) => h.open);

class Hold implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    await placeHold(m, r, BigInt(this.amount) * M);
    await compare(m, r);
  }
  toString = () => `Hold(${this.amount})`;
}

/**
 * A release expires what is due first (the hold shrinks by it; shrunk to nothing, it has ended
 * and the release changes nothing more), so it never returns expired credits.
 */
function releaseHold(m: Model, i: number) {
  Object.assign(m, settled(m));
  if (m.holds[i].open) endHold(m, m.holds[i], 0n);
}

/**
 * Releases a hold and holds the same amount again. The new hold settles first too, so credits
 * that expired under the old hold are not held again.
 */
class Rehold implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => m.holds.some((h) => h.open);
  async run(m: Model, r: Real) {
    const open = openHolds(m);
    const [hold, i] = open[this.pick % open.length];
    const res = await api(`/credits/holds/${r.holds[i]}/release`, {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: {},
    });
    if (suspended(m)) {
      assertSuspended(res);
      return await compare(m, r);
    }
    assert.equal(res.status, 200, res.text);
    releaseHold(m, i);
    if (await placeHold(m, r, hold.amount) !== null) {
      const [{ due }] =
        await testDb`select count(*)::int as due from billing.lots l join billing.accounts a on a.id = l.account_id
        where a.user_id = ${r.user} and l.open and not l.frozen and l.expires_at <= now()`;
      assert.equal(due, 0, 'no expired credit is held again');
    }
    await compare(m, r);
  }
  toString = () => `Rehold(#${this.pick})`;
}

class Settle implements Cmd {
  constructor(readonly pick: number, readonly how: 'capture_all' | 'capture_part' | 'release') {}
  check = (m: Readonly<Model>) => m.holds.some((h) => h.open);
  async run(m: Model, r: Real) {
    const [hold, i] = openHolds(m)[this.pick % openHolds(m).length];
    const part = hold.amount / 2n / M * M; // whole credits
    const path = this.how === 'release' ? 'release' : 'capture';
    const body = this.how === 'capture_part' && part > 0n ? { amount: String(part / M) } : {};
    const res = await api(`/credits/holds/${r.holds[i]}/${path}`, {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body,
    });
    if (suspended(m)) assertSuspended(res); // the hold lapses at its TTL
    else if (this.how === 'release') {
      assert.equal(res.status, 200, res.text);
      releaseHold(m, i);
    } else {
      // A capture expires what is due first: the hold may have shrunk (then it captures less,
      // or, shrunk to nothing, is refused and the expiry rolls back with it). It posts from its
      // reservation: nothing else is needed.
      const s = settled(m);
      const h = s.holds[i];
      const capture = this.how === 'capture_part' && part > 0n ? part : h.amount;
      if (!h.open) assert.equal(res.status, 409, `a hold expiry took whole is not captured: ${res.text}`);
      else if (capture > h.amount) assert.equal(res.status, 400, `more than the hold still holds: ${res.text}`);
      else {
        assert.equal(res.status, 200, res.text);
        Object.assign(m, s);
        endHold(m, m.holds[i], capture);
      }
    }
    await compare(m, r);
  }
  toString = () => `Settle(#${this.pick}, ${this.how})`;
}

/**
 * An admin voids a charge, twice at once: one void. It settles the account first; the credits go
 * back into the lots the charge drew (paying a debt first, in lot order), an expired lot's share
 * expires again at once, and the cap room goes back to the caps the charge counted against.
 */
class VoidCharge implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => m.charges.some((c) => !c.voided) && !suspended(m);
  async run(m: Model, r: Real) {
    const open = m.charges.map((c, i) => [c, i] as const).filter(([c]) => !c.voided);
    const i = open[this.pick % open.length][1];
    const both = await Promise.all(
      [0, 1].map(() => api(`/admin/charges/${r.charges[i]}/void`, { token: r.admin, body: { reason: 'model' } })),
    );
    assert.deepEqual(both.map((x) => x.status), [200, 200], both.map((x) => x.text).join(' | '));
    assert.equal(both.filter((x) => (x.body.data as { replayed: boolean }).replayed).length, 1, 'one void, one replay');
    Object.assign(m, settled(m)); // a copy: the charge is read from it
    const c = m.charges[i];
    let debt = debtOf(m);
    m.balance += c.amount;
    for (const d of [...c.draws].sort((a, b) => a.lot - b.lot)) {
      const l = m.lots[d.lot];
      const paid = min(d.take, debt);
      debt -= paid;
      l.remaining += d.take - paid; // a frozen lot's stay frozen
      if (l.due && l.remaining > 0n) expireLot(m, l);
    }
    capsOf(m).filter((x) => c.counted.includes(x.gen)).forEach((x) => x.spent = max(x.spent - c.amount, 0n));
    c.voided = true;
    await compare(m, r);
  }
  toString = () => `VoidCharge(${this.pick})`;
}

class HoldExpires implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const i = await placeHold(m, r, BigInt(this.amount) * M, 1);
    if (i !== null) {
      await new Promise((ok) => setTimeout(ok, 1100));
      await testDb`select billing.release_expired_holds(100000)`;
      endHold(m, m.holds[i], 0n);
    }
    await compare(m, r); // expired: back to where it was
  }
  toString = () => `HoldExpires(${this.amount})`;
}

/** The purchases a refund may pick, with their index: not disputed, not refunded in full. */
const refundable = (m: Readonly<Model>) =>
  m.purchases.map((p, i) => [p, i] as const).filter(([p]) =>
    p.dispute === 'none' && p.refunded < packages[p.pkg].price
  );

/**
 * Before #77 a hold reserved no lot (a capture drew lots when it was made, and holds gave way to
 * refunds and expiry), so once a run placed one, the lots a refund or an expiry finds differ:
 * MODEL_OPS=old runs those only before any hold.
 */
const noLiveHolds = (m: Readonly<Model>) => newRules || m.holds.length === 0;

class Refund implements Cmd {
  constructor(readonly pick: number, readonly fraction: number, readonly twice: boolean) {}
  check = (m: Readonly<Model>) => refundable(m).length > 0 && noLiveHolds(m);
  async run(m: Model, r: Real) {
    const open = refundable(m);
    const [p, i] = open[this.pick % open.length];
    const pkg = packages[p.pkg];
    const left = pkg.price - p.refunded;
    const cents = this.fraction >= 1 ? left : BigInt(Math.max(1, Math.floor(Number(left) * this.fraction)));
    const { events } = await emulator(`/_emulator/charges/${r.purchases[i].charge}/refund`, {
      amount: Number(cents),
      deliver: false,
    });
    for (const e of this.twice ? [...events, ...events] : events) assert.equal((await deliver(e)).status, 200);
    // Refunds reverse floor(credits × refunded ÷ paid) whole credits, purchased and bonus alike;
    // refunded in full, every credit, fractions included.
    p.refunded += cents;
    const whole = p.refunded >= pkg.price;
    const targetC = whole ? pkg.credits : floorDiv(pkg.credits * p.refunded, pkg.price * M) * M;
    const targetB = whole ? pkg.bonus : floorDiv(pkg.bonus * p.refunded, pkg.price * M) * M;
    // Each reversal takes its own lot: what no hold reserved at once, what holds reserved when
    // they return it; what the lot lacks expired (forgiven) or was spent (owed: the other free
    // credits pay it, the rest is debt).
    const [creditsLot, bonusLot] = lotsOf(m, i);
    takeBack(m, p, [creditsLot], targetC - p.creditsReversed, ['credits']);
    if (bonusLot) takeBack(m, p, [bonusLot], targetB - p.bonusReversed, ['bonus']);
    p.creditsReversed = targetC;
    p.bonusReversed = targetB;
    await compare(m, r);
  }
  toString = () =>
    `Refund(#${this.pick}, ${this.fraction >= 1 ? 'all' : this.fraction.toFixed(2)}${
      this.twice ? ', delivered twice' : ''
    })`;
}

/**
 * Takes `amount` of a purchase back from its `lots`: what no hold reserved at once, then what
 * holds reserved waits for them (pending); of what the lots lack, what expired of `parts` is
 * forgiven (the credits first), the rest (spent) is owed. Due lots expire first, as settling the
 * account does.
 */
function takeBack(m: Model, p: ModelPurchase, lots: ModelLot[], amount: bigint, parts: Part[]) {
  if (amount <= 0n) return;
  settle(m); // the account settles first: a due lot expires, it pays nothing owed
  let need = amount;
  for (const l of lots) {
    const now = min(need, l.remaining - l.reserved);
    l.remaining -= now;
    m.balance -= now;
    need -= now;
    // What live holds reserved waits on each, the oldest first.
    const n = m.lots.indexOf(l);
    for (const h of m.holds.filter((x) => x.open && x.lots.has(n))) {
      const later = min(need, unclaimed(h, n));
      h.pending.set(n, (h.pending.get(n) ?? 0n) + later);
      need -= later;
    }
  }
  let forgive = min(need, unforgiven(p, parts));
  need -= forgive;
  for (const part of parts) {
    const f = min(forgive, p.expired[part] - p.forgiven[part]);
    p.forgiven[part] += f;
    forgive -= f;
  }
  owe(m, need);
}
const unforgiven = (p: ModelPurchase, parts: Part[] = ['credits', 'bonus']) =>
  parts.reduce((sum, part) => sum + p.expired[part] - p.forgiven[part], 0n);
const remaining = (p: ModelPurchase) => {
  const pkg = packages[p.pkg];
  return (pkg.credits - p.creditsReversed) + (pkg.bonus - p.bonusReversed);
};
const min = (a: bigint, b: bigint) => (a < b ? a : b);
const max = (a: bigint, b: bigint) => (a > b ? a : b);

/**
 * A dispute opens (the purchase's lots freeze, wherever they are; the buyer is suspended), is
 * won (they thaw) or lost (settled as a refund of what is left of it, kind dispute_reversal).
 */
class Dispute implements Cmd {
  constructor(readonly pick: number, readonly outcome: 'open' | 'won' | 'lost') {}
  check = (m: Readonly<Model>) => newRules && m.purchases.some((p) => this.candidate(p));
  candidate = (p: ModelPurchase) => (this.outcome === 'open' ? p.dispute === 'none' : p.dispute !== 'closed');
  async run(m: Model, r: Real) {
    const open = m.purchases.map((p, i) => [p, i] as const).filter(([p]) => this.candidate(p));
    const [p, i] = open[this.pick % open.length];
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: this.outcome });
    if (this.outcome === 'open') p.dispute = 'open';
    else {
      p.dispute = 'closed';
      if (this.outcome === 'lost') takeBack(m, p, lotsOf(m, i), remaining(p), ['credits', 'bonus']);
    }
    await compare(m, r);
  }
  toString = () => `Dispute(#${this.pick}, ${this.outcome})`;
}

/** Two purchases disputed at once, the older first; then the older closes (the newer keeps the student suspended). */
class OverlappingDisputes implements Cmd {
  constructor(readonly outcome: 'won' | 'lost') {}
  check = (m: Readonly<Model>) => newRules && m.purchases.filter((p) => p.dispute === 'none').length >= 2;
  async run(m: Model, r: Real) {
    const [first, second] = m.purchases.map((p, i) => [p, i] as const).filter(([p]) => p.dispute === 'none');
    for (const [, i] of [first, second]) await disputeOf(m, i, 'open').run(m, r);
    await disputeOf(m, first[1], this.outcome).run(m, r);
  }
  toString = () => `OverlappingDisputes(${this.outcome})`;
}
/** The Dispute command that picks purchase `i`. */
function disputeOf(m: Model, i: number, outcome: Dispute['outcome']) {
  const d = new Dispute(0, outcome);
  const pick = m.purchases.map((p, j) => [p, j] as const).filter(([p]) => d.candidate(p)).findIndex(([, j]) => j === i);
  return new Dispute(pick, outcome);
}

/**
 * Time passes for the lot that expires next (a bonus or an expiring grant): it is due, and the
 * next command runs before any sweep. Whatever spends, holds or captures expires it first, in
 * full, held or not, and the holds that reserved it give way; a refused request rolls that back
 * (the balance still shows it expired) and the minute sweep then does it.
 */
class ExpireThen implements Cmd {
  constructor(readonly then: Cmd) {}
  check = (m: Readonly<Model>) => nextToExpire(m as Model) !== undefined && this.then.check(m) && noLiveHolds(m);
  async run(m: Model, r: Real) {
    await makeDue(m, r, nextToExpire(m));
    await this.then.run(m, r);
  }
  toString = () => `ExpireThen(${this.then})`;
}
/** Time passes for one lot: due a second ago, in the model and in the rows (nothing expires it yet). */
async function makeDue(m: Model, r: Real, lot: ModelLot) {
  const ids = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${r.user} order by l.id`;
  await backdateLot(ids[m.lots.indexOf(lot)].id);
  lot.expiresAt = Date.now() - 1000;
  lot.due = true;
  m.expiryDue = true;
}

/** A hold, then its credits expire before it is released and held again, captured or released. */
class HoldAcrossExpiry implements Cmd {
  constructor(readonly amount: number, readonly then: 'rehold' | Settle['how']) {}
  check = (m: Readonly<Model>) => newRules && nextToExpire(m as Model) !== undefined;
  async run(m: Model, r: Real) {
    await new Hold(this.amount).run(m, r);
    const newest = openHolds(m).length - 1;
    const then = this.then === 'rehold' ? new Rehold(newest) : new Settle(newest, this.then);
    const next = new ExpireThen(then);
    if (next.check(m)) await next.run(m, r);
  }
  toString = () => `HoldAcrossExpiry(${this.amount}, ${this.then})`;
}

/**
 * A purchase's bonus expires and the minute sweep runs (its rest goes to breakage); then that
 * purchase is refunded (all or part) or disputed. The expired part is not taken back again.
 * The purchase is the oldest whose bonus has credits left, or a new one (plus).
 */
class BonusExpiresThen implements Cmd {
  constructor(readonly then: 'refund' | Dispute['outcome'], readonly fraction: number) {}
  candidates = (m: Readonly<Model>) =>
    (this.then === 'refund' ? refundable(m) : m.purchases.map((p, i) => [p, i] as const))
      .filter(([p, i]) => {
        const bonus = lotsOf(m as Model, i).find((l) => l.part === 'bonus');
        return p.dispute === 'none' && bonus !== undefined && bonus.remaining > 0n && !bonus.due;
      }).map(([, i]) => i);
  check = (m: Readonly<Model>) =>
    (newRules || (this.then === 'refund' && noLiveHolds(m))) &&
    (this.candidates(m).length > 0 || new Buy('plus', 'in_order').check(m));
  async run(m: Model, r: Real) {
    if (this.candidates(m).length === 0) await new Buy('plus', 'in_order').run(m, r);
    const i = this.candidates(m)[0];
    await makeDue(m, r, lotsOf(m, i).find((l) => l.part === 'bonus') as ModelLot);
    await compare(m, r); // the sweep runs: the bonus expires
    if (this.then === 'refund') {
      await new Refund(refundable(m).findIndex(([, j]) => j === i), this.fraction, false).run(m, r);
    } else await disputeOf(m, i, this.then).run(m, r);
  }
  toString = () => `BonusExpiresThen(${this.then}${this.then === 'refund' ? `, ${this.fraction.toFixed(2)}` : ''})`;
}

const tokens = fc.integer({ min: 1, max: 2_000_000 });
const buy = fc.tuple(
  fc.constantFrom<Pkg>('mini', 'starter', 'plus'),
  fc.constantFrom<'in_order' | 'twice' | 'reversed'>('in_order', 'twice', 'reversed'),
).map(([p, d]) => new Buy(p, d));
// A package with a bonus, so that bonuses expire before their purchase is refunded or disputed.
const buyPlus = fc.constantFrom<'in_order' | 'twice' | 'reversed'>('in_order', 'twice', 'reversed')
  .map((d) => new Buy('plus', d));
const usage = fc.tuple(tokens, fc.integer({ min: 0, max: 500_000 }), fc.boolean())
  .map(([i, o, rp]) => new Usage(i, o, rp));
const batch = fc.array(fc.record({ input: tokens, output: fc.integer({ min: 0, max: 500_000 }) }), {
  minLength: 1,
  maxLength: 5,
}).map((e) => new BatchUsage(e));
// Expiring grants in 30, 200 or 500 days: before, between and after a bonus's 365.
const grant = fc.tuple(
  fc.integer({ min: 1, max: 3000 }),
  fc.option(fc.constantFrom(30, 200, 500), { nil: null, freq: 3 }),
)
  .map(([a, d]) => new Grant(a, d));
const hold = fc.integer({ min: 1, max: 8000 }).map((a) => new Hold(a));
const cap = fc.tuple(
  fc.constantFrom<Owner>('self', 'admin'),
  fc.option(fc.integer({ min: 1, max: 20000 }), { nil: null, freq: 3 }),
  fc.constantFrom('UTC', 'Atlantic/Reykjavik'),
).map(([o, a, z]) => new SetCap(o, a, z));
const lift = fc.constantFrom<LiftAdminCap['how']>('raise', 'remove', 'rezone', 'admin_route')
  .map((h) => new LiftAdminCap(h));
const settleHold = fc.tuple(
  fc.nat(),
  fc.constantFrom<Settle['how']>('capture_all', 'capture_part', 'release'),
).map(([i, h]) => new Settle(i, h));
const rehold = fc.nat().map((i) => new Rehold(i));
const refund = fc.tuple(
  fc.nat(),
  fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.95, noNaN: true })),
  fc.boolean(),
)
  .map(([i, f, t]) => new Refund(i, f, t));
const dispute = fc.tuple(fc.nat(), fc.constantFrom<Dispute['outcome']>('open', 'won', 'lost'))
  .map(([i, o]) => new Dispute(i, o));
const overlapping = fc.constantFrom<OverlappingDisputes['outcome']>('won', 'lost').map((o) =>
  new OverlappingDisputes(o)
);
const expireThen = fc.oneof(usage, batch, hold, settleHold, rehold, dispute, refund).map((c) => new ExpireThen(c));
const holdAcrossExpiry = fc.tuple(
  fc.integer({ min: 1, max: 3000 }),
  fc.constantFrom<HoldAcrossExpiry['then']>('rehold', 'capture_all', 'capture_part', 'release'),
).map(([a, t]) => new HoldAcrossExpiry(a, t));
const bonusExpires = fc.tuple(
  fc.constantFrom<BonusExpiresThen['then']>('refund', 'open', 'won', 'lost'),
  fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.95, noNaN: true })),
).map(([t, f]) => new BonusExpiresThen(t, f));
const watch = fc.constant(new Watch());
const tick = fc.constant(new Tick());
const commands = [
  tick,
  buy,
  watch,
  usage,
  batch,
  grant,
  hold,
  cap,
  lift,
  settleHold,
  rehold,
  refund,
  dispute,
  expireThen,
  holdAcrossExpiry,
  bonusExpires,
];
const rare = fc.integer({ min: 1, max: 500 }).map((a) => new HoldExpires(a));
const voidCharge = fc.nat().map((i) => new VoidCharge(i));

Deno.test({
  name: `ledger model: ${runs} random command sequences agree with the model after every step`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        // Every student starts with credits (a purchase or a grant, often one that expires), half
        // of them under an admin's cap, some with a hold; the commands that wait for those come
        // more often.
        fc.option(fc.integer({ min: 1, max: 20000 }), { nil: null, freq: 2 }),
        fc.array(fc.oneof(buy, grant, buyPlus), { minLength: 1, maxLength: 2 }),
        fc.option(fc.integer({ min: 1, max: 3000 }).map((a) => new Hold(a)), { nil: null, freq: 2 }),
        fc.commands([
          ...commands,
          ...commands,
          expireThen,
          holdAcrossExpiry,
          lift,
          rehold,
          overlapping,
          bonusExpires,
          rare,
          voidCharge,
          voidCharge,
          usage,
        ], {
          maxCommands: Number(Deno.env.get('MODEL_STEPS') ?? 12),
          size: 'max',
        }),
        async (adminCap, start, startHold, cmds) => {
          const user = await newUser();
          const real: Real = {
            user,
            token: await userToken(user),
            admin: await adminToken(),
            purchases: [],
            holds: [],
            charges: [],
            watch: frozenWatch(),
          };
          const model: Model = {
            charges: [],
            balance: 0n,
            held: 0n,
            purchases: [],
            holds: [],
            lots: [],
            caps: { admin: null, self: null },
            gens: 0,
            expiryDue: false,
            waiting: [],
          };
          const alert = await api('/credits/alerts/low-balance', {
            method: 'PUT',
            token: real.token,
            body: { threshold: '2000' },
          });
          assert.equal(alert.status, 200, alert.text);
          if (adminCap !== null) await new SetCap('admin', adminCap, 'UTC').run(model, real);
          for (const c of [...start, startHold ?? []].flat()) await c.run(model, real);
          await fc.asyncModelRun(() => ({ model, real }), cmds);
          if (Deno.env.get('MODEL_LOG')) console.log(String(cmds));
          // Every credit the user ever got came from a paid session, a promotion or an admin grant.
          const [t] = await testDb`
            select count(*)::int as untraced from billing.transfers t join billing.accounts a on a.id = t.to_account_id
            where a.user_id = ${user} and t.kind in ('purchase', 'promo_grant')
              and not exists (select 1 from billing.purchases p where p.user_id = ${user} and p.status = 'paid'
                              and t.idempotency_key in ('purchase:' || p.id, 'purchase-bonus:' || p.id))`;
          assert.equal(t.untraced, 0, 'credits without a paid session');
        },
      ),
      // MODEL_SEED and MODEL_PATH replay a failure's printed seed and path. The examples: a
      // refund's take-back waits on the older of two holds on a lot, which then spends all it
      // reserved; a refund of all takes back both holds' credits, and the one that spends its own
      // owes it (no claim on itself, none on the other's, already taken back: debt); a claim on a
      // reserved grant is owed again from a disputed purchase's frozen credits as the grant
      // expires, and nothing is left to spend (not less than nothing).
      {
        numRuns: runs,
        ...modelSeed('model'),
        examples: [
          [null, [new Buy('plus', 'in_order')], new Hold(1), [
            new Hold(1036),
            new Refund(0, 0.1705, false),
            new Settle(0, 'capture_all'),
          ]],
          [null, [new Buy('mini', 'in_order')], new Hold(1), [
            new Hold(1),
            new Refund(0, 1, false),
            new Settle(0, 'capture_all'),
          ]],
          [null, [new Grant(1, 30), new Buy('mini', 'in_order')], new Hold(1), [
            new BatchUsage([{ input: 1, output: 0 }]),
            new Refund(0, 1, false),
            new BonusExpiresThen('open', 0),
            new HoldAcrossExpiry(1, 'rehold'),
          ]],
        ],
      },
    );
    await assertLedgerInvariants();
  },
});

Deno.test({
  name: 'concurrent interleavings (fast-check scheduler): every effect once, no overdraft, books balance',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('usage' as const),
        input: fc.integer({ min: 1, max: 3_000_000 }),
        dup: fc.boolean(),
      }),
      fc.record({
        kind: fc.constant('hold' as const),
        amount: fc.integer({ min: 1, max: 4000 }),
        capture: fc.boolean(),
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), fc.array(op, { minLength: 2, maxLength: 10 }), async (s, ops) => {
        const user = await newUser();
        const token = await userToken(user);
        const fund = 10_000n * M;
        await testDb`select billing.grant_credits(${user}, 10000, 'adjustment', ${'model-fund:' + user})`;
        let spent = 0n;
        const runs = ops.map((o) =>
          s.schedule(Promise.resolve(o), JSON.stringify(o)).then(async () => {
            if (o.kind === 'usage') {
              const key = crypto.randomUUID();
              const send = () =>
                reportUsage('/credits/usage', {
                  token,
                  headers: { 'idempotency-key': key },
                  body: { model: 'gpt-4o-mini', input_tokens: o.input, output_tokens: 0 },
                });
              const answers = await Promise.all(o.dup ? [send(), send()] : [send()]);
              const done = answers.filter((a) => a.status === 201 || a.status === 402);
              const settled = done.filter((a) => a.headers.get('idempotent-replayed') !== 'true');
              assert.ok(settled.length <= 1, 'one key, one effect');
              if (done.some((a) => a.status === 201)) spent += BigInt(o.input) * 600n;
            } else {
              const h = await api('/credits/holds', {
                token,
                headers: { 'idempotency-key': crypto.randomUUID() },
                body: { amount: String(o.amount) },
              });
              if (h.status !== 201) return;
              const id = (h.body.data as { hold_id: string }).hold_id;
              const settle = await api(`/credits/holds/${id}/${o.capture ? 'capture' : 'release'}`, {
                token,
                headers: { 'idempotency-key': crypto.randomUUID() },
                body: {},
              });
              assert.equal(settle.status, 200);
              if (o.capture) spent += BigInt(o.amount) * M;
            }
          })
        );
        await s.waitAll();
        await Promise.all(runs);
        const b = (await api('/credits/balance', { token })).body.data as { balance: string; held: string };
        assert.equal(micro(b.balance), fund - spent, 'balance = funding − Σ successful effects');
        assert.equal(micro(b.held), 0n);
        assert.ok(micro(b.balance) >= 0n, 'no overdraft');
      }),
      { numRuns: Math.max(10, Math.floor(runs / 4)), ...modelSeed('model (concurrent)') },
    );
    await assertLedgerInvariants();
  },
});
