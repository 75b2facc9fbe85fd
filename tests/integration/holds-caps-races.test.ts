// The writer answers what an account has (billing.post_transfers: applied, exists, insufficient,
// capped), and counts spend caps for usage and for holds itself. Attacked as a student and as a
// school member, over real HTTP, with only their tokens; the operator only sets up (grants,
// schools, caps, the minute sweep, and time passing on a hold). After each scenario: the ledger's
// invariants, exact amounts, and what the caps counted equals what was charged in the period.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, gatewayUrl } from '../support/ai.ts';
import { api, assertLedgerInvariants, holdsLapse, key, student, testDb } from '../support/helpers.ts';
import { batch, codeOf, dataOf, type Json, outcomesOf, usageEvent } from '../support/money.ts';
import { person, school } from '../support/orgs.ts';

const client = (token: string) => new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 });
const hold = (token: string, amount: string, ttl = 600, headers = key()) =>
  api('/credits/holds', { token, headers, body: { amount, ttl_seconds: ttl } });
const release = (token: string, id: unknown) =>
  api(`/credits/holds/${id}/release`, { token, headers: key(), body: {} });
const setCap = async (token: string, body: Json, path = '/credits/caps') => {
  const r = await api(path, { method: 'PUT', token, body });
  assert.equal(r.status, 200, r.text);
};

/** The user's own account: balance, held, and balance − held (never below zero). */
async function accountOf(userId: string) {
  const [a] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held,
    trim_scale(balance - held)::text as room from billing.accounts where user_id = ${userId}`;
  return a;
}

/** What an account's caps counted this period, beside what its usage, captures and live holds spent in it. */
async function capsAgree(accountWhere: { user?: string; org?: string }, member: string | null = null) {
  const rows = await testDb`
    with acct as (select a.id from billing.accounts a
                  where (a.user_id = ${accountWhere.user ?? null} or (a.org_id = ${
    accountWhere.org ?? null
  } and a.member_id is null)))
    select s.id, trim_scale(s.spent)::text as spent,
      trim_scale(coalesce((select sum(t.amount) from billing.transfers t
         where t.from_account_id = s.account_id and t.kind in ('usage', 'hold_capture') and t.created_at >= s.created_at
           and (s.member_id is null or t.member_id = s.member_id)), 0)
       + coalesce((select sum(h.amount) from billing.holds h
         where h.account_id = s.account_id and h.status = 'active' and h.purpose <> 'dispute' and h.created_at >= s.created_at
           and (s.member_id is null or h.member_id = s.member_id)), 0))::text as charged
    from billing.spend_caps s where s.account_id in (select id from acct)
      and s.member_id is not distinct from coalesce(${member}::uuid, s.member_id) and s.model is null`;
  for (const r of rows) {
    assert.equal(r.spent, r.charged, `cap ${r.id} counted what was charged: ${JSON.stringify(rows)}`);
  }
  return rows;
}

Deno.test('an AI call whose hold ended under it, finishing while another hold is past its TTL, is charged its whole price from the credits that hold no longer reserves', async () => {
  const s = await student('100');
  const stream = await client(s.token).chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=30 delay=200'), // ~6 s: the work at chunk 2 lands while it streams
    max_tokens: 100,
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0, cost = '', failed: unknown = null;
  try {
    for await (const chunk of stream) {
      if (++chunks === 2) {
        // The call outlives its hold (time passes on it) and the minute sweep ends it.
        await holdsLapse(
          testDb`h.account_id = (select a.id from billing.accounts a where a.user_id = ${s.id}) and h.purpose = 'ai'`,
        );
        await testDb`select billing.release_expired_holds(100000)`;
        // The student holds nearly all of it, then lets the hold lapse (no sweep yet).
        const h = await hold(s.token, '99.99');
        assert.equal(h.status, 201, h.text);
        await holdsLapse(testDb`h.id = ${dataOf(h).hold_id as string}`);
      }
      if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
    }
  } catch (err) {
    failed = err;
  }
  const [c] = await testDb`select id, status, trim_scale(coalesce(charged, 0))::text as charged
    from billing.ai_calls where user_id = ${s.id} and status <> 'refused'`;
  assert.equal(failed, null, `the answer ended cleanly: ${failed}`);
  assert.equal(c.status, 'charged', `the call was settled, not left held and uncharged: ${JSON.stringify(c)}`);
  assert.ok(Number(cost) > 0 && cost === c.charged, `the answer's cost is what was charged (${cost}, ${c.charged})`);
  const a = await accountOf(s.id);
  assert.ok(Number(a.room) >= 0, `never overdrawn: ${JSON.stringify(a)}`);
  // The sweep ends the lapsed hold. Its hold had ended, so the whole price was the excess: charged
  // (as usage keyed by the call) from the 100 credits, all of which the lapsed hold gave back; no debt.
  await testDb`select billing.release_expired_holds(100000)`;
  const [x] = await testDb`select trim_scale(sum(t.amount))::text as amount,
      trim_scale(sum((select sum(al.amount) from billing.lot_allocations al where al.transfer_id = t.id)))::text as drawn
    from billing.transfers t where t.idempotency_key like ${`ai-overage:${c.id}%`} and t.kind = 'usage'`;
  assert.deepEqual({ ...x }, { amount: c.charged, drawn: c.charged }, 'the excess is drawn whole from the lot');
  const balance = String(100 - Number(c.charged));
  assert.deepEqual({ ...await accountOf(s.id) }, { balance, held: '0', room: balance });
  await assertLedgerInvariants();
});

Deno.test("a member racing 20 holds at a pool under their own cap gets exactly the cap, counted once; the refusals never show the pool's balance; releases give it all back", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'pool', '1234.567');
  await setCap(owner.token, { period: 'day', amount: '50' }, `/orgs/${org}/members/${ada.id}/cap`);
  const results = await Promise.all(Array.from({ length: 20 }, () => hold(ada.token, '10')));
  const ok = results.filter((r) => r.status === 201);
  assert.equal(ok.length, 5, results.map((r) => r.status).join(','));
  for (const r of results.filter((r) => r.status !== 201)) {
    assert.equal(r.status, 402, r.text);
    // Every figure of the pool's (its balance, what it has left) ends in .567: a JSON value that is
    // such a decimal, never a timestamp's milliseconds or digits inside an id.
    assert.ok(!/[":]\d+\.567["\],}]/.test(r.text), `no pool balance in a refusal: ${r.text}`);
  }
  const [{ spent }] =
    await testDb`select trim_scale(spent)::text as spent from billing.spend_caps where member_id = ${ada.id}`;
  assert.equal(spent, '50', 'five holds of 10, counted once each');
  await Promise.all(ok.map((r) => release(ada.token, dataOf(r).hold_id)));
  const [after] = await testDb`select trim_scale(s.spent)::text as spent, trim_scale(a.held)::text as held
    from billing.spend_caps s join billing.accounts a on a.id = s.account_id where s.member_id = ${ada.id}`;
  assert.deepEqual(after, { spent: '0', held: '0' }, 'released holds give back all they counted');
  await assertLedgerInvariants();
});

Deno.test('one hold request replayed 20 times at once under the same Idempotency-Key counts against the cap once', async () => {
  const s = await student('100');
  await setCap(s.token, { period: 'day', amount: '30' });
  const k = key();
  const results = await Promise.all(Array.from({ length: 20 }, () => hold(s.token, '25', 600, k)));
  assert.ok(results.every((r) => r.status === 201), results.map((r) => `${r.status} ${codeOf(r)}`).join(','));
  assert.equal(new Set(results.map((r) => dataOf(r).hold_id)).size, 1, 'one hold');
  const [c] = await testDb`select trim_scale(s.spent)::text as spent, trim_scale(a.held)::text as held
    from billing.spend_caps s join billing.accounts a on a.id = s.account_id where a.user_id = ${s.id}`;
  assert.deepEqual(c, { spent: '25', held: '25' });
  assert.equal((await hold(s.token, '6')).status, 402, 'the cap has 5 left, not less');
  assert.equal((await hold(s.token, '5')).status, 201);
  await capsAgree({ user: s.id });
  await assertLedgerInvariants();
});

Deno.test('a batch takes each refusal from the writer: a short event and a capped one are refused alone, the rest charged exactly, the cap counts only what was charged', async () => {
  const s = await student('10');
  await setCap(s.token, { period: 'day', amount: '6' });
  const held = await hold(s.token, '3');
  assert.equal(held.status, 201, held.text);
  // available 7, cap room 3 (the hold counted 3 of 6): 2 applied, 2 capped (2+2 > 3), 1 applied.
  const ids = ['a', 'b', 'c', 'd'].map((x) => `${x}-${crypto.randomUUID()}`);
  const r = await batch([
    usageEvent(s.id, ids[0], 2),
    usageEvent(s.id, ids[1], 2),
    usageEvent(s.id, ids[2], 8),
    usageEvent(s.id, ids[3], 1),
  ]);
  assert.equal(r.status, 200, r.text);
  const out = outcomesOf(r) as (Json & { status: string })[];
  assert.deepEqual(out.map((o) => o.status), ['applied', 'cap_reached', 'insufficient', 'applied'], r.text);
  assert.deepEqual([out[2].required, out[2].available], ['8', '5']);
  assert.deepEqual(await accountOf(s.id), { balance: '7', held: '3', room: '4' });
  const caps = await capsAgree({ user: s.id });
  assert.equal(caps[0].spent, '6');
  // The same batch again: every event a duplicate or refused as before, nothing counted again.
  const again = await batch([
    usageEvent(s.id, ids[0], 2),
    usageEvent(s.id, ids[1], 2),
    usageEvent(s.id, ids[2], 8),
    usageEvent(s.id, ids[3], 1),
  ]);
  assert.deepEqual(outcomesOf(again).map((o) => o.status), ['duplicate', 'cap_reached', 'insufficient', 'duplicate']);
  await capsAgree({ user: s.id });
  await assertLedgerInvariants();
});

Deno.test('parallel AI calls of a member under their cap on a pool, each billed past its hold: the cap counts what the pool was charged; holds fit the cap, only the excess passes it', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'pool', '1000');
  await setCap(owner.token, { period: 'day', amount: '40' }, `/orgs/${org}/members/${ada.id}/cap`);
  const calls = await Promise.allSettled(Array.from({ length: 12 }, () =>
    client(ada.token).chat.completions.create({
      model: 'gpt-4o',
      messages: ask('#standin words=20 extra_prompt=200'),
      max_tokens: 60,
    })));
  assert.ok(
    calls.some((c) => c.status === 'fulfilled'),
    `some calls fit: ${calls.map((c) => c.status === 'rejected' ? String(c.reason) : 'ok')}`,
  );
  assert.ok(calls.some((c) => c.status === 'rejected'), 'some calls do not');
  for (const c of calls) {
    if (c.status === 'rejected') {
      assert.ok(c.reason instanceof OpenAI.APIError && c.reason.status === 402, String(c.reason));
      const d = (c.reason.error as { details: { available: string; wallets: Json[] } }).details;
      assert.equal(d.available, '0', "only the member's own");
      assert.ok(d.wallets.every((w) => w.wallet !== 'organisation' || w.available === undefined), JSON.stringify(d));
    }
  }
  // The provider bills 200 prompt tokens (4 credits) past each hold: that excess is charged whole
  // to the pool, counted against her cap past it if it must; what the holds reserved fits the cap.
  const [r] = await testDb`select trim_scale(s.spent)::text as spent,
    trim_scale((select sum(t.amount) from billing.transfers t where t.member_id = ${ada.id}
      and t.kind in ('usage', 'hold_capture')))::text as charged,
    trim_scale((select sum(t.amount) from billing.transfers t where t.member_id = ${ada.id}
      and t.kind = 'hold_capture'))::text as captured,
    (select count(*)::int from billing.ai_calls c join billing.holds h on h.id = c.hold_id
      where c.user_id = ${ada.id} and c.status = 'charged' and (c.charged <= h.amount
        or c.charged - h.captured_amount is distinct from (select sum(t.amount) from billing.transfers t
          where t.kind = 'usage' and t.idempotency_key like 'ai-overage:' || c.id || '%'))) as not_once,
    trim_scale((select sum(c.charged) from billing.ai_calls c where c.user_id = ${ada.id}))::text as priced,
    (select trim_scale(a.balance)::text from billing.accounts a where a.org_id = ${org} and a.member_id is null) as pool,
    trim_scale(1000 - (select sum(t.amount) from billing.transfers t where t.member_id = ${ada.id}
      and t.kind in ('usage', 'hold_capture')))::text as rest,
    (select count(*)::int from billing.holds h where h.member_id = ${ada.id} and h.status = 'active') as live
    from billing.spend_caps s where s.member_id = ${ada.id}`;
  assert.equal(r.live, 0);
  assert.equal(r.spent, r.charged, JSON.stringify(r));
  assert.equal(r.priced, r.charged, `each call charged its whole price: ${JSON.stringify(r)}`);
  assert.equal(
    r.not_once,
    0,
    `every call cost more than its hold, its excess charged exactly once: ${JSON.stringify(r)}`,
  );
  assert.ok(Number(r.captured) <= 40, JSON.stringify(r));
  // A call was refused once the cap had less than a hold (3.94) left, and every call then running
  // still charged its excess (2.80): the count ends past the cap (at least six calls, 40.44).
  assert.ok(Number(r.spent) > 40, `the excess is counted past the cap: ${JSON.stringify(r)}`);
  assert.equal(r.pool, r.rest, 'the pool paid it all');
  await assertLedgerInvariants();
});
