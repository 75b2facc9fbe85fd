// Model-based test of school wallets (fast-check): random sequences of organisation grants and
// purchases, allowances, pooled caps, members' usage (single and batched), own grants and
// removals run against the real stack and a small model of who pays, compared after every
// step. The organisation funds by allowance or from a pool, paying before or after the
// members' own credits, as drawn per run. ORG_MODEL_RUNS sets the number of runs.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { adminToken, api, assertLedgerInvariants, env, testDb } from '../helpers.ts';
import { key, person, school } from '../orgs.ts';
import { emulator } from '../purchases.ts';

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
  active: boolean;
  cap: bigint | null; // a monthly cap on the pool
  capSpent: bigint;
}
interface Model {
  funding: 'allowance' | 'pool';
  paysFirst: boolean;
  wallet: bigint;
  members: Member[];
  purchases: number;
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
}

async function compare(m: Model, r: Real) {
  const org = (await api(`/orgs/${r.org}`, { token: r.owner.token })).body.data as { wallet: { balance: string } };
  assert.equal(micro(org.wallet.balance), m.wallet, 'wallet');
  for (const [i, p] of r.members.entries()) {
    const own = (await api('/credits/balance', { token: p.token })).body.data as { balance: string };
    assert.equal(micro(own.balance), m.members[i].own, `member ${i}'s own balance`);
    const seen = await api(`/orgs/${r.org}`, { token: p.token });
    if (!m.members[i].active) {
      assert.equal(seen.status, 404, 'a removed member sees nothing of the organisation');
      continue;
    }
    const allowance = (seen.body.data as { allowance: { balance: string } | null }).allowance;
    assert.equal(micro(allowance?.balance), m.members[i].allowance, `member ${i}'s allowance`);
  }
  // The organisation's own books: each account's balance is the sum of its entries.
  const [{ off }] = await testDb`select count(*)::int as off from billing.accounts a
    where a.org_id = ${r.org} and a.balance <> (select coalesce(sum(e.amount), 0) from billing.entries e where e.account_id = a.id)`;
  assert.equal(off, 0, 'Σ entries = balance on every organisation account');
}

/** Which wallet pays a member's charge: the first in their order that can pay all of it. */
function payer(m: Model, i: number, amount: bigint): 'org' | 'own' | null {
  const x = m.members[i];
  const org = x.active &&
    (m.funding === 'allowance'
      ? x.allowance >= amount
      : m.wallet >= amount && (x.cap === null || x.capSpent + amount <= x.cap));
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

class OrgGrant implements Cmd {
  constructor(readonly amount: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await api(`/orgs/${r.org}/grants`, {
      token: r.admin,
      body: { amount: String(this.amount), reason: 'model' },
      headers: key(),
    });
    assert.equal(res.status, 201, res.text);
    m.wallet += BigInt(this.amount) * M;
    await compare(m, r);
  }
  toString = () => `OrgGrant(${this.amount})`;
}

class OrgBuy implements Cmd {
  check = (m: Readonly<Model>) => m.purchases < 2; // the checkout velocity rule: 5 per 10 minutes
  async run(m: Model, r: Real) {
    const co = await api('/checkout/sessions', {
      token: r.owner.token,
      body: { package_id: 'mini', org_id: r.org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`);
    m.wallet += 5000n * M;
    m.purchases++;
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
    if (m.wallet >= total) {
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
    const res = await api('/credits/usage', {
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
    m.wallet += x.allowance; // the allowance sweeps back
    x.allowance = 0n;
    x.active = false;
    await compare(m, r);
  }
  toString = () => `Remove(#${this.member})`;
}

const member = fc.integer({ min: 0, max: 1 });
// Charges of up to ~540 credits, against grants and allowances of up to a few thousand.
const input = fc.integer({ min: 1, max: 500_000 });
const output = fc.integer({ min: 0, max: 100_000 });
const commands = [
  fc.integer({ min: 1, max: 3000 }).map((a) => new OrgGrant(a)),
  fc.constant(new OrgBuy()),
  fc.tuple(member, fc.integer({ min: 1, max: 1500 })).map(([i, a]) => new OwnGrant(i, a)),
  fc.tuple(fc.option(member, { nil: null }), fc.integer({ min: 1, max: 800 })).map(([i, a]) => new Fund(i, a)),
  fc.tuple(member, fc.option(fc.integer({ min: 1, max: 3000 }), { nil: null, freq: 3 })).map(([i, a]) =>
    new SetCap(i, a)
  ),
  fc.tuple(member, input, output).map(([i, n, o]) => new Use(i, n, o)),
  fc.array(fc.record({ member, input, output }), { minLength: 1, maxLength: 5 }).map((e) => new Batch(e)),
  member.map((i) => new Remove(i)),
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
        fc.commands([...commands, ...commands.slice(3, 7)], { maxCommands: 12 }),
        async (funding, paysFirst, cmds) => {
          const [owner, ...members] = await Promise.all(['owner', 'ada', 'bo'].map(person));
          const org = await school(owner, members, funding, '2000');
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
            wallet: 2000n * M,
            members: members.map(() => ({ own: 0n, allowance: 0n, active: true, cap: null, capSpent: 0n })),
            purchases: 0,
          };
          const real: Real = { org, owner, admin: await adminToken(), members };
          await fc.asyncModelRun(() => ({ model, real }), cmds);
        },
      ),
      { numRuns: runs },
    );
    await assertLedgerInvariants();
  },
});
