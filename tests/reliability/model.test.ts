// Model-based test of the ledger (fast-check): random command sequences run against the real
// stack (HTTP, the Stripe emulator, signed webhooks) and against a small in-memory model,
// compared after every step. A failure prints the shrunk sequence. MODEL_RUNS sets the number
// of runs (200 here; ./scripts/soak runs thousands).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { adminToken, api, assertLedgerInvariants, env, newUser, testDb, userToken } from '../helpers.ts';
import { chargeOf, deliver, emulator, startCheckout } from '../purchases.ts';

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

const packages = {
  mini: { price: 500n, credits: 5000n * M, bonus: 0n },
  starter: { price: 999n, credits: 9990n * M, bonus: 0n },
  plus: { price: 2499n, credits: 24990n * M, bonus: 1249_500000n },
} as const;
type Pkg = keyof typeof packages;

interface ModelPurchase {
  pkg: Pkg;
  refunded: bigint; // cents
  creditsReversed: bigint; // micro (whole credits)
  bonusReversed: bigint;
  dispute: 'none' | 'open' | 'closed';
  disputeHold: bigint; // what the open dispute froze
}
/** A credit lot as the model sees it (spending order: not frozen, priority, expiring first, oldest). */
interface ModelLot {
  priority: number; // promotional 10, paid 20
  expires: boolean; // a purchase's bonus expires (365 days, so in grant order); credits and adjustments never
  purchase?: number; // index into purchases
  remaining: bigint;
}
interface Model {
  balance: bigint;
  held: bigint;
  purchases: ModelPurchase[];
  holds: { amount: bigint; open: boolean; capGen: number }[]; // capGen: the cap it counted against (−1: none)
  lots: ModelLot[]; // in grant order
  /** A monthly spend cap (micro-credits) and what counted against it; a new cap is a new generation. */
  cap: bigint | null;
  capSpent: bigint;
  capGen: number;
}
interface Real {
  user: string;
  token: string;
  /** An admin of this run's own (rate limits are per user). */
  admin: string;
  purchases: { charge: string }[];
  holds: string[];
}

// ---------------------------------------------------------------- checking a step
async function compare(m: Model, r: Real) {
  const b = (await api('/credits/balance', { token: r.token })).body.data as { balance: string; held: string };
  assert.equal(micro(b.balance), m.balance, 'balance');
  assert.equal(micro(b.held), m.held, 'held');
  // The user's own books: balance = Σ entries, held = Σ active holds.
  const [row] = await testDb`
    select a.balance::text as balance, coalesce((select sum(e.amount) from billing.entries e where e.account_id = a.id), 0)::text as entries,
           coalesce((select sum(h.amount) from billing.holds h where h.account_id = a.id and h.status = 'active'), 0)::text as active
    from billing.accounts a where a.user_id = ${r.user}`;
  if (row) {
    assert.equal(micro(row.entries), micro(row.balance), 'Σ entries = balance');
    assert.equal(micro(row.active), m.held, 'held = Σ active holds');
  }
  // Every lot as the model drew it; Σ remaining = the balance, 0 in debt.
  const lots = (await api('/credits/lots?limit=200', { token: r.token })).body.data as {
    items: { remaining: string }[];
  };
  assert.deepEqual(lots.items.map((l) => micro(l.remaining)).reverse(), m.lots.map((l) => l.remaining), 'lots');
  assert.equal(m.lots.reduce((sum, l) => sum + l.remaining, 0n), max(m.balance, 0n), 'Σ lots = balance');
  if (m.cap !== null) {
    const caps = (await api('/credits/caps', { token: r.token })).body.data as { items: { spent: string }[] };
    assert.equal(micro(caps.items[0].spent), m.capSpent, 'cap spending');
  }
}

const available = (m: Model) => (m.balance < 0n ? -1n : m.balance - m.held);
const fitsCap = (m: Model, amount: bigint) => m.cap === null || m.capSpent + amount <= m.cap;
/** Counts a spend or a hold against the cap, if there is one. */
const countCap = (m: Model, amount: bigint) => {
  if (m.cap !== null) m.capSpent += amount;
};
/** What a hold did not spend goes back to the cap it counted against (a cap set since never counted it). */
const returnCap = (m: Model, hold: { capGen: number }, amount: bigint) => {
  if (m.cap !== null && hold.capGen === m.capGen) m.capSpent = max(m.capSpent - amount, 0n);
};

// ---------------------------------------------------------------- lots
/** A grant's lot: what pays an existing debt is settled on arrival, the rest remains. Call before the balance moves. */
function grantLot(m: Model, amount: bigint, lot: Omit<ModelLot, 'remaining'>) {
  const settled = min(amount, max(-m.balance, 0n));
  m.lots.push({ ...lot, remaining: amount - settled });
}

/** Draws `amount` from the lots: `first` (in that order), then in spending order; the rest is debt. */
function drawLots(m: Model, amount: bigint, first: ModelLot[] = []) {
  const isFrozen = (l: ModelLot) => l.purchase !== undefined && m.purchases[l.purchase].dispute === 'open';
  const rest = m.lots.filter((l) => !first.includes(l)).map((l, seq) => ({ l, seq }))
    .sort((a, b) =>
      Number(isFrozen(a.l)) - Number(isFrozen(b.l)) || a.l.priority - b.l.priority ||
      Number(b.l.expires) - Number(a.l.expires) || a.seq - b.seq
    ).map((x) => x.l);
  for (const l of [...first, ...rest]) {
    const take = min(l.remaining, amount);
    l.remaining -= take;
    amount -= take;
  }
}
const lotsOf = (m: Model, purchase: number) => m.lots.filter((l) => l.purchase === purchase);

/** Charges a debit-like request and checks the answer against the model. */
function expectDebit(m: Model, price: bigint, status: number) {
  if (available(m) >= price && fitsCap(m, price)) {
    assert.equal(status, 201, `expected success, available ${available(m)} ≥ ${price}, cap room`);
    countCap(m, price);
    return true;
  }
  assert.equal(status, 402, `expected 402, available ${available(m)} < ${price} or over the cap`);
  return false;
}

// ---------------------------------------------------------------- commands
type Cmd = fc.AsyncCommand<Model, Real>;

class Buy implements Cmd {
  constructor(readonly pkg: Pkg, readonly delivery: 'in_order' | 'twice' | 'reversed') {}
  check = (m: Readonly<Model>) => m.purchases.length < 4; // the checkout velocity rule allows 5 per 10 minutes
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
    grantLot(m, p.credits, { priority: 20, expires: false, purchase: index });
    m.balance += p.credits;
    if (p.bonus > 0n) grantLot(m, p.bonus, { priority: 10, expires: true, purchase: index });
    m.balance += p.bonus;
    m.purchases.push({
      pkg: this.pkg,
      refunded: 0n,
      creditsReversed: 0n,
      bonusReversed: 0n,
      dispute: 'none',
      disputeHold: 0n,
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
      api('/credits/usage', {
        token: r.token,
        headers: { 'idempotency-key': key },
        body: { model: 'gpt-4o-mini', input_tokens: this.input, output_tokens: this.output },
      });
    const key = crypto.randomUUID();
    const first = await send(key);
    if (expectDebit(m, price, first.status)) {
      m.balance -= price;
      drawLots(m, price);
    }
    if (this.replay) {
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
  check = () => true;
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

class Grant implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api('/credits/grants', {
      token: r.admin,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { user_id: r.user, amount: String(this.amount), reason: 'model test', kind: 'adjustment' },
    });
    assert.equal(res.status, 201, res.text);
    grantLot(m, BigInt(this.amount) * M, { priority: 10, expires: false });
    m.balance += BigInt(this.amount) * M;
    await compare(m, r);
  }
  toString = () => `Grant(${this.amount})`;
}

class SetCap implements Cmd {
  constructor(readonly amount: number | null) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api('/credits/caps', {
      method: 'PUT',
      token: r.token,
      body: { period: 'month', amount: this.amount === null ? null : String(this.amount) },
    });
    assert.equal(res.status, 200, res.text);
    if (this.amount === null) m.cap = null;
    else {
      if (m.cap === null) {
        m.capGen++;
        m.capSpent = 0n; // a new cap counts from now
      }
      m.cap = BigInt(this.amount) * M;
    }
    const caps = (res.body.data as { items: { spent: string }[] }).items;
    assert.deepEqual(caps.map((c) => micro(c.spent)), m.cap === null ? [] : [m.capSpent], 'cap spending');
    await compare(m, r);
  }
  toString = () => `SetCap(${this.amount})`;
}

class Hold implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const amount = BigInt(this.amount) * M;
    const res = await api('/credits/holds', {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { amount: String(this.amount), ttl_seconds: 3600 },
    });
    if (expectDebit(m, amount, res.status)) {
      m.held += amount;
      m.holds.push({ amount, open: true, capGen: m.cap === null ? -1 : m.capGen });
      r.holds.push((res.body.data as { hold_id: string }).hold_id);
    }
    await compare(m, r);
  }
  toString = () => `Hold(${this.amount})`;
}

class Settle implements Cmd {
  constructor(readonly pick: number, readonly how: 'capture_all' | 'capture_part' | 'release') {}
  check = (m: Readonly<Model>) => m.holds.some((h) => h.open);
  async run(m: Model, r: Real) {
    const open = m.holds.map((h, i) => [h, i] as const).filter(([h]) => h.open);
    const [hold, i] = open[this.pick % open.length];
    const part = hold.amount / 2n / M * M; // whole credits
    const path = this.how === 'release' ? 'release' : 'capture';
    const body = this.how === 'capture_part' && part > 0n ? { amount: String(part / M) } : {};
    const res = await api(`/credits/holds/${r.holds[i]}/${path}`, {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body,
    });
    const capture = this.how === 'capture_part' && part > 0n ? part : hold.amount;
    // A capture never creates debt nor spends what a dispute froze: when a reversal has since
    // taken the balance below that, it is refused and the hold stays until released or lapsed.
    if (this.how !== 'release' && m.balance - frozen(m) < capture) {
      assert.equal(res.status, 402, res.text);
    } else {
      assert.equal(res.status, 200, res.text);
      if (this.how !== 'release') {
        m.balance -= capture;
        drawLots(m, capture);
      }
      returnCap(m, hold, this.how === 'release' ? hold.amount : hold.amount - capture);
      m.held -= hold.amount;
      hold.open = false;
    }
    await compare(m, r);
  }
  toString = () => `Settle(#${this.pick}, ${this.how})`;
}

class HoldExpires implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api('/credits/holds', {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { amount: String(this.amount), ttl_seconds: 1 },
    });
    if (expectDebit(m, BigInt(this.amount) * M, res.status)) {
      await new Promise((ok) => setTimeout(ok, 1100));
      await testDb`select billing.release_expired_holds()`;
      returnCap(m, { capGen: m.cap === null ? -1 : m.capGen }, BigInt(this.amount) * M);
    }
    await compare(m, r); // expired: back to where it was
  }
  toString = () => `HoldExpires(${this.amount})`;
}

class Refund implements Cmd {
  constructor(readonly pick: number, readonly fraction: number, readonly twice: boolean) {}
  check = (m: Readonly<Model>) => m.purchases.some((p) => p.dispute === 'none' && p.refunded < packages[p.pkg].price);
  async run(m: Model, r: Real) {
    const open = m.purchases.map((p, i) => [p, i] as const).filter(([p]) =>
      p.dispute === 'none' && p.refunded < packages[p.pkg].price
    );
    const [p, i] = open[this.pick % open.length];
    const pkg = packages[p.pkg];
    const left = pkg.price - p.refunded;
    const cents = this.fraction >= 1 ? left : BigInt(Math.max(1, Math.floor(Number(left) * this.fraction)));
    const { events } = await emulator(`/_emulator/charges/${r.purchases[i].charge}/refund`, {
      amount: Number(cents),
      deliver: false,
    });
    for (const e of this.twice ? [...events, ...events] : events) assert.equal((await deliver(e)).status, 200);
    // Refunds reverse floor(credits × refunded ÷ paid) whole credits, purchased and bonus alike.
    p.refunded += cents;
    const targetC = floorDiv(pkg.credits * p.refunded, pkg.price * M) * M;
    const targetB = floorDiv(pkg.bonus * p.refunded, pkg.price * M) * M;
    // Each reversal takes its own lot first; what that lot lacks is debt (settled from the rest).
    const [creditsLot, bonusLot] = lotsOf(m, i);
    drawLots(m, targetC - p.creditsReversed, [creditsLot]);
    if (targetB > p.bonusReversed) drawLots(m, targetB - p.bonusReversed, [bonusLot]);
    m.balance -= (targetC - p.creditsReversed) + (targetB - p.bonusReversed);
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
 * An open dispute freezes what is left of the purchase, up to the balance not already frozen
 * by other disputes; the user's own holds give way, newest first, as far as they must.
 */
function freeze(m: Model, p: ModelPurchase) {
  const amount = min(remaining(p), max(m.balance - frozen(m), 0n));
  if (amount <= 0n) return;
  let short = amount - max(m.balance - m.held, 0n);
  for (const h of [...m.holds].reverse()) {
    if (short <= 0n) break;
    if (!h.open) continue;
    const take = min(h.amount, short);
    returnCap(m, h, take);
    h.amount -= take;
    h.open = h.amount > 0n;
    m.held -= take;
    short -= take;
  }
  m.held += amount;
  p.disputeHold = amount;
}

const frozen = (m: Model) => m.purchases.reduce((sum, x) => sum + (x.dispute === 'open' ? x.disputeHold : 0n), 0n);
const remaining = (p: ModelPurchase) => {
  const pkg = packages[p.pkg];
  return (pkg.credits - p.creditsReversed) + (pkg.bonus - p.bonusReversed);
};
const min = (a: bigint, b: bigint) => (a < b ? a : b);
const max = (a: bigint, b: bigint) => (a > b ? a : b);

class Dispute implements Cmd {
  constructor(readonly pick: number, readonly outcome: 'open' | 'won' | 'lost') {}
  check = (m: Readonly<Model>) => m.purchases.some((p) => this.candidate(p));
  candidate = (p: ModelPurchase) => (this.outcome === 'open' ? p.dispute === 'none' : p.dispute !== 'closed');
  async run(m: Model, r: Real) {
    const open = m.purchases.map((p, i) => [p, i] as const).filter(([p]) => this.candidate(p));
    const [p, i] = open[this.pick % open.length];
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: this.outcome });
    if (this.outcome === 'open') {
      freeze(m, p);
      p.dispute = 'open';
    } else {
      m.held -= p.disputeHold;
      p.dispute = 'closed';
      if (this.outcome === 'lost') {
        drawLots(m, remaining(p), lotsOf(m, i));
        m.balance -= remaining(p);
      }
    }
    await compare(m, r);
  }
  toString = () => `Dispute(#${this.pick}, ${this.outcome})`;
}

const tokens = fc.integer({ min: 1, max: 2_000_000 });
const commands = [
  fc.tuple(
    fc.constantFrom<Pkg>('mini', 'starter', 'plus'),
    fc.constantFrom('in_order', 'twice', 'reversed') as fc.Arbitrary<
      'in_order' | 'twice' | 'reversed'
    >,
  ).map(([p, d]) => new Buy(p, d)),
  fc.tuple(tokens, fc.integer({ min: 0, max: 500_000 }), fc.boolean()).map(([i, o, rp]) => new Usage(i, o, rp)),
  fc.array(fc.record({ input: tokens, output: fc.integer({ min: 0, max: 500_000 }) }), { minLength: 1, maxLength: 5 })
    .map((e) => new BatchUsage(e)),
  fc.integer({ min: 1, max: 3000 }).map((a) => new Grant(a)),
  fc.integer({ min: 1, max: 8000 }).map((a) => new Hold(a)),
  fc.option(fc.integer({ min: 1, max: 20000 }), { nil: null, freq: 3 }).map((a) => new SetCap(a)),
  fc.tuple(
    fc.nat(),
    fc.constantFrom('capture_all', 'capture_part', 'release') as fc.Arbitrary<
      'capture_all' | 'capture_part' | 'release'
    >,
  ).map(([i, h]) => new Settle(i, h)),
  fc.tuple(fc.nat(), fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 0.95, noNaN: true })), fc.boolean())
    .map(([i, f, t]) => new Refund(i, f, t)),
  fc.tuple(fc.nat(), fc.constantFrom('open', 'won', 'lost') as fc.Arbitrary<'open' | 'won' | 'lost'>)
    .map(([i, o]) => new Dispute(i, o)),
];
const rare = fc.integer({ min: 1, max: 500 }).map((a) => new HoldExpires(a));

Deno.test({
  name: `ledger model: ${runs} random command sequences agree with the model after every step`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        fc.commands([...commands, ...commands, rare], { maxCommands: 8 }),
        async (cmds) => {
          const user = await newUser();
          const real: Real = {
            user,
            token: await userToken(user),
            admin: await adminToken(),
            purchases: [],
            holds: [],
          };
          const model: Model = {
            balance: 0n,
            held: 0n,
            purchases: [],
            holds: [],
            lots: [],
            cap: null,
            capSpent: 0n,
            capGen: 0,
          };
          await fc.asyncModelRun(() => ({ model, real }), cmds);
          // Every credit the user ever got came from a paid session, a promotion or an admin grant.
          const [t] = await testDb`
            select count(*)::int as untraced from billing.transfers t join billing.accounts a on a.id = t.to_account_id
            where a.user_id = ${user} and t.kind in ('purchase', 'promo_grant')
              and not exists (select 1 from billing.purchases p where p.user_id = ${user} and p.status = 'paid'
                              and t.idempotency_key in ('purchase:' || p.id, 'purchase-bonus:' || p.id))`;
          assert.equal(t.untraced, 0, 'credits without a paid session');
        },
      ),
      { numRuns: runs },
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
                api('/credits/usage', {
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
      { numRuns: Math.max(10, Math.floor(runs / 4)) },
    );
    await assertLedgerInvariants();
  },
});
