// pg_cron's sweeps against a writer that commits while the sweep waits on the row it chose. A
// sweep picks its rows in one query and marks them in another; the row it marks must still be
// what it picked, or the sweep undoes the writer:
// - billing.sweep_ai_calls and a gateway call charged after its hold's TTL: marked lost instead,
//   its key would be free again, and the caller's retry under the same Idempotency-Key charged twice;
// - billing.expire_stale_purchases and a Checkout paid late (an async payment method settles after
//   the session's expiry): marked expired instead, a paid purchase whose credits were granted.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import {
  api,
  assertLedgerInvariants,
  awayFromCron,
  env,
  fund,
  holdsLapse,
  key,
  newUser,
  testDb,
} from '../support/helpers.ts';
import { accountOf, person, school, walletOf } from '../support/orgs.ts';

/** A race scenario, started away from pg_cron's minute boundary (its setup included). */
const raceTest = (name: string, fn: () => Promise<void>) =>
  Deno.test(name, async () => {
    await awayFromCron();
    await fn();
  });

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
      assert.ok(waiting >= 1, `${sweep} waits on the row being written`);
    });
    await swept;
  } finally {
    await sweeper.end();
  }
}

const usage = { input_tokens: 40, cached_input_tokens: 0, output_tokens: 20, reasoning_tokens: 0 };

raceTest('a call charged while the sweep waits on it stays charged, and its key stays taken', async () => {
  const user = await newUser();
  await fund(user, '100');
  const key = crypto.randomUUID();
  const begin = () =>
    testDb`select billing.begin_ai_call(${user}, 'gpt-4o-mini', 40, 60, ${key}, ${'0'.repeat(64)}, 600) as r`;
  const [{ r }] = await begin();
  assert.equal(r.state, 'held');
  // The call outlived its TTL (the gateway's deadline and a minute): the hold expired and
  // release_expired_holds ended it, as pg_cron does.
  await holdsLapse(testDb`h.id = ${r.hold_id}`);
  await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${r.call_id}`;
  await testDb`select billing.release_expired_holds(100000)`;

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

raceTest('a purchase paid while the expiry sweep waits on it stays paid', async () => {
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

// - billing.sweep_ended_terms and an allowance its school spends from again: the sweep chose it
//   while the school was a pool (what a hold gave back, stranded), and the admin switched back to
//   allowances and funded the member while it waited: it swept the member's new allowance too.
raceTest('an allowance funded while the closed-allowance sweep waits on it stays with its member', async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '300' } });
  assert.equal(funded.status, 201, funded.text);
  // A hold under way when the school became a pool: what it gives back is the sweep's to take.
  const h = await api('/credits/holds', {
    token: member.token,
    headers: key(),
    body: { amount: '100', ttl_seconds: 600 },
  });
  assert.equal(h.status, 201, h.text);
  const pool = await api(`/orgs/${org}`, { method: 'PATCH', token: admin.token, body: { funding: 'pool' } });
  assert.equal(pool.status, 200, pool.text);
  const holdId = (h.body.data as { hold_id: string }).hold_id;
  const released = await api(`/credits/holds/${holdId}/release`, { token: member.token, headers: key(), body: {} });
  assert.equal(released.status, 200, released.text);
  assert.deepEqual(await accountOf(org, member.id), { balance: '100', held: '0' });

  // The school goes back to allowances and funds the member (PATCH /orgs/:id, then
  // POST /orgs/:id/allowances), both committing while the sweep waits on the allowance.
  await sweepWaitingOn(async (tx) => {
    await tx`select billing.update_org(${admin.id}, ${org}, '{"funding": "allowance"}'::jsonb)`;
    await tx`select billing.fund_allowances(${admin.id}, ${org}, ${member.id}, 50, ${crypto.randomUUID()})`;
  }, 'billing.sweep_ended_terms(100)');
  assert.deepEqual(await accountOf(org, member.id), { balance: '150', held: '0' }, 'the member keeps the allowance');
  assert.equal((await walletOf(admin.token, org)).balance, '850');
  await assertLedgerInvariants();
});

// - billing.delete_expired_idempotency_keys and a key claimed again once expired: the sweep chose
//   the expired row, the new request under the key stored its answer while the sweep waited; a
//   delete of the row as it now is would free the key of an answered request.
raceTest('a key claimed again while the key sweep waits on it keeps its new answer', async () => {
  const user = await newUser();
  await fund(user, '100');
  const k = crypto.randomUUID();
  const reserve = (req: string) =>
    testDb`select * from billing.run_money_request(${user}, 'credits.holds', ${k}, 'h1', ${req},
      ${testDb.json({ amount: '10', ttl_seconds: 600 })}, 201)`;
  const [first] = await reserve('req-1');
  assert.equal(first.status, 201, JSON.stringify(first));
  // A day later the stored answer has expired and nothing has swept it yet.
  await testDb`update billing.idempotency_keys set expires_at = now() - interval '1 second'
    where user_id = ${user} and key = ${k}`;
  await sweepWaitingOn(
    (tx) =>
      tx`select * from billing.run_money_request(${user}, 'credits.holds', ${k}, 'h2', 'req-2',
        ${tx.json({ amount: '20', ttl_seconds: 600 })}, 201)`,
    'billing.delete_expired_idempotency_keys(5000)',
  );
  const rows = await testDb`select request_id, expires_at > now() as live from billing.idempotency_keys
    where user_id = ${user} and key = ${k}`;
  assert.deepEqual(rows.map((r) => ({ ...r })), [{ request_id: 'req-2', live: true }], 'the new answer is kept');
  await assertLedgerInvariants();
});

// - billing.finish_outbox and a sender whose claim lapsed: a dispatcher that took longer than its
//   two-minute claim (50 rows, each up to 10 s) reported a failure after the next dispatcher had
//   claimed and sent the row; the row went back to pending and the student got the email again.
raceTest("a sender's late failure never sends again a notification another sender delivered", async () => {
  const user = await newUser();
  const dedupe = `low-balance:${crypto.randomUUID()}`;
  const [{ id }] = await testDb`select billing.enqueue_notification('low_balance', ${user}, ${dedupe},
    '{"available": "1"}'::jsonb) as id`;
  const claim = async () =>
    (await testDb`select id, attempts from billing.claim_outbox(1000)`).find((r) => r.id === id);
  const a = await claim();
  assert.ok(a, 'the first sender claims it');
  // The first sender's claim lapses (the clock), and the next dispatcher claims and sends it.
  await testDb`update billing.notification_outbox set next_attempt_at = now() - interval '1 second' where id = ${id}`;
  const b = await claim();
  assert.ok(b, 'the next sender claims it');
  const [{ claimed }] =
    await testDb`select next_attempt_at as claimed from billing.notification_outbox where id = ${id}`;
  // The first sender's attempt fails late, while the next one is sending: the row stays the next one's.
  const finish = async (sent: boolean, attempt: number) =>
    (await testDb`select billing.finish_outbox(${id}, ${sent}, ${sent ? null : 'timeout'}, 5, ${attempt}) as status`)[0]
      .status;
  assert.equal(await finish(false, a.attempts), 'pending');
  const [during] = await testDb`select next_attempt_at, last_error from billing.notification_outbox where id = ${id}`;
  assert.deepEqual({ ...during }, { next_attempt_at: claimed, last_error: null }, "the next sender's claim stands");
  assert.equal(await finish(true, b.attempts), 'sent');
  // And once it was sent, a late failure changes nothing either.
  assert.equal(await finish(false, a.attempts), 'sent', 'the first sender hears it was sent');
  assert.equal(await finish(false, b.attempts), 'sent');
  const [row] = await testDb`select status, last_error from billing.notification_outbox where id = ${id}`;
  assert.deepEqual({ ...row }, { status: 'sent', last_error: null });
  assert.equal(await claim(), undefined, 'nobody claims it again');
});
