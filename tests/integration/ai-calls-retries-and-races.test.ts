// The AI gateway's money lifecycle attacked with what a student (or a school member) holds: their
// own tokens, the public routes and the official SDKs. The database only plays the clock and
// pg_cron (a hold's TTL passing, the sweeps, the expiry job), the operator's side (a refund
// through the Stripe emulator, an admin's grant) and is read for the assertions. Each attack
// checks exact amounts and the ledger's invariants: nothing charged twice, served work never
// free, held = Σ active holds, no balance below zero without a reversal or a call's excess, no
// charged call's key freed.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { ask, balanceOf, callsOf, gatewayUrl, priceOf, refusalsOf, student } from '../support/ai.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  holdsLapse,
  key,
  spawnGateway,
  sweepExpiredHolds,
  testDb,
} from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';

const client = (token: string, base = gatewayUrl) => new OpenAI({ baseURL: base, apiKey: token, maxRetries: 0 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What pg_cron does once a call's hold has outlived its TTL: the hold expires, the sweep frees the call. */
async function outliveTtl(callId: string) {
  await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${callId})`);
  await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${callId}`;
  await testDb`select billing.release_expired_holds(100000)`;
  await testDb`select billing.sweep_ai_calls(500)`;
}

Deno.test("a member's gateway call that dies and expires gives its hold back to the member's own cap", async () => {
  // A school's cap on one member counts the member's holds on the wallet while they live; a hold
  // that expires (the gateway died: GATEWAY_LOST, nothing charged) must give that room back, as a
  // release or a capture does, or the member is refused for spending they never did.
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '5' },
  });
  assert.equal(capped.status, 200, capped.text);
  const messages = ask('#standin words=2');
  const gw = spawnGateway({ FAILPOINTS: 'ai.after_hold' });
  await gw.ready();
  try {
    await client(ada.token, `${gw.url}/ai/v1`).chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 40 })
      .catch(() => {}); // the gateway died after the hold
  } finally {
    await gw.kill();
  }
  const [lost] = await testDb`select c.id, trim_scale(h.amount)::text as held from billing.ai_calls c
    join billing.holds h on h.id = c.hold_id where c.user_id = ${ada.id}`;
  const spent = async () =>
    (await testDb`select trim_scale(s.spent)::text as spent from billing.spend_caps s where s.member_id = ${ada.id}`)[0]
      .spent;
  assert.equal(await spent(), lost.held, 'the live hold counts against her cap');
  await outliveTtl(lost.id);
  const [c] = await callsOf(ada.id);
  assert.deepEqual([c.status, c.failure, c.charged], ['failed', 'GATEWAY_LOST', '0']);
  assert.deepEqual(await walletOf(owner.token, org), { balance: '1000', held: '0', available: '1000' });
  // Her next call fits the cap again (2.66 lost + 2.8 held would pass 5: SPEND_CAP_REACHED).
  const next = await client(ada.token).chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 40 });
  const cost = (next.usage as unknown as { cost: string }).cost;
  assert.equal(await spent(), cost, 'the cap counts what she spent, not the expired hold');
  assert.equal((await walletOf(owner.token, org)).balance, String(1000 - Number(cost)));
  await assertLedgerInvariants();
});

/** Σ what the ledger took from the student's own account, and what it gave: balance = in − out, exactly. */
async function ledgerOfAccount(userId: string) {
  const [r] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(coalesce((select sum(t.amount) from billing.transfers t where t.to_account_id = a.id), 0)
        - coalesce((select sum(t.amount) from billing.transfers t where t.from_account_id = a.id), 0))::text as net,
      (select count(*)::int from billing.holds h where h.account_id = a.id and h.status = 'active') as active_holds
    from billing.accounts a where a.user_id = ${userId}`;
  return r;
}

Deno.test('the same Idempotency-Key sent 6 times at once on every endpoint, streamed and whole: one call, one charge each', async () => {
  const s = await student('1000');
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  const attacks: [string, (k: string) => Promise<unknown>][] = [
    ['chat streamed', async (k) => {
      const stream = await s.openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: ask('#standin words=20 delay=20'),
        max_tokens: 60,
        stream: true,
        stream_options: { include_usage: true },
      }, { headers: { 'idempotency-key': k } });
      for await (const _ of stream) { /* read */ }
    }],
    ['chat whole', (k) =>
      s.openai.chat.completions.create(
        { model: 'gpt-4o-mini', messages: ask('#standin words=20 delay=20'), max_tokens: 60 },
        { headers: { 'idempotency-key': k } },
      )],
    ['responses streamed', async (k) => {
      const stream = await s.openai.responses.create({
        model: 'gpt-4o-mini',
        input: '#standin words=20 delay=20',
        max_output_tokens: 60,
        stream: true,
      }, { headers: { 'idempotency-key': k } });
      for await (const _ of stream) { /* read */ }
    }],
    ['messages streamed', (k) =>
      anthropic.messages.stream({
        model: 'claude-haiku-4-5',
        max_tokens: 60,
        messages: [{ role: 'user', content: '#standin words=20 delay=20' }],
      }, { headers: { 'idempotency-key': k } }).finalMessage()],
    [
      'embeddings',
      (k) =>
        s.openai.embeddings.create({ model: 'text-embedding-3-small', input: '#standin delay=50 twenty words' }, {
          headers: { 'idempotency-key': k },
        }),
    ],
  ];
  for (const [what, attempt] of attacks) {
    const k = crypto.randomUUID();
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => attempt(k)));
    assert.ok(results.some((r) => r.status === 'fulfilled'), `${what}: the first call is answered`);
    for (const r of results) {
      if (r.status === 'rejected') assert.equal((r.reason as { status?: number }).status, 409, `${what}: ${r.reason}`);
    }
    // Once settled, the key answers the same call again: a replay, never a second call.
    const [first] = await settledCalls(s.id, k);
    await attempt(k);
    const calls = await settledCalls(s.id, k);
    assert.equal(calls.length, 1, `${what}: one call for the key`);
    assert.equal(calls[0].id, first.id);
    assert.equal(calls[0].status, 'charged', what);
  }
  const [{ charged, n }] = await testDb`select trim_scale(sum(c.charged))::text as charged, count(*)::int as n
    from billing.ai_calls c where c.user_id = ${s.id} and c.status = 'charged'`;
  assert.equal(n, attacks.length);
  const l = await ledgerOfAccount(s.id);
  assert.equal(l.balance, String(1000 - Number(charged)));
  assert.deepEqual([l.net, l.held, l.active_holds], [l.balance, '0', 0]);
  await assertLedgerInvariants();
});

/** The calls begun under one key, once none is held any more. */
async function settledCalls(userId: string, k: string) {
  for (let i = 0; i < 200; i++) {
    const rows = await testDb`select id, status, trim_scale(charged)::text as charged from billing.ai_calls
      where user_id = ${userId} and idempotency_key = ${k} order by created_at`;
    if (rows.length && rows.every((r) => r.status !== 'held')) return rows;
    await sleep(50);
  }
  throw new Error('a call is still held');
}

Deno.test('a client that hangs up on a whole answer and retries at once is answered once and charged once', async () => {
  const s = await student('1000');
  const k = crypto.randomUUID();
  const body = { model: 'gpt-4o', messages: ask('#standin words=10 first_byte_delay=400'), max_tokens: 40 };
  const gone = new AbortController();
  const first = s.openai.chat.completions.create(body, { headers: { 'idempotency-key': k }, signal: gone.signal });
  await sleep(150);
  gone.abort();
  await first.catch(() => {});
  // While the first runs on at the provider, retries are "in use"; once it settled, a replay.
  const early = await Promise.allSettled(
    Array.from({ length: 4 }, () => s.openai.chat.completions.create(body, { headers: { 'idempotency-key': k } })),
  );
  for (const r of early) {
    if (r.status === 'rejected') assert.equal((r.reason as { status?: number }).status, 409, String(r.reason));
  }
  const [c] = await settledCalls(s.id, k);
  const again = await s.openai.chat.completions.create(body, { headers: { 'idempotency-key': k } });
  assert.equal((again.usage as unknown as { cost: string }).cost, c.charged);
  assert.equal(c.status, 'charged');
  assert.equal((await settledCalls(s.id, k)).length, 1);
  assert.equal(await balanceOf(s.id), String(1000 - Number(c.charged)));
  await assertLedgerInvariants();
});

/** Whether a gateway call was refused 402 for the debt its account owes. */
const refusedForDebt = (err: unknown) =>
  err instanceof OpenAI.APIError && err.status === 402 &&
  (err.error as { code: string; details: { debt?: boolean } }).code === 'INSUFFICIENT_CREDITS' &&
  (err.error as { details: { debt?: boolean } }).details.debt === true;

Deno.test('a grant racing 6 calls on a balance in debt: each call is refused for the debt or runs after the grant paid it; the excess charged once', async () => {
  const s = await student('3');
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=1000'),
    max_tokens: 10,
  });
  const price = await priceOf('gpt-4o', r.usage!);
  const [owing] = await callsOf(s.id);
  assert.equal(owing.charged, price, 'the call is charged its whole price');
  const [{ debt }] = await testDb`select trim_scale(3 - ${price}::numeric)::text as debt`;
  assert.ok(Number(debt) < 0);
  assert.equal(await balanceOf(s.id), debt, 'what the 3 credits could not pay is debt');
  const [results] = await Promise.all([
    Promise.allSettled(
      Array.from({ length: 6 }, () =>
        s.openai.chat.completions.create({
          model: 'gpt-4o-mini',
          messages: ask('#standin words=3 delay=10'),
          max_tokens: 10,
        })),
    ),
    fund(s.id, '100'),
  ]);
  for (const x of results) if (x.status === 'rejected') assert.ok(refusedForDebt(x.reason), String(x.reason));
  const served = results.filter((x) => x.status === 'fulfilled').length;
  const refusals = await refusalsOf(s.id);
  assert.deepEqual(refusals.map((x) => x.failure), Array(6 - served).fill('INSUFFICIENT_CREDITS'));
  const [excess] = await testDb`select count(*)::int as n, trim_scale(sum(t.amount))::text as amount,
      (select trim_scale(${price}::numeric - h.amount)::text from billing.holds h
        join billing.ai_calls c on c.hold_id = h.id where c.id = ${owing.id}) as expected
    from billing.transfers t where t.idempotency_key = ${'ai-overage:' + owing.id}`;
  assert.deepEqual([excess.n, excess.amount], [1, excess.expected], 'the excess is charged once, exactly');
  const [{ charged, n }] = await testDb`select trim_scale(coalesce(sum(c.charged), 0))::text as charged,
    count(*)::int as n from billing.ai_calls c where c.user_id = ${s.id} and c.id <> ${owing.id} and c.status = 'charged'`;
  assert.equal(n, served, 'every call served is charged, none refused is');
  const [{ expected }] =
    await testDb`select trim_scale(100 + ${debt}::numeric - ${charged}::numeric)::text as expected`;
  const l = await ledgerOfAccount(s.id);
  assert.deepEqual([l.balance, l.net, l.held, l.active_holds], [expected, expected, '0', 0]);
  // Once the grant is in, the debt is paid: the next call runs.
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=3'), max_tokens: 10 });
  await assertLedgerInvariants();
});

Deno.test('credits that expire under a live call: the hold shrinks by what it reserved of them, the call is charged its whole price, what is left paying and the rest debt', async () => {
  const s = await student('0');
  const granted = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: {
      user_id: s.id,
      amount: '10',
      reason: 'a promotion that ends',
      kind: 'promo_grant',
      lot: { category: 'promotional', expires_at: new Date(Date.now() + 86_400_000).toISOString() },
    },
  });
  assert.equal(granted.status, 201, granted.text);
  await fund(s.id, '1');
  const [lot] = await testDb`select l.id from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id} and l.amount = 10`;
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=30 delay=200'), // ~6 s: the work at chunk 3 lands while it streams
    max_tokens: 100,
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    if (++chunks === 3) {
      // The promotion ends mid-answer and the expiry job runs (pg_cron).
      await backdateLot(lot.id);
      await testDb`select billing.expire_lots(500)`;
      const l = await ledgerOfAccount(s.id);
      // The hold reserved the promotion (first in spending order): it expired whole, and the hold
      // shrank by all it had (docs/credit-lots.md § Spending order 7); the 1 for any model is free.
      assert.deepEqual([l.balance, l.held], ['1', '0'], 'the hold shrank by what it reserved of the expired lot');
    }
    if (chunk.usage) usage = chunk.usage;
  }
  const price = await priceOf('gpt-4o', usage!);
  const [c] = await callsOf(s.id);
  assert.equal(c.charged, price, 'the whole price is charged');
  assert.equal((usage as unknown as { cost: string }).cost, price);
  // Nothing was left to capture: the price is one charge, the 1 credit left paying first, the rest debt.
  const [excess] = await testDb`select trim_scale(t.amount)::text as amount, t.metadata ->> 'priced' as priced
    from billing.transfers t where t.idempotency_key = ${'ai-overage:' + c.id}`;
  assert.deepEqual({ ...excess }, { amount: price, priced: price });
  const [{ debt }] = await testDb`select trim_scale(1 - ${price}::numeric)::text as debt`;
  const l = await ledgerOfAccount(s.id);
  assert.deepEqual([l.balance, l.net, l.held, l.active_holds], [debt, debt, '0', 0]);
  // A hold that shrank by expiry is no overrun: the minute's alerts never name the call.
  const [alert] = await testDb`select details from billing.evaluate_alerts() where condition = 'ai_call_overran'`;
  assert.notEqual(alert?.details.call_id, c.id, 'a hold shrunk by expiry is not an overrun');
  await assertLedgerInvariants();
});

Deno.test('a refund of the purchase under a live call’s hold, then the sweep: the call is not lost, it is charged from its reservation, and what it spent of the refunded credits is debt', async () => {
  const s = await student('0');
  const co = await buy(s.token, 'starter'); // 9,990 credits
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=30 delay=200'), // ~6 s: the work at chunk 3 lands while it streams
    max_tokens: 100,
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    if (++chunks === 3) {
      // The whole purchase is refunded mid-answer: the free credits go at once, the hold keeps its
      // reservation until it ends (docs/credit-lots.md § Refunds, disputes and debt 1). The call
      // has run a while (its record says so) and the every-minute sweeps pass: it is still answering.
      await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 999 });
      const [c] = await callsOf(s.id);
      assert.equal(c.hold_status, 'active', 'the hold keeps its reservation');
      await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${c.id}`;
      await testDb`select billing.release_expired_holds(100000)`;
      await testDb`select billing.sweep_ai_calls(500)`;
      assert.equal((await callsOf(s.id))[0].status, 'held', 'a call still answering is not lost');
    }
    if (chunk.usage) usage = chunk.usage;
  }
  const price = await priceOf('gpt-4o', usage!);
  const [c] = await callsOf(s.id);
  assert.deepEqual([c.status, c.charged], ['charged', price], 'charged its price from its reservation');
  // The hold ended: what it returned stays reserved for the refund, which pg_cron's minute tick
  // takes back; what it spent is the buyer's debt.
  await sweepExpiredHolds();
  const l = await ledgerOfAccount(s.id);
  assert.deepEqual([l.balance, l.net, l.held, l.active_holds], ['-' + price, '-' + price, '0', 0]);
  // The next call is refused until the debt is paid.
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 5 }),
    refusedForDebt,
  );
  await assertLedgerInvariants();
});
