// Attack round 22 on 08c8102 (G2: billing.refit_disputes_drawn tops up every dispute open in the
// accounts it reached; G3: billing.dispute_work_held counts the buyer's hold for work elsewhere
// only as far as the buyer's balance backs it after its other disputes' holds).
// Yardstick (session36-attack.test.ts): after LOST disputes the student's accounts together are no
// better off than with all the credits in one account, and none is left in debt one account would
// not have.
// Holes (a student's tools only: three accounts, gifts they buy and redeem, their own purchase
// disputed at the bank; the clock moving past a job hold's TTL):
// H1  After the buyer's own purchase Q is lost, its close refreezes only the buyer (Q's only
//     account): the redeemer's dispute hold for gift G stays lowered by the 1,000 the buyer "held"
//     for the redeemer's job, which the buyer's balance (0) no longer backs. The job's hold passes
//     its TTL (no refit): the redeemer spends 1,000 of G's frozen lot; G lost: buyer -1,000.
// H2  Same without Q lost first: the buyer's hold for the job (1,000) took room from Q's own
//     dispute hold (4,000 of 5,000), so the two disputes hold 9,000 of the 10,000 disputed. The job's
//     hold passes its TTL: the redeemer spends 1,000; both lost: buyer -1,000.
// H3  No clock needed: the redeemer buys 5,000 of its own, which now cover the job
//     (billing.dispute_work_in drops to 0), but nothing refits on a grant: its dispute hold stays
//     4,000, it spends all 5,000, the job then draws 1,000 of G's frozen lot; both lost: buyer
//     -1,000 (6,000 spent of 5,000 undisputed).
// At fault: what the buyer holds for work elsewhere (billing.dispute_work_held / refreeze_disputes)
// competes for room with the buyer's own other disputes (older payments first), and is recomputed
// only at a refit (billing.refit_disputes_drawn) or a close of that dispute: not when another
// dispute's loss takes the buyer's balance (sync_purchase_dispute refreezes only the lost
// purchase's accounts), not when the work's hold passes its TTL (billing.expire_overdue_holds),
// and not when credits arrive in the redeemer's account.
// Probes that held: P1, P2 (three disputes, jobs in two redeemer accounts, two loss orders: nothing
// spent, together -2,000 as one account), R1 (eight calls finishing in the redeemer's account while
// two more disputes open and the buyer spends ten times: no 5xx, no deadlock, nothing unbilled, no
// spend after Q's dispute opened, together as one account).
import assert from 'node:assert/strict';
import { key, reportUsage, student, testDb, until } from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import {
  aiHolds,
  claimedJob,
  completeJob,
  coreInvariants,
  dispute,
  figures,
  jobHoldPassesTtl,
  loseDispute,
  openDispute,
  pgErrors,
  pgLogSize,
  purchaseDisputeStatus,
  snapBoth,
  spendAll,
  streamCall,
} from '../support/disputed.ts';

/** S buys a gift G (5,000) that T (S's second account) redeems, then Q (5,000) for itself. */
async function giftAndOwn() {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  return { s, t, g: g.session_id, q: q.session_id };
}

// H1. S buys a gift G (5,000) that T redeems, then Q (5,000). T's job holds 1,000 (claimed before
// the disputes). G disputed: S's G hold 1,000 (of Q, for T's job), T's 4,000. Q disputed: Q's hold
// 4,000 (the room). Q lost: S balance 0, held 1,000 (G's hold); T balance 5,000, held 5,000 (G 4,000
// + the job 1,000): T's G hold is not refit though S backs nothing now. The job's hold passes its
// TTL (released by pg_cron's billing.release_expired_holds; no refit): T may spend 1,000 and does.
// G lost: nothing kept (no work), T's 4,000 taken, 1,000 from S as spent: S -1,000.
// One account: G and Q held whole, the job beside them; the job's hold expiring frees nothing.
// Expected: T spends 0, S 0, T 0. Seen: T spends 1,000, S -1,000, T 0.
Deno.test("H1: after the buyer's own purchase is lost, the redeemer's job hold passing its TTL frees the gift's frozen credits", async () => {
  const { s, t, g, q } = await giftAndOwn();
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g);
  await openDispute(q);
  const atOpen = await snapBoth(s, t);
  await loseDispute(q);
  const afterQ = await snapBoth(s, t);
  await jobHoldPassesTtl(job);
  const tSpent = await spendAll(t.token);
  await loseDispute(g);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { tSpent, s: sAfter.balance, t: tAfter.balance },
    { tSpent: 0, s: '0', t: '0' },
    JSON.stringify({ atOpen, afterQ, sAfter, tAfter }),
  );
});

// H2. As H1, but Q stays open: S holds G 1,000 (for T's job) + Q 4,000 = its 5,000 balance; T holds
// G 4,000 + the job 1,000. The job's hold passes its TTL: T spends 1,000 ("the buyer's to owe,
// held", says docs/credit-lots.md: but it was held out of Q's own disputed lot). G lost (S pays
// 1,000 from Q's lot), Q lost (4,000 left of it, 1,000 spent): S -1,000.
// Expected: T spends 0, S spends 0, S 0, T 0. Seen: T spends 1,000, S -1,000.
Deno.test("H2: both disputes open, the redeemer's job hold passes its TTL: the buyer's share of it was Q's disputed credits", async () => {
  const { s, t, g, q } = await giftAndOwn();
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g);
  await openDispute(q);
  const atOpen = await snapBoth(s, t);
  await jobHoldPassesTtl(job);
  const tSpent = await spendAll(t.token);
  const sSpent = await spendAll(s.token);
  await loseDispute(g);
  await loseDispute(q);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { tSpent, sSpent, s: sAfter.balance, t: tAfter.balance },
    { tSpent: 0, sSpent: 0, s: '0', t: '0' },
    JSON.stringify({ atOpen, sAfter, tAfter }),
  );
});

// H3. As H2, then T buys R (5,000) of its own: R now covers the job (dispute_work_in(G, T) = 0),
// so G's hold in T should be 5,000 and S's 0 (Q's 5,000 then), T's available 4,000. Nothing refits
// on a grant: T's G hold stays 4,000, T balance 10,000, held 5,000: T spends 5,000 (R's lot). The
// job reports 1,000: it draws G's frozen lot (R is gone). Q lost, G lost: S -1,000.
// Expected: 5,000 spent in all (4,000 + the job), S 0, T 0. Seen: 6,000 spent, S -1,000, T 0.
Deno.test('H3: the redeemer buys credits that now cover its job: no refit, it spends them and the job draws the frozen lot', async () => {
  const { s, t, g, q } = await giftAndOwn();
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await openDispute(g);
  await openDispute(q);
  const atOpen = await snapBoth(s, t);
  await buy(t.token, 'mini');
  await until('R paid', async () => (await balanceOf(t.token)).balance === '10000');
  const afterR = await snapBoth(s, t);
  const tSpent = await spendAll(t.token);
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  const sSpent = await spendAll(s.token);
  await loseDispute(q);
  await loseDispute(g);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  // One account: G and Q held whole (10,000), the job beside them, R (5,000) pays the job first:
  // 4,000 to spend, nothing left, no debt.
  assert.deepEqual(
    { spent: tSpent + sSpent + 1000, s: sAfter.balance, t: tAfter.balance },
    { spent: 5000, s: '0', t: '0' },
    JSON.stringify({ atOpen, afterR, tSpent, sSpent, sAfter, tAfter }),
  );
});

/** S buys two gifts, G1 redeemed by T1 and G2 by T2 (S's other accounts), then Q for itself. */
async function twoGiftsAndOwn() {
  const s = await student();
  const t1 = await student();
  const t2 = await student();
  const g1 = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t1.token, g1.code)).status, 200);
  const g2 = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t2.token, g2.code)).status, 200);
  await until(
    'T1, T2 have the gifts',
    async () => (await balanceOf(t1.token)).balance === '5000' && (await balanceOf(t2.token)).balance === '5000',
  );
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  return { s, t1, t2, g1: g1.session_id, g2: g2.session_id, q: q.session_id };
}

// P1, P2 (probes). Three disputes at once (G1, G2, Q: 15,000), a job under way in each redeemer's
// account (1,000 each, placed before), losses and captures interleaved in two orders. Every
// account tries to spend all it may after each step. One account: all 15,000 held, the jobs
// beside them draw 2,000 of the frozen credits (work under way: owed) or, their holds given way
// to a loss before they report, owe it unbilled: nothing is ever spent, 2,000 owed in all.
for (
  const [name, order] of [
    ['P1 (probe): Q lost, job 1 reports, G1 lost, job 2 reports, G2 lost', ['q', 'j1', 'g1', 'j2', 'g2']],
    ['P2 (probe): G2 lost, G1 lost, both jobs report, Q lost', ['g2', 'g1', 'j1', 'j2', 'q']],
  ] as const
) {
  Deno.test(name, async () => {
    const x = await twoGiftsAndOwn();
    const w = 'w' + crypto.randomUUID().slice(0, 8);
    const jobs = { j1: await claimedJob(x.t1.id, w, 1000), j2: await claimedJob(x.t2.id, w, 1000) };
    await openDispute(x.g1);
    await openDispute(x.g2);
    await openDispute(x.q);
    const who = [x.s, x.t1, x.t2];
    let spent = 0;
    const trail: unknown[] = [];
    for (const step of order) {
      if (step === 'j1' || step === 'j2') {
        const [done] = await completeJob(jobs[step], w, 1000);
        assert.equal(done.status, 'completed');
      } else await loseDispute(x[step]);
      for (const u of who) spent += Math.max(await spendAll(u.token), 0);
      trail.push({
        step,
        spent,
        ...Object.fromEntries(await Promise.all(who.map(async (u, i) => [i, await figures(u.id)]))),
      });
    }
    await coreInvariants(who.map((u) => u.id));
    const balances = await Promise.all(who.map(async (u) => Number((await figures(u.id)).balance)));
    // Owed: the accounts' debt, and what a job could not charge (a job whose hold gave way to a
    // loss before it reported, as in one account): 2,000 either way.
    const [{ unbilled }] = await testDb`select coalesce(sum(unbilled), 0)::int as unbilled from billing.jobs
      where id = any(${Object.values(jobs)}::uuid[])`;
    assert.deepEqual(
      { spent, owed: unbilled - balances.reduce((a, b) => a + b, 0) },
      { spent: 0, owed: 2000 },
      JSON.stringify(trail),
    );
  });
}

// R1 (probe). Lock order under concurrency: eight calls in T's account (placed before G1's
// dispute) finish, each refit locking T then S (a lower id), while the bank opens G2's and Q's
// disputes (S, then T) and S spends ten times at once. No 5xx, no deadlock or ERROR in the
// Postgres log, nothing unbilled; lost, the accounts together end as one would.
Deno.test('R1 (probe): calls finishing in the redeemer account race two disputes opening and the buyer spending', async () => {
  const m = await creditPerToken();
  const s = await student();
  const t = await student();
  const gifts: string[] = [];
  for (let i = 0; i < 2; i++) {
    const g = await buyGift(s.token, 'mini');
    assert.equal((await redeem(t.token, g.code)).status, 200);
    gifts.push(g.session_id);
  }
  await until('T has the gifts', async () => (await balanceOf(t.token)).balance === '10000');
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const logFrom = await pgLogSize();
  const calls = Array.from({ length: 8 }, (_, i) => streamCall(t.token, m, `words=60 delay=${30 + 2 * i}`, 200));
  await until('the calls held', async () => Number(await aiHolds(t.id)) > 1000, 10_000);
  await openDispute(gifts[0]);
  const spends = Array.from({ length: 10 }, () =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 100 * 50, output_tokens: 0 },
    }).then((r) => r.status));
  const opens = [dispute(gifts[1], 'open'), dispute(q.session_id, 'open')];
  const [results, spent] = await Promise.all([Promise.all(calls), Promise.all(spends), Promise.all(opens)]);
  await until(
    'G2 and Q disputed',
    async () =>
      (await purchaseDisputeStatus(gifts[1])) === 'open' && (await purchaseDisputeStatus(q.session_id)) === 'open',
  );
  const rows = await until('calls settled', async () => {
    const r = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged,
      trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.ai_calls where user_id = ${t.id} and status <> 'refused'`;
    return r.every((x) => x.status !== 'held') && r;
  }, 30_000);
  await coreInvariants([s.id, t.id]);
  const sSpent = Math.max(await spendAll(s.token), 0);
  const tSpent = Math.max(await spendAll(t.token), 0);
  // S's spends that committed after Q's dispute opened (they could only draw disputed credits).
  const [late] = await testDb`select count(*)::int as n from billing.transfers x
    join billing.accounts a on a.user_id = ${s.id} and a.org_id is null
    where x.kind = 'usage' and x.from_account_id = a.id
      and x.created_at > (select disputed_at from billing.purchases where stripe_session_id = ${q.session_id})`;
  for (const g of [gifts[0], gifts[1], q.session_id]) await loseDispute(g);
  await coreInvariants([s.id, t.id]);
  const sAfter = Number((await balanceOf(s.token)).balance);
  const tAfter = Number((await balanceOf(t.token)).balance);
  const charged = rows.reduce((sum, x) => sum + Number(x.charged), 0);
  const spentOk = spent.filter((x) => x === 201).length;
  // One account: the spends before Q's dispute came from Q's 5,000, none after it; the calls
  // (held before G1 opened) drew what they cost; all 15,000 taken back: together, minus all that
  // was spent (owed).
  assert.deepEqual({
    calls: results.map((r) => r.status),
    spends: spent.filter((x) => x !== 201 && x !== 402),
    errors: await pgErrors(logFrom),
    unbilled: rows.filter((x) => x.unbilled !== '0').length,
    late: late.n,
    together: sAfter + tAfter,
  }, {
    calls: Array(8).fill(200),
    spends: [],
    errors: [],
    unbilled: 0,
    late: 0,
    together: -(spentOk * 100 + sSpent + tSpent + charged),
  }, JSON.stringify({ sAfter, tAfter, sSpent, tSpent, spentOk, charged }));
});
