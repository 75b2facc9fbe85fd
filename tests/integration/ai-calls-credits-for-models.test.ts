// Credits for some models (docs/credit-lots.md § Credits for some models) under the AI gateway's
// money lifecycle (docs/ai-gateway.md), attacked with what a student or a school member holds:
// their tokens, the public routes and the official SDKs. The database only plays the clock and
// pg_cron (backdated expiries, the hold and call sweeps), Stripe and the operator (a refund, a
// dispute, an admin's grant), and is read for the assertions. Each attack checks that no credit
// paid for a model its lot may not pay for, every call was charged the rate card's whole price of
// what the provider reported (what it cost past its hold charged at once, from free credits for its
// model, then frozen ones, the rest as debt), every refusal says the right thing, and the ledger's
// invariants.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, gatewayUrl, priceOf, type ReportedUsage, standinCall } from '../support/ai.ts';
import {
  api,
  assertLedgerInvariants,
  backdateLot,
  key,
  newUser,
  spawnGateway,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { grantLot, models, orgGrant } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';
import { promo, redeem } from '../support/codes.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const client = (token: string, base = gatewayUrl) => new OpenAI({ baseURL: base, apiKey: token, maxRetries: 0 });
type Details = Record<string, unknown>;

/** One call's outcome as the student saw it. */
type Outcome =
  | { model: string; tag: string; ok: true; cost: string }
  | { model: string; tag: string; ok: false; status: number; code?: string; details: Details };

/** A chat call through the official SDK, streamed or whole, tagged so the stand-in tells what it billed. */
async function fire(
  openai: OpenAI,
  model: string,
  opts: { words?: number; delay?: number; extra?: number; maxTokens?: number; stream?: boolean } = {},
): Promise<Outcome> {
  const tag = crypto.randomUUID().replaceAll('-', '');
  const directive = `#standin words=${opts.words ?? 20} delay=${opts.delay ?? 10} tag=${tag}` +
    (opts.extra ? ` extra_prompt=${opts.extra}` : '');
  const body = { model, messages: ask(directive), max_tokens: opts.maxTokens ?? 100 };
  try {
    if (opts.stream) {
      const stream = await openai.chat.completions.create({
        ...body,
        stream: true,
        stream_options: { include_usage: true },
      });
      let cost = '';
      for await (const chunk of stream) if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
      return { model, tag, ok: true, cost };
    }
    const r = await openai.chat.completions.create(body);
    return { model, tag, ok: true, cost: (r.usage as unknown as { cost: string }).cost };
  } catch (err) {
    if (!(err instanceof OpenAI.APIError)) throw err;
    const e = err.error as { code?: string; details?: Details } | undefined;
    return { model, tag, ok: false, status: err.status ?? 0, code: e?.code, details: e?.details ?? {} };
  }
}

/** The user's own account. */
const accountOf = async (userId: string) =>
  (await testDb`select id, trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${userId}`)[0];

/** Allocations on the account's lots by a movement for a model its lot may not pay for (must be none). */
async function paidByWrongLots(accountIds: (string | bigint)[]) {
  return [
    ...await testDb`
    select t.id, t.kind, t.metadata ->> 'model' as model, l.applies_to, x.amount::text
    from billing.lot_allocations x
    join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    where l.account_id = any(${accountIds.map(String)}::bigint[]) and x.amount > 0 and t.from_account_id = l.account_id
      and t.kind in ('hold_capture', 'usage') and not billing.lot_pays_for(l.applies_to, t.metadata ->> 'model')`,
  ];
}

/**
 * The user's begun gateway calls (held, charged or failed), oldest first: what each charged, what
 * its hold captured of it, and what it cost past its hold (its `ai-overage:<call>` charge), with
 * how much of that no lot paid (debt).
 */
async function callsWithUsage(userId: string) {
  return await testDb`select c.id, c.model, c.status, c.failure, trim_scale(coalesce(c.charged, 0))::text as charged,
      trim_scale(coalesce(h.captured_amount, 0))::text as captured, trim_scale(coalesce(o.amount, 0))::text as overage,
      trim_scale(coalesce(o.amount - (select sum(x.amount) from billing.lot_allocations x where x.transfer_id = o.id),
        o.amount, 0))::text as overage_debt, c.usage
    from billing.ai_calls c left join billing.holds h on h.id = c.hold_id
    left join billing.transfers o on o.idempotency_key = 'ai-overage:' || c.id
    where c.user_id = ${userId} and c.status <> 'refused' order by c.seq`;
}

/** What an account owes: Σ its open lots' remaining − its balance (docs/credit-lots.md), 0 when it owes nothing. */
async function debtOf(accountId: string | bigint) {
  const [r] = await testDb`select trim_scale(coalesce((select sum(l.remaining) from billing.lots l
      where l.account_id = a.id and l.open), 0) - a.balance)::text as debt
    from billing.accounts a where a.id = ${String(accountId)}`;
  return r.debt as string;
}

/** Σ exact decimals, in SQL. */
async function sum(values: string[]): Promise<string> {
  const [r] = await testDb`select trim_scale(coalesce(sum(v::numeric), 0))::text as s from unnest(${values}::text[]) v`;
  return r.s;
}

/**
 * Every settled call was charged the rate card's whole price of what the provider reported: its
 * hold's capture and, past it, its excess charge. A call is found by its model, prompt count and
 * the cost its caller was told: calls alike in all three have the same price, so whichever is found
 * answers for each.
 */
async function assertEachCallPaysItsUsage(outcomes: Outcome[], userId: string) {
  const calls = await callsWithUsage(userId);
  assert.ok(calls.every((c) => c.status !== 'held'), 'every call settled');
  for (const o of outcomes.filter((o) => o.ok)) {
    const seen = await standinCall(o.tag);
    assert.equal(seen.status, 'done', `${o.tag}: the provider answered`);
    const price = await priceOf(o.model, seen.usage as ReportedUsage);
    const c = calls.find((c) =>
      c.usage && Number(c.usage.input_tokens) + Number(c.usage.cached_input_tokens) ===
        (seen.usage as ReportedUsage).prompt_tokens &&
      c.model === o.model &&
      (o as { cost: string }).cost === c.charged
    );
    assert.ok(c, `${o.model} ${o.tag}: a charged call for what the provider reported`);
    assert.equal(c.charged, price, `${o.model}: charged the whole price of its usage`);
    assert.equal(
      await sum([c.captured, c.overage]),
      c.charged,
      `${o.model}: the capture and the excess make the charge`,
    );
  }
}

// ============================================================ a student with credits for one model and a little for any

Deno.test('credits for gpt-4o only beside a little for any model: racing calls for both (streamed, billed past their holds) never let gpt-4o credits pay for gpt-4o-mini', async () => {
  const id = await newUser();
  // The credit for any model is the older lot: spending order would draw it first for gpt-4o too.
  assert.equal((await grantLot(id, '1', 'promo_grant')).status, 201);
  assert.equal((await grantLot(id, '200', 'promo_grant', { applies_to: ['gpt-4o'] })).status, 201);
  const token = await userToken(id);
  const openai = client(token);
  const acct = await accountOf(id);

  // gpt-4o-mini's hold for 100 answer tokens is ~0.26 credits: three fit in the credit for any
  // model, unless gpt-4o's charges (drawing that older lot first) took it.
  const wave = () =>
    Promise.all([
      ...Array.from({ length: 6 }, (_, i) =>
        fire(openai, 'gpt-4o', { stream: i % 2 === 0, extra: i % 3 === 0 ? 400 : 0, delay: 15, maxTokens: 60 })),
      ...Array.from({ length: 6 }, (_, i) =>
        fire(openai, 'gpt-4o-mini', { stream: i % 2 === 1, extra: i % 3 === 1 ? 100 : 0, delay: 15, maxTokens: 100 })),
    ]);
  const outcomes = [...await wave(), ...await wave()];
  const refused = outcomes.filter((o) => !o.ok) as Extract<Outcome, { ok: false }>[];
  for (const r of refused) {
    assert.equal(r.status, 402, JSON.stringify(r));
    assert.equal(r.code, 'INSUFFICIENT_CREDITS', JSON.stringify(r));
    if (r.details.debt === true) continue; // an earlier call's excess put the account in debt
    assert.equal(r.model, 'gpt-4o-mini', `gpt-4o had 200 credits of its own: ${JSON.stringify(r)}`);
    assert.equal(r.details.model, 'gpt-4o-mini', JSON.stringify(r));
    assert.equal(r.details.reason, 'some credits may only pay for other models', JSON.stringify(r));
    assert.ok(Number(r.details.restricted) > 0 && Number(r.details.restricted) <= 200, JSON.stringify(r));
  }
  assert.ok(outcomes.filter((o) => o.ok && o.model === 'gpt-4o').length >= 1, JSON.stringify(outcomes));
  await assertEachCallPaysItsUsage(outcomes, id);
  assert.deepEqual(await paidByWrongLots([acct.id]), [], 'no credit paid for a model its lot may not pay for');
  // gpt-4o's own credits never ran short: what its calls cost past their holds they paid whole. A
  // gpt-4o-mini call's excess takes what the credit for any model has free, the rest is debt.
  const calls = await callsWithUsage(id);
  for (const c of calls.filter((c) => c.model === 'gpt-4o')) assert.equal(c.overage_debt, '0', JSON.stringify(c));
  const a = await accountOf(id);
  assert.equal(a.balance, await sum(['201', ...calls.map((c) => '-' + c.charged)]), 'balance = grants − charges');
  assert.equal(a.held, '0');
  const debt = await debtOf(acct.id);
  assert.equal(
    debt,
    await sum(calls.map((c) => c.overage_debt)),
    'the debt is what the excess charges found no credits for',
  );
  if (refused.some((r) => r.details.debt === true)) assert.ok(Number(debt) > 0, 'a refusal for debt means a debt');
  await assertLedgerInvariants();
});

// ============================================================ holds for several models while credits leave

/** How many of the user's gateway holds are live. */
const liveAiHolds = async (userId: string) =>
  (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.status = 'active' and h.purpose = 'ai'`)[0].n as number;

async function until(what: string, fn: () => Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** A buyer of the starter package (9,990 credits for any model) with 100 credits for gpt-4o only, expiring tomorrow. */
async function buyerWithGpt4oCredits() {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  const lot = await grantLot(id, '100', 'promo_grant', {
    applies_to: ['gpt-4o'],
    expires_at: new Date(Date.now() + 86_400_000).toISOString(),
  });
  assert.equal(lot.status, 201, lot.text);
  const [a] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${id} and l.applies_to is not null`;
  return { id, token, openai: client(token), co, gpt4oLot: a.id as string };
}

/** The gpt-4o-only lot falls due and pg_cron's expiry job runs. */
async function expire(lot: string) {
  await backdateLot(lot);
  await testDb`select billing.expire_lots(100000)`;
}

Deno.test('calls for gpt-4o and gpt-4o-mini held at once while the purchase is refunded, the gpt-4o-only lot expires and more calls race: each is charged its price from what may pay', async () => {
  const s = await buyerWithGpt4oCredits();
  const acct = await accountOf(s.id);
  const slow = { stream: true, words: 30, delay: 40, maxTokens: 100 };
  const live = [
    ...Array.from({ length: 3 }, () => fire(s.openai, 'gpt-4o', slow)),
    ...Array.from({ length: 3 }, () => fire(s.openai, 'gpt-4o-mini', { ...slow, extra: 50 })),
  ];
  await until('six live holds', async () => (await liveAiHolds(s.id)) === 6);
  // 990 of the 999 cents back: 9,900 credits leave; the gpt-4o credits fall due at the same time;
  // the student keeps calling both models.
  const [, , ...more] = await Promise.all([
    emulator(`/_emulator/charges/${await chargeOf(s.co.session_id)}/refund`, { amount: 990 }),
    expire(s.gpt4oLot),
    ...Array.from({ length: 2 }, () => fire(s.openai, 'gpt-4o', { words: 10 })),
    ...Array.from({ length: 2 }, () => fire(s.openai, 'gpt-4o-mini', { words: 10, extra: 20 })),
  ]);
  const outcomes = [...await Promise.all(live), ...more];
  assert.ok(outcomes.every((o) => o.ok), JSON.stringify(outcomes.filter((o) => !o.ok)));
  await assertEachCallPaysItsUsage(outcomes, s.id);
  // 90 credits for any model stay after the refund: every call is paid in full from credits, what a
  // hold lost to the expiry included; nothing is debt.
  const calls = await callsWithUsage(s.id);
  for (const c of calls) assert.deepEqual([c.status, c.overage_debt], ['charged', '0'], JSON.stringify(c));
  assert.deepEqual(await paidByWrongLots([acct.id]), [], 'no credit paid for a model its lot may not pay for');
  const [moved] = await testDb`select
      trim_scale(coalesce(sum(t.amount) filter (where t.kind = 'refund_reversal'), 0))::text as refunded,
      trim_scale(coalesce(sum(t.amount) filter (where t.kind = 'expiry'), 0))::text as expired
    from billing.transfers t where t.from_account_id = ${acct.id}`;
  assert.equal(moved.refunded, '9900', 'the refund took back 9,900 credits');
  const [lot] = await testDb`select trim_scale(amount)::text as amount, trim_scale(remaining)::text as remaining
    from billing.lots where id = ${s.gpt4oLot}`;
  const [drawn] = await testDb`select trim_scale(coalesce(sum(x.amount), 0))::text as d from billing.lot_allocations x
    where x.lot_id = ${s.gpt4oLot} and x.transfer_id in (select id from billing.transfers where kind <> 'expiry')`;
  assert.equal(lot.remaining, '0');
  assert.equal(await sum([drawn.d, moved.expired]), '100', 'the gpt-4o lot: what calls drew and what expired');
  const a = await accountOf(s.id);
  assert.equal(a.balance, await sum(['90', '100', '-' + moved.expired, ...calls.map((c) => '-' + c.charged)]));
  assert.equal(a.held, '0');
  assert.equal(await debtOf(acct.id), '0', 'no debt');
  await assertLedgerInvariants();
});

Deno.test('calls for both models held when a dispute opens, then the gpt-4o-only lot expires under them: every call is charged exactly its price, what a shrunk hold lacks from the frozen purchase (no debt), the buyer is refused while suspended and calls again once the dispute is won', async () => {
  const s = await buyerWithGpt4oCredits();
  const acct = await accountOf(s.id);
  const slow = { stream: true, words: 40, delay: 60, maxTokens: 100 };
  const live = [
    ...Array.from({ length: 3 }, () => fire(s.openai, 'gpt-4o', slow)),
    ...Array.from({ length: 3 }, () => fire(s.openai, 'gpt-4o-mini', slow)),
  ];
  await until('six live holds', async () => (await liveAiHolds(s.id)) === 6);
  const charge = await chargeOf(s.co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  // No hold for the dispute: the purchase's lot freezes where it is, and what the live calls
  // reserved of it stays theirs (docs/credit-lots.md § Refunds, disputes and debt 3).
  const [frozen] = await testDb`select count(*)::int as holds,
    (select bool_and(l.frozen) from billing.lots l where l.account_id = ${acct.id} and l.purchase_id is not null) as frozen
    from billing.holds h where h.account_id = ${acct.id} and h.purpose not in ('user', 'job', 'ai', 'claims')`;
  assert.deepEqual([frozen.holds, frozen.frozen], [0, true], 'the purchase is frozen, no hold placed');
  assert.equal(await liveAiHolds(s.id), 6, 'work under way keeps its holds');
  // While disputed, the buyer is suspended: every new call is 403, whatever credits would pay.
  const [onGpt4o, onMini] = await Promise.all([
    fire(s.openai, 'gpt-4o', { words: 10 }),
    fire(s.openai, 'gpt-4o-mini', { words: 10 }),
  ]);
  for (const o of [onGpt4o, onMini]) assert.ok(!o.ok && o.status === 403, JSON.stringify(o));
  // The gpt-4o credits fall due under the live calls: the holds that reserved them shrink by them.
  await expire(s.gpt4oLot);
  const late = await fire(s.openai, 'gpt-4o', { words: 10 });
  assert.ok(!late.ok && late.status === 403, JSON.stringify(late));
  const outcomes = [...await Promise.all(live), onGpt4o, onMini, late];
  await assertEachCallPaysItsUsage(outcomes, s.id);
  assert.deepEqual(await paidByWrongLots([acct.id]), [], 'no credit paid for a model its lot may not pay for');
  // A gpt-4o call's hold lost what it reserved of the expired lot: what it cost past what was left
  // was charged at once, from the frozen purchase (no free credits may pay for gpt-4o): no debt.
  const calls = await callsWithUsage(s.id);
  for (const c of calls) assert.deepEqual([c.status, c.overage_debt], ['charged', '0'], JSON.stringify(c));
  assert.ok(
    calls.filter((c) => c.model === 'gpt-4o').every((c) => Number(c.overage) > 0),
    `the gpt-4o holds shrank by the expiry: ${JSON.stringify(calls)}`,
  );
  const [excess] = await testDb`select trim_scale(coalesce(sum(x.amount), 0))::text as from_purchase
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    where l.account_id = ${acct.id} and l.purchase_id is not null and t.idempotency_key like 'ai-overage:%'`;
  assert.equal(excess.from_purchase, await sum(calls.map((c) => c.overage)), 'the excess drew the frozen purchase');
  assert.equal(await debtOf(acct.id), '0', 'no debt');
  await assertLedgerInvariants();
  // Won: the frozen credits are free again and the buyer calls again.
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  const next = await fire(s.openai, 'gpt-4o-mini', { words: 5 });
  assert.ok(next.ok, JSON.stringify(next));
  const [{ expired }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as expired
    from billing.transfers t where t.from_account_id = ${acct.id} and t.kind = 'expiry'`;
  const a = await accountOf(s.id);
  assert.equal(
    a.balance,
    await sum(['9990', '100', '-' + expired, ...(await callsWithUsage(s.id)).map((c) => '-' + c.charged)]),
  );
  assert.equal(a.held, '0');
  await assertLedgerInvariants();
});

// ============================================================ a school's credits for some models

Deno.test('members of a pool with credits for gpt-4o only race calls for both models while the owner removes one: the pool pays only what its lots may, their excess included, and nothing after the removal', async () => {
  const [owner, ada, bea] = await Promise.all(['owner', 'ada', 'bea'].map(person));
  const org = await school(owner, [ada, bea], 'pool', null);
  // The credits for gpt-4o come first in spending order (a promotion, older): every draw for
  // gpt-4o-mini must pass them by for the adjustment's 2 credits for any model.
  await orgGrant(org, '300', 'promo_grant', ['gpt-4o']);
  await orgGrant(org, '2', 'adjustment');
  const [wallet] = await testDb`select id from billing.accounts where org_id = ${org} and member_id is null`;
  const slow = { stream: true, words: 20, delay: 30, maxTokens: 100 };
  // The first gpt-4o and gpt-4o-mini call of each burst are billed 400 prompt tokens past their holds.
  const burst = (who: { token: string }) =>
    Array.from(
      { length: 6 },
      (_, i) => fire(client(who.token), i % 2 ? 'gpt-4o-mini' : 'gpt-4o', { ...slow, extra: i % 3 === 0 ? 400 : 0 }),
    );
  const adaCalls = Promise.all(burst(ada));
  const beaCalls = Promise.all(burst(bea));
  await sleep(150);
  const removed = await api(`/orgs/${org}/members/${bea.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const after = await Promise.all(burst(bea)); // she has no credits of her own
  for (const o of after) assert.ok(!o.ok && o.status === 402, `after her removal: ${JSON.stringify(o)}`);
  const outcomesAda = await adaCalls;
  const outcomesBea = await beaCalls;
  for (const o of [...outcomesAda, ...outcomesBea] as Outcome[]) {
    if (o.ok) continue;
    assert.equal(o.status, 402, JSON.stringify(o));
    // A member never reads the pool's figures (restricted credits included), in debt or not.
    assert.ok(!JSON.stringify(o.details).includes('300'), JSON.stringify(o));
    if (o.details.debt === true) assert.ok(!('available' in o.details), JSON.stringify(o));
  }
  await assertEachCallPaysItsUsage(outcomesAda, ada.id);
  await assertEachCallPaysItsUsage(outcomesBea, bea.id);
  assert.deepEqual(await paidByWrongLots([wallet.id]), [], 'the pool paid only for what its lots may');
  // Every call the pool paid for began before the removal.
  const [m] = await testDb`select removed_at from billing.org_members where org_id = ${org} and user_id = ${bea.id}`;
  const [late] = await testDb`select count(*)::int as n from billing.ai_calls c join billing.holds h on h.id = c.hold_id
    where c.user_id = ${bea.id} and c.org_id = ${org} and h.created_at > ${m.removed_at}`;
  assert.equal(late.n, 0, 'no hold on the pool after her removal');
  const [w] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where id = ${wallet.id}`;
  const charged = await testDb`select trim_scale(coalesce(c.charged, 0))::text as charged from billing.ai_calls c
    where c.org_id = ${org} and c.status = 'charged'`;
  assert.deepEqual([w.balance, w.held], [await sum(['302', ...charged.map((c) => '-' + c.charged)]), '0']);
  // What a member's call cost past its hold is the pool's to pay (into debt if it must), never the
  // member's own account: they have none, and no transfer left one.
  const calls = [...await callsWithUsage(ada.id), ...await callsWithUsage(bea.id)];
  const [excess] =
    await testDb`select count(*)::int as n, count(*) filter (where t.from_account_id <> ${wallet.id})::int as off
    from billing.transfers t where t.idempotency_key = any(${calls.map((c) => 'ai-overage:' + c.id)}::text[])`;
  assert.deepEqual([excess.n, excess.off], [calls.filter((c) => c.overage !== '0').length, 0], JSON.stringify(calls));
  assert.ok(excess.n > 0, `the calls billed past their holds charged their excess: ${JSON.stringify(calls)}`);
  const [own] =
    await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = any(${[ada.id, bea.id]}::uuid[])`;
  assert.equal(own.n, 0, "nothing charged to a member's own account");
  assert.equal(await debtOf(wallet.id), await sum(calls.map((c) => c.overage_debt)), 'the pool owes what no lot paid');
  await assertLedgerInvariants();
});

Deno.test('an allowance for gpt-4o only beside one for any model, swept back while the member races calls for both: the wallet gets its lots back as they were', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '50', 'promo_grant'); // the wallet's credits, for any model
  const fundAda = (amount: string, applies_to?: string[]) =>
    api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { user_id: ada.id, amount, ...(applies_to ? { applies_to } : {}) },
    });
  for (const [amount, list] of [['30', ['gpt-4o']], ['1', undefined]] as const) {
    const r = await fundAda(amount, list ? [...list] : undefined);
    assert.equal(r.status, 201, r.text);
  }
  const [allowance] = await testDb`select id from billing.accounts where org_id = ${org} and member_id = ${ada.id}`;
  const [wallet] = await testDb`select id from billing.accounts where org_id = ${org} and member_id is null`;
  const slow = { stream: true, words: 20, delay: 30, maxTokens: 60 };
  const calls = Promise.all(
    Array.from({ length: 6 }, (_, i) => fire(client(ada.token), i % 2 ? 'gpt-4o-mini' : 'gpt-4o', slow)),
  );
  await sleep(120);
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const outcomes = await calls;
  await assertEachCallPaysItsUsage(outcomes, ada.id);
  assert.deepEqual(await paidByWrongLots([allowance.id, wallet.id]), [], 'no lot paid for a model it may not');
  // The removal swept what was not held; what the calls' holds gave back goes home with pg_cron's sweep.
  await testDb`select billing.sweep_ended_terms(100)`;
  // What was swept back is the wallet's again, for any model, as it was granted.
  const lists =
    await testDb`select distinct l.applies_to from billing.lots l where l.account_id = ${wallet.id} and l.open`;
  assert.deepEqual(lists.map((l) => l.applies_to), [null], 'the wallet holds credits for any model only');
  const [a] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where id = ${allowance.id}`;
  assert.deepEqual([a.balance, a.held], ['0', '0'], 'the allowance is empty, nothing held');
  const charged = await testDb`select trim_scale(coalesce(c.charged, 0))::text as charged from billing.ai_calls c
    where c.user_id = ${ada.id} and c.status = 'charged'`;
  const [w] = await testDb`select trim_scale(balance)::text as balance from billing.accounts where id = ${wallet.id}`;
  assert.equal(w.balance, await sum(['50', ...charged.map((c) => '-' + c.charged)]));
  await assertLedgerInvariants();
});

// ============================================================ a finish racing a failure of the same call

Deno.test('the gateway timing the provider out as its answer arrives: each call is failed with nothing charged or charged its price, never both; retries under the same key answer once', async () => {
  const s = await (async () => {
    const id = await newUser();
    assert.equal((await grantLot(id, '100', 'promo_grant', { applies_to: ['gpt-4o'] })).status, 201);
    assert.equal((await grantLot(id, '2', 'promo_grant')).status, 201);
    return { id, token: await userToken(id) };
  })();
  const gw = spawnGateway({ AI_TIMEOUT_MS: '250' });
  await gw.ready();
  try {
    const openai = client(s.token, `${gw.url}/ai/v1`);
    const keys = Array.from({ length: 12 }, () => crypto.randomUUID());
    const bodies = keys.map((_, i) => ({
      model: i % 2 ? 'gpt-4o-mini' : 'gpt-4o',
      // The watchdog looks every 250 ms for a read older than 250 ms: chunks 200-300 ms apart
      // arrive just before or just after it gives up, the usage chunk last.
      messages: ask(`#standin words=3 delay=${200 + ((i * 37) % 100)} tag=${keys[i].replaceAll('-', '')}`),
      max_tokens: 30,
      stream: true as const,
      stream_options: { include_usage: true },
    }));
    const attempt = async (i: number) => {
      try {
        const stream = await openai.chat.completions.create(bodies[i], { headers: { 'idempotency-key': keys[i] } });
        let cost: string | undefined;
        for await (const chunk of stream) if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
        return cost;
      } catch (err) {
        return err instanceof OpenAI.APIError ? `status ${err.status}` : String(err);
      }
    };
    const first = await Promise.all(keys.map((_, i) => attempt(i)));
    const rows = async (k: string) =>
      await testDb`select c.status, c.failure, trim_scale(coalesce(c.charged, 0))::text as charged, c.usage_source,
          h.status as hold, c.transfer_id
        from billing.ai_calls c left join billing.holds h on h.id = c.hold_id
        where c.user_id = ${s.id} and c.idempotency_key = ${k} order by c.seq`;
    for (const [i, k] of keys.entries()) {
      const r = await rows(k);
      assert.equal(r.length, 1, `one call for key ${i}`);
      const c = r[0];
      if (c.status === 'failed') {
        assert.deepEqual([c.charged, c.hold, c.transfer_id], ['0', 'released', null], JSON.stringify(c));
      } else {
        assert.equal(c.status, 'charged', JSON.stringify(c));
        assert.equal(c.hold, 'captured', JSON.stringify(c));
        if (first[i] !== undefined && !first[i]!.startsWith('status')) assert.equal(first[i], c.charged);
        const seen = await standinCall(keys[i].replaceAll('-', ''));
        if (c.usage_source === 'provider') {
          assert.equal(c.charged, await priceOf(bodies[i].model, seen.usage as ReportedUsage), JSON.stringify(c));
        }
      }
    }
    // Retries under the same keys: a failed call's key is free (a new call), a charged one replays.
    const second = await Promise.all(keys.map((_, i) => attempt(i)));
    for (const [i, k] of keys.entries()) {
      const r = await rows(k);
      assert.ok(r.filter((c) => c.status === 'charged').length <= 1, `at most one charge for key ${i}`);
      if (r[0].status === 'charged') {
        assert.equal(r.length, 1, `a charged key is replayed, not called again (${i})`);
        assert.equal(second[i], r[0].charged, `the replay says what was charged (${i})`);
      }
    }
  } finally {
    await gw.kill();
  }
  const [{ charged }] = await testDb`select trim_scale(coalesce(sum(c.charged), 0))::text as charged
    from billing.ai_calls c where c.user_id = ${s.id}`;
  const a = await accountOf(s.id);
  assert.deepEqual([a.balance, a.held], [await sum(['102', '-' + charged]), '0']);
  assert.deepEqual(await paidByWrongLots([(await accountOf(s.id)).id]), []);
  await assertLedgerInvariants();
});

Deno.test('a student who hangs up on a stream for gpt-4o-mini on gpt-4o-only credits plus a little for any, and retries at once under the same key: one call, charged its whole price once, from the credit that may pay then as debt; gpt-4o-mini refused for the debt until a grant pays it', async () => {
  const id = await newUser();
  assert.equal((await grantLot(id, '1', 'promo_grant')).status, 201);
  assert.equal((await grantLot(id, '100', 'promo_grant', { applies_to: ['gpt-4o'] })).status, 201);
  const openai = client(await userToken(id));
  const k = crypto.randomUUID();
  const tag = k.replaceAll('-', '');
  const body = {
    model: 'gpt-4o-mini',
    messages: ask(`#standin words=20 delay=40 extra_prompt=2000 tag=${tag}`),
    max_tokens: 40,
    stream: true as const,
    stream_options: { include_usage: true },
  };
  const gone = new AbortController();
  const stream = await openai.chat.completions.create(body, { headers: { 'idempotency-key': k }, signal: gone.signal });
  let chunks = 0;
  try {
    for await (const _ of stream) if (++chunks === 3) gone.abort();
  } catch { /* the student hung up */ }
  const retries = await Promise.allSettled(
    Array.from({ length: 4 }, () => openai.chat.completions.create(body, { headers: { 'idempotency-key': k } })),
  );
  for (const r of retries) {
    if (r.status === 'rejected') assert.equal((r.reason as { status?: number }).status, 409, String(r.reason));
  }
  await until('the provider answered to its end', async () => (await standinCall(tag)).status === 'done');
  await until('the call settled', async () => {
    const [c] = await callsWithUsage(id);
    return c?.status === 'charged';
  });
  const [c] = await callsWithUsage(id);
  const price = await priceOf('gpt-4o-mini', (await standinCall(tag)).usage as ReportedUsage);
  // The provider billed 2,000 more prompt tokens than the hold (1.2 credits more): the call is
  // charged its whole price, the credit for any model all it can pay, the rest debt; the gpt-4o
  // credits pay none of it.
  assert.equal(c.charged, price);
  assert.equal(await sum([c.captured, c.overage]), price, 'the capture and the excess make the price');
  const debt = await sum([price, '-1']);
  assert.ok(Number(debt) > 0, `more than the credit for any model: ${price}`);
  assert.equal(c.overage_debt, debt, JSON.stringify(c));
  const acct = await accountOf(id);
  assert.deepEqual([acct.balance, acct.held], [await sum(['101', '-' + price]), '0']);
  assert.equal(await debtOf(acct.id), debt, 'the gpt-4o credits stay beside the debt');
  const replay = await openai.chat.completions.create(body, { headers: { 'idempotency-key': k } });
  let cost = '';
  for await (const chunk of replay) if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
  assert.equal(cost, price, 'the replay tells what was charged');
  assert.equal((await callsWithUsage(id)).length, 1);
  assert.deepEqual(await paidByWrongLots([acct.id]), []);
  // In debt, gpt-4o-mini is refused saying so; the gpt-4o credits beside the debt still pay for
  // gpt-4o as far as the balance goes (docs/credit-lots.md § Credits for some models), never the debt.
  const next = await fire(openai, 'gpt-4o-mini', { words: 3 });
  assert.ok(!next.ok && next.status === 402 && next.code === 'INSUFFICIENT_CREDITS', JSON.stringify(next));
  assert.equal(next.details.debt, true, JSON.stringify(next));
  const onGpt4o = await fire(openai, 'gpt-4o', { words: 3 });
  assert.ok(onGpt4o.ok, JSON.stringify(onGpt4o));
  assert.equal(await debtOf(acct.id), debt, 'the gpt-4o credits paid none of the debt');
  // The next credit for any model pays the debt first.
  assert.equal((await grantLot(id, '5', 'promo_grant')).status, 201);
  const [paid] =
    await testDb`select trim_scale(l.debt_settled)::text as settled, trim_scale(l.remaining)::text as remaining
    from billing.lots l where l.account_id = ${acct.id} and l.applies_to is null order by l.id desc limit 1`;
  assert.deepEqual(
    [paid.settled, paid.remaining],
    [debt, await sum(['5', '-' + debt])],
    'the grant paid the debt first',
  );
  assert.equal(await debtOf(acct.id), '0');
  assert.ok((await fire(openai, 'gpt-4o-mini', { words: 3 })).ok, 'out of debt, gpt-4o-mini is paid again');
  await assertLedgerInvariants();
});

// ============================================================ any number of lists of free credits

Deno.test('four codes for four new lists redeemed at once by a student holding six: all four granted, each once, ten lists held', async () => {
  const names = await models(10);
  const id = await newUser();
  const token = await userToken(id);
  for (const m of names.slice(0, 6)) {
    assert.equal((await grantLot(id, '1', 'promo_grant', { applies_to: [m] })).status, 201);
  }
  const codes = await Promise.all(
    names.slice(6).map((m) => promo({ credits: '2', max_redemptions: 5, applies_to: [m] })),
  );
  const results = await Promise.all(codes.map((c) => redeem(token, c.code)));
  assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 200], results.map((r) => r.text).join('\n'));
  const counts = await testDb`select redeemed_count, trim_scale(redeemed_credits)::text as credits
    from billing.codes where id = any(${codes.map((c) => c.id)}::uuid[])`;
  for (const c of counts) assert.deepEqual([c.redeemed_count, c.credits], [1, '2'], 'each code used once');
  const lists = await testDb`select count(distinct l.applies_to)::int as n from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id} and l.open`;
  assert.equal(lists[0].n, 10);
  assert.equal((await balanceOf(token)).balance, '14');
  await assertLedgerInvariants();
});
