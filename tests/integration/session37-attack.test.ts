// Attack round 24 on 38b4809/48c9bc4 (billing.dispute_work_held: the buyer's backing for work under
// way in another account is only its credits that never expire and are for any model, none while a
// plan invoice of the buyer is disputed; plan disputes refit; money requests retried on deadlock).
// Yardstick (session36-attack.test.ts): after LOST disputes the student's accounts together are no
// better off than with all the credits in one account: nothing a dispute claims is spent, and no
// debt is left that one account would not have. And no 5xx for a legitimate request.
// Holes (a student's tools only: two accounts, a gift they buy and redeem, a purchase they ask to
// have refunded, their jobs cancelled through DELETE /jobs/:id; the clock moving past a job hold's TTL):
// J1  The buyer's backing is refunded. S buys gift G (5,000, redeemed by T, S's second account) and
//     Q (5,000). T's job holds 1,000 (before G's dispute). G disputed: S holds 1,000 for T's job
//     (backed by Q), T's G hold 4,000. Q is refunded in full (Stripe/the operator, at the student's
//     request; Q itself is not disputed): S balance 0, its G hold 1,000 backed by nothing; nothing
//     refits T (billing.sync_purchase_refunds → billing.take_back_purchase never calls
//     billing.refit_disputes_drawn). The job's hold passes its TTL: T spends 1,000 of G's frozen
//     lot. G lost: T 0, S -1,000. One account (Q, G, the job): the refund leaves the dispute's
//     hold 5,000 over a balance of 5,000, the job's hold gives way; nothing to spend; 0 owed.
// D1  DELETE /jobs/:id answers 503 DATABASE_UNAVAILABLE. With G disputed, S's cancel (its own
//     account locked, then billing.release_job_hold → billing.refit_disputes_drawn locks T) and
//     T's cancel (T locked, then the refit locks S, lower) deadlock; the route runs
//     billing.cancel_job as one plain statement, not retried as money requests now are
//     (run_money_request, idempotency.ts): 9 of 16 cancels answered 503 in a run.
// Probe that held: P1 (a gift whose purchase is disputed before it is redeemed: the redemption is
// refused, 4xx, nothing moves; the loss takes the escrow back, both accounts 0).
// At fault: J1, the TTL: a job's hold lapsed at the first spend (billing.expire_overdue_holds,
// in the core), refitting nothing, so the room T's dispute hold left to the work came free to any
// spend while the buyer's backing for it was gone. D1, the lock order of
// billing.refit_disputes_drawn (the work's account, then the buyer's) and a route that does not
// retry a deadlock (jobs/index.ts DELETE /:id).
// Fixed (session 37): a job's or gateway call's hold past its TTL where a dispute holds credits
// waits for the pg_cron sweep billing.release_disputed_work_holds, which ends it and refits the
// dispute in one transaction (billing.work_waits_for_dispute: the spend path, balance_of and
// balance_as_of count it until then), whatever took the buyer's backing away (a refund, an
// expiry, another loss); work that ends locks every account the disputes there reach first, in
// id order (billing.lock_dispute_reach, from release_job_hold and complete_job); and `sql` sends
// again any statement a deadlock rolled back (db.ts).
import assert from 'node:assert/strict';
import { api, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import {
  claimedJob,
  coreInvariants,
  figures,
  giftRedeemed,
  heldFor,
  jobHoldPassesTtl,
  loseDispute,
  openDispute,
  snapBoth,
  spendAll,
} from '../support/disputed.ts';

// J1. Seen (48c9bc4): at the open S held 1,000 for the job, T 4,000; after Q's refund S balance 0,
// held 1,000, T's hold still 4,000; T spends 1,000 after the TTL; G lost: S -1,000, T 0.
// Expected (one account): T spends 0, S 0, T 0.
Deno.test("J1: the buyer's backing refunded: the redeemer's job hold passing its TTL frees the gift's frozen credits", async () => {
  const { s, t, g } = await giftRedeemed();
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g.session_id);
  const atOpen = await snapBoth(s, t);
  // Q refunded in full (Stripe's charge.refunded), Q never disputed.
  await emulator(`/_emulator/charges/${await chargeOf(q.session_id)}/refund`, {});
  await until('Q refunded', async () => (await figures(s.id)).balance === '0');
  const afterRefund = await snapBoth(s, t);
  await jobHoldPassesTtl(job);
  const tSpent = Math.max(await spendAll(t.token), 0);
  await loseDispute(g.session_id);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { tSpent, s: sAfter.balance, t: tAfter.balance },
    { tSpent: 0, s: '0', t: '0' },
    JSON.stringify({ atOpen, afterRefund, sAfter, tAfter }),
  );
});

/** A metered job of `userId` holding `reserve`, queued (no worker has it yet: run_after an hour on). */
async function queuedJob(userId: string, reserve: number) {
  return await testDb.begin(async (sql) => {
    const [j] = await sql`select id from billing.enqueue_job(${userId}, 'ai_completion',
      ${JSON.stringify({ model: 'gpt-4o', prompt: 'one two', max_tokens: 100 })}::text::jsonb, ${crypto.randomUUID()},
      null, ${reserve})`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${j.id}`;
    return j.id as string;
  });
}

// D1. S (buyer, the lower account id) and T (redeemer) each have eight queued jobs of 100; G
// disputed (T's jobs queued before it, S's after). The student cancels all sixteen at once (eight
// pairs, one in each account). Expected: every cancel 200, every job cancelled, no hold left for
// them. Seen (48c9bc4): 9 of 16 answered 503 DATABASE_UNAVAILABLE (deadlock detected in the
// Postgres log), those jobs still queued.
Deno.test("D1: cancelling jobs in the buyer's and the redeemer's accounts at once: every cancel answers 200", async () => {
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const tJobs: string[] = [];
  for (let i = 0; i < 8; i++) tJobs.push(await queuedJob(t.id, 100));
  await openDispute(g.session_id);
  const sJobs: string[] = [];
  for (let i = 0; i < 8; i++) sJobs.push(await queuedJob(s.id, 100));
  const res = await Promise.all(tJobs.flatMap((j, i) => [
    api(`/jobs/${j}`, { method: 'DELETE', token: t.token }),
    api(`/jobs/${sJobs[i]}`, { method: 'DELETE', token: s.token }),
  ]));
  const statuses = res.map((r) => r.status);
  const left = (await testDb`select count(*)::int as n from billing.jobs
    where id = any(${[...tJobs, ...sJobs]}::uuid[]) and status <> 'cancelled'`)[0].n;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { fiveHundreds: statuses.filter((x) => x >= 500).length, notCancelled: left, jobHolds: await heldFor(t.id, 'job') },
    { fiveHundreds: 0, notCancelled: 0, jobHolds: '0' },
    JSON.stringify({ statuses, errors: res.filter((r) => r.status >= 500).slice(0, 2).map((r) => r.text) }),
  );
});

// P1 (probe). S buys gift G; G disputed before anyone redeems it (its credits in the code's
// escrow, held). T (S's second account) redeems: refused (4xx), nothing moves. G lost: the escrow
// taken back; S 0, T 0, T spends nothing.
Deno.test('P1 (probe): a gift disputed before it is redeemed is not redeemable; the loss leaves both accounts at 0', async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  await openDispute(g.session_id);
  const r = await redeem(t.token, g.code);
  const tSpent = Math.max(await spendAll(t.token), 0);
  await loseDispute(g.session_id);
  const sAfter = await figures(s.id).catch(() => undefined);
  const tAfter = await figures(t.id).catch(() => undefined);
  assert.deepEqual(
    {
      refused: r.status >= 400 && r.status < 500,
      tSpent,
      s: sAfter?.balance ?? '0',
      t: tAfter?.balance ?? '0',
    },
    { refused: true, tSpent: 0, s: '0', t: '0' },
    JSON.stringify({ redeem: r.text, sAfter, tAfter }),
  );
  await coreInvariants([s.id, t.id]);
});

// The rule J1's fix rests on (session 37): a job's hold past its TTL in an account where a dispute
// holds credits still counts, in the live balance and as of a moment since, alike, and T can
// spend none of the room it holds; pg_cron's sweep (billing.release_disputed_work_holds) ends it
// and, in the same transaction, T's dispute holds G's whole lot again.
Deno.test("a job's hold past its TTL where a dispute holds credits counts until the sweep, live and as of then", async () => {
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g.session_id);
  await testDb`update billing.holds set expires_at = now() - interval '1 second'
    where id = (select hold_id from billing.jobs where id = ${job})`;
  await testDb`select billing.release_expired_holds(500)`; // the other sweep leaves it
  const live = await balanceOf(t.token);
  const at = new Date(Date.now() - 1).toISOString();
  const asOf = (await api(`/credits/balance?at=${encodeURIComponent(at)}`, { token: t.token })).body.data as {
    held: string;
    available: string;
  };
  const tSpentWaiting = Math.max(await spendAll(t.token), 0);
  const ended = (await testDb`select billing.release_disputed_work_holds(500) as n`)[0].n;
  const after = await snapBoth(s, t);
  const tSpentAfter = Math.max(await spendAll(t.token), 0);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    {
      live: [live.held, live.available],
      asOf: [asOf.held, asOf.available],
      tSpentWaiting,
      ended,
      tDispute: after.tDispute,
      tSpentAfter,
    },
    {
      live: ['5000', '0'],
      asOf: ['5000', '0'],
      tSpentWaiting: 0,
      ended: 1,
      tDispute: '5000',
      tSpentAfter: 0,
    },
  );
});
