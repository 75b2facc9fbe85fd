// Charges for a model on credits for some models (docs/credit-lots.md § Credits for some models),
// made as a student's traffic makes them (usage reports, batches, gateway calls, a student's own
// hold, a purchase refunded), checked against a model of the rule written here from the doc: a
// lot pays for a model when it has no list, names the model, or names a family (`x*`) the model's
// name starts with; a charge draws the lots that may pay in spending order (not frozen, priority,
// earliest expiry, oldest, id), or is 402 with `details.restricted` when they cannot cover it. The
// lists put names that are prefixes of each other side by side (gpt-4o, gpt-4o-mini, gpt-4o*,
// gpt-4o-mini*, and fresh names a, a-mini, a-mini-2, ax), so a test of the rule that reads a
// name as a prefix, or a family as a name, draws the wrong lot here. The writer and the usage
// path write the rule out in their queries (supabase/schemas/11-ledger-writer.sql) beside
// billing.lot_pays_for: every allocation is also checked against that function.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  env,
  key,
  newUser,
  reportUsage,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { grantLot, orgGrant } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';

// ============================================================ exact credits

/** Credits as integers of 10^-18 (the ledger's scale): no float ever touches an amount. */
const units = (s: string): bigint => {
  const [i, f = ''] = s.split('.');
  return BigInt(i + f.padEnd(18, '0'));
};
const show = (u: bigint): string => {
  const s = u.toString().padStart(19, '0');
  const f = s.slice(-18).replace(/0+$/, '');
  return f ? `${s.slice(0, -18)}.${f}` : s.slice(0, -18);
};
const min = (a: bigint, b: bigint) => (a < b ? a : b);

// ============================================================ the rule, written from the doc

/** Whether a lot with this list may pay for `model`: no list, the name, or a family it starts. */
const paysFor = (list: string[] | null, model: string) =>
  list === null || list.some((p) => p === model || (p.endsWith('*') && model.startsWith(p.slice(0, -1))));

interface Lot {
  id: bigint;
  list: string[] | null;
  frozen: boolean;
  priority: number;
  expires: bigint | null; // µs since the epoch
  granted: bigint;
  remaining: bigint;
}

const spendingOrder = (a: Lot, b: Lot) =>
  a.priority - b.priority ||
  (a.expires === b.expires ? 0 : a.expires === null ? 1 : b.expires === null ? -1 : a.expires < b.expires ? -1 : 1) ||
  (a.granted === b.granted ? 0 : a.granted < b.granted ? -1 : 1) || (a.id < b.id ? -1 : 1);

type Expected =
  | { ok: true; take: Map<bigint, bigint> }
  | { ok: false; restricted?: string; reason?: string };

/**
 * One account's lots as they must be: what each charge draws, or why it is refused. Only free
 * credits are drawn (remaining − what a hold reserved, none of a frozen lot: docs/credit-lots.md §
 * Spending order 3); a student's own hold reserves credits for any model in spending order (4).
 */
class Books {
  lots = new Map<bigint, Lot>();
  held = 0n; // a student's own hold's amount
  reserved = new Map<bigint, bigint>(); // what it reserved of each lot
  debt = 0n;

  free(l: Lot) {
    return l.frozen ? 0n : l.remaining - (this.reserved.get(l.id) ?? 0n);
  }

  /** A student's own hold of `amount` (no model): the free credits of lots for any model, in order. */
  reserve(amount: bigint) {
    let need = amount;
    for (const l of this.open()) {
      if (need === 0n || l.list !== null) continue;
      const t = min(this.free(l), need);
      if (t <= 0n) continue;
      this.reserved.set(l.id, (this.reserved.get(l.id) ?? 0n) + t);
      need -= t;
    }
    assert.equal(need, 0n, 'the hold found its credits');
    this.held += amount;
  }

  /** The hold captured for `amount`: what it reserved, in spending order; the rest returns. */
  capture(amount: bigint) {
    const take = new Map<bigint, bigint>();
    let need = amount;
    for (const l of this.open()) {
      const r = this.reserved.get(l.id) ?? 0n;
      if (need === 0n || r === 0n) continue;
      const t = min(r, need);
      take.set(l.id, t);
      need -= t;
    }
    this.reserved.clear();
    this.held = 0n;
    return take;
  }

  constructor(readonly account: bigint) {}

  /** Lots the account got since the last look (grants, a purchase), as the ledger made them. */
  async sync() {
    for (const r of await lotRows(this.account)) {
      const id = BigInt(r.id);
      if (!this.lots.has(id)) {
        this.lots.set(id, {
          id,
          list: r.applies_to,
          frozen: r.frozen,
          priority: r.priority,
          expires: r.expires === null ? null : BigInt(r.expires),
          granted: BigInt(r.granted),
          remaining: units(r.remaining),
        });
      }
    }
  }

  /** Frozen flags and what the account holds, as a dispute left them (holds payable by credits for any model). */
  async refresh() {
    for (const r of await lotRows(this.account)) this.lots.get(BigInt(r.id))!.frozen = r.frozen;
    this.held = units(
      (await testDb`select trim_scale(held)::text as h from billing.accounts
      where id = ${String(this.account)}`)[0].h,
    );
  }

  open() {
    return [...this.lots.values()].filter((l) => l.remaining > 0n).sort(spendingOrder);
  }

  expect(model: string, amount: bigint): Expected {
    const open = this.open();
    const total = open.reduce((s, l) => s + l.remaining, 0n);
    if (total - this.debt - this.held < amount) return { ok: false };
    const take = new Map<bigint, bigint>();
    let need = amount;
    for (const l of open) {
      if (need === 0n || !paysFor(l.list, model)) continue;
      const t = min(this.free(l), need);
      if (t <= 0n) continue;
      take.set(l.id, t);
      need -= t;
    }
    if (need > 0n) {
      const unusable = open.filter((l) => !paysFor(l.list, model)).reduce((s, l) => s + l.remaining, 0n);
      return {
        ok: false,
        restricted: show(unusable),
        reason: unusable > 0n ? 'some credits may only pay for other models' : 'credits are held for other models',
      };
    }
    return { ok: true, take };
  }

  /** The books with each lot's remaining as `remaining` has it (the others: nothing left). */
  at(remaining: Map<bigint, bigint>) {
    const then = new Books(this.account);
    for (const [id, l] of this.lots) then.lots.set(id, { ...l, remaining: remaining.get(id) ?? 0n });
    then.held = this.held;
    then.reserved = new Map(this.reserved);
    then.debt = this.debt;
    return then;
  }

  apply(take: Map<bigint, bigint>) {
    for (const [id, t] of take) this.lots.get(id)!.remaining -= t;
  }

  /** Every lot's remaining is what the model says (lots past their expiry: that, or nothing left). */
  async agree(what: string) {
    const now = BigInt(Date.now()) * 1000n;
    for (const r of await lotRows(this.account)) {
      const l = this.lots.get(BigInt(r.id));
      assert.ok(l, `${what}: lot ${r.id} appeared unannounced`);
      const expired = l.expires !== null && l.expires <= now;
      if (expired && l.remaining === 0n) continue;
      assert.equal(r.remaining, show(l.remaining), `${what}: lot ${r.id} (${JSON.stringify(l.list)})`);
    }
  }
}

interface LotRow {
  id: string;
  applies_to: string[] | null;
  frozen: boolean;
  priority: number;
  expires: string | null;
  granted: string;
  remaining: string;
}

/** The account's lots as the ledger has them (instants in µs, amounts exact). */
async function lotRows(account: bigint): Promise<LotRow[]> {
  return await testDb<LotRow[]>`select l.id::text, l.applies_to, l.frozen, l.priority,
      (extract(epoch from l.expires_at) * 1000000)::bigint::text as expires,
      (extract(epoch from l.granted_at) * 1000000)::bigint::text as granted, trim_scale(l.remaining)::text as remaining
    from billing.lots l where l.account_id = ${String(account)}`;
}

/** What a transfer drew, lot by lot. */
const drawnBy = async (transfer: string | bigint) =>
  new Map(
    (await testDb`select lot_id::text, trim_scale(amount)::text as amount from billing.lot_allocations
      where transfer_id = ${String(transfer)}`).map((r) => [BigInt(r.lot_id), units(r.amount)]),
  );

const same = (a: Map<bigint, bigint>, b: Map<bigint, bigint>) =>
  a.size === b.size && [...a].every(([id, t]) => b.get(id) === t);
const fmt = (m: Map<bigint, bigint>) => JSON.stringify([...m].map(([id, t]) => [String(id), show(t)]));

/** Allocations of the account's charges whose lot may not pay for the charge's model, by billing.lot_pays_for. */
const misdrawn = async (account: bigint) =>
  (await testDb`select count(*)::int as n from billing.lot_allocations x
    join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    left join billing.rate_cards r on r.id = t.rate_card_id
    where l.account_id = ${String(account)} and t.kind = 'usage'
      and not billing.lot_pays_for(l.applies_to, coalesce(r.model, t.metadata ->> 'model'))`)[0].n as number;

// ============================================================ the rate card and the charges

/** Fresh models whose names are prefixes of each other, 0.001 credits an input token. */
async function prefixModels() {
  const a = `t${crypto.randomUUID().slice(0, 6)}`;
  const names = [a, `${a}-mini`, `${a}-mini-2`, `${a}x`];
  for (const m of names) {
    await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
      effective_from) values (${m}, 1, 1, 2, 1, now() - interval '1 minute')`;
  }
  return names;
}

const priceOf = async (model: string, tokens: number) =>
  units((await testDb`select trim_scale((billing.price_usage(${model}, ${tokens}, 0)).amount)::text as p`)[0].p);

/** Input tokens that cost about `credits` of `model` (whole tokens: the price is what the card says). */
const tokensFor = async (model: string, credits: number) =>
  Math.max(1, Math.round(credits * 1e24 / Number(await priceOf(model, 1_000_000))));

/** A small deterministic generator, so a failing sequence can be replayed. */
function random(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Answer = Awaited<ReturnType<typeof api>>;
const errorOf = (r: Answer) => r.body.error as { code: string; details: Record<string, unknown> } | undefined;

/**
 * Charges `model` through POST /credits/usage for the token's student and checks the answer and
 * what it drew against the books; `pooled`: the books are a school's pool (its 402 shows no figures).
 */
async function charge(books: Books, token: string, model: string, tokens: number, what: string, pooled = false) {
  const amount = await priceOf(model, tokens);
  const expected = books.expect(model, amount);
  const r = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: tokens, output_tokens: 0 },
  });
  const label = `${what}: ${show(amount)} of ${model}`;
  if (!expected.ok) {
    assert.equal(r.status, 402, `${label} must be refused: ${r.text}`);
    const details = errorOf(r)!.details;
    if (expected.restricted !== undefined && !pooled) {
      assert.equal(details.restricted, expected.restricted, `${label}: details.restricted (${r.text})`);
      assert.equal(details.model, model, `${label}: details.model`);
      assert.equal(details.reason, expected.reason, `${label}: details.reason`);
    }
    return r;
  }
  assert.equal(r.status, 201, `${label} must be paid by ${fmt(expected.take)}: ${r.text}`);
  const drawn = await drawnBy((r.body.data as { transfer_id: string }).transfer_id);
  assert.ok(same(drawn, expected.take), `${label} drew ${fmt(drawn)}, not ${fmt(expected.take)}`);
  books.apply(expected.take);
  await books.agree(label);
  return r;
}

/** POST /credits/usage/batch as the product's server: one event per [model, input tokens]. */
const sendBatch = (user: string, events: [string, number][]) =>
  api('/credits/usage/batch', {
    token: env('SUPABASE_SERVICE_ROLE_KEY'),
    body: {
      events: events.map(([model, tokens]) => ({
        event_id: crypto.randomUUID(),
        user_id: user,
        model,
        input_tokens: tokens,
        output_tokens: 0,
        occurred_at: new Date().toISOString(),
      })),
    },
  });

/** A batch of events for one student, each checked as a charge of its own, in event order. */
async function batch(books: Books, user: string, events: [string, number][], what: string) {
  const amounts = await Promise.all(events.map(([m, t]) => priceOf(m, t)));
  const r = await sendBatch(user, events);
  assert.equal(r.status, 200, `${what}: ${r.text}`);
  const outcomes = (r.body.data as { outcomes: Record<string, string>[] }).outcomes;
  for (const [i, [model]] of events.entries()) {
    const expected = books.expect(model, amounts[i]);
    const o = outcomes[i];
    const label = `${what}, event ${i}: ${show(amounts[i])} of ${model}`;
    if (!expected.ok) {
      assert.equal(o.status, 'insufficient', `${label} must be refused: ${JSON.stringify(o)}`);
      if (expected.restricted !== undefined) assert.equal(o.restricted, expected.restricted, label);
      continue;
    }
    assert.equal(o.status, 'applied', `${label}: ${JSON.stringify(o)}`);
    const drawn = await drawnBy(o.transfer_id);
    assert.ok(same(drawn, expected.take), `${label} drew ${fmt(drawn)}, not ${fmt(expected.take)}`);
    books.apply(expected.take);
  }
  await books.agree(what);
}

/**
 * Charges racing on one account (usage reports and batches at once): replayed in the order the
 * account lock let them in (their transfer ids), each drew exactly what the books say then, and
 * each refusal was right at some point of that order.
 */
async function race(books: Books, user: string, token: string, work: [string, number][], what: string) {
  const [{ last }] = await testDb`select coalesce(max(id), 0)::text as last from billing.transfers
    where from_account_id = ${String(books.account)}`;
  const singles = work.slice(0, Math.ceil(work.length / 2));
  const batched = work.slice(singles.length);
  const half = Math.ceil(batched.length / 2);
  const refused: [string, bigint][] = [];
  await Promise.all([
    ...singles.map(async ([model, tokens]) => {
      const r = await reportUsage('/credits/usage', {
        token,
        headers: key(),
        body: { model, input_tokens: tokens, output_tokens: 0 },
      });
      assert.ok(r.status === 201 || r.status === 402, `${what}: ${model} answered ${r.status} ${r.text}`);
      if (r.status === 402) refused.push([model, await priceOf(model, tokens)]);
    }),
    ...[batched.slice(0, half), batched.slice(half)].map(async (events) => {
      const r = await sendBatch(user, events);
      assert.equal(r.status, 200, `${what}: a batch answered ${r.text}`);
      const outcomes = (r.body.data as { outcomes: { status: string }[] }).outcomes;
      for (const [i, o] of outcomes.entries()) {
        assert.ok(o.status === 'applied' || o.status === 'insufficient', `${what}: ${JSON.stringify(o)}`);
        if (o.status === 'insufficient') refused.push([events[i][0], await priceOf(events[i][0], events[i][1])]);
      }
    }),
  ]);
  const written = await testDb`select t.id::text, t.kind::text, trim_scale(t.amount)::text as amount, r.model
    from billing.transfers t left join billing.rate_cards r on r.id = t.rate_card_id
    where t.from_account_id = ${String(books.account)} and t.id > ${last} order by t.id`;
  const snapshot = () => new Map(books.open().map((l) => [l.id, l.remaining]));
  const states = [snapshot()];
  for (const t of written) {
    assert.equal(t.kind, 'usage', `${what}: only the charges wrote (${t.kind})`);
    const expected = books.expect(t.model, units(t.amount));
    assert.ok(expected.ok, `${what}: transfer ${t.id} (${t.amount} of ${t.model}) could not have been paid`);
    const drawn = await drawnBy(t.id);
    assert.ok(
      same(drawn, expected.take),
      `${what}: transfer ${t.id} (${t.amount} of ${t.model}) drew ${fmt(drawn)}, not ${fmt(expected.take)}`,
    );
    books.apply(expected.take);
    states.push(snapshot());
  }
  await books.agree(what);
  // A refusal was right in some state the account passed through.
  for (const [model, amount] of refused) {
    assert.ok(
      states.some((s) => !books.at(s).expect(model, amount).ok),
      `${what}: ${show(amount)} of ${model} was refused though every state could pay it`,
    );
  }
  return written.length;
}

/** A student's account id. */
const accountOf = async (user: string) =>
  BigInt((await testDb`select id::text from billing.accounts where user_id = ${user}`)[0].id);

const inDays = (d: number) => new Date(Date.now() + d * 86_400_000).toISOString();

// ============================================================ tests

Deno.test('every charge for a model draws, in spending order, only lots that may pay for it: gpt-4o beside gpt-4o-mini, names beside families, with expiry, a hold, racing charges and a refund', async () => {
  const [spare] = await prefixModels(); // a model no list names: spends credits for any model only
  const id = await newUser();
  const token = await userToken(id);
  const soon = inDays(5);
  const lots: [string, string, Record<string, unknown>][] = [
    ['60', 'promo_grant', { applies_to: ['claude*'], priority: 0 }], // first in order, pays for none of gpt-4o*
    ['45', 'adjustment', { applies_to: ['gpt-4o'], priority: 5 }], // the name only: not gpt-4o-mini
    ['36', 'promo_grant', { applies_to: ['gpt-4o-mini*'], priority: 5, expires_at: inDays(10) }], // not gpt-4o
    ['75', 'promo_grant', { applies_to: ['gpt-4o*'], priority: 5, expires_at: soon }], // both
    ['36', 'adjustment', { applies_to: ['claude-haiku-4-5', 'gpt-4o-mini'], priority: 5 }],
    ['90', 'promo_grant', {}], // for any model
    ['60', 'adjustment', {}],
    ['24', 'adjustment', { applies_to: ['gpt-4o'], priority: 1 }], // before every other list for gpt-4o
    ['18', 'adjustment', { applies_to: ['gpt-4o*', 'text-embedding-3-small'], priority: 30 }],
    ['27', 'promo_grant', { applies_to: ['gpt-4o-mini'], priority: 5, expires_at: soon }], // ties the gpt-4o* lot's expiry
  ];
  for (const [amount, kind, lot] of lots) {
    const r = await grantLot(id, amount, kind, lot);
    assert.equal(r.status, 201, r.text);
  }
  const books = new Books(await accountOf(id));
  await books.sync();
  const models = ['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5', 'text-embedding-3-small'];
  const next = random(20261125);
  const pick = async () => {
    const m = models[Math.floor(next() * models.length)];
    return [m, await tokensFor(m, 0.5 + next() * 24)] as [string, number];
  };

  // One charge at a time, and now and then a batch of three.
  for (let i = 0; i < 24; i++) {
    if (i % 6 === 5) await batch(books, id, [await pick(), await pick(), await pick()], `batch ${i}`);
    else await charge(books, token, ...(await pick()), `charge ${i}`);
  }

  // Refill, then the gpt-4o* lot reaches its expiry: the next charge expires it first, and no
  // charge draws it again.
  for (const [amount, kind, lot] of lots) assert.equal((await grantLot(id, amount, kind, lot)).status, 201);
  await books.sync();
  const [due] = await testDb`select l.id::text from billing.lots l where l.account_id = ${String(books.account)}
    and l.applies_to = '{gpt-4o*}' and l.remaining > 0 order by l.id limit 1`;
  const gone = books.lots.get(BigInt(due.id))!;
  const left = gone.remaining;
  await backdateLot(due.id);
  gone.expires = BigInt(Date.now() - 1000) * 1000n;
  gone.remaining = 0n;
  await charge(books, token, 'gpt-4o-mini', await tokensFor('gpt-4o-mini', 3), 'the charge after the expiry');
  const [expiry] = await testDb`select trim_scale(sum(x.amount))::text as a from billing.lot_allocations x
    where x.lot_id = ${due.id} and x.kind = 'expiry'`;
  assert.equal(expiry.a, show(left), 'what was left of the due lot expired, all of it');
  for (let i = 0; i < 6; i++) await charge(books, token, ...(await pick()), `after the expiry ${i}`);

  // A student's own hold (for no model) live while charges come: it keeps credits for any model.
  assert.equal((await grantLot(id, '40', 'promo_grant')).status, 201);
  await books.sync();
  const hold = await api('/credits/holds', { token, headers: key(), body: { amount: '25', ttl_seconds: 600 } });
  assert.equal(hold.status, 201, hold.text);
  books.reserve(units('25'));
  for (let i = 0; i < 8; i++) await charge(books, token, ...(await pick()), `beside a hold ${i}`);
  const captured = await api(`/credits/holds/${(hold.body.data as { hold_id: string }).hold_id}/capture`, {
    token,
    headers: key(),
    body: { amount: '10' },
  });
  assert.equal(captured.status, 200, captured.text);
  const cap = books.capture(units('10'));
  const drawn = await drawnBy((captured.body.data as { transfer_id: string }).transfer_id);
  assert.ok(same(drawn, cap), `the capture drew ${fmt(drawn)}, not ${fmt(cap)} (what the hold reserved)`);
  books.apply(cap);
  await books.agree('after the capture');

  // Charges racing: usage reports and two batches at once on the one account.
  for (const [amount, kind, lot] of lots) assert.equal((await grantLot(id, amount, kind, lot)).status, 201);
  await books.sync();
  const work: [string, number][] = [];
  for (let i = 0; i < 24; i++) work.push(await pick());
  assert.ok((await race(books, id, token, work, 'the race')) > 0, 'some raced charges went through');

  // A purchase, spent on a model no list names, refunded: the reversal takes back the purchase's
  // lot and credits for any model, never credits for some models; what they lack is debt.
  for (const [amount, kind, lot] of lots) {
    if (lot.applies_to) assert.equal((await grantLot(id, amount, kind, lot)).status, 201);
  }
  const bought = await buy(token, 'starter');
  await books.sync();
  const restrictedBefore = books.open().filter((l) => l.list !== null).reduce((s, l) => s + l.remaining, 0n);
  const anyLeft = books.open().filter((l) => l.list === null).reduce((s, l) => s + l.remaining, 0n);
  // The purchase is spent last (paid, granted last): leave of it what makes the debt half the
  // credits for some models, so some of them can still be spent beside it.
  const keep = units('9990') - restrictedBefore / 2n;
  await charge(books, token, spare, Number((anyLeft - keep) / 10n ** 15n), 'spending the purchase');
  const refund = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: bought.purchase_id },
  });
  assert.equal(refund.status, 202, refund.text);
  // The refund's reversals (the purchase's own lots, then what the buyer owes: docs/credit-lots.md
  // § Refunds, disputes and debt 1-2), once written.
  const reversals = await until(
    'the reversal',
    async () => {
      const rs = await testDb`select id::text, trim_scale(amount)::text as amount from billing.transfers
        where from_account_id = ${String(books.account)} and kind = 'refund_reversal' order by id`;
      return rs.length > 0 && rs;
    },
  );
  const took = new Map<bigint, bigint>();
  let reversed = 0n;
  for (const r of reversals) {
    const [{ touched }] = await testDb`select count(*)::int as touched from billing.lot_allocations x
      join billing.lots l on l.id = x.lot_id where x.transfer_id = ${r.id} and l.applies_to is not null`;
    assert.equal(touched, 0, 'the refund took no credit for some models');
    for (const [lot, t] of await drawnBy(r.id)) took.set(lot, (took.get(lot) ?? 0n) + t);
    reversed += units(r.amount);
  }
  books.apply(took);
  books.debt = reversed - [...took.values()].reduce((s, t) => s + t, 0n);
  assert.ok(books.debt > 0n, 'the refund left a debt');
  assert.equal(
    books.open().filter((l) => l.list !== null).reduce((s, l) => s + l.remaining, 0n),
    restrictedBefore,
    'the credits for some models are all there',
  );
  await books.agree('after the refund');
  const [bal] = await testDb`select trim_scale(balance)::text as b from billing.accounts where id = ${
    String(books.account)
  }`;
  assert.equal(
    bal.b,
    show(books.open().reduce((s, l) => s + l.remaining, 0n) - books.debt),
    'the balance nets the debt',
  );
  // Beside the debt: as far as the balance goes, each model only on its lots.
  for (let i = 0; i < 10; i++) await charge(books, token, ...(await pick()), `beside the debt ${i}`);

  // At the edge, for each model: one token more than its lots hold is refused, naming the credits
  // that may not pay for it; what they hold is paid by them.
  for (const [amount, kind, lot] of lots) {
    if (lot.applies_to) assert.equal((await grantLot(id, amount, kind, lot)).status, 201);
  }
  await books.sync();
  const paid = books.debt + units('5');
  const grant = await grantLot(id, show(paid), 'adjustment'); // pays the debt first
  assert.equal(grant.status, 201, grant.text);
  const settled = min(books.debt, paid);
  books.debt -= settled;
  const before = new Set(books.lots.keys());
  await books.sync();
  const fresh = [...books.lots.values()].filter((l) => !before.has(l.id));
  assert.deepEqual(fresh.map((l) => show(l.remaining)), [show(paid - settled)], 'the grant paid the debt first');
  for (const m of [...models, spare]) {
    const price = await priceOf(m, 1);
    const paying = books.open().filter((l) => paysFor(l.list, m)).reduce((s, l) => s + l.remaining, 0n);
    const tokens = Number(paying / price);
    await charge(books, token, m, tokens + 1, `one token past what may pay for ${m}`);
    if (tokens > 0) await charge(books, token, m, tokens, `all that may pay for ${m}`);
  }

  assert.equal(await misdrawn(books.account), 0, 'billing.lot_pays_for agrees with every allocation');
  await assertLedgerInvariants();
});

Deno.test('names that are prefixes of each other: a lot for `a` pays for neither `a-mini` nor `ax`; `a-mini*` not for `a`; `a*` for all', async () => {
  const [a, mini, mini2, ax] = await prefixModels();
  const id = await newUser();
  const token = await userToken(id);
  const lists = [[a], [mini], [`${mini}*`], [`${a}*`], [mini2, ax], [`${mini}-*`]];
  for (const [i, list] of lists.entries()) {
    const r = await grantLot(id, String(3 + i), 'promo_grant', { applies_to: list, priority: 6 - i });
    assert.equal(r.status, 201, `${JSON.stringify(list)}: ${r.text}`);
  }
  assert.equal((await grantLot(id, '4', 'adjustment', { priority: 500 })).status, 201); // any model, spent last
  const books = new Books(await accountOf(id));
  await books.sync();
  const next = random(7);
  for (let i = 0; i < 30; i++) {
    const m = [a, mini, mini2, ax][Math.floor(next() * 4)];
    await charge(books, token, m, 100 + Math.floor(next() * 2500), `charge ${i}`);
  }
  for (const m of [a, mini, mini2, ax]) {
    const paying = books.open().filter((l) => paysFor(l.list, m)).reduce((s, l) => s + l.remaining, 0n);
    const tokens = Number(paying / (await priceOf(m, 1)));
    await charge(books, token, m, tokens + 1, `one token past what may pay for ${m}`);
    if (tokens > 0) await charge(books, token, m, tokens, `all that may pay for ${m}`);
  }
  assert.equal(await misdrawn(books.account), 0, 'billing.lot_pays_for agrees with every allocation');
  await assertLedgerInvariants();
});

Deno.test("a school member's charges on a pool with credits for some models draw, in spending order, only what may pay", async () => {
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'pool', null);
  await orgGrant(org, '90', 'adjustment', ['gpt-4o']);
  await orgGrant(org, '75', 'promo_grant', ['gpt-4o-mini*']);
  await orgGrant(org, '60', 'promo_grant', ['gpt-4o*']);
  await orgGrant(org, '45', 'promo_grant', ['claude*']);
  await orgGrant(org, '120', 'adjustment');
  const [wallet] = await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const books = new Books(BigInt(wallet.id));
  await books.sync();
  const models = ['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5'];
  const next = random(42);
  for (let i = 0; i < 24; i++) {
    const m = models[Math.floor(next() * models.length)];
    const who = next() < 0.5 ? ada : bob;
    await charge(books, who.token, m, await tokensFor(m, 1 + next() * 20), `charge ${i}`, true);
  }
  assert.equal(await misdrawn(books.account), 0, 'billing.lot_pays_for agrees with every allocation');
  await assertLedgerInvariants();
});

Deno.test('gateway calls for gpt-4o and gpt-4o-mini racing usage reports never draw a lot that may not pay for their model', async () => {
  const id = await newUser();
  const token = await userToken(id);
  for (
    const [amount, lot] of [
      ['40', { applies_to: ['gpt-4o'], priority: 0 }],
      ['40', { applies_to: ['gpt-4o-mini*'], priority: 0 }],
      ['40', { applies_to: ['claude*'], priority: 0 }],
      ['30', { applies_to: ['gpt-4o*'], priority: 1 }],
      ['20', {}],
    ] as [string, Record<string, unknown>][]
  ) assert.equal((await grantLot(id, amount, 'promo_grant', lot)).status, 201);
  const calls = Array.from({ length: 8 }, (_, i) =>
    api('/ai/v1/chat/completions', {
      token,
      body: {
        model: i % 2 ? 'gpt-4o' : 'gpt-4o-mini',
        messages: [{ role: 'user', content: `#standin words=30 first_byte_delay=${200 * i}` }],
        max_tokens: 60,
      },
    }));
  const reports = Array.from({ length: 8 }, (_, i) =>
    reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: ['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5'][i % 3], input_tokens: 20_000, output_tokens: 0 },
    }));
  for (const r of await Promise.all([...calls, ...reports])) {
    assert.ok(r.status < 500, `no answer is a server error: ${r.status} ${r.text}`);
  }
  const account = await accountOf(id);
  assert.equal(await misdrawn(account), 0, 'no credit paid for a model its lot may not pay for');
  const [short] = await testDb`select count(*)::int as n from billing.transfers t
    where t.from_account_id = ${String(account)} and t.amount <> (select coalesce(sum(x.amount), 0)
      from billing.lot_allocations x where x.transfer_id = t.id)`;
  assert.equal(short.n, 0, 'every charge drew its whole amount from lots');
  await assertLedgerInvariants();
});

Deno.test('while a purchase is disputed its buyer spends nothing (403) and no hold is placed; won, charges for a model draw in spending order again', async () => {
  const [spare] = await prefixModels();
  const id = await newUser();
  const token = await userToken(id);
  for (
    const [amount, lot] of [
      ['30', { applies_to: ['gpt-4o'], priority: 0 }],
      ['30', { applies_to: ['gpt-4o-mini*'], priority: 25 }], // after the purchase (paid: 20)
      ['30', { applies_to: ['gpt-4o*'], priority: 15 }],
      ['30', {}],
      ['30', { applies_to: ['claude*'], priority: 1 }], // first in order, pays for none of these models
    ] as [string, Record<string, unknown>][]
  ) assert.equal((await grantLot(id, amount, 'promo_grant', lot)).status, 201);
  const bought = await buy(token, 'starter');
  const books = new Books(await accountOf(id));
  await books.sync();
  const models = ['gpt-4o', 'gpt-4o-mini', spare];
  const next = random(99);
  const pick = async () => {
    const m = models[Math.floor(next() * models.length)];
    return [m, await tokensFor(m, 0.5 + next() * 16)] as [string, number];
  };

  // The dispute freezes the purchase's lot where it is and suspends its buyer: every charge is
  // 403 ACCOUNT_DISPUTED and draws nothing (docs/credit-lots.md § Refunds, disputes and debt 3-4).
  const stripeCharge = await chargeOf(bought.session_id);
  await emulator(`/_emulator/charges/${stripeCharge}/dispute`, { outcome: 'open' });
  await until('the lot frozen', async () => {
    await books.refresh();
    return books.open().some((l) => l.frozen);
  });
  assert.equal(books.held, 0n, 'no hold is placed for a dispute');
  for (let i = 0; i < 4; i++) {
    const [m, tokens] = await pick();
    const r = await reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: m, input_tokens: tokens, output_tokens: 0 },
    });
    assert.deepEqual([r.status, errorOf(r)?.code], [403, 'ACCOUNT_DISPUTED'], r.text);
  }
  await books.agree('during the dispute');

  await emulator(`/_emulator/charges/${stripeCharge}/dispute`, { outcome: 'won' });
  await until('the lot thawed', async () => {
    await books.refresh();
    return !books.open().some((l) => l.frozen);
  });
  for (let i = 0; i < 12; i++) await charge(books, token, ...(await pick()), `after the dispute ${i}`);
  assert.equal(await misdrawn(books.account), 0, 'billing.lot_pays_for agrees with every allocation');
  await assertLedgerInvariants();
});
