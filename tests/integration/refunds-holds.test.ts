// Money taken back or expired while holds of several kinds are live — a plan
// renewal with rollover, a plan refund, a purchase refund and a lost dispute — with AI-gateway
// calls streaming slowly through them, webhooks delivered twice at once and again.
// Outside tester: students' tokens over HTTP (their own holds, captures, AI calls); the Stripe
// emulator's webhooks, the admin grants and the rate card are the world; the database is only
// read for figures (and plays the rate card's admin).
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, callsOf, creditPerToken, gatewayUrl, priceOf, type ReportedUsage, standinCall } from '../support/ai.ts';
import {
  api,
  assertLedgerInvariants,
  fund,
  key,
  newUser,
  spend,
  sweepExpiredHolds,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { checkLots } from '../support/money.ts';
import { buy, chargeOf, deliver, deliverWithRetries, emulator, stripeApi } from '../support/purchases.ts';
import { breakage, chargeOfInvoice, planPeriodEnded, renew, subscribeTo } from '../support/plans.ts';

type Json = Record<string, unknown>;

/** A student with no credits, their token and an OpenAI client on the gateway. */
async function someone() {
  const id = await newUser();
  const token = await userToken(id);
  return { id, token, openai: new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 }) };
}

const account = async (userId: string) =>
  (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${userId} and org_id is null`)[0] as { balance: string; held: string };

const holdsOf = async (userId: string) =>
  await testDb<{ id: string; purpose: string; amount: string; status: string; captured: string | null }[]>`
    select h.id::text, h.purpose, trim_scale(h.amount)::text as amount, h.status,
      trim_scale(h.captured_amount)::text as captured
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} order by h.created_at, h.id`;

const userHold = async (token: string, amount: string) => {
  const r = await api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 3600 } });
  assert.equal(r.status, 201, r.text);
  return (r.body.data as { hold_id: string }).hold_id;
};

/**
 * A slow streamed call: `n` words and `reasoning` hidden tokens, `delay` ms between events, at
 * most `max` output tokens. Resolves once the gateway holds it (its first chunk arrived) with a
 * function that reads it to its end and returns the usage the provider reported.
 */
async function slowCall(
  openai: OpenAI,
  model: string,
  o: { words: number; reasoning: number; delay: number; max: number; tag: string },
) {
  const stream = await openai.chat.completions.create({
    model,
    messages: ask(`#standin words=${o.words} reasoning=${o.reasoning} delay=${o.delay} tag=${o.tag}`),
    max_tokens: o.max,
    stream: true,
    stream_options: { include_usage: true },
  });
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.done, false);
  return async (): Promise<{ usage: ReportedUsage; cost: string | undefined; error?: string }> => {
    let usage: ReportedUsage | undefined;
    let cost: string | undefined;
    try {
      for (;;) {
        const n = await it.next();
        if (n.done) break;
        if (n.value.usage) {
          usage = n.value.usage;
          cost = (n.value.usage as unknown as { cost?: string }).cost;
        }
      }
    } catch (e) {
      const s = await standinCall(o.tag);
      return { usage: s.usage!, cost, error: String(e) };
    }
    return { usage: usage!, cost };
  };
}

/** A student on the basic plan (10,000 a month, up to 2,000 rolled over) who spent `spent`, and a model at a credit a token. */
async function onPlan(spent: number) {
  const m = await creditPerToken();
  const s = await someone();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await until('granted', async () => (await account(s.id))?.balance === '10000');
  await spend(s.token, spent);
  return { m, s, plan };
}

/** The user's gateway calls (newest first): status and what each was charged. */
const callByHold = async (userId: string) =>
  (await callsOf(userId)).map((c) => ({ status: c.status, charged: c.charged }));

/** What gateway call `id` was charged past its hold (`ai-overage:<id>`), and how much of that frozen lots paid. */
const overageOf = async (id: string) =>
  (await testDb`select trim_scale(t.amount)::text as amount,
      trim_scale(coalesce(sum(a.amount) filter (where l.frozen), 0))::text as from_frozen
    from billing.transfers t left join billing.lot_allocations a on a.transfer_id = t.id
    left join billing.lots l on l.id = a.lot_id
    where t.idempotency_key = ${'ai-overage:' + id} group by t.id`)[0] ?? { amount: '0', from_frozen: '0' };

// ============================================================ 1. a renewal with rollover under live holds

Deno.test({
  name:
    'a renewal (invoice.paid twice at once, then again) over a user hold and a streaming AI call: the newest hold gives way to what expires, the call is charged its whole price (the excess from the new period), nothing else moves',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const { m, s, plan } = await onPlan(6000); // 4,000 left: 2,000 roll, 2,000 expire
  const tag = `r1${crypto.randomUUID().slice(0, 8)}`;
  const finish = await slowCall(s.openai, m, { words: 10, reasoning: 2850, delay: 1500, max: 2900, tag });
  const [aiHold0] = (await holdsOf(s.id)).filter((h) => h.purpose === 'ai');
  const hUser = await userHold(s.token, '1000'); // newest
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const twice = await Promise.all([...late.events, ...late.events].map((e) => deliver(e)));
  for (const e of late.events) assert.equal((await deliverWithRetries(e)).status, 200);
  const mid = { account: await account(s.id), holds: await holdsOf(s.id), calls: await callByHold(s.id) };
  assert.equal(mid.calls[0].status, 'held', `the call is still streaming: ${JSON.stringify(mid)}`);
  const { usage, cost } = await finish();
  const price = await priceOf(m, usage);
  const [c] = await callsOf(s.id);
  const hs = await holdsOf(s.id);
  const end = await account(s.id);
  const figures = JSON.stringify({ twice: twice.map((r) => r.status), aiHold0, mid, c, hs, end, price });
  // 4,000 − 2,000 expired = 2,000 left under 1,000 + hold0 held: the user's hold (newest) gives way
  // whole, the call's by hold0 − 1,000; then 10,000 granted.
  assert.deepEqual(
    {
      mid_balance: mid.account.balance,
      mid_held: mid.account.held,
      mid_user: mid.holds.find((h) => h.id === hUser)?.status,
      call: [c.status, c.charged],
      overage: (await overageOf(c.id)).amount,
      cost,
      ai_hold: [hs.find((h) => h.purpose === 'ai')?.status, hs.find((h) => h.purpose === 'ai')?.captured],
      end,
      breakage: await breakage(s.id),
    },
    {
      mid_balance: '12000',
      mid_held: '2000',
      mid_user: 'released',
      call: ['charged', price],
      overage: String(Number(price) - 2000), // past the 2,000 its hold kept: from the new period's lot
      cost: price,
      ai_hold: ['captured', '2000'],
      end: { balance: String(12000 - Number(price)), held: '0' },
      breakage: '2000',
    },
    figures,
  );
  const capture = await api(`/credits/holds/${hUser}/capture`, { token: s.token, headers: key(), body: {} });
  assert.equal(capture.status, 409, capture.text);
  assert.deepEqual(await account(s.id), end);
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.plan_grants where subscription_id = ${plan.subscription_id}`;
  assert.equal(n, 2);
});

Deno.test({
  name:
    'the period ends and the sweep expires it under a user hold and a streaming AI call, then the renewal is paid (twice at once): both holds gave way whole, 2,000 come back from breakage, the call is charged its whole price from the new period',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const { m, s, plan } = await onPlan(6000); // 4,000 left
  const tag = `r5${crypto.randomUUID().slice(0, 8)}`;
  const finish = await slowCall(s.openai, m, { words: 10, reasoning: 2850, delay: 1500, max: 2900, tag });
  const hUser = await userHold(s.token, '1000');
  const late = await renew(plan.stripe_subscription, 'paid', false);
  await planPeriodEnded(s.id, '1 hour');
  await testDb`select billing.expire_lots(500)`;
  const swept = { account: await account(s.id), holds: await holdsOf(s.id) };
  await Promise.all([...late.events, ...late.events].map((e) => deliverWithRetries(e)));
  for (const e of late.events) assert.equal((await deliverWithRetries(e)).status, 200);
  const mid = { account: await account(s.id), calls: await callByHold(s.id) };
  assert.equal(mid.calls[0].status, 'held', `the call is still streaming: ${JSON.stringify(mid)}`);
  const { usage } = await finish();
  const price = await priceOf(m, usage);
  // What the ended call returned stays reserved for the refund until pg_cron's minute
  // tick (sweepExpiredHolds runs it) takes it back.
  await sweepExpiredHolds();
  const [c] = await callsOf(s.id);
  const end = await account(s.id);
  const figures = JSON.stringify({ swept, mid, c, end, price });
  assert.deepEqual(
    {
      swept: swept.account,
      holds: swept.holds.map((h) => [h.purpose, h.status]),
      mid: mid.account,
      call: [c.status, c.charged],
      overage: (await overageOf(c.id)).amount,
      end,
      breakage: await breakage(s.id),
    },
    {
      swept: { balance: '0', held: '0' },
      holds: [['ai', 'released'], ['user', 'released']],
      mid: { balance: '12000', held: '0' },
      call: ['charged', price],
      overage: price, // its hold gave way whole: the whole price is charged past it
      end: { balance: String(12000 - Number(price)), held: '0' },
      breakage: '2000',
    },
    figures,
  );
  const capture = await api(`/credits/holds/${hUser}/capture`, { token: s.token, headers: key(), body: {} });
  assert.equal(capture.status, 409, capture.text);
});

// ============================================================ 2. a plan refund under live holds, captures racing it

Deno.test({
  name:
    'a full refund of the plan invoice (delivered three times at once) racing the captures of two user holds, a streaming AI call in flight: 10,000 taken back once, each capture all or nothing, the call charged its whole price, all that was spent owed as debt that refuses the next call',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const { m, s, plan } = await onPlan(2000); // 8,000 left
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  const tag = `r2${crypto.randomUUID().slice(0, 8)}`;
  const finish = await slowCall(s.openai, m, { words: 10, reasoning: 1900, delay: 1500, max: 2000, tag });
  const h1 = await userHold(s.token, '3000');
  const h2 = await userHold(s.token, '2000');
  const refund = await emulator(`/_emulator/charges/${await chargeOfInvoice(invoice)}/refund`, { deliver: false });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const [caps, webhooks] = await Promise.all([
    Promise.all([h1, h2].map(async (h, i) => {
      await sleep(i * 15);
      return await api(`/credits/holds/${h}/capture`, { token: s.token, headers: key(), body: {} });
    })),
    Promise.all([...refund.events, ...refund.events, ...refund.events].map((e) => deliverWithRetries(e))),
  ]);
  for (const e of refund.events) assert.equal((await deliverWithRetries(e)).status, 200);
  for (const w of webhooks) assert.equal(w.status, 200, JSON.stringify(w.body));
  for (const c of caps) assert.ok(c.status === 200 || c.status === 409, `${c.status} ${c.text}`);
  const captured = caps.filter((c) => c.status === 200).reduce(
    (t, c) => t + Number((c.body.data as { captured: string }).captured),
    0,
  );
  const mid = { account: await account(s.id), calls: await callByHold(s.id), holds: await holdsOf(s.id) };
  assert.equal(mid.calls[0].status, 'held', `the call is still streaming: ${JSON.stringify(mid)}`);
  const { usage } = await finish();
  const price = await priceOf(m, usage);
  // What the ended call returned stays reserved for the refund until pg_cron's minute
  // tick (sweepExpiredHolds runs it) takes it back.
  await sweepExpiredHolds();
  const [c] = await callsOf(s.id);
  const end = await account(s.id);
  const [g] = await testDb`select trim_scale(credits_reversed)::text as r, amount_refunded_cents as cents
    from billing.plan_grants where invoice_id = ${invoice}`;
  // The refund's reversals: the plan lot's free credits at once, what each hold reserved as it
  // ended, what was spent from the buyer (here the same account): 10,000 in all, however split.
  const [{ n }] = await testDb`select trim_scale(coalesce(sum(amount), 0))::text as n from billing.transfers
    where kind = 'refund_reversal' and idempotency_key like ${'plan-refund:' + invoice + ':%'}`;
  const [{ pending }] = await testDb`select count(*)::int as pending from billing.lot_take_backs t
    join billing.holds h on h.id = t.hold_id join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id}`;
  const figures = JSON.stringify({ caps: caps.map((x) => x.status), mid, c, end, price, g, pending });
  // Whatever the order: 10,000 taken back once; the student spent 2,000 + what was captured + what
  // the call was charged, so owes exactly that (balance −that); the call's price is charged (its
  // hold reserved it: a refund takes back only what the hold returns).
  assert.deepEqual(
    {
      reversed: g.r,
      cents: g.cents,
      reversals: n,
      pending,
      call: [c.status, c.charged],
      end,
    },
    {
      reversed: '10000',
      cents: 999,
      reversals: '10000',
      pending: 0,
      call: ['charged', price],
      end: { balance: String(-(2000 + captured + Number(c.charged))), held: '0' },
    },
    figures,
  );
  // The debt is on the balance: the next call is refused for it.
  const next = await api('/ai/v1/chat/completions', {
    token: s.token,
    headers: key(),
    body: { model: m, messages: ask('#standin words=2'), max_tokens: 5 },
  });
  assert.equal(next.status, 402, next.text);
  assert.equal((next.body.error as { details: Json }).details.debt, true, next.text);
});

// ============================================================ 3. AI calls in flight under a refund and a lost dispute

Deno.test({
  name:
    'three streaming AI calls in flight while a purchase is refunded (thrice at once) and another disputed and lost (events duplicated): each call is charged its price from what its hold reserved, the rest is taken back as it ends, the buyer owes the charges, the next call is refused for the debt, then a grant pays it first',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const s = await someone();
  const starter = await buy(s.token, 'starter'); // 9,990
  const mini = await buy(s.token, 'mini'); // 5,000
  await until('paid', async () => (await account(s.id))?.balance === '14990');
  const tags = [1, 2, 3].map((i) => `r3${i}${crypto.randomUUID().slice(0, 8)}`);
  const finishes = [];
  for (const tag of tags) {
    finishes.push(await slowCall(s.openai, m, { words: 8, reasoning: 1900, delay: 1500, max: 2000, tag }));
  }
  const before = { account: await account(s.id), holds: await holdsOf(s.id) };
  const refund = await emulator(`/_emulator/charges/${await chargeOf(starter.session_id)}/refund`, { deliver: false });
  const open = await emulator(`/_emulator/charges/${await chargeOf(mini.session_id)}/dispute`, {
    outcome: 'open',
    deliver: false,
  });
  const lost = await emulator(`/_emulator/charges/${await chargeOf(mini.session_id)}/dispute`, {
    outcome: 'lost',
    deliver: false,
  });
  const w1 = await Promise.all(
    [...refund.events, ...refund.events, ...refund.events, ...open.events].map((e) => deliverWithRetries(e)),
  );
  const w2 = await Promise.all([...lost.events, ...lost.events, ...open.events].map((e) => deliverWithRetries(e)));
  for (const e of [...refund.events, ...open.events, ...lost.events]) await deliverWithRetries(e);
  for (const w of [...w1, ...w2]) assert.equal(w.status, 200, JSON.stringify(w.body));
  const mid = { account: await account(s.id), holds: await holdsOf(s.id), calls: await callByHold(s.id) };
  assert.deepEqual(mid.calls.map((c) => c.status), ['held', 'held', 'held'], JSON.stringify({ before, mid }));
  const results = await Promise.all(finishes.map((f) => f()));
  const prices = await Promise.all(results.map((r) => priceOf(m, r.usage)));
  // What the ended calls returned stays reserved for the refund until pg_cron's minute
  // tick (sweepExpiredHolds runs it) takes it back.
  await sweepExpiredHolds();
  const calls = await callsOf(s.id);
  const end = await account(s.id);
  const figures = JSON.stringify({ before, mid, calls, end, prices });
  // The calls' holds reserved 3 × their amount of the starter lot (the oldest paid credits): the
  // refund took its free rest and the mini purchase's lot at once, and left what the holds reserved.
  // Each call then captures its price from its reservation; what it returns is taken back at the
  // minute's tick, and what it captured is owed by the buyer (the student): debt.
  const reserved = String(before.holds.reduce((t, h) => t + Number(h.amount), 0));
  const owed = prices.reduce((t, p) => t + Number(p), 0);
  assert.deepEqual(
    {
      mid: { account: mid.account, holds: mid.holds.map((h) => h.status), calls: mid.calls.map((c) => c.status) },
      calls: calls.map((c) => [c.status, c.charged]).sort(),
      end,
    },
    {
      mid: {
        account: { balance: reserved, held: reserved },
        holds: ['active', 'active', 'active'],
        calls: ['held', 'held', 'held'],
      },
      calls: prices.map((p) => ['charged', p]).sort(),
      end: { balance: String(-owed), held: '0' },
    },
    figures,
  );
  const next = await api('/ai/v1/chat/completions', {
    token: s.token,
    headers: key(),
    body: { model: m, messages: ask('#standin words=2'), max_tokens: 5 },
  });
  assert.equal(next.status, 402, next.text);
  assert.equal((next.body.error as { details: Json }).details.debt, true, next.text);
  await fund(s.id, '10000');
  const paid = await api('/ai/v1/chat/completions', {
    token: s.token,
    headers: key(),
    body: { model: m, messages: ask('#standin words=2'), max_tokens: 5 },
  });
  assert.equal(paid.status, 200, paid.text);
  const charged = Number(paid.headers.get('x-credits-charged'));
  assert.deepEqual(await account(s.id), { balance: String(10000 - owed - charged), held: '0' });
  // What each hold returned was taken back from the starter lot as it ended: once per hold.
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t
    where t.kind = 'refund_reversal' and t.idempotency_key like ${'refund:' + starter.purchase_id + ':%:held:%'}
      and t.idempotency_key not like '%:owed'`;
  assert.equal(n, 3);
});

// ============================================================ 4. a plan's dispute opened under a live call that bills past its hold

Deno.test({
  name:
    'a dispute of the plan invoice opened while a streaming AI call runs, the provider billing 500 tokens past the hold, then lost: the hold keeps its work, the excess is paid from the frozen plan credits (the model has no free ones), and the loss takes back the rest once, the whole call owed as debt',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const { m, s, plan } = await onPlan(1000); // 9,000 left
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  const tag = `r4${crypto.randomUUID().slice(0, 8)}`;
  const stream = await s.openai.chat.completions.create({
    model: m,
    messages: ask(`#standin words=8 reasoning=1900 extra_prompt=500 delay=700 tag=${tag}`),
    max_tokens: 2000,
    stream: true,
    stream_options: { include_usage: true },
  });
  const it = stream[Symbol.asyncIterator]();
  assert.equal((await it.next()).done, false);
  const [ai] = (await holdsOf(s.id)).filter((h) => h.purpose === 'ai');
  const charge = await chargeOfInvoice(invoice);
  const open = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false });
  await Promise.all([...open.events, ...open.events].map((e) => deliverWithRetries(e)));
  const frozen = { account: await account(s.id), holds: await holdsOf(s.id) };
  let usage: ReportedUsage | undefined;
  for (;;) {
    const n = await it.next();
    if (n.done) break;
    if (n.value.usage) usage = n.value.usage;
  }
  const price = await priceOf(m, usage!);
  const [c] = await callsOf(s.id);
  const afterCall = await account(s.id);
  const overage = await overageOf(c.id);
  const lost = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false });
  await Promise.all([...lost.events, ...lost.events].map((e) => deliverWithRetries(e)));
  for (const e of lost.events) await deliverWithRetries(e);
  const end = await account(s.id);
  const figures = JSON.stringify({ ai, frozen, c, overage, afterCall, end, price });
  // Opened: the plan lot freezes; the call's hold keeps what it reserved of it (work under way),
  // nothing else is held. The call captures its hold from its reservation; the 500 past it find no
  // free credits for the model and are drawn from the frozen plan lot (a debt takes frozen credits
  // before the balance goes below zero). Lost: the lot's rest taken back at once; the 1,000 spent
  // and the whole call are spent of the grant, owed by the subscriber as debt.
  const excess = String(Number(price) - Number(ai.amount));
  assert.deepEqual(
    {
      frozen: frozen.account,
      call: [c.status, c.charged],
      overage,
      afterCall,
      end,
    },
    {
      frozen: { balance: '9000', held: ai.amount },
      call: ['charged', price],
      overage: { amount: excess, from_frozen: excess },
      afterCall: { balance: String(9000 - Number(price)), held: '0' },
      end: { balance: String(-(1000 + Number(price))), held: '0' },
    },
    figures,
  );
});

Deno.test('the ledger invariants and the lots hold after every attack above', async () => {
  await checkLots();
  await assertLedgerInvariants();
});
