// pg_cron's sweeps against a writer that commits while the sweep waits on the row it chose. A
// sweep picks its rows in one query and marks them in another; the row it marks must still be
// what it picked, or the sweep undoes the writer:
// - billing.sweep_ai_calls and a gateway call charged after its hold's TTL: marked lost instead,
//   its key would be free again, and the caller's retry under the same Idempotency-Key charged twice;
// - billing.expire_stale_purchases and a Checkout paid late (an async payment method settles after
//   the session's expiry): marked expired instead, a paid purchase whose credits were granted.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { assertLedgerInvariants, env, fund, newUser, testDb } from '../support/helpers.ts';

/** Runs `write` in a transaction and starts `sweep` on its own connection once `write` ran; the
 * transaction commits only after the sweep is seen waiting on a row lock. */
async function sweepWaitingOn(write: (tx: postgres.TransactionSql) => Promise<unknown>, sweep: string) {
  const sweeper = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  try {
    let swept: Promise<unknown> | undefined;
    await testDb.begin(async (tx) => {
      await write(tx);
      swept = sweeper.unsafe(`select ${sweep}`).execute();
      let waiting = 0;
      for (let i = 0; i < 100 && !waiting; i++) {
        await new Promise((res) => setTimeout(res, 20));
        [{ waiting }] =
          await testDb`select count(*)::int as waiting from pg_locks l join pg_stat_activity a on a.pid = l.pid
          where not l.granted and a.query like ${'%' + sweep.replace(/\(.*/, '') + '%'}`;
      }
      assert.equal(waiting, 1, `${sweep} waits on the row being written`);
    });
    await swept;
  } finally {
    await sweeper.end();
  }
}

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
  await sweepWaitingOn(
    (tx) => tx`select billing.finish_ai_call(${r.call_id}, ${tx.json(usage)}, 'provider', null, false, '{}'::jsonb)`,
    'billing.sweep_ai_calls(500)',
  );
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

Deno.test('a purchase paid while the expiry sweep waits on it stays paid', async () => {
  const user = await newUser();
  const session = `cs_late_${crypto.randomUUID()}`;
  const [{ id }] =
    await testDb`select (billing.begin_checkout(${user}, 'mini', ${crypto.randomUUID()})).purchase_id as id`;
  await testDb`select billing.attach_checkout_session(${id}, ${session}, 'https://checkout.example/late', now() + interval '1 hour')`;
  // The session expired two hours ago, its payment still pending: the sweep's case.
  await testDb`update billing.purchases set session_expires_at = now() - interval '2 hours' where id = ${id}`;
  const [{ cents }] = await testDb`select price_cents as cents from billing.purchases where id = ${id}`;
  const paid = {
    session_id: session,
    session_status: 'complete',
    payment_status: 'paid',
    amount_total: cents,
    currency: 'usd',
    payment_intent: `pi_${session}`,
    payment_intent_status: 'succeeded',
    charge_id: `ch_${session}`,
    amount_refunded: 0,
  };
  await sweepWaitingOn(
    (tx) => tx`select billing.sync_purchase(${tx.json(paid)})`,
    'billing.expire_stale_purchases(500)',
  );
  const [p] = await testDb`select p.status, trim_scale(a.balance)::text as balance from billing.purchases p
    join billing.accounts a on a.user_id = p.user_id where p.id = ${id}`;
  const [{ credits }] =
    await testDb`select trim_scale(credits + bonus_credits)::text as credits from billing.purchases where id = ${id}`;
  assert.deepEqual(p, { status: 'paid', balance: credits });
  await assertLedgerInvariants();
});
