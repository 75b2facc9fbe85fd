// Attack round 20 on 4520968 (billing.dispute_work_in: the buyer's dispute hold holds what work
// under way in another account may still draw of a disputed purchase's frozen lots there; that
// account's own dispute hold holds only the rest; a loss leaves that share for the work).
// Yardstick (session36-attack.test.ts): after a LOST dispute the student's accounts together are
// no better off than with all the credits in one account.
// Holes (a student's tools only: two accounts, a gift, a plan of their own; S the buyer holds no
// other credits, so its share of the hold is cut short by its balance):
// F1  billing.fail_ai_call releases a call's hold without refitting the disputes
//     (billing.refit_disputes_drawn): the redeemer's dispute hold stays lowered by the call's share
//     and the redeemer spends that much of the frozen gift lot; the loss leaves it as S's debt.
// F2  the same through a job's hold that passes its TTL (billing.expire_overdue_holds, from any
//     request or billing.release_expired_holds): no refit either.
// F3  billing.dispute_work_in counts every active job/ai hold in the account, also those placed
//     after the dispute opened (which one account would hold beside the dispute): any refit (another
//     call finishing) lowers the redeemer's dispute hold by them, and the frozen lot is spent.
// Probes that held: R1 (the dispute opening while calls finish and the buyer spends), P2 (a loss
// leaving a large job hold its share: S and T together end as one account would).
import assert from 'node:assert/strict';
import { key, reportUsage, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { creditPerToken } from '../support/ai.ts';
import { subscribeTo } from '../support/plans.ts';
import {
  aiHolds,
  chat,
  claimedJob,
  completeJob,
  coreInvariants,
  dispute,
  figures,
  giftRedeemed,
  heldFor,
  pgErrors,
  pgLogSize,
  purchaseDisputeStatus,
  spendAll,
  spendTry,
  streamCall,
} from '../support/disputed.ts';

const disputeHolds = (userId: string) => heldFor(userId, 'dispute');

// F1. Work under way that ends without a refit. S (no other credits) buys a gift G (5,000) that
// T (S's second account) redeems. T starts a gateway call (held 1,071) that the provider will fail
// after 4 s. G is disputed while it waits: billing.dispute_work_in(G, T) = 1,071, so T's dispute
// hold holds 3,929 and S should hold 1,071 (S has nothing: held 0). The provider fails:
// billing.fail_ai_call releases the call's hold and refits nothing (only finish_ai_call,
// complete_job and release_job_hold call billing.refit_disputes_drawn), so T's dispute hold stays
// 3,929 beside a 5,000 frozen lot and no work. T spends the 1,071 (POST /credits/usage draws the
// frozen lot). G is lost: T's 3,929 are taken back and the 1,071 T spent are S's debt.
// Yardstick, one account: G (5,000) held whole by the dispute, the call's hold beside it; the call
// fails, nothing is available, the loss leaves 0 and no debt.
// Seen: tSpent true, S -1,071 (a throwaway account), T 0.
Deno.test("F1: a gateway call in the redeemer's account that fails upstream: the frozen gift credits it held stay frozen", async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  const call = chat(t.token, m, 'first_byte_delay=4000 fail=500', 1000);
  await until('the call held', async () => (await aiHolds(t.id)) !== '0', 10_000);
  const callHeld = await aiHolds(t.id);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = { s: await disputeHolds(s.id), t: await disputeHolds(t.id) };
  const done = await call;
  assert.equal(done.status, 502);
  const afterFail = await balanceOf(t.token);
  const tSpent = Number(afterFail.available) >= 1 && await spendTry(t.token, Math.floor(Number(afterFail.available)));
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ tSpent, sBalance: sAfter.balance, tBalance: tAfter.balance }, {
    tSpent: false,
    sBalance: '0',
    tBalance: '0',
  }, JSON.stringify({ callHeld, atOpen, afterFail }));
});

// F3. Work placed AFTER the dispute opened counted as work under way. S (no other credits) buys G
// (5,000), T redeems it and subscribes to a plan (10,000 for any model, expiring: no cover). G is
// disputed with no work in T: T's dispute hold is 5,000. Then T starts a gateway call A (held 4,073
// from the plan's credits, answered after 8 s), and a small call B that finishes at once:
// finish_ai_call refits G (billing.refit_disputes_drawn, p_account_id T), and
// billing.dispute_work_in(G, T) counts A's hold (every active job/ai hold, whenever placed) less
// no cover: 4,073, so T's dispute hold shrinks to 927 and S should hold 4,073 (it has nothing).
// T spends all it may (9,977: the plan's credits), then A's capture draws ~4,000 of G's frozen lot
// (it is no longer held by T's dispute hold). G is lost: S owes 4,019 (a throwaway account).
// Yardstick, one account: the dispute holds G's 5,000 whatever is placed after it; A is held beside
// it from the plan's credits and its capture takes only what the dispute leaves: the student spends
// at most the plan's 10,000 in all, and the loss leaves no debt.
// Expected: T's dispute hold still 5,000 after B; S not in debt. Seen: 927; S -4,019.
Deno.test("F3: a call placed in the redeemer's account after the gift's dispute opened is not work under way on it", async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await subscribeTo(t.token, 'basic_monthly');
  await until('T has the plan', async () => (await balanceOf(t.token)).balance === '15000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const tHeldAtOpen = await disputeHolds(t.id);
  const a = chat(t.token, m, 'first_byte_delay=8000 words=1900', 4000);
  await until('A held', async () => (await aiHolds(t.id)) !== '0', 10_000);
  const b = await chat(t.token, m, 'words=5', 20);
  assert.equal(b.status, 200);
  const tHeldAfterB = await disputeHolds(t.id);
  const tSpent = await spendAll(t.token);
  assert.equal((await a).status, 200);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await figures(s.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ tHeldAtOpen, tHeldAfterB, sInDebt: sAfter.in_debt }, {
    tHeldAtOpen: '5000',
    tHeldAfterB: '5000',
    sInDebt: false,
  }, JSON.stringify({ tSpent, sAfter }));
});

// F2. F1 by the calendar: a job's hold that outlives its TTL (an hour by default; the worker keeps
// its lease by checkpoints) ends by billing.expire_overdue_holds, which refits nothing. S (no other
// credits) buys G, T redeems it; T's job holds 1,000; G is disputed (T's dispute hold 4,000, S's
// cut short to 0). The hour passes (here: the hold's expires_at set back, as E6 backdates a lot).
// T's next request ends the hold; T spends the 1,000 of G's frozen lot. The job then reports
// 1,000: its hold is gone, nothing is available: 1,000 unbilled on T. G is lost: S owes 1,000.
// Yardstick, one account: the dispute holds G's 5,000; the job's hold expiring frees nothing
// (the dispute holds all the balance): no spending. Since session 37 a job's hold past its TTL
// where a dispute holds credits waits for the sweep (billing.work_waits_for_dispute): a job that
// reports first is work under way, paid from the frozen lot and owed by S after the loss, as in
// one account; one that reports after the sweep is unbilled. Either way the job's 1,000 is owed once.
Deno.test("F2: a job's hold in the redeemer's account that passes its TTL: the frozen gift credits stay frozen", async () => {
  const { s, t, g } = await giftRedeemed();
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = { s: await disputeHolds(s.id), t: await disputeHolds(t.id) };
  await testDb`update billing.holds set expires_at = now() - interval '1 second'
    where id = (select hold_id from billing.jobs where id = ${job})`;
  const tSpent = await spendTry(t.token, 1000);
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await figures(s.id);
  await coreInvariants([s.id, t.id]);
  const [{ unbilled }] = await testDb`select trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.jobs
    where id = ${job}`;
  // Seen: tSpent true, S -1,000, and the job's 1,000 unbilled on T (2,000 owed for 1,000 of work).
  assert.deepEqual(
    { tSpent, owed: Number(unbilled) - Number(sAfter.balance), tBalance: (await figures(t.id)).balance },
    { tSpent: false, owed: 1000, tBalance: '0' },
    JSON.stringify({ atOpen, unbilled, sAfter }),
  );
});

// R1 (probe). The dispute opens while eight streamed calls in the redeemer's account finish and
// the buyer spends: every call answered 200, every spend 201 or 402 (never 5xx), no ERROR in the
// Postgres log, the ledger whole; lost, S and T together hold what one account would.
Deno.test("R1 (probe): the gift's dispute opening while calls in the redeemer's account finish and the buyer spends", async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const logFrom = await pgLogSize();
  const calls = Array.from({ length: 8 }, (_, i) => streamCall(t.token, m, `words=60 delay=${20 + 3 * i}`, 200));
  await until('the calls held', async () => Number(await aiHolds(t.id)) > 1000, 10_000);
  await new Promise((r) => setTimeout(r, 900));
  const spends = Array.from({ length: 6 }, () =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 300 * 50, output_tokens: 0 },
    }).then((r) => r.status));
  const [results, , spent] = await Promise.all([
    Promise.all(calls),
    dispute(g.session_id, 'open'),
    Promise.all(spends),
  ]);
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const rows = await until('calls settled', async () => {
    const r = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged,
      trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.ai_calls where user_id = ${t.id} and status <> 'refused'`;
    return r.every((x) => x.status !== 'held') && r;
  }, 30_000);
  await coreInvariants([s.id, t.id]);
  const sSpent = await spendAll(s.token);
  const tSpent = await spendAll(t.token);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  await coreInvariants([s.id, t.id]);
  const sAfter = Number((await balanceOf(s.token)).balance);
  const tAfter = Number((await balanceOf(t.token)).balance);
  const charged = rows.reduce((sum, x) => sum + Number(x.charged), 0);
  const unbilled = rows.reduce((sum, x) => sum + Number(x.unbilled), 0);
  const spentOk = spent.filter((x) => x === 201).length;
  assert.deepEqual({
    calls: results.map((r) => r.status),
    spends: spent.filter((x) => x !== 201 && x !== 402),
    errors: await pgErrors(logFrom),
    unbilled,
    together: sAfter + tAfter,
  }, {
    calls: Array(8).fill(200),
    spends: [],
    errors: [],
    unbilled: 0,
    // One account: Q less S's spending and the calls; nothing of G may be spent beyond the calls.
    together: 5000 - spentOk * 300 - sSpent - tSpent - charged,
  }, JSON.stringify({ sAfter, tAfter, sSpent, tSpent, spentOk, charged }));
  assert.ok(sAfter >= 0 && tAfter >= 0, JSON.stringify({ sAfter, tAfter }));
});

// P2 (probe). p_keep against a large hold: S buys Q (5,000); T's job on the gift holds 3,000 and
// will use 100. G is disputed: S holds 3,000 for it and spends the 2,000 it may. G is lost before
// the job reports: T keeps 3,000 of G's lot for the job, S pays them as spent. The job uses 100:
// T is left 2,900. One account: G + Q (10,000), the dispute 5,000 and the job 3,000 beside it, 2,000
// spent; the loss takes G's 5,000; the job 100: 2,900 left. Together S and T: 2,900, none in debt.
Deno.test('P2 (probe): a loss that leaves a large job hold its share: the accounts together end as one would', async () => {
  const { s, t, g } = await giftRedeemed();
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 3000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const [done] = await completeJob(job, w, 100);
  assert.equal(done.status, 'completed');
  const tMore = await spendTry(t.token, 2901);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ sSpent, tMore, s: sAfter.balance, t: tAfter.balance }, {
    sSpent: 2000,
    tMore: false,
    s: '0',
    t: '2900',
  });
});
