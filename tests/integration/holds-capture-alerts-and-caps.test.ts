// A capture goes straight to the writer (billing.post_capture builds the capture's movement and
// the hold's post step for post_transfers, under the caller's account lock), and reserve_hold
// answers a new hold from the row it locked. Attacked with students' and school members' tokens:
// partial captures and replays, capture racing release and expiry, AI calls finishing while the
// same student's holds and usage run, a call whose hold outlived its TTL, a refund and a dispute
// between a hold and its capture, credits for some models, a school's pool and allowance with a
// member's cap, spend caps given back on a partial capture, and the low-balance alert and
// auto-recharge at a capture. Each asserts exact amounts and answers, then the ledger's
// invariants. The operator's side (grants, Stripe events, the sweep, time passing) only sets up.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, gatewayUrl } from '../support/ai.ts';
import {
  api,
  assertLedgerInvariants,
  fund,
  holdsLapse,
  key,
  newUser,
  sweepExpiredHolds,
  testDb,
  tick,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { grantLot } from '../support/lots.ts';
import { codeOf, dataOf, type Json, spendWith } from '../support/money.ts';
import { accountOf, person, school } from '../support/orgs.ts';
import { chargeOf, emulator, rechargingBuyer } from '../support/purchases.ts';

type Res = Awaited<ReturnType<typeof api>>;

const hold = (token: string, amount: string, ttl = 600) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: ttl } });
const act = (token: string, id: unknown, action: 'capture' | 'release', body: Json = {}, k = crypto.randomUUID()) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: { 'idempotency-key': k }, body });
const holdIdOf = (r: Res) => {
  assert.equal(r.status, 201, r.text);
  return dataOf(r).hold_id as string;
};
const client = (token: string) => new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 });
const chat = (token: string, directives: string, maxTokens = 50, model = 'gpt-4o-mini') =>
  api('/ai/v1/chat/completions', {
    token,
    body: { model, messages: ask(`#standin ${directives}`), max_tokens: maxTokens },
  });

/** A student with `credits` granted (none when null). */
async function funded(credits: string | null) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

/** The user's own account as the ledger has it. */
const own = async (user: string) =>
  (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${user}`)[0];
/** GET /credits/balance's balance, held and available. */
const seen = async (token: string) => {
  const b = dataOf(await api('/credits/balance', { token }));
  return { balance: b.balance, held: b.held, available: b.available };
};
/** A hold's status, amount and captured amount. */
const holdRow = async (id: string) =>
  (await testDb`select status, trim_scale(amount)::text as amount, trim_scale(captured_amount)::text as captured
    from billing.holds where id = ${id}`)[0];
/** Capture transfers written for a hold. */
const capturesOf = async (id: string) =>
  (await testDb`select trim_scale(amount)::text as amount from billing.transfers
    where kind = 'hold_capture' and hold_id = ${id}`).map((r) => r.amount as string);
/** Time passes for a hold: its TTL is over (the ledger is immutable; holds are not). */
const overdue = (id: string) => holdsLapse(testDb`h.id = ${id}`);

/** The ledger's invariants, and a hold's post is exactly its one capture transfer. */
async function invariants() {
  await assertLedgerInvariants();
  const [r] = await testDb`select
    (select count(*)::int from billing.holds h left join billing.transfers t on t.id = h.capture_transfer_id
      where h.status = 'captured' and (t.id is null or t.amount <> h.captured_amount or t.hold_id is distinct from h.id
        or t.from_account_id <> h.account_id or t.kind <> 'hold_capture')) as posts_off_capture,
    (select count(*)::int from (select t.hold_id from billing.transfers t where t.kind = 'hold_capture'
      group by t.hold_id having count(*) > 1) x) as captured_twice,
    (select count(*)::int from billing.transfers t where t.kind = 'hold_capture'
      and not exists (select 1 from billing.holds h where h.capture_transfer_id = t.id)) as capture_without_post,
    (select count(*)::int from billing.holds h where h.status = 'captured' and h.captured_amount > h.amount) as over_hold`;
  assert.deepEqual({ ...r }, { posts_off_capture: 0, captured_twice: 0, capture_without_post: 0, over_hold: 0 });
}

// ============================================================ auto-recharge and the alert at a capture

const recharges = async (user: string) =>
  (await testDb`select status from billing.recharges where user_id = ${user} order by created_at`).map((r) => r.status);

// Why: a hold past its TTL stays in the account's held until a sweep or a settle
// ends it, and neither capture_hold nor finish_ai_call's capture nor release_hold ended it: the
// capture's (and release's) auto-recharge check counted it, saw 490 available where 5,490 were,
// and queued a recharge that the tick charged to the student's card.
Deno.test('a capture beside a hold past its TTL: auto-recharge sees only live holds and charges no card', async () => {
  const s = await rechargingBuyer('1000');
  const stale = holdIdOf(await hold(s.token, '5000'));
  const live = holdIdOf(await hold(s.token, '3000'));
  // 1,990 available: above the threshold, armed. A refund of 150 cents takes 1,500 back: 490
  // available while both holds live (a refund never charges the card by itself).
  await emulator(`/_emulator/charges/${await chargeOf(s.session)}/refund`, { amount: 150 });
  assert.deepEqual(await own(s.id), { balance: '8490', held: '8000' });
  assert.deepEqual(await recharges(s.id), []);
  // The first hold's TTL passes: 5,490 available before the capture, 5,490 after it.
  await overdue(stale);
  assert.deepEqual(await seen(s.token), { balance: '8490', held: '3000', available: '5490' });
  const c = await act(s.token, live, 'capture');
  assert.equal(c.status, 200, c.text);
  assert.deepEqual([dataOf(c).captured, dataOf(c).balance, dataOf(c).available], ['3000', '5490', '5490']);
  await watchTick();
  assert.deepEqual(await recharges(s.id), [], 'no recharge: 5,490 is available, far above 1,000');
  assert.deepEqual(await seen(s.token), { balance: '5490', held: '0', available: '5490' });
  await invariants();
});

Deno.test('a release beside a hold past its TTL: auto-recharge sees only live holds and charges no card', async () => {
  const s = await rechargingBuyer('1000');
  const stale = holdIdOf(await hold(s.token, '8000'));
  const live = holdIdOf(await hold(s.token, '500'));
  // 1,490 available, armed; a refund of 120 cents takes 1,200: 290 available while both live.
  await emulator(`/_emulator/charges/${await chargeOf(s.session)}/refund`, { amount: 120 });
  assert.deepEqual(await own(s.id), { balance: '8790', held: '8500' });
  await overdue(stale);
  const r = await act(s.token, live, 'release');
  assert.equal(r.status, 200, r.text);
  assert.deepEqual([dataOf(r).balance, dataOf(r).available], ['8790', '8790']);
  await watchTick();
  assert.deepEqual(await recharges(s.id), [], 'no recharge: 8,790 is available');
  await invariants();
});

Deno.test('a capture below the threshold with a live hold beside it queues one recharge, and the tick credits it once', async () => {
  const s = await rechargingBuyer('1000');
  const a = holdIdOf(await hold(s.token, '5000'));
  const b = holdIdOf(await hold(s.token, '3000'));
  await emulator(`/_emulator/charges/${await chargeOf(s.session)}/refund`, { amount: 150 });
  // Both live: 490 available before and after capturing all of one; twenty captures at once.
  const answers = await Promise.all(Array.from({ length: 20 }, () => act(s.token, b, 'capture')));
  for (const r of answers) assert.equal(r.status, 200, r.text);
  assert.equal(new Set(answers.map((r) => dataOf(r).transfer_id)).size, 1, 'one capture, replayed');
  assert.deepEqual(await capturesOf(b), ['3000']);
  await watchTick();
  assert.deepEqual(await recharges(s.id), ['queued'], 'one recharge for the crossing');
  await tick();
  assert.deepEqual(await recharges(s.id), ['succeeded']);
  // 8,490 − 3,000 + the mini package (5,000); the first hold still reserves 5,000.
  assert.deepEqual(await seen(s.token), { balance: '10490', held: '5000', available: '5490' });
  assert.equal((await act(s.token, a, 'capture', { amount: '4999.5' })).status, 200);
  assert.deepEqual(await seen(s.token), { balance: '5490.5', held: '0', available: '5490.5' });
  await watchTick();
  assert.deepEqual(await recharges(s.id), ['succeeded'], 'back above the threshold: nothing more');
  await invariants();
});

Deno.test('the low-balance alert re-arms when a partial capture gives back more than it spends, and fires once on the next crossing', async () => {
  const s = await funded('100');
  const put = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '30' } });
  assert.equal(put.status, 200, put.text);
  const h = holdIdOf(await hold(s.token, '80'));
  const fired = async () =>
    (await testDb`select low_balance_fired as f from billing.accounts where user_id = ${s.id}`)[0].f as boolean;
  const sent = async () =>
    (await testDb`select count(*)::int as n from billing.notification_outbox
      where user_id = ${s.id} and template = 'balance_alert' and payload ->> 'kind' = 'balance_below'`)[0].n as number;
  await watchTick();
  assert.deepEqual([await fired(), await sent()], [true, 1], '20 available: below 30');
  const c = await act(s.token, h, 'capture', { amount: '10' });
  assert.equal(c.status, 200, c.text);
  assert.deepEqual([dataOf(c).balance, dataOf(c).available], ['90', '90']);
  await watchTick();
  assert.deepEqual([await fired(), await sent()], [false, 1], 'back above: re-armed, nothing sent');
  const h2 = holdIdOf(await hold(s.token, '70'));
  await watchTick();
  assert.deepEqual([await fired(), await sent()], [true, 2], '20 available again: the second crossing');
  assert.equal((await act(s.token, h2, 'capture', { amount: '70' })).status, 200);
  await watchTick();
  assert.deepEqual([await fired(), await sent()], [true, 2], 'still below: no third alert');
  assert.deepEqual(await seen(s.token), { balance: '20', held: '0', available: '20' });
  await invariants();
});

// ============================================================ what a hold's answers say

Deno.test("every hold's and capture's answer is the balance read right after it: overdue holds, due lots, other live holds", async () => {
  const id = await newUser();
  const token = await userToken(id);
  const soon = await grantLot(id, '40', 'promo_grant');
  assert.equal(soon.status, 201, soon.text);
  assert.equal((await grantLot(id, '100', 'promo_grant')).status, 201);
  const [{ lot }] = await testDb`select min(l.id)::text as lot from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id}`;
  const same = async (r: Res, expected: { balance: string; held: string; available: string }) => {
    assert.ok(r.status === 200 || r.status === 201, r.text);
    const b = await seen(token);
    assert.deepEqual(b, expected);
    assert.deepEqual([dataOf(r).balance, dataOf(r).available], [b.balance, b.available], r.text);
  };
  const h1 = await hold(token, '30');
  await same(h1, { balance: '140', held: '30', available: '110' });
  const h2 = await hold(token, '50');
  await same(h2, { balance: '140', held: '80', available: '60' });
  await overdue(dataOf(h1).hold_id as string);
  // The overdue 30 no longer counts in the new hold's answer (reserve_hold settled it).
  const h3 = await hold(token, '60');
  await same(h3, { balance: '140', held: '110', available: '30' });
  assert.equal((await holdRow(dataOf(h1).hold_id as string)).status, 'expired');
  // A partial capture beside another live hold and one past its TTL.
  const h4 = await hold(token, '10');
  await same(h4, { balance: '140', held: '120', available: '20' });
  await overdue(dataOf(h4).hold_id as string);
  const c2 = await act(token, dataOf(h2).hold_id, 'capture', { amount: '20' });
  await same(c2, { balance: '120', held: '60', available: '60' });
  assert.deepEqual(dataOf(c2).released, '30');
  // The sweep ends the overdue 10; then the 40 credits granted first expire: 30 of them are left,
  // all reserved by the hold of 60 (it reserved 30 of them and 30 of the next lot; the capture of
  // 20 drew the other 10 from its own hold's reservation). A lot expires whole, and the hold that
  // reserved it shrinks by what expired (docs/credit-lots.md § Spending order 7): 30 left to capture.
  await testDb`select billing.expire_overdue_holds(a.id) from billing.accounts a where a.user_id = ${id}`;
  await testDb`with l as (update billing.lots set expires_at = now() - interval '1 second' where id = ${lot}
    returning account_id, expires_at) update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
  const over = await act(token, dataOf(h3).hold_id, 'capture', { amount: '60' });
  assert.equal(codeOf(over), 'CAPTURE_EXCEEDS_HOLD', over.text);
  const c3 = await act(token, dataOf(h3).hold_id, 'capture', { amount: '30' });
  // 120 − the 30 left of the 40 (expired) − 30.
  await same(c3, { balance: '60', held: '0', available: '60' });
  assert.deepEqual(await holdRow(dataOf(h3).hold_id as string), { status: 'captured', amount: '30', captured: '30' });
  // A replay answers the same capture with the balance as it is now.
  const again = await act(token, dataOf(h3).hold_id, 'capture', { amount: '30' });
  await same(again, { balance: '60', held: '0', available: '60' });
  assert.equal(dataOf(again).transfer_id, dataOf(c3).transfer_id);
  await invariants();
});

Deno.test("a member's hold and capture answers show their allowance exactly, and their own balance on a pool", async () => {
  const [admin, member, pooled] = await Promise.all(['admin', 'member', 'pooled'].map(person));
  const org = await school(admin, [member], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '50' } });
  assert.equal(funded.status, 201, funded.text);
  const h1 = await hold(member.token, '20');
  assert.deepEqual([dataOf(h1).balance, dataOf(h1).available, dataOf(h1).org_id], ['50', '30', org]);
  const h2 = await hold(member.token, '25');
  assert.deepEqual([dataOf(h2).balance, dataOf(h2).available], ['50', '5']);
  await overdue(dataOf(h1).hold_id as string);
  const c = await act(member.token, dataOf(h2).hold_id, 'capture', { amount: '7.25' });
  assert.equal(c.status, 200, c.text);
  assert.deepEqual([dataOf(c).captured, dataOf(c).released, dataOf(c).balance, dataOf(c).available], [
    '7.25',
    '17.75',
    '42.75',
    '42.75',
  ]);
  assert.equal((await accountOf(org, member.id)).balance, '42.75');
  const [allowance] = await testDb`select trim_scale(b.held)::text as held, trim_scale(b.available)::text as available
    from billing.accounts a cross join lateral billing.balance_of(a.id) b where a.org_id = ${org} and a.member_id = ${member.id}`;
  assert.deepEqual({ ...allowance }, { held: '0', available: '42.75' }, 'the overdue hold no longer counts');
  assert.deepEqual(await accountOf(org, null), { balance: '950', held: '0' });

  const pool = await school(admin, [pooled], 'pool', '321.5');
  await fund(pooled.id, '3');
  const p1 = await hold(pooled.token, '300');
  assert.deepEqual([dataOf(p1).balance, dataOf(p1).available, dataOf(p1).org_id], ['3', '3', pool], p1.text);
  const pc = await act(pooled.token, dataOf(p1).hold_id, 'capture', { amount: '0.5' });
  assert.deepEqual([pc.status, dataOf(pc).balance, dataOf(pc).available], [200, '3', '3'], pc.text);
  // Every value in the answers, not their text: a uuid or a timestamp's milliseconds may hold "321".
  const values = (j: unknown): unknown[] =>
    j !== null && typeof j === 'object' ? Object.values(j as Record<string, unknown>).flatMap(values) : [j];
  const shown = [...values(JSON.parse(pc.text)), ...values(JSON.parse(p1.text))].map(String);
  assert.ok(!shown.includes('321') && !shown.includes('321.5'), "the pool's balance is never in a member's answer");
  assert.deepEqual(await accountOf(pool, null), { balance: '321', held: '0' });
  await invariants();
});

// ============================================================ caps: what a partial capture gives back

const capsOf = async (token: string) =>
  ((await api('/credits/caps', { token })).body.data as {
    items: { spent: string; remaining: string; model: string | null }[];
  })
    .items.map((c) => [c.model, c.spent, c.remaining]);

Deno.test('partial captures racing releases under a cap: the cap counts exactly what was captured', async () => {
  const s = await funded('1000');
  const capped = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '100' } });
  assert.equal(capped.status, 200, capped.text);
  const ids = (await Promise.all(Array.from({ length: 5 }, () => hold(s.token, '20')))).map(holdIdOf);
  assert.deepEqual(await capsOf(s.token), [[null, '100', '0']]);
  const over = await hold(s.token, '0.01');
  assert.deepEqual([over.status, codeOf(over)], [402, 'SPEND_CAP_REACHED'], over.text);
  const answers = await Promise.all(ids.flatMap((id, i) => [
    act(s.token, id, 'capture', { amount: String(3 + i) }),
    act(s.token, id, 'capture', { amount: String(3 + i) }),
    act(s.token, id, 'release'),
  ]));
  let spent = 0;
  for (const [i, id] of ids.entries()) {
    const row = await holdRow(id);
    const mine = answers.slice(3 * i, 3 * i + 3);
    if (row.status === 'captured') {
      assert.equal(row.captured, String(3 + i));
      spent += 3 + i;
      assert.equal(mine.filter((r) => r.status === 200).length, 2, mine.map((r) => r.text).join(' | '));
    } else {
      assert.equal(row.status, 'released');
    }
  }
  assert.deepEqual(await capsOf(s.token), [[null, String(spent), String(100 - spent)]]);
  // The room given back is spendable, to the credit.
  const fill = await hold(s.token, String(100 - spent));
  assert.equal(fill.status, 201, fill.text);
  const more = await hold(s.token, '0.01');
  assert.deepEqual([more.status, codeOf(more)], [402, 'SPEND_CAP_REACHED'], more.text);
  assert.equal((await act(s.token, dataOf(fill).hold_id, 'capture', { amount: '1' })).status, 200);
  assert.deepEqual(await capsOf(s.token), [[null, String(spent + 1), String(99 - spent)]]);
  assert.deepEqual(await own(s.id), { balance: String(999 - spent), held: '0' });
  await invariants();
});

Deno.test("a member's cap on a pool: a partial capture gives the member's room back, and only theirs", async () => {
  const [admin, ada, bo] = await Promise.all(['admin', 'ada', 'bo'].map(person));
  const org = await school(admin, [ada, bo], 'pool', '1000');
  for (const m of [ada, bo]) {
    const capped = await api(`/orgs/${org}/members/${m.id}/cap`, {
      method: 'PUT',
      token: admin.token,
      body: { period: 'day', amount: '50' },
    });
    assert.equal(capped.status, 200, capped.text);
  }
  const capSpent = async (m: string) =>
    (await testDb`select trim_scale(spent)::text as s from billing.spend_caps where member_id = ${m}`)[0].s;
  const a1 = holdIdOf(await hold(ada.token, '30'));
  const a2 = holdIdOf(await hold(ada.token, '20'));
  const b1 = holdIdOf(await hold(bo.token, '45'));
  const capRefusal = (r: Res) => {
    const e = r.body.error as { code: string; details: { wallets: { reason: string; cap?: { spent: string } }[] } };
    return [r.status, e?.code, e?.details.wallets[0].reason, e?.details.wallets[0].cap?.spent];
  };
  const refused = await hold(ada.token, '1');
  assert.deepEqual(capRefusal(refused), [402, 'INSUFFICIENT_CREDITS', 'cap', '50'], refused.text);
  assert.deepEqual([await capSpent(ada.id), await capSpent(bo.id)], ['50', '45']);
  // Bo cannot act on Ada's holds; Ada's captures race each other and Bo's capture.
  const [x, ...rest] = await Promise.all([
    act(bo.token, a1, 'capture', { amount: '1' }),
    act(ada.token, a1, 'capture', { amount: '12' }),
    act(ada.token, a1, 'capture', { amount: '12' }),
    act(ada.token, a2, 'capture', { amount: '20' }),
    act(bo.token, b1, 'capture', { amount: '5' }),
  ]);
  assert.deepEqual([x.status, codeOf(x)], [404, 'HOLD_NOT_FOUND'], x.text);
  for (const r of rest) assert.equal(r.status, 200, r.text);
  assert.deepEqual([await capSpent(ada.id), await capSpent(bo.id)], ['32', '5']);
  assert.equal(holdIdOf(await hold(ada.token, '18')).length, 36);
  const full = await hold(ada.token, '0.000001');
  assert.deepEqual(capRefusal(full), [402, 'INSUFFICIENT_CREDITS', 'cap', '50'], full.text);
  assert.deepEqual(await accountOf(org, null), { balance: '963', held: '18' });
  await invariants();
});

// ============================================================ AI calls beside the same student's holds

/** The user's calls in flight: waits until `n` are held, and answers their hold ids. */
async function heldCalls(user: string, n = 1): Promise<string[]> {
  for (let i = 0; i < 300; i++) {
    const rows = await testDb`select c.hold_id::text as hold from billing.ai_calls c
      where c.user_id = ${user} and c.status = 'held' order by c.created_at`;
    if (rows.length >= n) return rows.map((r) => r.hold);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${n} calls of ${user} were never held`);
}
/** What the user's calls charged, in exact text. */
const aiCharged = async (user: string) =>
  (await testDb`select trim_scale(coalesce(sum(charged), 0))::text as n from billing.ai_calls where user_id = ${user}`)[
    0
  ]
    .n as string;

Deno.test("AI calls finishing while the student's holds are captured, released and usage charged, under a cap: each counted once", async () => {
  const s = await funded('40');
  const capped = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'month', amount: '30' } });
  assert.equal(capped.status, 200, capped.text);
  const calls = Array.from({ length: 5 }, () => chat(s.token, 'words=5 first_byte_delay=100', 50));
  const holds = Array.from({ length: 4 }, async (_, i) => {
    const h = await hold(s.token, '3');
    if (h.status !== 201) return '0';
    const [c1, c2, r] = await Promise.all([
      act(s.token, dataOf(h).hold_id, 'capture', { amount: '2' }),
      act(s.token, dataOf(h).hold_id, 'capture', { amount: '2' }),
      i % 2 ? act(s.token, dataOf(h).hold_id, 'release') : Promise.resolve(null),
    ]);
    const row = await holdRow(dataOf(h).hold_id as string);
    if (row.status === 'captured') {
      assert.deepEqual([c1.status, c2.status], [200, 200], `${c1.text} | ${c2.text}`);
      if (r) assert.deepEqual([r.status, codeOf(r)], [409, 'HOLD_ALREADY_CAPTURED'], r.text);
      return row.captured as string;
    }
    assert.equal(row.status, 'released');
    return '0';
  });
  const usage = Array.from({ length: 4 }, () => spendWith(s.token, crypto.randomUUID(), 1));
  const [ai, captured, used] = await Promise.all([Promise.all(calls), Promise.all(holds), Promise.all(usage)]);
  for (const r of ai) assert.ok(r.status === 200 || r.status === 402, r.text);
  for (const r of used) assert.ok(r.status === 201 || r.status === 402, r.text);
  const [x] = await testDb`select trim_scale(${await aiCharged(s.id)}::numeric + ${
    captured.reduce((n, c) => n + Number(c), 0)
  } + ${used.filter((r) => r.status === 201).length})::text as spent`;
  const [{ left }] = await testDb`select trim_scale(40 - ${x.spent}::numeric)::text as left`;
  assert.deepEqual(await own(s.id), { balance: left, held: '0' });
  const [cap] = await capsOf(s.token);
  assert.deepEqual(cap, [null, x.spent, String(30 - Number(x.spent))]);
  await invariants();
});

Deno.test("an AI call whose hold outlived its TTL beside the student's live hold and a cap: charged its price once, counted once", async () => {
  const s = await funded('100');
  const capped = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '60' } });
  assert.equal(capped.status, 200, capped.text);
  const call = chat(s.token, 'words=20 first_byte_delay=3000', 100);
  const [aiHold] = await heldCalls(s.id);
  const mine = holdIdOf(await hold(s.token, '40'));
  await overdue(aiHold);
  // The student captures part of their own hold while the call's hold is overdue and the call runs.
  const c = await act(s.token, mine, 'capture', { amount: '15' });
  assert.equal(c.status, 200, c.text);
  const r = await call;
  assert.equal(r.status, 200, r.text);
  const [call1] = await testDb`select trim_scale(c.charged)::text as charged, h.status as hold_status,
    trim_scale((billing.price_usage('gpt-4o-mini', (c.usage ->> 'input_tokens')::bigint,
      (c.usage ->> 'output_tokens')::bigint, 0, 0)).amount)::text as price
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${s.id}`;
  assert.equal(call1.hold_status, 'expired');
  assert.equal(call1.charged, call1.price, 'the price, from what was available');
  const [{ left, spent }] = await testDb`select trim_scale(85 - ${call1.price}::numeric)::text as left,
    trim_scale(15 + ${call1.price}::numeric)::text as spent`;
  assert.deepEqual(await own(s.id), { balance: left, held: '0' });
  assert.deepEqual((await capsOf(s.token))[0], [null, spent, String(60 - Number(spent))]);
  await invariants();
});

Deno.test('a dispute opened while an AI call runs: the call is charged from its hold, the student hold keeps its reservation until it ends, the loss is exact debt', async () => {
  const s = await funded(null);
  const co = await api('/checkout/sessions', { token: s.token, headers: key(), body: { package_id: 'mini' } });
  assert.equal(co.status, 201, co.text);
  const session = (co.body.data as { session_id: string }).session_id;
  await emulator(`/_emulator/checkout/sessions/${session}/pay`, { outcome: 'succeeded' });
  const mine = holdIdOf(await hold(s.token, '1000'));
  const call = chat(s.token, 'words=20 first_byte_delay=3000', 100, 'gpt-4o');
  const [aiHold] = await heldCalls(s.id);
  const charge = await chargeOf(session);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  // A dispute freezes the purchase's lots; holds that reserved them before finish normally
  // (docs/credit-lots.md § Refunds, disputes and debt 3), and the buyer is suspended (4).
  assert.equal((await holdRow(mine)).status, 'active');
  assert.equal((await holdRow(aiHold)).status, 'active');
  const c = await act(s.token, mine, 'capture');
  assert.deepEqual([c.status, codeOf(c)], [403, 'ACCOUNT_DISPUTED'], c.text);
  const r = await call;
  assert.equal(r.status, 200, r.text);
  const charged = await aiCharged(s.id);
  assert.ok(Number(charged) > 0);
  assert.equal((await holdRow(aiHold)).status, 'captured');
  const [{ left }] = await testDb`select trim_scale(5000 - ${charged}::numeric)::text as left`;
  assert.deepEqual(
    await own(s.id),
    { balance: left, held: '1000' },
    'the call paid from its hold; the student hold keeps 1,000',
  );
  // Nothing more can be held or spent while the buyer's dispute is open.
  const more = await hold(s.token, '0.01');
  assert.deepEqual([more.status, codeOf(more)], [403, 'ACCOUNT_DISPUTED'], more.text);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  // Lost: settled as a refund. The free credits go at once; what the student hold reserved goes
  // at the minute's tick after it ends; what the call spent is debt.
  const rel = await act(s.token, mine, 'release');
  assert.equal(rel.status, 200, rel.text);
  await sweepExpiredHolds();
  assert.deepEqual(await own(s.id), { balance: `-${charged}`, held: '0' }, 'what the call spent of it is debt');
  await invariants();
});

// ============================================================ credits for some models

// Why: an overdue user hold once still counted against the 5 credits for any model when the
// call's excess was drawn, so part of the price went unpaid while the student had the credits to
// pay it: overdue holds end before the excess is drawn, and it takes free credits before any debt.
Deno.test("an AI call billed beyond its hold beside the student's hold past its TTL: the freed credits for any model pay the excess, no debt", async () => {
  const id = await newUser();
  const token = await userToken(id);
  assert.equal((await grantLot(id, '10', 'promo_grant', { applies_to: ['gpt-4o-mini*'] })).status, 201);
  assert.equal((await grantLot(id, '5', 'promo_grant')).status, 201);
  // The student's own hold reserves the 5 for any model; the call holds credits for its model.
  const mine = holdIdOf(await hold(token, '5'));
  // The provider bills 20,000 prompt tokens more than the gateway counted (12 credits more).
  const call = chat(token, 'words=2 first_byte_delay=600 extra_prompt=20000', 10);
  const [aiHold] = await heldCalls(id);
  await overdue(mine);
  const r = await call;
  assert.equal(r.status, 200, r.text);
  const [c] = await testDb`select c.id, trim_scale(c.charged)::text as charged,
    trim_scale((billing.price_usage('gpt-4o-mini', (c.usage ->> 'input_tokens')::bigint,
      (c.usage ->> 'output_tokens')::bigint, 0, 0)).amount)::text as price,
    trim_scale(h.captured_amount)::text as captured
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${id}`;
  assert.ok(Number(c.price) > 10 && Number(c.price) < 15, `priced ${c.price}`);
  assert.equal((await holdRow(aiHold)).status, 'captured');
  assert.equal(c.charged, c.price, 'the call is charged its whole price');
  // The excess is one usage charge, drawn whole from lots: the hold past its TTL reserves nothing.
  const [x] = await testDb`select trim_scale(t.amount)::text as amount,
      trim_scale(${c.price}::numeric - ${c.captured}::numeric)::text as expected,
      t.metadata ->> 'priced' as priced, t.metadata ->> 'reserved' as reserved,
      trim_scale((select sum(al.amount) from billing.lot_allocations al where al.transfer_id = t.id))::text as drawn
    from billing.transfers t where t.idempotency_key = ${`ai-overage:${c.id}`} and t.kind = 'usage'`;
  assert.deepEqual(
    [x.amount, x.drawn, x.priced, x.reserved],
    [x.expected, x.expected, c.price, c.captured],
    JSON.stringify(x),
  );
  const [{ left }] = await testDb`select trim_scale(15 - ${c.price}::numeric)::text as left`;
  assert.equal((await own(id)).balance, left);
  assert.deepEqual(await seen(token), { balance: left, held: '0', available: left });
  await invariants();
});

Deno.test('AI calls for two models and the student holds at once on credits for some models: each paid by credits that may pay for it', async () => {
  const id = await newUser();
  const token = await userToken(id);
  assert.equal((await grantLot(id, '30', 'promo_grant', { applies_to: ['gpt-4o-mini*'] })).status, 201);
  assert.equal((await grantLot(id, '40', 'promo_grant')).status, 201);
  const calls = [
    ...Array.from({ length: 3 }, () => chat(token, 'words=5 first_byte_delay=50', 50)),
    ...Array.from({ length: 3 }, () => chat(token, 'words=5 first_byte_delay=50', 50, 'gpt-4o')),
  ];
  const holds = Array.from({ length: 4 }, async (_, i) => {
    const h = await hold(token, '5');
    assert.equal(h.status, 201, h.text);
    const c = await act(token, dataOf(h).hold_id, 'capture', { amount: String(1 + i) });
    assert.equal(c.status, 200, c.text);
  });
  const [ai] = await Promise.all([Promise.all(calls), Promise.all(holds)]);
  for (const r of ai) assert.equal(r.status, 200, r.text);
  // No credit for gpt-4o-mini only paid anything else; the balance is the grants less every charge.
  const [x] = await testDb`select
    (select count(*)::int from billing.lot_allocations al join billing.lots l on l.id = al.lot_id
      join billing.transfers t on t.id = al.transfer_id
      where l.account_id = a.id and l.applies_to is not null and al.amount > 0
        and coalesce(t.metadata ->> 'model', '') not like 'gpt-4o-mini%') as misdrawn,
    (select trim_scale(sum(l.remaining))::text from billing.lots l where l.account_id = a.id and l.open) as lots,
    trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
    trim_scale(70 - 10 - (select sum(c.charged) from billing.ai_calls c where c.user_id = ${id}))::text as expected
    from billing.accounts a where a.user_id = ${id}`;
  assert.deepEqual({ ...x }, { misdrawn: 0, lots: x.expected, balance: x.expected, held: '0', expected: x.expected });
  await invariants();
});

// ============================================================ a job's capture beside the student's holds

Deno.test('a metered job completing while the student captures and releases their own holds: the job pays 0.64 once, each hold once', async () => {
  const s = await funded('20');
  const ids = (await Promise.all(Array.from({ length: 4 }, () => hold(s.token, '2')))).map(holdIdOf);
  await overdue(ids[3]);
  const created = await api('/jobs', {
    token: s.token,
    headers: key(),
    body: {
      type: 'ai_completion',
      input: { model: 'gpt-4o', prompt: 'one two three four five six seven eight', max_tokens: 100 },
    },
  });
  assert.equal(created.status, 202, created.text);
  const job = (created.body.data as { job_id: string }).job_id;
  const [, ...answers] = await Promise.all([
    tick(),
    act(s.token, ids[0], 'capture', { amount: '1.5' }),
    act(s.token, ids[0], 'capture', { amount: '1.5' }),
    act(s.token, ids[1], 'release'),
    act(s.token, ids[2], 'capture'),
    act(s.token, ids[3], 'capture'),
  ]);
  assert.deepEqual(answers.map((r) => r.status), [200, 200, 200, 200, 409], answers.map((r) => r.text).join(' | '));
  assert.equal(codeOf(answers[4]), 'HOLD_EXPIRED');
  for (
    let i = 0;
    i < 50 && (await testDb`select status from billing.jobs where id = ${job}`)[0].status !== 'completed';
    i++
  ) {
    await tick();
  }
  const [j] = await testDb`select j.status, trim_scale(h.captured_amount)::text as captured
    from billing.jobs j join billing.holds h on h.id = j.hold_id where j.id = ${job}`;
  assert.deepEqual({ ...j }, { status: 'completed', captured: '0.64' });
  // 20 − 1.5 − 2 − 0.64 (the job held 7.1, beside the 6 still live, while the overdue 2 ended).
  assert.deepEqual(await seen(s.token), { balance: '15.86', held: '0', available: '15.86' });
  assert.deepEqual(await own(s.id), { balance: '15.86', held: '0' });
  await invariants();
});

Deno.test("a pool member's streamed AI calls and captures at once under their cap: the pool pays, the cap counts, each exactly once", async () => {
  const [admin, ada] = await Promise.all(['admin', 'ada'].map(person));
  const org = await school(admin, [ada], 'pool', '500');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: admin.token,
    body: { period: 'day', amount: '40' },
  });
  assert.equal(capped.status, 200, capped.text);
  const streamed = Array.from({ length: 3 }, async () => {
    const stream = await client(ada.token).chat.completions.create({
      model: 'gpt-4o-mini',
      messages: ask('#standin words=20 delay=10'),
      max_tokens: 50,
      stream: true,
      stream_options: { include_usage: true },
    });
    let cost = '0';
    for await (const chunk of stream) if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
    return cost;
  });
  const captures = Array.from({ length: 3 }, async (_, i) => {
    const id = holdIdOf(await hold(ada.token, '10'));
    const rs = await Promise.all([
      act(ada.token, id, 'capture', { amount: String(2 + i) }),
      act(ada.token, id, 'capture', { amount: String(2 + i) }),
    ]);
    for (const r of rs) {
      assert.equal(r.status, 200, r.text);
      assert.deepEqual([dataOf(r).captured, dataOf(r).balance, dataOf(r).org_id], [String(2 + i), '0', org]);
    }
    return 2 + i;
  });
  const [costs, captured] = await Promise.all([Promise.all(streamed), Promise.all(captures)]);
  const [x] = await testDb`select trim_scale(coalesce(sum(c.charged), 0))::text as ai from billing.ai_calls c
    where c.user_id = ${ada.id}`;
  const [{ spent, left }] = await testDb`select trim_scale(${x.ai}::numeric + 9)::text as spent,
    trim_scale(500 - 9 - ${x.ai}::numeric)::text as left`;
  assert.equal(captured.reduce((n, c) => n + c, 0), 9);
  assert.equal(costs.reduce((n, c) => n + Number(c), 0).toFixed(6), Number(x.ai).toFixed(6));
  assert.deepEqual(await accountOf(org, null), { balance: left, held: '0' });
  const [cap] =
    await testDb`select trim_scale(spent)::text as spent from billing.spend_caps where member_id = ${ada.id}`;
  assert.equal(cap.spent, spent, "the member's cap counts the calls and the captures");
  await invariants();
});
