// Attack round 25 on b612b55 (billing.work_waits_for_dispute: a job's or gateway call's hold past its
// TTL where a dispute holds credits waits for the pg_cron sweep billing.release_disputed_work_holds;
// billing.lock_dispute_reach; `sql` retries a statement a deadlock rolled back).
// Yardstick (session36-attack.test.ts): after LOST disputes the student's accounts together are no
// better off than with all the credits in one account; no 5xx for a legitimate request; nothing
// locked for good.
// Probes (a student's tools only: two accounts, a gift they buy and redeem, a purchase they ask to
// have refunded, holds they place and capture; the clock moving past a job hold's TTL; the bank's
// verdict landing between the TTL and pg_cron's next sweep):
// W1  J1 (session37-attack.test.ts) with the loss landing while T's job hold waits (past its TTL,
//     the sweep not yet run): releasing T's dispute hold at the loss ends the wait, the job's hold
//     expires inside the loss (release_hold → expire_overdue_holds). Expected: T spends 0, S 0, T 0.
// W2  The same without the refund (S's backing Q stays): the loss leaves T's lot what S held for
//     the job (v_keep), the hold expires inside the loss. Expected: S and T together 4,000 (one
//     account: Q 5,000 + G 5,000, G taken back, nothing spent) plus what T may spend: 5,000 in all.
// W3  A plain user hold (POST /credits/holds) placed in T before G's dispute stands in for work?
//     It gives way at the open, its capture draws no frozen credit; G lost: T 0, S 5,000.
// W4  The waiting hold and as-of: GET /credits/balance?at= and GET /credits/lots?at= at a moment
//     the hold waited agree with the live figures read then.
// W5  Lock order, mixed: with G disputed, T's gateway calls finishing (billing.finish_ai_call locks T,
//     then the refit locks S, lower; no pre-lock) while S cancels its queued jobs (lock_dispute_reach:
//     S, then T) and spends: every request answers below 500.
// All five held on b612b55 (no failing test this round): the waiting hold ends inside the loss
// (release_hold's expire_overdue_holds once no dispute hold is left) with the take-back sized by
// the backing as it stood; user holds give way and never capture frozen credits; the as-of reads
// count the waiting hold as the live ones did; the retries of `sql` hide the deadlocks.
// Leads not turned into tests (out of time, no student path found): billing.release_disputed_work_holds
// runs up to 500 accounts in one transaction and catches only deadlock_detected/lock_not_available,
// so any other error in one account's expire or refit would stop every account's waiting work (none
// found a student can raise: no held <= balance constraint, refreeze_disputes raises nothing);
// balance_as_of's index cut (a hold created over a day before `at` with a TTL of a day or less is not
// read) would drop a hold that waited over a day, which only a stuck sweep allows.
import assert from 'node:assert/strict';
import { api, key, spend, sweepExpiredHolds, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';
import {
  chat,
  claimedJob,
  coreInvariants,
  figures,
  giftRedeemed,
  heldFor,
  loseDispute,
  openDispute,
  snapBoth,
  spendAll,
} from '../support/disputed.ts';
import { creditPerToken } from '../support/ai.ts';

/** Waits until pg_cron's next run is at least `margin` seconds away (its sweeps run at each minute's start). */
async function clearOfCron(margin = 25) {
  for (;;) {
    const s = new Date().getUTCSeconds();
    if (s >= 3 && s <= 60 - margin) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The job's hold passes its TTL; pg_cron's sweeps have not run yet. */
async function ttlPassesBeforeSweep(job: string) {
  await testDb`update billing.holds set expires_at = now() - interval '1 second'
    where id = (select hold_id from billing.jobs where id = ${job})`;
}

const jobHoldStatus = async (job: string) =>
  (await testDb`select h.status from billing.holds h where h.id = (select hold_id from billing.jobs where id = ${job})`)[
    0
  ]
    .status as string;

Deno.test("W1 (probe): the buyer's backing refunded, the loss lands while the redeemer's job hold waits: nothing spent, nobody owes", async () => {
  const { s, t, g } = await giftRedeemed();
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g.session_id);
  await emulator(`/_emulator/charges/${await chargeOf(q.session_id)}/refund`, {});
  await until('Q refunded', async () => (await figures(s.id)).balance === '0');
  await clearOfCron();
  await ttlPassesBeforeSweep(job);
  await loseDispute(g.session_id);
  const atLoss = { ...(await snapBoth(s, t)), hold: await jobHoldStatus(job) };
  const tSpent = Math.max(await spendAll(t.token), 0);
  await sweepExpiredHolds();
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { tSpent, s: sAfter.balance, t: tAfter.balance },
    { tSpent: 0, s: '0', t: '0' },
    JSON.stringify({ atLoss, sAfter, tAfter }),
  );
});

Deno.test('W2 (probe): the loss lands while the job hold waits, the backing kept: the accounts together end as one would', async () => {
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g.session_id);
  await clearOfCron();
  await ttlPassesBeforeSweep(job);
  await loseDispute(g.session_id);
  const atLoss = { ...(await snapBoth(s, t)), hold: await jobHoldStatus(job) };
  const tSpent = Math.max(await spendAll(t.token), 0);
  await sweepExpiredHolds();
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { total: Number(sAfter.balance) + Number(tAfter.balance) + tSpent, tDebt: Number(tAfter.balance) < 0 },
    { total: 5000, tDebt: false },
    JSON.stringify({ atLoss, tSpent, sAfter, tAfter }),
  );
});

Deno.test('W3 (probe): a user hold placed before the dispute is no work: it gives way, its capture draws nothing frozen', async () => {
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const h = await api('/credits/holds', { token: t.token, headers: key(), body: { amount: '1000', ttl_seconds: 900 } });
  assert.equal(h.status, 201, h.text);
  await openDispute(g.session_id);
  const atOpen = await snapBoth(s, t);
  const cap = await api(`/credits/holds/${(h.body.data as { hold_id: string }).hold_id}/capture`, {
    token: t.token,
    headers: key(),
    body: { amount: '1000' },
  });
  const tSpent = Math.max(await spendAll(t.token), 0);
  await loseDispute(g.session_id);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.ok(cap.status < 500, cap.text);
  assert.deepEqual(
    { captured: cap.status === 200, tSpent, s: sAfter.balance, t: tAfter.balance },
    { captured: false, tSpent: 0, s: '5000', t: '0' },
    JSON.stringify({ atOpen, cap: cap.text, sAfter, tAfter }),
  );
});

Deno.test('W4 (probe): while the job hold waits, the balance and lots as of then read as the live figures did', async () => {
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g.session_id);
  await clearOfCron();
  await ttlPassesBeforeSweep(job);
  const live = await balanceOf(t.token);
  const liveLots = (await api('/credits/lots', { token: t.token })).body;
  const at = new Date().toISOString();
  await new Promise((r) => setTimeout(r, 50));
  await sweepExpiredHolds();
  const asOf = (await api(`/credits/balance?at=${encodeURIComponent(at)}`, { token: t.token })).body.data as {
    balance: string;
    held: string;
    available: string;
  };
  const lotsAsOf = await api(`/credits/lots?at=${encodeURIComponent(at)}`, { token: t.token });
  assert.ok(lotsAsOf.status < 500, lotsAsOf.text);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { held: asOf.held, available: asOf.available, jobHeld: await heldFor(t.id, 'job') },
    { held: live.held, available: live.available, jobHeld: '0' },
    JSON.stringify({ live, asOf, liveLots, lotsAsOf: lotsAsOf.body }),
  );
});

Deno.test("W5 (probe): the redeemer's gateway calls finishing while the buyer cancels jobs and spends: no 5xx", async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await openDispute(g.session_id);
  const sJobs: string[] = [];
  for (let i = 0; i < 8; i++) {
    sJobs.push(
      await testDb.begin(async (sql) => {
        const [j] = await sql`select id from billing.enqueue_job(${s.id}, 'ai_completion',
        ${JSON.stringify({ model: 'gpt-4o', prompt: 'one two', max_tokens: 100 })}::text::jsonb, ${crypto.randomUUID()},
        null, 100)`;
        await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${j.id}`;
        return j.id as string;
      }),
    );
  }
  const res = await Promise.all([
    ...sJobs.map((j) => api(`/jobs/${j}`, { method: 'DELETE', token: s.token })),
    ...sJobs.map(() => chat(t.token, m, 'words=5', 20)),
    ...sJobs.map(() =>
      spend(s.token, 10).then(() => ({ status: 201, text: '' }), (e) => ({ status: 599, text: String(e) }))
    ),
  ]);
  const statuses = res.map((r) => r.status);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    statuses.filter((x) => x >= 500).length,
    0,
    JSON.stringify({ statuses, errors: res.filter((r) => r.status >= 500).slice(0, 2).map((r) => r.text) }),
  );
});
