// The every-minute sweep of lost gateway calls (billing.sweep_ai_calls) against a finish that
// commits while the sweep waits on the call's row: a call that outlived its hold's TTL and was
// charged stays charged. Marked failed instead, its key would be free again, and the caller's
// retry under the same Idempotency-Key would be charged a second time.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { assertLedgerInvariants, env, fund, newUser, testDb } from '../support/helpers.ts';

const usage = { input_tokens: 40, cached_input_tokens: 0, output_tokens: 20, reasoning_tokens: 0 };

Deno.test('a call charged while the sweep waits on it stays charged, and its key stays taken', async () => {
  const user = await newUser();
  await fund(user, '100');
  const key = crypto.randomUUID();
  const begin = () =>
    testDb`select billing.begin_ai_call(${user}, 'gpt-4o-mini', 40, 60, ${key}, ${'0'.repeat(64)}, 600) as r`;
  const [{ r }] = await begin();
  assert.equal(r.state, 'held');
  // The call outlived its TTL (the gateway's deadline and a minute): the hold expired and
  // release_expired_holds ended it, as pg_cron does.
  await testDb`update billing.holds set expires_at = now() - interval '1 second' where id = ${r.hold_id}`;
  await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${r.call_id}`;
  await testDb`select billing.release_expired_holds(500)`;

  // The finish holds the call's row; the sweep, started meanwhile, saw the call held.
  const sweeper = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  try {
    let swept: Promise<unknown> | undefined;
    await testDb.begin(async (tx) => {
      await tx`select billing.finish_ai_call(${r.call_id}, ${tx.json(usage)}, 'provider', null, false, '{}'::jsonb)`;
      swept = sweeper`select billing.sweep_ai_calls(500)`.execute();
      // The sweep has chosen the call and waits on its row.
      let waiting = 0;
      for (let i = 0; i < 100 && !waiting; i++) {
        await new Promise((res) => setTimeout(res, 20));
        [{ waiting }] =
          await testDb`select count(*)::int as waiting from pg_locks l join pg_stat_activity a on a.pid = l.pid
          where not l.granted and a.query like '%sweep_ai_calls%'`;
      }
      assert.equal(waiting, 1, 'the sweep waits on the call being finished');
    });
    await swept;
  } finally {
    await sweeper.end();
  }
  const [c] = await testDb`select status, failure, transfer_id is not null as has_transfer
    from billing.ai_calls where id = ${r.call_id}`;
  assert.deepEqual(c, { status: 'charged', failure: null, has_transfer: true });
  // The same key again answers the charged call: no second hold, no second charge.
  const [{ r: again }] = await begin();
  assert.equal(again.state, 'replay', JSON.stringify(again));
  const [n] = await testDb`select count(*)::int as n from billing.transfers t
    where t.from_account_id = (select id from billing.accounts where user_id = ${user})`;
  assert.equal(n.n, 1, 'one charge for the call');
  await assertLedgerInvariants();
});
