// Model-based test of plans (fast-check), beside the ledger's and the codes' models: random
// sequences of renewals paid or failed, their webhooks delivered at once, twice or held back and
// delivered later in reverse (reordered), failed invoices paid late, package purchases, parallel
// spending and cancellation, run against the real stack (the Stripe emulator's subscriptions and
// signed webhooks) and a small in-memory model, compared after every step: the balance, the
// plan credits left, and which invoices granted. The model's rules are the plan's:
// - an invoice grants once, when its invoice.paid arrives, unless a later period already granted
//   (a late, reordered invoice: it grants nothing);
// - a renewal's grant first rolls over what the rule allows of the last granted period's plan
//   credits and expires the rest;
// - plan credits are spent before package credits.
// A failure prints the shrunk sequence. PLANS_MODEL_RUNS sets the number of runs.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { api, assertLedgerInvariants, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { balanceOf, buy, deliver, emulator, type SignedEvent } from '../support/purchases.ts';
import { renew, subscribeTo } from '../support/plans.ts';

const runs = Number(Deno.env.get('PLANS_MODEL_RUNS') ?? 12);
const plans = {
  basic_monthly: { credits: 10_000, rollover: 2_000 },
  pro_monthly: { credits: 35_000, rollover: 8_750 }, // a quarter of the allowance
} as const;
type PlanId = keyof typeof plans;
const mini = 5_000; // the mini package's credits

interface Model {
  plan: PlanId;
  plan_left: number;
  package_left: number;
  /** The latest period an invoice granted, and each invoice's period (1: the first). */
  granted_period: number;
  periods: number;
  invoices: { period: number; paid: boolean; granted: boolean }[];
  canceling: boolean;
  canceled: boolean;
  held: number; // renewals whose events wait
}
interface Real {
  id: string;
  token: string;
  subscription: string;
  invoices: string[]; // Stripe's ids, as the model's invoices
  held: SignedEvent[];
}
type Cmd = fc.AsyncCommand<Model, Real>;

async function compare(m: Model, r: Real) {
  assert.equal(Number((await balanceOf(r.token)).balance), m.plan_left + m.package_left, 'the balance');
  const [{ left }] = await testDb`select coalesce(sum(l.remaining), 0)::numeric::float8 as left
    from billing.plan_lots pl join billing.lots l on l.id = pl.lot_id
    join billing.accounts a on a.id = l.account_id where a.user_id = ${r.id} and l.open`;
  assert.equal(left, m.plan_left, 'plan credits left');
  const granted = await testDb<{ invoice_id: string }[]>`select g.invoice_id from billing.plan_grants g
    join billing.subscriptions s on s.id = g.subscription_id where s.user_id = ${r.id} and g.credits > 0`;
  assert.deepEqual(
    granted.map((g) => g.invoice_id).sort(),
    r.invoices.filter((_, i) => m.invoices[i].granted).sort(),
    'the invoices that granted',
  );
}

/** invoice.paid of the model's invoice i has arrived: it grants, unless a later period has. */
function invoicePaid(m: Model, i: number) {
  const inv = m.invoices[i];
  if (inv.granted || inv.period < m.granted_period) return;
  const rule = plans[m.plan];
  const rolled = inv.period > 1 ? Math.min(rule.rollover, m.plan_left) : 0;
  m.plan_left = rolled + rule.credits;
  m.granted_period = inv.period;
  inv.granted = true;
}

/** Delivers events as Stripe would (each signed); `twice` sends every one again. */
async function deliverAll(m: Model, r: Real, events: SignedEvent[], twice = false) {
  for (const e of events) {
    const res = await deliver(e);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    if (twice) assert.equal((await deliver(e)).body.data.duplicate, true, 'the same event again is a duplicate');
    if (e.type === 'invoice.paid') invoicePaid(m, r.invoices.indexOf(JSON.parse(e.payload).data.object.id));
  }
}

const live = (m: Readonly<Model>) => !m.canceled;

/** The period ends: the renewal invoice is paid or fails; its events now, twice, or held back. */
class Renew implements Cmd {
  constructor(readonly outcome: 'paid' | 'failed', readonly delivery: 'now' | 'twice' | 'held') {}
  check = (m: Readonly<Model>) => live(m) && m.periods < 6;
  async run(m: Model, r: Real) {
    const res = await renew(r.subscription, this.outcome, false);
    if (m.canceling) {
      assert.equal(res.invoice, null, 'a plan set to cancel ends instead');
      m.canceled = true;
      await deliverAll(m, r, res.events);
    } else {
      assert.ok(res.invoice);
      m.periods++;
      m.invoices.push({ period: m.periods, paid: this.outcome === 'paid', granted: false });
      r.invoices.push(res.invoice);
      if (this.delivery === 'held') {
        r.held.push(...res.events);
        m.held++;
      } else await deliverAll(m, r, res.events, this.delivery === 'twice');
    }
    await compare(m, r);
  }
  toString = () => `Renew(${this.outcome}, ${this.delivery})`;
}

/** The held-back events arrive, newest first (reordered against the renewals after them). */
class DeliverHeld implements Cmd {
  check = (m: Readonly<Model>) => m.held > 0;
  async run(m: Model, r: Real) {
    await deliverAll(m, r, r.held.reverse());
    r.held = [];
    m.held = 0;
    await compare(m, r);
  }
  toString = () => 'DeliverHeld';
}

/** Stripe's retry of a failed renewal succeeds (the student updated the card): paid late. */
class PayLate implements Cmd {
  constructor(readonly n: number) {}
  check = (m: Readonly<Model>) => live(m) && m.held === 0 && m.invoices.some((i) => !i.paid);
  async run(m: Model, r: Real) {
    const unpaid = m.invoices.flatMap((inv, i) => (inv.paid ? [] : [i]));
    const i = unpaid[this.n % unpaid.length];
    const res = await emulator(`/_emulator/invoices/${r.invoices[i]}/pay`, { deliver: false });
    m.invoices[i].paid = true;
    await deliverAll(m, r, res.events);
    await compare(m, r);
  }
  toString = () => `PayLate(${this.n})`;
}

/** Several usage charges at once: each succeeds or is a 402, never past what there is. */
class Spend implements Cmd {
  constructor(readonly amounts: number[]) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const available = m.plan_left + m.package_left;
    const res = await Promise.all(this.amounts.map((n) =>
      reportUsage('/credits/usage', {
        token: r.token,
        headers: { 'idempotency-key': crypto.randomUUID() },
        body: { model: 'gpt-4o', input_tokens: n * 50, output_tokens: 0 },
      })
    ));
    let spent = 0;
    res.forEach((x, i) => {
      if (x.status === 201) spent += this.amounts[i];
      else assert.equal(codeOf(x), 'INSUFFICIENT_CREDITS', x.text);
    });
    const total = this.amounts.reduce((s, n) => s + n, 0);
    if (total <= available) assert.equal(spent, total, 'everything fits: everything is charged');
    assert.ok(spent <= available, `spent ${spent} of ${available}`);
    // Plan credits first.
    const fromPlan = Math.min(spent, m.plan_left);
    m.plan_left -= fromPlan;
    m.package_left -= spent - fromPlan;
    await compare(m, r);
  }
  toString = () => `Spend(${this.amounts})`;
}

class BuyPackage implements Cmd {
  check = (m: Readonly<Model>) => m.held === 0;
  async run(m: Model, r: Real) {
    await buy(r.token, 'mini');
    m.package_left += mini;
    await compare(m, r);
  }
  toString = () => 'BuyPackage';
}

class Cancel implements Cmd {
  check = (m: Readonly<Model>) => live(m) && !m.canceling && m.periods >= 3; // late: renewals come first
  async run(m: Model, r: Real) {
    const res = await api('/checkout/subscription/cancel', {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: {},
    });
    assert.equal(res.status, 202, res.text);
    m.canceling = true;
    await compare(m, r);
  }
  toString = () => 'Cancel';
}

const commands = [
  fc.tuple(
    fc.constantFrom<'paid' | 'failed'>('paid', 'paid', 'failed'),
    fc.constantFrom('now', 'twice', 'held') as fc.Arbitrary<Renew['delivery']>,
  ).map(([o, d]) => new Renew(o, d)),
  fc.tuple(
    fc.constantFrom<'paid' | 'failed'>('paid', 'failed'),
    fc.constantFrom('now', 'held') as fc.Arbitrary<Renew['delivery']>,
  ).map(([o, d]) => new Renew(o, d)),
  fc.nat().map((n) => new PayLate(n)),
  fc.constant(new DeliverHeld()),
  fc.nat().map((n) => new PayLate(n)),
  fc.array(fc.integer({ min: 1, max: 15_000 }), { minLength: 1, maxLength: 3 }).map((a) => new Spend(a)),
  fc.constant(new BuyPackage()),
  fc.constant(new Cancel()),
];

Deno.test({
  name:
    `plans model: ${runs} random sequences of renewals, late and reordered invoices, spending and cancellation agree with the model`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<PlanId>('basic_monthly', 'pro_monthly'),
        fc.commands(commands, { maxCommands: 14, size: 'max' }),
        async (plan, cmds) => {
          const id = await newUser();
          const token = await userToken(id);
          const sub = await subscribeTo(token, plan);
          const [first] = await testDb<{ invoice_id: string }[]>`select g.invoice_id from billing.plan_grants g
            where g.subscription_id = ${sub.subscription_id}`;
          const real: Real = {
            id,
            token,
            subscription: sub.stripe_subscription,
            invoices: [first.invoice_id],
            held: [],
          };
          const model: Model = {
            plan,
            plan_left: plans[plan].credits,
            package_left: 0,
            granted_period: 1,
            periods: 1,
            invoices: [{ period: 1, paid: true, granted: true }],
            canceling: false,
            canceled: false,
            held: 0,
          };
          await fc.asyncModelRun(() => ({ model, real }), cmds);
          if (Deno.env.get('PLANS_MODEL_LOG')) console.log(plan, String(cmds));
        },
      ),
      { numRuns: runs },
    );
    await assertLedgerInvariants();
  },
});
