// An outside attack on the money path after 20261125000100_money_path_diet (the transfer is
// written first and a refusal rolls it back; replays find it; platform sides have no entries),
// with students' tokens only (their usage reported for them by the server, as the product does;
// an admin's grant, the operator's batch route, for setup).
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env, fund, newUser, testDb, userToken } from '../helpers.ts';
import { key, person, school } from '../orgs.ts';
import { codeOf, dataOf, type Json, spendWith, usageBody } from '../money.ts';

async function student(credits: string | null) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

/** Every transfer touching the user's own account, and its entries. */
async function ledgerOf(user: string) {
  const [r] = await testDb`
    select (select count(*) from billing.transfers t where t.from_account_id = a.id or t.to_account_id = a.id)::int as transfers,
           (select count(*) from billing.entries e where e.account_id = a.id)::int as entries,
           trim_scale(a.balance)::text as balance
    from billing.accounts a where a.user_id = ${user}`;
  return r ?? { transfers: 0, entries: 0, balance: null };
}
/** Ledger transfers written under a user's HTTP Idempotency-Key. */
const transfersUnder = async (user: string, action: string, k: string) =>
  (await testDb`select count(*)::int as n from billing.transfers
    where idempotency_key = ${`http:${user}:${action}:${k}`}`)[0].n as number;

Deno.test('20 parallel POST /credits/usage with one key: one transfer, identical answers; another body is IDEMPOTENCY_KEY_REUSED', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const rs = await Promise.all(Array.from({ length: 20 }, () => spendWith(s.token, k, 3)));
  for (const r of rs) assert.equal(r.status, 201, r.text);
  const answers = new Set(rs.map((r) => JSON.stringify(dataOf(r))));
  assert.equal(answers.size, 1, `one answer: ${[...answers].join(' | ')}`);
  assert.equal(await transfersUnder(s.id, 'credits.usage', k), 1);
  assert.deepEqual(await ledgerOf(s.id), { transfers: 2, entries: 2, balance: '97' });
  const other = await spendWith(s.token, k, 4);
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', other.text);
  assert.deepEqual(await ledgerOf(s.id), { transfers: 2, entries: 2, balance: '97' });
  await assertLedgerInvariants();
});

Deno.test('20 parallel holds and captures with one key: one hold, one capture, identical answers', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const hold = () =>
    api('/credits/holds', {
      token: s.token,
      headers: { 'idempotency-key': k },
      body: { amount: '30', ttl_seconds: 600 },
    });
  const hs = await Promise.all(Array.from({ length: 20 }, hold));
  for (const r of hs) assert.equal(r.status, 201, r.text);
  assert.equal(new Set(hs.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  const id = dataOf(hs[0]).hold_id as string;
  assert.equal(
    (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${s.id}`)[0].n,
    1,
  );
  const reused = await api('/credits/holds', {
    token: s.token,
    headers: { 'idempotency-key': k },
    body: { amount: '31', ttl_seconds: 600 },
  });
  assert.equal(codeOf(reused), 'IDEMPOTENCY_KEY_REUSED', reused.text);

  const ck = crypto.randomUUID();
  const capture = (amount: string, kk = ck) =>
    api(`/credits/holds/${id}/capture`, { token: s.token, headers: { 'idempotency-key': kk }, body: { amount } });
  const cs = await Promise.all(Array.from({ length: 20 }, () => capture('12')));
  for (const r of cs) assert.equal(r.status, 200, r.text);
  assert.equal(new Set(cs.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  assert.equal(codeOf(await capture('13')), 'IDEMPOTENCY_KEY_REUSED');
  // Another key captures nothing more: the hold is captured once.
  const again = await Promise.all(Array.from({ length: 5 }, () => capture('12', crypto.randomUUID())));
  for (const r of again) assert.notEqual(r.status, 500, r.text);
  assert.equal((await testDb`select count(*)::int as n from billing.transfers where hold_id = ${id}`)[0].n, 1);
  assert.deepEqual(await ledgerOf(s.id), { transfers: 2, entries: 2, balance: '88' });
  await assertLedgerInvariants();
});

Deno.test('a refusal leaves no transfer; funded, the same key answers the stored refusal; another key spends', async () => {
  for (const start of [null, '5']) { // no account yet, and an account short of credits
    const s = await student(start);
    const before = await ledgerOf(s.id);
    const k = crypto.randomUUID();
    const refused = await spendWith(s.token, k, 10);
    assert.equal(refused.status, 402, refused.text);
    assert.equal(codeOf(refused), 'INSUFFICIENT_CREDITS');
    assert.deepEqual(await ledgerOf(s.id), before, 'nothing left behind by the refusal');
    assert.equal(await transfersUnder(s.id, 'credits.usage', k), 0);
    await fund(s.id, '100');
    const funded = await ledgerOf(s.id);
    const replay = await spendWith(s.token, k, 10);
    assert.equal(replay.status, 402, replay.text);
    assert.equal(replay.text, refused.text, 'the stored refusal, byte for byte');
    assert.equal(await transfersUnder(s.id, 'credits.usage', k), 0);
    assert.deepEqual(await ledgerOf(s.id), funded);
    const k2 = crypto.randomUUID();
    const ok = await spendWith(s.token, k2, 10);
    assert.equal(ok.status, 201, ok.text);
    assert.equal(await transfersUnder(s.id, 'credits.usage', k2), 1);
    // A refused hold leaves nothing either.
    const h = await api('/credits/holds', {
      token: s.token,
      headers: key(),
      body: { amount: '1000', ttl_seconds: 600 },
    });
    assert.equal(h.status, 402, h.text);
    assert.equal(
      (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
        where a.user_id = ${s.id}`)[0].n,
      0,
    );
  }
  await assertLedgerInvariants();
});

Deno.test('a cap refusal after the transfer is written commits nothing: the cap room and the ledger are unchanged', async () => {
  const s = await student('100');
  const set = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '10' } });
  assert.equal(set.status, 200, set.text);
  assert.equal((await spendWith(s.token, crypto.randomUUID(), 8)).status, 201);
  const before = await ledgerOf(s.id);
  const k = crypto.randomUUID();
  const over = await Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, k, 5)));
  for (const r of over) assert.equal(codeOf(r), 'SPEND_CAP_REACHED', r.text);
  assert.equal(new Set(over.map((r) => r.text)).size, 1);
  assert.equal(await transfersUnder(s.id, 'credits.usage', k), 0);
  assert.deepEqual(await ledgerOf(s.id), before);
  const [cap] = (dataOf(await api('/credits/caps', { token: s.token })) as { items: Json[] }).items;
  assert.deepEqual([cap.spent, cap.remaining], ['8', '2']);
  // What is left fits, in parallel: exactly two 1-credit charges of ten.
  const rs = await Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, crypto.randomUUID(), 1)));
  assert.equal(rs.filter((r) => r.status === 201).length, 2, rs.map((r) => r.status).join());
  assert.deepEqual((await ledgerOf(s.id)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test("a student's second account in their own pooled school: answers never show the pool, keys never cross wallets", async () => {
  const [owner, second] = await Promise.all(['owner', 'second'].map(person));
  const org = await school(owner, [second], 'pool', '12345.678');
  await fund(second.id, '7');
  const own = async () => dataOf(await api('/credits/balance', { token: second.token }));
  // The same key used by the owner (personal spending) and by the member (pool spending).
  const k = crypto.randomUUID();
  await fund(owner.id, '50');
  const ownerSpend = await spendWith(owner.token, k, 2);
  assert.equal(ownerSpend.status, 201, ownerSpend.text);
  assert.equal(dataOf(ownerSpend).paid_by, 'self');
  const rs = await Promise.all(Array.from({ length: 10 }, () => spendWith(second.token, k, 20)));
  for (const r of rs) {
    assert.equal(r.status, 201, r.text);
    assert.ok(!/12345|12325|\.678/.test(r.text), `the pool's balance is not in the answer: ${r.text}`);
  }
  assert.equal(new Set(rs.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  const d = dataOf(rs[0]);
  const mine = await own();
  assert.deepEqual(d.paid_by, { org_id: org });
  assert.deepEqual([d.balance, d.available], [mine.balance, mine.available]);
  assert.equal(mine.balance, '7', 'the pool paid, not the personal account');
  assert.equal(await transfersUnder(second.id, 'credits.usage', k), 1);
  assert.equal(await transfersUnder(owner.id, 'credits.usage', k), 1);
  // The pool drained below a charge: the same key still answers what it did; too much is a 402
  // that names no pool balance and leaves nothing behind.
  const before = await ledgerOf(second.id);
  const tooMuch = await spendWith(second.token, crypto.randomUUID(), 20000);
  assert.equal(tooMuch.status, 402, tooMuch.text);
  assert.ok(!/12345|12325|\.678/.test(tooMuch.text), tooMuch.text);
  assert.deepEqual(await ledgerOf(second.id), before);
  // A hold from the pool: the member's own balance in the answer.
  const h = await api('/credits/holds', {
    token: second.token,
    headers: key(),
    body: { amount: '100', ttl_seconds: 600 },
  });
  assert.equal(h.status, 201, h.text);
  assert.deepEqual([dataOf(h).balance, dataOf(h).org_id], ['7', org]);
  const c = await api(`/credits/holds/${dataOf(h).hold_id}/capture`, {
    token: second.token,
    headers: key(),
    body: { amount: '1' },
  });
  assert.equal(c.status, 200, c.text);
  assert.ok(!/12345|1222|\.678/.test(c.text), c.text);
  assert.deepEqual([dataOf(c).balance, dataOf(c).org_id], ['7', org]);
  await assertLedgerInvariants();
});

Deno.test('/credits/usage/batch: duplicate event ids in one batch and across parallel batches charge once', async () => {
  const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
  const [owner, member] = await Promise.all(['owner', 'member'].map(person));
  await school(owner, [member], 'pool', '1000');
  const plain = await student('100');
  const ev = (user: string, id: string) => ({
    event_id: id,
    user_id: user,
    ...usageBody(2),
    occurred_at: new Date().toISOString(),
  });
  const ids = [crypto.randomUUID(), crypto.randomUUID()];
  const events = [ev(plain.id, ids[0]), ev(member.id, ids[1]), ev(plain.id, ids[0]), ev(member.id, ids[1])];
  const rs = await Promise.all(
    Array.from({ length: 8 }, () => api('/credits/usage/batch', { headers: service, body: { events } })),
  );
  for (const r of rs) assert.equal(r.status, 200, r.text);
  const applied = rs.flatMap((r) => (dataOf(r).outcomes as Json[]).filter((o) => o.status === 'applied'));
  assert.equal(applied.length, 2, JSON.stringify(applied));
  for (const [id, user] of [[ids[0], plain.id], [ids[1], member.id]]) {
    assert.equal(
      (await testDb`select count(*)::int as n from billing.transfers where idempotency_key = ${`usage-event:${user}:${id}`}`)[
        0
      ]
        .n,
      1,
    );
  }
  assert.equal((await ledgerOf(plain.id)).balance, '98');
  await assertLedgerInvariants();
});
