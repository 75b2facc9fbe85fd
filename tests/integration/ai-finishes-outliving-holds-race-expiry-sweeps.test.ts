// Calls that outlive their holds (each finish meets its account fell due, and is sent again with
// billing.settle_holder in front) while pg_cron's sweeps run on the same accounts over and over
// (billing.release_expired_holds, billing.expire_lots): no deadlock left unresolved, every answer
// the students read is charged once, nothing stays held, and the ledger balances.
import assert from 'node:assert/strict';
import { ask, callsOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, holdsLapse, testDb } from '../support/helpers.ts';

Deno.test('finishes settling in front of themselves race the expiry sweeps: every answer charged once', async () => {
  const students = await Promise.all(Array.from({ length: 3 }, () => student('100')));
  const pending = students.flatMap((s) =>
    Array.from({ length: 3 }, (_, i) =>
      s.openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: ask(`hi ${i} #standin words=3 first_byte_delay=2000`),
        max_tokens: 20,
      }))
  );
  const ids = students.map((s) => s.id);
  // Every call under way, then every hold past its TTL: each finish meets its account fell due.
  for (let i = 0; i < 60; i++) {
    const [{ n }] = await testDb`select count(*)::int as n from billing.ai_calls
      where user_id = any(${ids}::uuid[]) and status = 'held'`;
    if (n === 9) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await holdsLapse(testDb`h.account_id in (select id from billing.accounts where user_id = any(${ids}::uuid[]))
    and h.status = 'active'`);
  let sweeping = true;
  const sweeps = (async () => {
    let n = 0;
    while (sweeping) {
      await Promise.all([
        testDb`select billing.release_expired_holds(100000)`,
        testDb`select billing.expire_lots(100000)`,
      ]);
      n++;
    }
    return n;
  })();
  const answers = await Promise.allSettled(pending);
  sweeping = false;
  assert.ok(await sweeps > 0);
  const failed = answers.filter((a) => a.status === 'rejected').map((a) => String((a as PromiseRejectedResult).reason));
  assert.deepEqual(failed, [], 'every call answered');
  for (const s of students) {
    const calls = await callsOf(s.id);
    assert.deepEqual(calls.map((c) => c.status), ['charged', 'charged', 'charged'], JSON.stringify(calls));
    for (const c of calls) assert.ok(Number(c.charged) > 0);
    const [a] = await testDb`select trim_scale(held)::text as held, trim_scale(balance)::text as balance,
        trim_scale(100 - (select sum(c.charged) from billing.ai_calls c where c.user_id = ${s.id}))::text as expected
      from billing.accounts where user_id = ${s.id}`;
    assert.equal(a.held, '0');
    assert.equal(a.balance, a.expected, 'the balance is the grant less the charges');
  }
  await assertLedgerInvariants();
});
