// Credits for some models as sub-accounts (billing.sub_accounts) and today's lots tail
// (billing.lots_tail), attacked with students' and school members' tokens: usage, gateway calls,
// holds, captures, promo codes for some models redeemed at once, sponsor codes, allowances, a
// member's removal, voids, expiry, a lost dispute and a refund racing the spending. After each:
// every sub-account holds exactly what its list's open lots hold (summed here, and by
// billing.check_lots), with exact figures; and today's tail read from what the writer kept equals
// the same read from the raw rows, in one snapshot. Setup uses an admin's grants; the usage reports
// are the product's server's (reportUsage), as the product sends them.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { api, assertLedgerInvariants, backdateLot, env, key, reportUsage, testDb } from '../support/helpers.ts';
import { gatewayUrl } from '../support/ai.ts';
import { promo, redeem } from '../support/codes.ts';
import { grantLot, models, orgGrant } from '../support/lots.ts';
import { dataOf, sweep, voidCharge } from '../support/money.ts';
import { person, school } from '../support/orgs.ts';
import { chargeOf, emulator, pays } from '../support/purchases.ts';
import { subscribeTo } from '../support/plans.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ============================================================ helpers

/** Input tokens of `model` that cost exactly one credit (models() cards: $1 a million input). */
async function oneCredit(model: string): Promise<number> {
  for (const n of [250, 50, 500, 1000]) {
    const [r] = await testDb`select trim_scale((billing.price_usage(${model}, ${n}, 0)).amount)::text as p`;
    if (r.p === '1') return n;
  }
  throw new Error(`no token count costs one credit on ${model}`);
}

/** POST /credits/usage as the product's server, for the token's user, under `k`. */
const use = (token: string, model: string, tokens: number, k = crypto.randomUUID()) =>
  reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': k },
    body: { model, input_tokens: tokens, output_tokens: 0 },
  });

/** One chat completion through the metered gateway (non-streamed). */
const chat = (token: string, model: string, k = crypto.randomUUID()) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': k },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi #standin words=8' }], max_tokens: 32 }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));

/** The user's own account id. */
const accountOf = async (user: string) =>
  (await testDb`select id::text from billing.accounts where user_id = ${user}`)[0].id as string;

/** An organisation's accounts (wallet, allowances, its codes' escrows). */
const orgAccounts = async (org: string) =>
  (await testDb`select a.id::text from billing.accounts a where a.org_id = ${org}
    or a.code_id in (select c.id from billing.codes c where c.org_id = ${org})`).map((r) => r.id as string);

/**
 * The sub-accounts of `accounts` against the per-list sums of their open lots worked out here:
 * the rows that differ (a list held with no row, a row holding what its lots do not), and each
 * list's balance as `account:list` → credits.
 */
async function subAccounts(accounts: string[]) {
  const rows = await testDb`
    with mine as (select l.account_id, l.applies_to, sum(l.remaining) as remaining from billing.lots l
                  where l.account_id = any(${accounts}::bigint[]) and l.applies_to is not null and l.remaining > 0
                  group by 1, 2)
    select coalesce(s.account_id, m.account_id)::text as account, array_to_string(coalesce(s.applies_to, m.applies_to), ',') as list,
      trim_scale(s.balance)::text as kept, trim_scale(coalesce(m.remaining, 0))::text as summed
    from (select * from billing.sub_accounts where account_id = any(${accounts}::bigint[])) s
    full join mine m on m.account_id = s.account_id and m.applies_to = s.applies_to`;
  const off = rows.filter((r) => r.kept !== r.summed);
  const balances = Object.fromEntries(rows.map((r) => [`${r.account}:${r.list}`, r.kept ?? 'none']));
  return { off, balances };
}

/** billing.check_lots() names no drifted sub-account, and the ledger's invariants hold. */
async function noDrift() {
  const [{ c }] = await testDb`select billing.check_lots() -> 'sub_accounts' as c`;
  assert.deepEqual(c, [], `check_lots: drifted sub-accounts ${JSON.stringify(c)}`);
  await assertLedgerInvariants();
}

/** `fn` on a connection of its own (a repeatable-read snapshot, the roll-up as pg_cron runs it), closed after. */
async function own<T>(fn: (db: postgres.Sql) => Promise<T>): Promise<T> {
  const db = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  try {
    return await fn(db);
  } finally {
    await db.end();
  }
}

/** Today rolled up as the minute job does, past the instant the writer began keeping the tail. */
async function rollUp() {
  const [{ since }] = await testDb`select since from billing.ledger_tail_kept`;
  await sleep(Math.max(0, since.getTime() + 2100 - Date.now()));
  await own((db) => db`select billing.roll_up_ledger('1 day')`);
}

type Part = { currency: string; category: string; kind: string; source: string | null; credits: string; cents: string };
type CreditPart = { kind: string; model: string | null; amount: string; events: number };

/**
 * Today's tail from the roll-up's watermark (a whole second), read in one repeatable-read snapshot
 * from what the writer kept and from the raw rows: the lots part and the credits part, each sorted.
 */
async function tail() {
  const [r] = await own((db) =>
    db.begin('isolation level repeatable read', (tx) =>
      tx`
    with d as (select (now() at time zone 'UTC')::date as today),
    w as (select (d.today + 1)::timestamp at time zone 'UTC' as day_end,
            coalesce(r.ledger_until, d.today::timestamp at time zone 'UTC') as w
          from d left join billing.revenue_rollup r on r.day = d.today and r.ledger_until > d.today::timestamp at time zone 'UTC')
    select billing.ledger_tail_readable(w.w, w.day_end) as readable, w.w as watermark,
      p.lots as kept_lots, q.lots as raw_lots, p.credits as kept_credits, q.credits as raw_credits
    from w, billing.ledger_parts(w.w, w.day_end, true) p, billing.ledger_parts(w.w, w.day_end, false) q`)
  );
  // Numbers as exact text (trim_scale), rows sorted, so equal parts compare equal.
  const lots = (x: Part[]) => x.map((p) => ({ ...p, credits: trim(p.credits), cents: trim(p.cents) })).sort(byText);
  const credits = (x: CreditPart[]) => x.map((p) => ({ ...p, amount: trim(p.amount) })).sort(byText);
  return {
    readable: r.readable as boolean,
    watermark: r.watermark as Date,
    keptLots: lots(r.kept_lots),
    rawLots: lots(r.raw_lots),
    keptCredits: credits(r.kept_credits),
    rawCredits: credits(r.raw_credits),
  };
}
const trim = (n: unknown) => {
  const s = String(n);
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
};
const byText = (a: unknown, b: unknown) => JSON.stringify(a) < JSON.stringify(b) ? -1 : 1;

/** Today's tail read from what the writer kept equals the raw rows (lots and credits parts). */
async function tailIsRaw(what: string) {
  const t = await tail();
  assert.equal(t.readable, true, `${what}: today's tail is read from what the writer kept`);
  assert.deepEqual(t.keptLots, t.rawLots, `${what}: the lots part kept by the writer equals the allocations'`);
  assert.deepEqual(t.keptCredits, t.rawCredits, `${what}: the credits part kept by the writer equals the transfers'`);
  return t;
}

/** The tail's lots part credits for one (category, kind, source), as exact text ('0' when none). */
const lotsCredits = (t: Awaited<ReturnType<typeof tail>>, category: string, kind: string, source: string | null) =>
  trim(
    t.keptLots.filter((p) => p.category === category && p.kind === kind && p.source === source && p.currency === 'usd')
      .reduce((s, p) => s + Number(p.credits), 0),
  );

// ============================================================ a student's credits for two lists

Deno.test("a student's credits for two model lists, spent on every road at once, voided and expired: each sub-account holds exactly its lots", async () => {
  await rollUp();
  const [mA, mB] = await models(2);
  const [one, oneB] = [await oneCredit(mA), await oneCredit(mB)];
  const [s, t, u] = await Promise.all(['sally', 'tom', 'uma'].map(person));
  assert.equal((await grantLot(s.id, '40', 'promo_grant', { applies_to: [mA] })).status, 201);
  assert.equal((await grantLot(s.id, '30', 'adjustment', { applies_to: [mB] })).status, 201);
  const code = await promo({ credits: '25', max_redemptions: 2, applies_to: [mA] });
  const before = await tail();

  // All at once: the student redeems the code six times (two under one key) while two others race
  // for its last redemption; 30 one-credit reports on mA (each sent twice under its key), 20 on
  // mB; gateway calls on mA and mB; holds of no model (refused: nothing here pays for any model);
  // a report for a model no list names (refused).
  const k = crypto.randomUUID();
  const keysA = Array.from({ length: 30 }, () => crypto.randomUUID());
  const results = await Promise.all([
    ...[redeem(s.token, code.code, k), redeem(s.token, code.code, k)],
    ...Array.from({ length: 4 }, () => redeem(s.token, code.code)),
    redeem(t.token, code.code),
    redeem(u.token, code.code),
    ...keysA.flatMap((x) => [use(s.token, mA, one, x), use(s.token, mA, one, x)]),
    ...Array.from({ length: 20 }, () => use(s.token, mB, oneB)),
    ...Array.from({ length: 3 }, () => chat(s.token, mA)),
    ...Array.from({ length: 3 }, () => chat(s.token, mB)),
    ...Array.from(
      { length: 3 },
      () => api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1', ttl_seconds: 600 } }),
    ),
    use(s.token, 'gpt-4o', 50),
  ]);
  const statuses = results.map((r) => r.status);
  const redeemed = statuses.slice(0, 6).filter((x) => x === 201 || x === 200).length;
  assert.ok(redeemed >= 1, `the student redeemed the code: ${statuses.slice(0, 6)}`);
  assert.deepEqual(statuses.slice(94, 98), [402, 402, 402, 402], 'holds of no model and gpt-4o refused');
  const acct = await accountOf(s.id);
  const [g] = await testDb`select
      (select count(*)::int from billing.lots l where l.account_id = ${acct} and l.origin = 'promo_code') as codes,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${s.id} and c.model = ${mA}) as chat_a,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${s.id} and c.model = ${mB}) as chat_b,
      (select count(*)::int from billing.transfers x where x.from_account_id = ${acct} and x.kind = 'usage'
         and x.rate_card_id in (select id from billing.rate_cards where model = ${mA})) as used_a,
      (select count(*)::int from billing.transfers x where x.from_account_id = ${acct} and x.kind = 'usage'
         and x.rate_card_id in (select id from billing.rate_cards where model = ${mB})) as used_b`;
  assert.equal(g.codes, 1, 'one redemption of the code landed on the student, however many were sent');
  assert.equal(g.used_a, 30, '30 reports on mA, each once');
  assert.equal(g.used_b, 20, '20 reports on mB');
  const a0 = 40 + 25 - 30 - Number(g.chat_a), b0 = 30 - 20 - Number(g.chat_b);
  let sub = await subAccounts([acct]);
  assert.deepEqual(sub.off, [], 'every sub-account holds what its lots hold');
  assert.equal(sub.balances[`${acct}:${mA}`], String(a0), 'mA: 40 + 25 − 30 − the gateway calls');
  assert.equal(sub.balances[`${acct}:${mB}`], String(b0), 'mB: 30 − 20 − the gateway calls');
  await noDrift();

  // Five of the mA charges voided at once (each twice): they come back to mA's lots.
  const charges = await testDb`select id::text from billing.transfers where from_account_id = ${acct} and kind = 'usage'
    and rate_card_id in (select id from billing.rate_cards where model = ${mA}) order by id limit 5`;
  const voids = await Promise.all(charges.flatMap((c) => [voidCharge(c.id), voidCharge(c.id)]));
  assert.ok(voids.every((v) => v.status === 200 || v.status === 409), voids.map((v) => v.text).join(' '));
  sub = await subAccounts([acct]);
  assert.deepEqual(sub.off, []);
  assert.equal(sub.balances[`${acct}:${mA}`], String(a0 + 5), 'five voided charges came back to mA');

  // mB's lot expires while the student spends it: sweep racing usage on mB.
  const [lotB] = await testDb`select id::text from billing.lots where account_id = ${acct} and applies_to = ${[
    mB,
  ]}::text[]
    and moved_from is null`;
  await backdateLot(lotB.id);
  const raced = await Promise.all([sweep(), use(s.token, mB, oneB), use(s.token, mB, oneB), sweep()]);
  const spentB = raced.slice(1, 3).filter((r) => (r as { status: number }).status === 201).length;
  assert.equal(spentB, 0, 'an expired lot pays for nothing');
  sub = await subAccounts([acct]);
  assert.deepEqual(sub.off, []);
  assert.equal(sub.balances[`${acct}:${mB}`], '0', "mB's credits expired");
  await noDrift();

  // Today's tail: equal to the raw rows; the usage reports drew 50 promotional credits (30 on mA,
  // 20 on mB, replays none), some from the code's lot (under its origin), the rest from the grants.
  const after = await tailIsRaw('a student');
  const delta = (source: string | null) =>
    Number(lotsCredits(after, 'promotional', 'usage', source)) -
    Number(lotsCredits(before, 'promotional', 'usage', source));
  assert.equal(delta(null) + delta('promo_code'), 50, 'the usage drawn from lots: 30 on mA and 20 on mB');
  const [fromCode] =
    await testDb`select trim_scale(coalesce(sum(a.amount), 0))::text as n from billing.lot_allocations a
    join billing.lots l on l.id = a.lot_id where l.account_id = ${acct} and l.origin = 'promo_code' and a.kind = 'usage'`;
  assert.equal(String(delta('promo_code')), fromCode.n, "the code's lot's draws are under its origin");
});

// ============================================================ a school's members, a lost dispute

Deno.test("a school's credits for one model spent by members while one is removed, a sponsor code redeemed at once and a member's purchase lost to a chargeback: no sub-account drifts", async () => {
  await rollUp();
  const [mA] = await models(1);
  const one = await oneCredit(mA);
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'allowance', null);
  await orgGrant(org, '500', 'adjustment', [mA]); // the course's credits
  await orgGrant(org, '200', 'adjustment'); // and some for anything
  const bought = await pays(ada.token, { package_id: 'mini' }); // 5,000 of her own, paid
  for (const [m, amount] of [[ada, '150'], [bob, '100']] as const) {
    const r = await api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { user_id: m.id, amount, applies_to: [mA] },
    });
    assert.equal(r.status, 201, r.text);
  }
  const sp = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '25', user_id: ada.id },
  });
  assert.equal(sp.status, 201, sp.text);
  const code = dataOf(sp).code as string;
  const allowanceOf = async (user: string) =>
    (await testDb`select id::text from billing.accounts where org_id = ${org} and member_id = ${user}`)[0].id as string;
  const [adaAllowance, bobAllowance] = [await allowanceOf(ada.id), await allowanceOf(bob.id)];

  // All at once: both members spend the course's credits (reports and gateway calls), Ada spends
  // her own on gpt-4o, redeems the sponsor code four times, her bank's chargeback is lost, and the
  // owner removes Bob (his allowance swept back to the wallet) while his calls are in flight.
  const bobs = [
    ...Array.from({ length: 10 }, () => use(bob.token, mA, one)),
    ...Array.from({ length: 4 }, () => chat(bob.token, mA)),
  ];
  const results = await Promise.all([
    ...Array.from({ length: 20 }, () => use(ada.token, mA, one)),
    ...Array.from({ length: 5 }, () => chat(ada.token, mA)),
    ...Array.from({ length: 20 }, () => use(ada.token, 'gpt-4o', 50)),
    ...Array.from({ length: 4 }, () => redeem(ada.token, code)),
    ...bobs,
    (async () => {
      await sleep(30);
      await emulator(`/_emulator/charges/${await chargeOf(bought)}/dispute`, { outcome: 'lost' });
      return { status: 0, text: '' };
    })(),
    (async () => {
      await sleep(20);
      return await api(`/orgs/${org}/members/${bob.id}`, { method: 'DELETE', token: owner.token });
    })(),
  ]);
  const removed = results[results.length - 1];
  assert.equal(removed.status, 200, removed.text);
  // What Bob's calls held and did not use came back to his allowance after the removal's sweep:
  // pg_cron's sweep of allowances nobody spends from brings it to the wallet.
  await testDb`select billing.sweep_ended_terms(100)`;
  const accounts = [...await orgAccounts(org), await accountOf(ada.id), await accountOf(bob.id)];
  let sub = await subAccounts(accounts);
  assert.deepEqual(sub.off, [], 'every sub-account holds what its lots hold');
  // Ada's allowance: 150 for mA, less exactly what was debited from it.
  const [x] = await testDb`select trim_scale(150 - coalesce(sum(amount), 0))::text as left from billing.transfers
    where from_account_id = ${adaAllowance}`;
  assert.equal(sub.balances[`${adaAllowance}:${mA}`], x.left, "Ada's allowance: 150 less what it paid");
  const [bobLeft] =
    await testDb`select trim_scale(balance)::text as b, trim_scale(held)::text as h from billing.accounts where id = ${bobAllowance}`;
  assert.deepEqual(bobLeft, { b: '0', h: '0' }, "Bob's allowance is empty");
  assert.ok(
    ['0', 'none'].includes(sub.balances[`${bobAllowance}:${mA}`] ?? 'none'),
    `Bob's allowance was swept back: ${JSON.stringify(sub.balances)} ${JSON.stringify(bobLeft)}`,
  );
  await noDrift();

  // Ada pays her debt with a new purchase while she spends the course's credits again.
  const own = await accountOf(ada.id);
  const [debt] =
    await testDb`select billing.in_debt(a) as owes, trim_scale(a.balance)::text as b from billing.accounts a where a.id = ${own}`;
  await Promise.all([
    pays(ada.token, { package_id: 'mini' }),
    ...Array.from({ length: 5 }, () => use(ada.token, mA, one)),
  ]);
  const [paid] = await testDb`select billing.in_debt(a) as owes, trim_scale(a.balance)::text as b,
      trim_scale(a.balance - coalesce((select sum(s.balance) from billing.sub_accounts s where s.account_id = a.id), 0))::text as any_model,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.applies_to is null), 0))::text as any_lots
    from billing.accounts a where a.id = ${own}`;
  assert.equal(paid.owes, false, `the purchase paid Ada's debt (was ${debt.b}, in debt ${debt.owes})`);
  assert.equal(paid.any_model, paid.any_lots, 'what is for any model is the balance beyond the sub-accounts');
  sub = await subAccounts(accounts);
  assert.deepEqual(sub.off, []);
  await noDrift();
  await tailIsRaw('a school');
});

// ============================================================ the tail's origins, exactly

Deno.test("plan credits, a promo code's and a batch spent at once, with holds captured and released: today's tail equals the raw rows, each origin exact", async () => {
  await rollUp();
  const [sub, p] = await Promise.all(['subscriber', 'redeemer'].map(person));
  await subscribeTo(sub.token, 'basic_monthly'); // 10,000 plan credits (paid, origin plan)
  const code = await promo({ credits: '30', max_redemptions: 5 });
  const r = await redeem(p.token, code.code);
  assert.equal(r.status, 200, r.text);
  const before = await tail();

  const hold = (amount: string) =>
    api('/credits/holds', { token: sub.token, headers: key(), body: { amount, ttl_seconds: 600 } });
  const events = Array.from({ length: 10 }, (_, i) => ({
    event_id: `b${i}`,
    user_id: p.id,
    model: 'gpt-4o',
    input_tokens: 50,
    output_tokens: 0,
    occurred_at: new Date().toISOString(),
  }));
  const batchOnce = () => api('/credits/usage/batch', { token: env('SUPABASE_SERVICE_ROLE_KEY'), body: { events } });
  const [holds] = await Promise.all([
    Promise.all([hold('5'), hold('5'), hold('4')]),
    ...Array.from({ length: 10 }, () => use(sub.token, 'gpt-4o', 50)),
    ...Array.from({ length: 2 }, () => chat(sub.token, 'gpt-4o-mini')),
    ...Array.from({ length: 12 }, () => use(p.token, 'gpt-4o', 50)),
    batchOnce(),
    batchOnce(),
  ]);
  for (const h of holds) assert.equal(h.status, 201, h.text);
  const ids = holds.map((h) => dataOf(h).hold_id);
  const ends = await Promise.all([
    api(`/credits/holds/${ids[0]}/capture`, { token: sub.token, headers: key(), body: { amount: '3' } }),
    api(`/credits/holds/${ids[1]}/capture`, { token: sub.token, headers: key(), body: {} }),
    api(`/credits/holds/${ids[2]}/release`, { token: sub.token, headers: key(), body: {} }),
  ]);
  for (const e of ends) assert.ok(e.status === 200 || e.status === 201, e.text);

  const after = await tailIsRaw('plans and codes');
  const delta = (category: string, kind: string, source: string | null) =>
    String(Number(lotsCredits(after, category, kind, source)) - Number(lotsCredits(before, category, kind, source)));
  const [chats] =
    await testDb`select trim_scale(coalesce(sum(charged), 0))::text as n from billing.ai_calls where user_id = ${sub.id}`;
  assert.equal(delta('paid', 'usage', 'plan'), '10', "ten reports drew 10 of the plan's credits");
  assert.equal(
    delta('paid', 'hold_capture', 'plan'),
    String(3 + 5 + Number(chats.n)),
    "captures drew 8 and the gateway's calls their price from the plan's credits",
  );
  assert.equal(
    delta('promotional', 'usage', 'promo_code'),
    '22',
    "12 reports and a batch of 10 drew 22 of the code's 30",
  );
  await assertLedgerInvariants();
});

// ============================================================ voids paying a debt beside credits for one model

Deno.test("voids raced while a refund left a student in debt beside credits for one model pay the debt first: the tail's debt_settled_by_return is exact", async () => {
  await rollUp();
  const [mA] = await models(1);
  const s = await person('debtor');
  const session = await pays(s.token, { package_id: 'mini' }); // 5,000 paid, for anything
  assert.equal((await grantLot(s.id, '10', 'promo_grant', { applies_to: [mA] })).status, 201);
  const spent = await Promise.all(Array.from({ length: 30 }, () => use(s.token, 'gpt-4o', 50)));
  for (const r of spent) assert.equal(r.status, 201, r.text);
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, {}); // the whole 5,000 back: 30 owed
  const acct = await accountOf(s.id);
  const [owed] =
    await testDb`select billing.in_debt(a) as owes, trim_scale(a.balance)::text as b from billing.accounts a where a.id = ${acct}`;
  assert.deepEqual(owed, { owes: true, b: '-20' }, 'the 30 spent are owed beside the 10 for mA');
  const before = await tail();

  // Five charges voided at once, each twice, while the student tries mA: the give-backs pay the debt.
  const ids = spent.slice(0, 5).map((r) => dataOf(r).transfer_id as string);
  await Promise.all([...ids.flatMap((id) => [voidCharge(id), voidCharge(id)]), use(s.token, mA, await oneCredit(mA))]);
  const [x] =
    await testDb`select billing.in_debt(a) as owes, trim_scale(a.balance)::text as b from billing.accounts a where a.id = ${acct}`;
  const sub = await subAccounts([acct]);
  assert.deepEqual(sub.off, []);
  assert.equal(sub.balances[`${acct}:${mA}`], '10', 'a debt is never paid from credits for one model');
  assert.deepEqual(x, { owes: true, b: '-15' }, '25 owed now beside the 10 for mA');
  await noDrift();
  const after = await tailIsRaw('voids paying a debt');
  assert.equal(
    String(
      Number(lotsCredits(after, 'paid', 'debt_settled_by_return', null)) -
        Number(lotsCredits(before, 'paid', 'debt_settled_by_return', null)),
    ),
    '5',
    'the five credits given back paid the debt',
  );
});
