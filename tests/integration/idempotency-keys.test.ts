// An Idempotency-Key names one request of one user on one route (docs/api.md): the same request
// again, at once or later, answers the first (a charge, a hold, a capture, or a refusal) and moves
// nothing more; another request under the key is IDEMPOTENCY_KEY_REUSED, whichever of the usage
// paths (the fast path, the general one with caps or a school) charged it; a key and its
// `sha256:` look-alike are two keys; ledger fields planted in metadata never reach the record.
// The transfer is written first and a refusal rolls it back; platform accounts have no entries.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  assertPlatformBalances,
  fund,
  key,
  newUser,
  sha256hex,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { charged, codeOf, dataOf, ledgerOf, report, spendWith, transfersUnder, usageBody } from '../support/money.ts';
import { person, school, walletOf } from '../support/orgs.ts';
import { balanceOf } from '../support/purchases.ts';

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

Deno.test('a request under a charged key with an unknown model is refused as key reuse, and the charge still replays', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10); // the fast path: the transfer is the record
  assert.equal(first.status, 201, first.text);
  const other = await report(s.token, k, { model: 'no-such-model', input_tokens: 1, output_tokens: 1 });
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 201, `the first request, retried, answers its charge: ${retry.text}`);
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', `another request under a used key: ${other.text}`);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  assert.equal((await balanceOf(s.token)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test('a zero-priced request under a charged key is refused as key reuse, not answered "charged 0"', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const zero = await report(s.token, k, { model: 'gpt-4o', input_tokens: 0, output_tokens: 0 });
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 201, `the first request, retried, answers its charge: ${retry.text}`);
  assert.equal(codeOf(zero), 'IDEMPOTENCY_KEY_REUSED', `another request under a used key: ${zero.text}`);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  await assertLedgerInvariants();
});

Deno.test("two different Idempotency-Keys are two charges, even when one is the other's sha256: form", async () => {
  const s = await student('100');
  const long = 'k'.repeat(255);
  const lookalike = 'sha256:' + await sha256hex(long);
  const a = await spendWith(s.token, long, 10);
  const b = await spendWith(s.token, lookalike, 10);
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201, b.text);
  assert.notEqual(dataOf(b).transfer_id, dataOf(a).transfer_id, 'a second usage report under another key is charged');
  assert.equal((await charged(s.id)).n, 2);
  assert.equal((await balanceOf(s.token)).balance, '80');
  await assertLedgerInvariants();
});

Deno.test('a refusal, a top-up, then the same request: the stored refusal answers, nothing is charged', async () => {
  const s = await student('5');
  const k = crypto.randomUUID();
  const refused = await spendWith(s.token, k, 10);
  assert.equal(refused.status, 402, refused.text);
  await fund(s.id, '100');
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 402, `the retry answers the stored refusal: ${retry.text}`);
  assert.equal(retry.headers.get('idempotent-replayed') ?? 'true', 'true');
  assert.equal((await charged(s.id)).n, 0);
  assert.equal((await balanceOf(s.token)).balance, '105');
});

Deno.test('a charged key retried after the student set a cap, and after removing it, replays the one charge', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const cap = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '15' } });
  assert.equal(cap.status, 200, cap.text);
  const capped = await spendWith(s.token, k, 10);
  assert.equal(capped.status, 201, capped.text);
  assert.equal(
    dataOf(capped).transfer_id,
    dataOf(first).transfer_id,
    "the general path found the fast path's transfer",
  );
  const otherBody = await spendWith(s.token, k, 11);
  assert.equal(codeOf(otherBody), 'IDEMPOTENCY_KEY_REUSED', otherBody.text);
  const off = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  assert.equal(off.status, 200, off.text);
  const again = await spendWith(s.token, k, 10);
  assert.equal(again.status, 201, again.text);
  assert.equal(dataOf(again).transfer_id, dataOf(first).transfer_id);
  // A key the general path charged (under the cap), retried once the cap is gone.
  const cap2 = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '50' } });
  assert.equal(cap2.status, 200, cap2.text);
  const k2 = crypto.randomUUID();
  const general = await spendWith(s.token, k2, 5);
  assert.equal(general.status, 201, general.text);
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  const fastRetry = await spendWith(s.token, k2, 5);
  assert.equal(dataOf(fastRetry).transfer_id, dataOf(general).transfer_id, fastRetry.text);
  const fastOther = await spendWith(s.token, k2, 6);
  assert.equal(codeOf(fastOther), 'IDEMPOTENCY_KEY_REUSED', fastOther.text);
  assert.equal((await charged(s.id)).n, 2);
  assert.equal((await balanceOf(s.token)).balance, '85');
  await assertLedgerInvariants();
});

Deno.test('the same usage request 20 times at once, and 5 others under its key, make one charge', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const amounts = [...Array.from({ length: 20 }, () => 7), ...Array.from({ length: 5 }, (_, i) => 8 + i)];
  const all = await Promise.all(amounts.map((amount) => spendWith(s.token, k, amount)));
  // Whichever request reaches the key first owns it (usually one of the twenty, not always):
  // every request like it is answered its charge, every other one is refused.
  const first = amounts[all.findIndex((r) => r.status === 201)];
  assert.ok(first !== undefined, all.map((r) => r.status).join());
  const same = all.filter((_, i) => amounts[i] === first);
  const others = all.filter((_, i) => amounts[i] !== first);
  assert.ok(same.every((r) => r.status === 201), same.map((r) => r.status).join());
  assert.equal(new Set(same.map((r) => dataOf(r).transfer_id)).size, 1);
  assert.ok(others.every((r) => codeOf(r) === 'IDEMPOTENCY_KEY_REUSED'), others.map((r) => r.text).join());
  assert.equal((await charged(s.id)).n, 1);
  assert.equal((await balanceOf(s.token)).balance, String(100 - first));
  await assertLedgerInvariants();
});

Deno.test('planted request_hash, request_id and held_after in usage metadata are refused and never reach the record', async () => {
  const s = await student('100');
  for (const planted of ['request_hash', 'request_id', 'held_after']) {
    const r = await report(s.token, crypto.randomUUID(), { ...usageBody(1), metadata: { [planted]: '90' } });
    assert.equal(r.status, 400, `${planted}: ${r.text}`);
  }
  // Below the API (a server calling SQL as the functions do): the ledger drops them.
  const k = crypto.randomUUID();
  const args = {
    ...usageBody(10),
    metadata: { request_hash: 'x', request_id: 'forged', held_after: '-1000', note: 'n' },
  };
  const [r1] = await testDb`select * from billing.run_usage_report(${s.id}, 'credits.usage', ${k}, 'h1', 'req-1',
                              ${testDb.json(args)}, 201)`;
  assert.equal(r1.status, 201, JSON.stringify(r1));
  const [t] = await testDb`select metadata from billing.transfers where id = ${r1.data.transfer_id}`;
  assert.equal(t.metadata.request_hash, 'h1');
  assert.equal(t.metadata.request_id, 'req-1');
  assert.equal(t.metadata.held_after, undefined);
  const [r2] = await testDb`select * from billing.run_usage_report(${s.id}, 'credits.usage', ${k}, 'h1', 'req-2',
                              ${testDb.json(args)}, 201)`;
  assert.equal(r2.replayed, true);
  assert.equal(r2.data.available, '90', 'the replay answers what was available, not a planted figure');
  await assertLedgerInvariants();
});

Deno.test('a key the fast path charged, retried after the student joined a school, replays: the wallet pays nothing', async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  await fund(ada.id, '100');
  const k = crypto.randomUUID();
  const first = await spendWith(ada.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const org = await school(owner, [ada], 'pool', '100');
  const retry = await spendWith(ada.token, k, 10);
  assert.equal(retry.status, 201, retry.text);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  assert.equal((await walletOf(owner.token, org)).balance, '100', 'the school paid nothing for a replay');
  assert.equal((await balanceOf(ada.token)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test("a member's charge the school paid, retried after removal and after the stored answer expired, never charges the student", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  await fund(ada.id, '100');
  const org = await school(owner, [ada], 'pool', '100');
  const k = crypto.randomUUID();
  const first = await spendWith(ada.token, k, 10);
  assert.equal(first.status, 201, first.text);
  assert.equal((await walletOf(owner.token, org)).balance, '90', 'the pool paid');
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const within = await spendWith(ada.token, k, 10);
  assert.equal(dataOf(within)?.transfer_id, dataOf(first).transfer_id, within.text);
  // A day passes: the stored answer expires (and is swept); the transfer stays.
  await testDb`delete from billing.idempotency_keys where user_id = ${ada.id}`;
  const later = await spendWith(ada.token, k, 10);
  assert.ok(later.status === 201 || codeOf(later) === 'IDEMPOTENCY_KEY_REUSED', later.text);
  assert.equal((await balanceOf(ada.token)).balance, '100', "the student's own account was never charged");
  assert.equal((await charged(ada.id)).n, 0);
  await assertLedgerInvariants();
});

Deno.test("one Idempotency-Key on every route and on both of a student's accounts: each use is its own", async () => {
  const ids = [await newUser(), await newUser()];
  const [a, b] = await Promise.all(ids.map(async (id) => ({ id, token: await userToken(id) })));
  await Promise.all([fund(a.id, '100'), fund(b.id, '100')]);
  const k = crypto.randomUUID();
  for (const s of [a, b]) {
    const [u, h] = await Promise.all([
      spendWith(s.token, k, 3),
      api('/credits/holds', {
        token: s.token,
        headers: { 'idempotency-key': k },
        body: { amount: '10', ttl_seconds: 600 },
      }),
    ]);
    assert.equal(u.status, 201, u.text);
    assert.equal(h.status, 201, h.text);
    const hold = dataOf(h).hold_id as string;
    // Capture and release with the same key, in parallel, 10 each: one of them wins, no 5xx.
    const rs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api(`/credits/holds/${hold}/${i % 2 ? 'release' : 'capture'}`, {
          token: s.token,
          headers: { 'idempotency-key': k },
          body: i % 2 ? {} : { amount: '4' },
        })),
    );
    for (const r of rs) assert.ok(r.status < 500, r.text);
    const [{ status }] = await testDb`select status from billing.holds where id = ${hold}`;
    const captured = status === 'captured';
    const bal = await balanceOf(s.token);
    assert.deepEqual([bal.balance, bal.held], [captured ? '93' : '97', '0'], `${status}: ${JSON.stringify(bal)}`);
    assert.equal(
      (await testDb`select count(*)::int as n from billing.transfers where hold_id = ${hold}`)[0].n,
      captured ? 1 : 0,
    );
  }
  // The other account's key never answered for this one.
  const [t] = await testDb`select count(distinct from_account_id)::int as n from billing.transfers
    where idempotency_key in (${`http:${a.id}:credits.usage:${k}`}, ${`http:${b.id}:credits.usage:${k}`})`;
  assert.equal(t.n, 2);
  await assertPlatformBalances();
});

Deno.test('one Idempotency-Key used for grants to two organisations makes two grants, not a replay', async () => {
  const [a, b] = await Promise.all(['a', 'b'].map(person));
  const [orgA, orgB] = [await school(a, [], 'allowance', null), await school(b, [], 'allowance', null)];
  const admin = await adminToken();
  const same = { 'idempotency-key': crypto.randomUUID() };
  for (const org of [orgA, orgB]) {
    const r = await api(`/orgs/${org}/grants`, { token: admin, headers: same, body: { amount: '7', reason: 'pilot' } });
    assert.equal(r.status, 201, r.text);
  }
  assert.equal((await walletOf(a.token, orgA)).balance, '7');
  assert.equal((await walletOf(b.token, orgB)).balance, '7');
});
