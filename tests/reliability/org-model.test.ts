// Model-based test of school wallets (fast-check): random sequences of organisation grants and
// purchases, allowances, pooled caps, members' usage (single and batched), members' holds on the
// organisation's credits (placed, captured in part or whole, released, left to time out), own
// grants and removals, and refunds and disputes of the organisation's purchases after their
// credits were moved into allowances, spent or reserved, run against the real stack and a
// reference model of the rules of #77 (tests/support/model-rules.ts), compared after every step:
// every account's balance and held, where each purchase's credits are (Σ remaining of its lots
// in each account), and the database's invariants (tests/support/model-invariants.ts). The
// organisation funds by allowance or from a pool, paying before or after the members' own
// credits, as drawn per run. Its purchases are paid by an admin of their own (the payer). A dispute
// of one freezes the lots wherever they are; what was spent is owed by whoever answers for it, never
// a member: the wallet, when an operator verified the school (drawn per run), else the payer, who
// is suspended while the dispute is open. ORG_MODEL_RUNS sets the
// number of runs; MODEL_SEED replays one (the seed is printed); MODEL_OPS=old runs only what the
// SQL before #77 follows.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  holdsLapse,
  movedLotsOffProvenance,
  reportUsage,
  testDb,
  watchTick,
} from '../support/helpers.ts';
import { join, key, person, school, verifyOrg } from '../support/orgs.ts';
import { chargeOf, emulator } from '../support/purchases.ts';
import { capture, holdIdOf, holdPassesTtl, placeHold, release } from '../support/reserved.ts';
import {
  compareBesideTick,
  type FrozenWatch,
  frozenWatch,
  modelSeed,
  newRules,
  stepInvariants,
} from '../support/model-invariants.ts';
import { M, micro, type RefHold, RefLedger, type RefLot } from '../support/model-rules.ts';
import { creditPerToken } from '../support/ai.ts';

const runs = Number(Deno.env.get('ORG_MODEL_RUNS') ?? 60);
const steps = Number(Deno.env.get('ORG_MODEL_STEPS') ?? 20);
const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
const DAY = 86_400_000;

/** gpt-4o-mini: (in × 0.15 + out × 0.60) × 4 / 1,000 credits. */
const price = (input: number, output: number) => BigInt(input) * 600n + BigInt(output) * 2400n;

// The reference ledger's accounts: the wallet, each member's allowance and own account.
const WALLET = 'wallet';
const allowanceOf = (i: number) => `allowance:${i}`;
const ownOf = (i: number) => `own:${i}`;
const PAYER = 'payer'; // the admin who pays the school's purchases: their own account

interface Member {
  active: boolean;
  cap: bigint | null; // a monthly cap on the pool
  capSpent: bigint;
}
/** An organisation's purchase of the mini package (5,000 credits for 500 cents, no bonus). */
interface Purchase {
  name: string; // the reference ledger's
  refunded: bigint; // cents
  reversed: bigint; // credits taken back by refunds (micro, whole credits)
  dispute: 'none' | 'open' | 'closed';
}
/**
 * A member's work in flight on the organisation's credits or their own: their own hold (POST
 * /credits/holds) or a gateway call's (billing.begin_ai_call for a model priced a credit a token,
 * as the gateway places it; finish_ai_call as it ends it).
 */
interface Work {
  member: number;
  kind: 'user' | 'ai';
  hold: RefHold;
  /** What it counted against the member's pool cap. */
  capped: bigint;
}
interface Model {
  ref: RefLedger;
  verified: boolean; // the wallet answers for the school's purchases, not the payer
  funding: 'allowance' | 'pool';
  paysFirst: boolean;
  members: Member[];
  purchases: Purchase[];
  work: Work[];
}
interface Person {
  id: string;
  token: string;
}
interface Real {
  org: string;
  owner: Person;
  payer: Person;
  admin: string;
  members: Person[];
  purchases: { id: string; charge: string }[];
  work: string[];
  watch: FrozenWatch;
}

/** Each organisation account (the wallet: member null) with Σ remaining of each purchase's lots there. */
async function accountsOf(r: Real) {
  const rows = await testDb`
    select a.member_id::text as member, trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      (select coalesce(jsonb_object_agg(x.purchase_id, trim_scale(x.left)::text), '{}') from (
         select l.purchase_id, sum(l.remaining) as left from billing.lots l
         where l.account_id = a.id and l.purchase_id is not null and l.open group by l.purchase_id) x) as lots
    from billing.accounts a where a.org_id = ${r.org} order by a.id`;
  return rows.map((x) => ({
    name: x.member === null ? WALLET : allowanceOf(r.members.findIndex((p) => p.id === x.member)),
    balance: micro(x.balance),
    held: micro(x.held),
    lots: x.lots as Record<string, string>,
  }));
}
const purchaseLots = (m: Model, account: string, purchase: string) =>
  m.ref.lotsOf(account).filter((l) => l.purchase === purchase).reduce((s, l) => s + l.remaining, 0n);

/** What the minute sweep does for a removed member: what their allowance has free goes back to the wallet. */
function sweepRemoved(m: Model) {
  for (const [i, x] of m.members.entries()) {
    if (!x.active && m.ref.available(allowanceOf(i)) > 0n) {
      m.ref.moveCredits(allowanceOf(i), WALLET, m.ref.available(allowanceOf(i)));
    }
  }
}

/** The model against the database after a step, beside pg_cron's own minute tick (compareBesideTick). */
const compare = (m: Model, r: Real) =>
  compareBesideTick(
    { users: [r.owner.id, r.payer.id, ...r.members.map((x) => x.id)], orgs: [r.org] },
    m.ref.claimsWaiting,
    () => m.ref.takeBackClaims(),
    () => compareOnce(m, r),
  );

async function compareOnce(m: Model, r: Real) {
  await testDb`select billing.sweep_ended_terms(1000)`;
  sweepRemoved(m);
  const org = (await api(`/orgs/${r.org}`, { token: r.owner.token })).body.data as {
    wallet: { balance: string; held: string };
  };
  assert.equal(micro(org.wallet.balance), m.ref.balance(WALLET), 'wallet');
  assert.equal(micro(org.wallet.held), m.ref.held(WALLET), "the wallet's held");
  for (const [i, p] of r.members.entries()) {
    const own = (await api('/credits/balance', { token: p.token })).body.data as { balance: string; held: string };
    assert.equal(micro(own.balance), m.ref.balance(ownOf(i)), `member ${i}'s own balance`);
    assert.equal(micro(own.held), m.ref.held(ownOf(i)), `member ${i}'s own held`);
    const seen = await api(`/orgs/${r.org}`, { token: p.token });
    if (!m.members[i].active) {
      assert.equal(seen.status, 404, 'a removed member sees nothing of the organisation');
      continue;
    }
    const allowance = (seen.body.data as { allowance: { balance: string; held: string } | null }).allowance;
    assert.equal(micro(allowance?.balance), m.ref.balance(allowanceOf(i)), `member ${i}'s allowance`);
    assert.equal(micro(allowance?.held), m.ref.held(allowanceOf(i)), `member ${i}'s allowance held`);
  }
  // Every account (a removed member's allowance too): its balance, held, and each purchase's credits in it.
  for (const a of await accountsOf(r)) {
    assert.deepEqual(
      [a.balance, a.held, ...m.purchases.map((_, k) => micro(a.lots[r.purchases[k].id]))],
      [m.ref.balance(a.name), m.ref.held(a.name), ...m.purchases.map((p) => purchaseLots(m, a.name, p.name))],
      `${a.name}: balance, held, each purchase's credits in it`,
    );
  }
  assert.deepEqual(await movedLotsOffProvenance(r.org), [], 'moved lots keep their provenance');
  const payer = (await api('/credits/balance', { token: r.payer.token })).body.data as { balance: string };
  assert.equal(micro(payer.balance), m.ref.balance(PAYER), "the payer's own balance");
  await stepInvariants({ users: [r.owner.id, r.payer.id, ...r.members.map((x) => x.id)], orgs: [r.org] }, r.watch);
}

/** Which account pays a member's charge or hold: the first in their order that can pay all of it. */
function payer(m: Model, i: number, amount: bigint): string | null {
  const x = m.members[i];
  const orgAccount = m.funding === 'allowance' ? allowanceOf(i) : WALLET;
  const org = x.active && m.ref.available(orgAccount) >= amount &&
    (m.funding === 'allowance' || x.cap === null || x.capSpent + amount <= x.cap);
  const own = m.ref.available(ownOf(i)) >= amount;
  for (const source of m.paysFirst ? ['org', 'own'] as const : ['own', 'org'] as const) {
    if (source === 'org' ? org : own) return source === 'org' ? orgAccount : ownOf(i);
  }
  return null;
}
function pay(m: Model, i: number, amount: bigint, account: string) {
  assert.ok(m.ref.charge(account, amount));
  const x = m.members[i];
  if (account === WALLET && x.cap !== null) x.capSpent += amount;
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
    m.ref.grant(WALLET, BigInt(this.amount) * M, {
      priority: 10,
      expiresAt: this.kind === 'adjustment' ? null : Date.now() + 365 * DAY,
    });
    await compare(m, r);
  }
  toString = () => `OrgGrant(${this.amount}, ${this.kind})`;
}

/** Whether the payer is suspended now: one of the purchases they answer for is disputed. */
const payerSuspended = (m: Readonly<Model>) => !m.verified && m.purchases.some((p) => p.dispute === 'open');

class OrgBuy implements Cmd {
  // The checkout velocity rule: 5 per 10 minutes; a suspended payer buys nothing.
  check = (m: Readonly<Model>) => m.purchases.length < 2 && !payerSuspended(m);
  async run(m: Model, r: Real) {
    const co = await api('/checkout/sessions', {
      token: r.payer.token,
      body: { package_id: 'mini', org_id: r.org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    const { session_id, purchase_id } = co.body.data as { session_id: string; purchase_id: string };
    await emulator(`/_emulator/checkout/sessions/${session_id}/pay`);
    const name = `purchase:${m.purchases.length}`;
    m.ref.buy(name, m.verified ? WALLET : PAYER);
    m.ref.grant(WALLET, 5000n * M, { purchase: name, priority: 20 });
    m.purchases.push({ name, refunded: 0n, reversed: 0n, dispute: 'none' });
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
    m.ref.grant(ownOf(this.member), BigInt(this.amount) * M, { priority: 10 });
    await compare(m, r);
  }
  toString = () => `OwnGrant(#${this.member}, ${this.amount})`;
}

/** The owner funds allowances (one member, or everyone): only free wallet credits move, all or nothing. */
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
    // The SQL funds members in user id order; each draws the wallet in spending order.
    const to = m.members.map((x, i) => [x, i] as const)
      .filter(([x, i]) => x.active && (this.member === null || i === this.member))
      .sort(([, i], [, j]) => r.members[i].id < r.members[j].id ? -1 : 1);
    const each = BigInt(this.amount) * M;
    if (m.ref.available(WALLET) >= each * BigInt(to.length)) {
      assert.equal(res.status, 201, res.text);
      for (const [, i] of to) m.ref.moveCredits(WALLET, allowanceOf(i), each);
    } else {
      assert.equal(res.status, 402, `all or nothing: ${res.text}`);
    }
    await compare(m, r);
  }
  toString = () => `Fund(${this.member === null ? 'everyone' : `#${this.member}`}, ${this.amount})`;
}

class SetCap implements Cmd {
  constructor(readonly member: number, readonly amount: number | null) {}
  check = (m: Readonly<Model>) =>
    m.funding === 'pool' && m.members[this.member].active &&
    !m.work.some((w) => w.hold.open && w.member === this.member);
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
      assert.doesNotMatch(res.text, /disput/i, "a member is not told of the organisation's dispute");
    }
    await compare(m, r);
  }
  toString = () => `Use(#${this.member}, ${this.input}/${this.output})`;
}

/** pg_cron's minute tick, at a random moment: what refunds claimed of ended holds is taken back. */
class Tick implements Cmd {
  check = () => true;
  async run(m: Model, r: Real) {
    await testDb`select billing.take_back_due_claims(100000)`;
    m.ref.takeBackClaims();
    await compare(m, r);
  }
  toString = () => 'Tick';
}

/** The tick drains the watch queue (alerts, auto-recharge) at a random moment, beside a charge: it moves no credit. */
class Watch implements Cmd {
  constructor(readonly beside: Use) {}
  check = () => true;
  async run(m: Model, r: Real) {
    await Promise.all([watchTick(), this.beside.run(m, r)]);
    await compare(m, r);
  }
  toString = () => `Watch(${this.beside})`;
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
      assert.equal(
        outcomes[i].org_id ?? null,
        source?.startsWith('own') === false ? r.org : null,
        `event ${i}'s payer`,
      );
      if (source) pay(m, e.member, amount, source);
    }
    await compare(m, r);
  }
  toString = () => `Batch(${this.events.map((e) => `#${e.member}:${e.input}/${e.output}`).join(', ')})`;
}

/** A member's hold: on whichever account would pay a charge of it (reserving that account's free credits), or 402. */
class MemberHold implements Cmd {
  constructor(readonly member: number, readonly kind: Work['kind'], readonly amount: number) {}
  check = (m: Readonly<Model>) => newRules && m.work.filter((w) => w.hold.open).length < 3;
  async run(m: Model, r: Real) {
    const amount = BigInt(this.amount) * M;
    let id: string | null = null;
    let answer = '';
    if (this.kind === 'user') {
      const res = await placeHold(r.members[this.member].token, String(this.amount));
      answer = `${res.status} ${res.text}`;
      if (res.status === 201) id = holdIdOf(res);
    } else {
      const prompt = Math.max(1, Math.floor(this.amount / 3));
      const [x] = await testDb`select billing.begin_ai_call(${r.members[this.member].id}, ${await aiModel()},
        ${prompt}, ${this.amount - prompt}, ${crypto.randomUUID()}, ${'0'.repeat(64)}, 3600) as r`;
      answer = JSON.stringify(x.r);
      if (x.r.state === 'held') id = x.r.call_id as string;
    }
    const source = payer(m, this.member, amount);
    if (source === null) {
      assert.equal(id, null, answer);
      assert.match(answer, /402|INSUFFICIENT_CREDITS/, answer);
      assert.doesNotMatch(answer, /disput/i, "a member is not told of the organisation's dispute");
    } else {
      assert.ok(id !== null, `${source} should reserve ${amount}: ${answer}`);
      const hold = m.ref.reserve(source, amount) as RefHold;
      const capped = source === WALLET && m.members[this.member].cap !== null ? amount : 0n;
      m.members[this.member].capSpent += capped;
      m.work.push({ member: this.member, kind: this.kind, hold, capped });
      r.work.push(id);
    }
    await compare(m, r);
  }
  toString = () => `MemberHold(#${this.member}, ${this.kind}, ${this.amount})`;
}

let aiModelName: string | null = null;
/** The model the gateway calls here are for: priced a credit a token, in and out. */
const aiModel = async () => aiModelName ??= await creditPerToken();

/**
 * A member's hold ends: captured in part or whole, released, or left to pass its TTL; a gateway
 * call may cost more than its hold ('above'): the excess is owed by the account the hold drew on
 * (the pool or the allowance: billing.owe), past the member's cap, which counts it.
 */
class EndHold implements Cmd {
  constructor(readonly pick: number, readonly how: 'part' | 'whole' | 'release' | 'ttl' | 'above') {}
  check = (m: Readonly<Model>) => m.work.some((w) => w.hold.open);
  async run(m: Model, r: Real) {
    const open = m.work.map((w, i) => [w, i] as const).filter(([w]) => w.hold.open);
    const [w, i] = open[this.pick % open.length];
    const token = r.members[w.member].token;
    const part = w.hold.amount / 2n / M; // whole credits; 0: the capture takes it all
    const how = (this.how === 'part' && part === 0n) || (this.how === 'above' && w.kind !== 'ai') ? 'whole' : this.how;
    // A gateway call's usage is whole tokens (a credit each); a user's whole capture takes the hold.
    const whole = w.kind === 'ai' ? w.hold.amount / M * M : w.hold.amount;
    const captured = how === 'whole' ? whole : how === 'part' ? part * M : how === 'above' ? whole : 0n;
    const excess = how === 'above' ? (BigInt(this.pick % 40) + 1n) * M : 0n;
    if (w.kind === 'ai') {
      if (how === 'ttl') {
        await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${r.work[i]})`);
        await testDb`select billing.release_expired_holds(100000)`;
      } else {
        // The provider's usage, input tokens a credit each; none: the call failed.
        const used = (captured + excess) / M;
        const [f] = await testDb`select billing.finish_ai_call(${r.work[i]},
          ${JSON.stringify({ input_tokens: Number(used), output_tokens: 0 })}::text::jsonb, 'provider', '{}'::jsonb,
          ${used === 0n}) as r`;
        assert.equal(micro(String(f.r.charged ?? '0')), used * M, JSON.stringify(f.r));
      }
    } else if (how === 'ttl') await holdPassesTtl(r.work[i]);
    else {
      const res = how === 'release'
        ? await release(token, r.work[i])
        : await capture(token, r.work[i], how === 'part' ? String(part) : undefined);
      assert.equal(res.status, 200, res.text);
    }
    if (excess > 0n) m.ref.chargeWork(w.hold, captured + excess);
    else if (captured > 0n) m.ref.capture(w.hold, captured);
    else m.ref.release(w.hold);
    // What the hold did not spend goes back to the cap it counted against; an excess counts past it.
    m.members[w.member].capSpent += w.capped > 0n ? captured + excess - w.capped : 0n;
    await compare(m, r);
  }
  toString = () => `EndHold(#${this.pick}, ${this.how})`;
}

/**
 * A year passes for the organisation's promotions: every expiring lot in its accounts (a
 * promotion, and what allowances got of it) expires whole, under whatever holds reserved it
 * (they shrink by that). The members' own credits are adjustments: they never expire.
 */
class ExpirePromotions implements Cmd {
  expiring = (m: Readonly<Model>) =>
    m.ref.lots.filter((l) => l.expiresAt !== null && l.remaining > 0n && !l.account.startsWith('own'));
  check = (m: Readonly<Model>) => this.expiring(m).length > 0;
  async run(m: Model, r: Real) {
    // Spent lots too: a moved copy's expiry stays its source's.
    await testDb`with l as (update billing.lots l set expires_at = now() - interval '1 second'
                   from billing.accounts a where a.id = l.account_id and a.org_id = ${r.org}
                     and l.expires_at is not null returning l.account_id)
                 update billing.accounts a set next_expiry = now() - interval '1 second'
                 where a.id in (select account_id from l)`;
    await testDb`select billing.expire_lots(100000)`;
    for (const l of this.expiring(m)) m.ref.expire(l);
    await compare(m, r);
  }
  toString = () => 'ExpirePromotions';
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
    // Their own holds on the organisation's credits are released (a gateway call under way
    // finishes); what the allowance has free sweeps back; what a dispute froze or a call reserved stays.
    for (const w of m.work) {
      if (w.member === this.member && w.kind === 'user' && w.hold.open && !w.hold.account.startsWith('own')) {
        m.ref.release(w.hold);
        m.members[this.member].capSpent -= w.capped;
      }
    }
    m.members[this.member].active = false;
    sweepRemoved(m);
    await compare(m, r);
  }
  toString = () => `Remove(#${this.member})`;
}

// ---------------------------------------------------------------- refunds and disputes
const PRICE = 500n; // cents
const CREDITS = 5000n * M;
const purchasesWhere = (m: Readonly<Model>, ok: (p: Purchase) => boolean) =>
  m.purchases.map((p, i) => [p, i] as const).filter(([p]) => ok(p));
const refundable = (p: Purchase) => p.dispute === 'none' && p.refunded < PRICE;
/** A purchase's lots in the order a take-back goes through them: the wallet's first, then each allowance's. */
const takeBackOrder = (m: Model, p: Purchase) =>
  m.ref.lotsOfPurchase(p.name).sort((a: RefLot, b: RefLot) =>
    Number(a.account !== WALLET) - Number(b.account !== WALLET) || a.account.localeCompare(b.account) || a.n - b.n
  );

/**
 * A partial or full refund: floor(credits × refunded ÷ paid) whole credits, taken from the
 * purchase's lots wherever they are (what they have free at once, what holds reserved when the
 * holds return it); what was spent of them who answers for it owes (their free credits, then debt).
 */
class Refund implements Cmd {
  constructor(readonly pick: number, readonly fraction: number) {}
  check = (m: Readonly<Model>) => m.purchases.some(refundable);
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, refundable);
    const [p, i] = open[this.pick % open.length];
    const left = PRICE - p.refunded;
    const cents = this.fraction >= 1 ? left : BigInt(Math.max(1, Math.floor(Number(left) * this.fraction)));
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/refund`, { amount: Number(cents) });
    p.refunded += cents;
    const target = CREDITS * p.refunded / PRICE / M * M; // whole credits
    m.ref.takeBack(p.name, target - p.reversed, takeBackOrder(m, p));
    p.reversed = target;
    await compare(m, r);
  }
  toString = () => `Refund(#${this.pick}, ${this.fraction >= 1 ? 'all' : this.fraction.toFixed(2)})`;
}

/** Whether the payer's usage is refused for the dispute (403 ACCOUNT_DISPUTED) exactly while the model says so. */
async function assertPayerStanding(m: Model, r: Real) {
  const res = await reportUsage('/credits/usage', {
    token: r.payer.token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 0 },
  });
  if (payerSuspended(m)) assert.equal(res.status, 403, `the payer is suspended: ${res.text}`);
  else assert.equal(res.status, 402, `the payer is not suspended (and has no credits): ${res.text}`);
}

/** A dispute opens: the purchase's lots freeze wherever they are; the payer of an unverified school is suspended. */
class DisputeOpen implements Cmd {
  constructor(readonly pick: number) {}
  check = (m: Readonly<Model>) => newRules && m.purchases.some(refundable);
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, refundable);
    const [p, i] = open[this.pick % open.length];
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: 'open' });
    p.dispute = 'open';
    m.ref.freeze(p.name, true);
    // The owner did not pay: they may still fund allowances and set caps.
    const org = await api(`/orgs/${r.org}`, { token: r.owner.token });
    assert.equal(org.status, 200, org.text);
    await assertPayerStanding(m, r);
    await compare(m, r);
  }
  toString = () => `DisputeOpen(#${this.pick})`;
}

/** A dispute closes. Won: its lots thaw. Lost: settled as a refund of what is left of the purchase. */
class DisputeClose implements Cmd {
  constructor(readonly pick: number, readonly outcome: 'won' | 'lost') {}
  check = (m: Readonly<Model>) => newRules && m.purchases.some((p) => p.dispute === 'open');
  async run(m: Model, r: Real) {
    const open = purchasesWhere(m, (p) => p.dispute === 'open');
    const [p, i] = open[this.pick % open.length];
    await emulator(`/_emulator/charges/${r.purchases[i].charge}/dispute`, { outcome: this.outcome });
    p.dispute = 'closed';
    m.ref.freeze(p.name, false);
    if (this.outcome === 'lost') m.ref.takeBack(p.name, CREDITS - p.reversed, takeBackOrder(m, p));
    await assertPayerStanding(m, r);
    await compare(m, r);
  }
  toString = () => `DisputeClose(#${this.pick}, ${this.outcome})`;
}

/** Both purchases disputed, the older first; then the older closes. */
class OverlappingDisputes implements Cmd {
  constructor(readonly outcome: DisputeClose['outcome']) {}
  check = (m: Readonly<Model>) => newRules && m.purchases.filter(refundable).length >= 2;
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
  fc.tuple(member, fc.constantFrom<Work['kind']>('user', 'ai'), fc.integer({ min: 2, max: 1500 }))
    .map(([i, k, a]) => new MemberHold(i, k, a)),
  fc.tuple(fc.nat(), fc.constantFrom<EndHold['how']>('part', 'whole', 'release', 'ttl', 'above')).map(([i, h]) =>
    new EndHold(i, h)
  ),
  fc.constant(new ExpirePromotions()),
  fc.tuple(member, input, output).map(([i, n, o]) => new Watch(new Use(i, n, o))),
  fc.constant(new Tick()),
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
        fc.boolean(),
        fc.commands([...commands, commands[1], ...commands.slice(3, 7), ...commands.slice(8)], {
          maxCommands: steps,
          size: 'max',
        }),
        async (funding, paysFirst, grant, bought, verified, cmds) => {
          const [owner, payer, ...members] = await Promise.all(['owner', 'payer', 'ada', 'bo'].map(person));
          const org = await school(owner, members, funding, grant);
          await join(owner.token, org, payer, 'admin');
          if (verified) await verifyOrg(org);
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
            ref: new RefLedger(),
            verified,
            funding,
            paysFirst,
            members: members.map(() => ({ active: true, cap: null, capSpent: 0n })),
            purchases: [],
            work: [],
          };
          // The school's starting grant: an adjustment (never expires).
          if (grant) model.ref.grant(WALLET, micro(grant), { priority: 10 });
          const real: Real = {
            org,
            owner,
            payer,
            admin: await adminToken(),
            members,
            purchases: [],
            work: [],
            watch: frozenWatch(),
          };
          if (bought) await new OrgBuy().run(model, real);
          await fc.asyncModelRun(() => ({ model, real }), cmds);
          if (Deno.env.get('ORG_MODEL_LOG')) console.log(funding, paysFirst, grant, bought, verified, String(cmds));
        },
      ),
      { numRuns: runs, ...modelSeed('org-model') },
    );
    await assertLedgerInvariants();
  },
});
