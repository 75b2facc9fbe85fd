// A reference model of the rules of issue #77 (docs/credit-lots.md § Spending order 1–7 and
// § Refunds, disputes and debt 1–6), in micro-credits, for the model tests: accounts hold lots;
// a hold reserves specific lots' free credits when placed; captures post from the reservation;
// lots expire whole and shrink the holds that reserved them; a refund takes free credits at once
// and what a live hold reserved when that hold returns it; what was spent is owed by the buyer
// (their free credits, then debt); a dispute freezes a purchase's lots wherever they are. Only
// credits for any model are modelled (the model tests grant no lists).

export const M = 1_000_000n;
export const min = (a: bigint, b: bigint) => (a < b ? a : b);
export const max = (a: bigint, b: bigint) => (a > b ? a : b);

export interface RefLot {
  n: number; // grant order (granted_at, then id)
  account: string;
  purchase: string | null;
  priority: number;
  expiresAt: number | null;
  remaining: bigint;
  reserved: bigint;
  frozen: boolean;
  /** Of `reserved`, what a refund or lost dispute takes back when the holds return it. */
  pending: bigint;
  /** Of `reserved`, what the account's own debt claims when the holds return it. */
  claimed: bigint;
  /** It expired: what still waits on it is the tick's (forgiven, or owed again). */
  gone?: boolean;
}
export interface RefHold {
  n: number;
  account: string;
  amount: bigint;
  /** What it reserved of each lot (by n). */
  lots: Map<number, bigint>;
  open: boolean;
  /** A claims hold: what an ended hold returned that refunds and the debt claimed, until the tick. */
  claims?: boolean;
  /** Of what it reserved of each lot, what take-backs name on it (billing.lot_take_backs rows). */
  taken?: Map<number, bigint>;
}
export interface RefPurchase {
  buyer: string;
  /** What a refund or lost dispute found expired of its lots and so did not take back. */
  forgiven: bigint;
  /** What expired of its lots (each expiry of one of them adds what was left). */
  expired: bigint;
}

export class RefLedger {
  lots: RefLot[] = [];
  holds: RefHold[] = [];
  debt = new Map<string, bigint>();
  purchases = new Map<string, RefPurchase>();

  balance = (a: string) => this.lotsOf(a).reduce((s, l) => s + l.remaining, 0n) - (this.debt.get(a) ?? 0n);
  held = (a: string) => this.holds.filter((h) => h.open && h.account === a).reduce((s, h) => s + h.amount, 0n);
  free = (l: RefLot) => (l.frozen ? 0n : l.remaining - l.reserved);
  /**
   * What `a` can spend or reserve now: Σ free credits, less a debt that sits beside what holds
   * reserved (balance − held below zero); nothing while the balance is below zero.
   */
  available = (a: string) =>
    this.balance(a) < 0n
      ? 0n
      : min(this.lotsOf(a).reduce((s, l) => s + this.free(l), 0n), this.balance(a) - this.held(a));
  lotsOf = (a: string) => this.lots.filter((l) => l.account === a);
  lotsOfPurchase = (p: string) => this.lots.filter((l) => l.purchase === p && l.remaining > 0n);
  /** Spending order: priority, the earliest expiry (never last), the oldest. */
  order = (ls: RefLot[]) =>
    [...ls].sort((x, y) =>
      x.priority - y.priority || (x.expiresAt ?? Infinity) - (y.expiresAt ?? Infinity) || x.n - y.n
    );

  /** A grant of `amount` into `a`: a debt is paid first, the rest is a new lot. */
  grant(a: string, amount: bigint, lot: Partial<Pick<RefLot, 'purchase' | 'priority' | 'expiresAt' | 'frozen'>> = {}) {
    const settled = min(amount, this.debt.get(a) ?? 0n);
    if (settled > 0n) this.debt.set(a, (this.debt.get(a) ?? 0n) - settled);
    const l: RefLot = {
      n: this.lots.length,
      account: a,
      purchase: lot.purchase ?? null,
      priority: lot.priority ?? 20,
      expiresAt: lot.expiresAt ?? null,
      remaining: amount - settled,
      reserved: 0n,
      frozen: lot.frozen ?? false,
      pending: 0n,
      claimed: 0n,
    };
    this.lots.push(l);
    return l;
  }
  buy(purchase: string, buyer: string) {
    this.purchases.set(purchase, { buyer, forgiven: 0n, expired: 0n });
  }

  /** Draws `amount` of free credits from `a` in spending order (all or nothing): a charge without a hold. */
  charge(a: string, amount: bigint) {
    if (this.available(a) < amount) return false;
    let left = amount;
    for (const l of this.order(this.lotsOf(a))) {
      const take = min(left, this.free(l));
      l.remaining -= take;
      left -= take;
    }
    return true;
  }

  /** A hold of `amount`: reserves free credits in spending order, or null (402) when they do not reach it. */
  reserve(a: string, amount: bigint): RefHold | null {
    if (this.available(a) < amount) return null;
    const h: RefHold = { n: this.holds.length, account: a, amount, lots: new Map(), open: true };
    let left = amount;
    for (const l of this.order(this.lotsOf(a))) {
      const take = min(left, this.free(l));
      if (take <= 0n) continue;
      l.reserved += take;
      h.lots.set(l.n, take);
      left -= take;
    }
    this.holds.push(h);
    return h;
  }

  /**
   * Captures `amount` (at most the hold) of an open hold: posts from its reservation (spending
   * order) and returns the rest. False (and nothing changes) above the hold.
   */
  capture(h: RefHold, amount: bigint) {
    if (amount > h.amount) return false;
    const posted = new Map<number, bigint>();
    let left = amount;
    for (const l of this.order([...h.lots.keys()].map((n) => this.lots[n]))) {
      const take = min(left, h.lots.get(l.n) as bigint);
      posted.set(l.n, take);
      left -= take;
    }
    this.end(h, posted);
    return true;
  }
  /**
   * Work priced after it ran (a gateway call, a job) ends its hold: what the hold holds is
   * captured, and what the provider billed past it is the one debt, owed by the hold's account at
   * once (docs/credit-lots.md rule 7): its free credits, then what its other live holds give up,
   * then frozen ones, then debt.
   */
  chargeWork(h: RefHold, amount: bigint) {
    const held = h.amount;
    if (amount > 0n) this.capture(h, min(amount, held));
    else this.release(h);
    if (amount > held) {
      this.giveWay(h.account, amount - held);
      this.oweBy(h.account, amount - held, true);
    }
  }
  /**
   * What an excess lacks beyond the account's unfrozen free credits, its other live holds give up
   * now (billing.give_way_to_excess), frozen lots' reservations too: a reservation a refund
   * claimed last, the newest hold first, each hold's lots in grant order; a hold left with
   * nothing ends (released). Claims holds never give way.
   */
  private giveWay(a: string, excess: bigint) {
    let short = excess - this.lotsOf(a).reduce((s, l) => s + this.free(l), 0n);
    const claimed = (h: RefHold, n: number) => (h.taken?.get(n) ?? 0n) > 0n;
    const parts = this.holds.filter((x) => x.open && !x.claims && x.account === a)
      .flatMap((x) => [...x.lots].map(([n, r]) => ({ h: x, n, r })))
      .sort((p, q) => Number(claimed(p.h, p.n)) - Number(claimed(q.h, q.n)) || q.h.n - p.h.n || p.n - q.n);
    for (const { h, n, r } of parts) {
      if (short <= 0n) break;
      const give = min(short, r);
      if (give === r) h.lots.delete(n);
      else h.lots.set(n, r - give);
      this.lots[n].reserved -= give;
      h.amount -= give;
      if (h.amount === 0n) h.open = false;
      short -= give;
    }
  }
  /** A release or a TTL timeout: the whole reservation returns. */
  release(h: RefHold) {
    this.end(h, new Map());
  }
  /**
   * A hold ends: each lot loses what was posted of it and gets back the rest of its reservation,
   * but what refunds and the account's debt claimed of it (beyond what other holds still reserve)
   * stays reserved in a claims hold until pg_cron's tick (takeBackClaims); the rest comes back.
   */
  private end(h: RefHold, posted: Map<number, bigint>) {
    const kept: RefHold = {
      n: this.holds.length,
      account: h.account,
      amount: 0n,
      lots: new Map(),
      open: true,
      claims: true,
    };
    for (const [n, r] of h.lots) {
      const l = this.lots[n];
      const spent = posted.get(n) ?? 0n;
      l.reserved -= r;
      l.remaining -= spent;
      const keep = min(r - spent, max(l.pending + l.claimed - l.reserved, 0n));
      l.reserved += keep;
      if (keep > 0n) kept.lots.set(n, keep);
      kept.amount += keep;
      this.payDebt(l, r - spent - keep);
    }
    h.lots.clear();
    h.open = false;
    if (kept.amount > 0n) this.holds.push(kept);
  }
  /** What comes back to an account in debt pays it first (as a void's return does). */
  private payDebt(l: RefLot, back: bigint) {
    const debt = this.debt.get(l.account) ?? 0n;
    const settled = min(debt, back);
    l.remaining -= settled;
    if (settled > 0n) this.debt.set(l.account, debt - settled);
  }
  /** Whether pg_cron's tick has anything to take back (billing.take_back_due_claims). */
  claimsWaiting = () =>
    this.holds.some((h) => h.open && h.claims) ||
    this.lots.some((l) => l.pending + l.claimed > (l.gone ? 0n : l.reserved));
  /**
   * pg_cron's tick (billing.take_back_claims): each claims hold ends, and what it kept goes to the
   * refunds' take-backs, then to the debt's claims; then what they can no longer get is owed: a
   * take-back or claim a hold spent, by the buyer or the account; on an expired lot a take-back is
   * forgiven and a claim owed again.
   */
  takeBackClaims() {
    for (const h of this.holds.filter((x) => x.open && x.claims)) {
      for (const [n, r] of h.lots) {
        const l = this.lots[n];
        l.reserved -= r;
        const back = min(r, l.pending);
        l.remaining -= back;
        l.pending -= back;
        const claim = min(r - back, l.claimed);
        l.remaining -= claim;
        l.claimed -= claim;
        if (!l.gone) this.payDebt(l, r - back - claim);
      }
      h.lots.clear();
      h.open = false;
    }
    for (const l of this.lots) {
      if (l.gone) {
        // What the take-backs left of it expires now.
        if (l.purchase !== null) (this.purchases.get(l.purchase) as RefPurchase).expired += l.remaining;
        l.remaining = 0n;
        if (l.purchase !== null) (this.purchases.get(l.purchase) as RefPurchase).forgiven += l.pending;
        const claimed = l.claimed;
        l.pending = 0n;
        l.claimed = 0n;
        this.oweBy(l.account, claimed); // what the account's debt claimed of it is owed again
        continue;
      }
      const unpaid = max(l.pending - l.reserved, 0n);
      l.pending -= unpaid;
      const unclaimed = max(l.claimed - (l.reserved - l.pending), 0n);
      l.claimed -= unclaimed;
      if (unpaid > 0n) this.owe(l.purchase as string, unpaid);
      if (unclaimed > 0n) this.oweBy(l.account, unclaimed);
    }
  }

  /**
   * A lot expires whole, reserved or not (each hold that reserved it shrinks by that, ends at 0),
   * but for what claims holds keep of it: the refunds' since before it fell due, the tick's.
   */
  expire(l: RefLot) {
    let kept = 0n;
    for (const h of this.holds) {
      const r = h.lots.get(l.n);
      if (!h.open || r === undefined) continue;
      if (h.claims) {
        kept += r;
        continue;
      }
      h.lots.delete(l.n);
      h.amount -= r;
      if (h.amount === 0n) h.open = false;
    }
    if (l.purchase !== null) (this.purchases.get(l.purchase) as RefPurchase).expired += l.remaining - kept;
    l.remaining = kept;
    l.reserved = kept;
    l.gone = true; // what waits on it is the tick's
  }

  /**
   * Takes `amount` of a purchase back (a refund, or a lost dispute: what is left of it): each of
   * its lots (in `lots` order, default grant order) gives what no hold reserved at once, then
   * what holds reserved waits for them (pending); of what the lots lack, what expired is
   * forgiven, the rest (spent) the buyer owes.
   */
  takeBack(purchase: string, amount: bigint, lots = this.lotsOfPurchase(purchase)) {
    let need = amount;
    for (const l of lots) {
      const now = min(need, l.remaining - l.reserved);
      l.remaining -= now;
      need -= now;
      const later = min(need, l.reserved - l.pending - l.claimed);
      l.pending += later;
      this.nameTaken(l, later);
      need -= later;
    }
    const p = this.purchases.get(purchase) as RefPurchase;
    const forgive = min(need, p.expired - p.forgiven);
    p.forgiven += forgive;
    if (need - forgive > 0n) this.owe(purchase, need - forgive);
  }
  /**
   * What was spent of a purchase: the buyer's credits pay it, frozen ones first (oldest first, as
   * the reversal names them), then free ones in spending order; the rest is debt.
   */
  owe(purchase: string, amount: bigint) {
    this.oweBy((this.purchases.get(purchase) as RefPurchase).buyer, amount);
  }
  /**
   * What `buyer` owes: frozen credits, free credits, then claims on what their live holds
   * reserved, then debt. An excess (`frozenLast`, after giveWay) takes its free credits before
   * frozen ones, and finds nothing reserved left to claim.
   */
  oweBy(buyer: string, amount: bigint, frozenLast = false) {
    let left = amount;
    const lots = this.lotsOf(buyer);
    const frozen = lots.filter((x) => x.frozen);
    const free = this.order(lots.filter((x) => !x.frozen));
    for (const l of frozenLast ? [...free, ...this.order(frozen)] : [...frozen, ...free]) {
      const take = min(left, l.remaining - l.reserved);
      l.remaining -= take;
      left -= take;
    }
    for (const l of this.order(lots.filter((x) => x.reserved > x.pending + x.claimed))) {
      const take = min(left, l.reserved - l.pending - l.claimed);
      l.claimed += take;
      this.nameTaken(l, take);
      left -= take;
    }
    if (left > 0n) this.debt.set(buyer, (this.debt.get(buyer) ?? 0n) + left);
  }
  /**
   * Which live holds a take-back of `amount` on lot `l` names (billing.claim_reserved): the
   * oldest hold first, each up to what it reserved of the lot less what take-backs name already.
   */
  private nameTaken(l: RefLot, amount: bigint) {
    let left = amount;
    for (const h of this.holds) {
      const r = h.lots.get(l.n);
      if (left <= 0n || !h.open || h.claims || r === undefined) continue;
      const taken = h.taken?.get(l.n) ?? 0n;
      const take = min(left, r - taken);
      if (take <= 0n) continue;
      (h.taken ??= new Map()).set(l.n, taken + take);
      left -= take;
    }
  }

  /** A dispute opened (true) or won (false): the purchase's lots, wherever they are, freeze or thaw. */
  freeze(purchase: string, frozen: boolean) {
    for (const l of this.lots) if (l.purchase === purchase) l.frozen = frozen;
  }

  /**
   * Moves `amount` of `from`'s free credits, in spending order, to `to` (all or nothing: false
   * when they do not reach it): each source lot's part a lot of its own there, same provenance
   * (an allowance funded, swept back, a code's escrow). Arriving in debt, they pay it first.
   */
  moveCredits(from: string, to: string, amount: bigint) {
    if (this.available(from) < amount) return false;
    let left = amount;
    for (const l of this.order(this.lotsOf(from))) {
      const take = min(left, this.free(l));
      if (take <= 0n) continue;
      l.remaining -= take;
      left -= take;
      this.grant(to, take, l);
    }
    return true;
  }

  /** Moves a lot's free credits whole to `to` (a gift redeemed): a lot of its own there, same provenance. */
  move(l: RefLot, to: string) {
    const amount = this.free(l);
    l.remaining -= amount;
    return this.grant(to, amount, l);
  }
}

/** Micro-credits from an exact decimal string. */
export function micro(s: string | null | undefined): bigint {
  if (s == null) return 0n;
  const [w, f = ''] = s.split('.');
  const sign = w.startsWith('-') ? -1n : 1n;
  return BigInt(w) * M + sign * BigInt((f + '000000').slice(0, 6));
}
/** Micro-credits as the API's decimal string. */
export function credits(x: bigint) {
  const sign = x < 0n ? '-' : '';
  const a = x < 0n ? -x : x;
  const f = (a % M).toString().padStart(6, '0').replace(/0+$/, '');
  return `${sign}${a / M}${f ? `.${f}` : ''}`;
}
