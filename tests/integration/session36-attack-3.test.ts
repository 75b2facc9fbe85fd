// Attack round 21 on cadc086 (billing.dispute_work_held: the other account's dispute hold leaves
// to work under way only what the buyer's hold does hold for it; holds placed before
// purchases.disputed_at only).
// Yardstick (session36-attack.test.ts): after a LOST dispute the student's accounts together are
// no better off than with all the credits in one account, and none is left in debt one account
// would not have.
// Holes (a student's tools only: two accounts, a gift, their own second purchase disputed at the bank):
// G2  billing.refit_disputes_drawn refits only the dispute it refits: the room its exact shrink
//     frees in the buyer's account is spendable though another dispute there was cut short by it
//     (S spends 1,000 of its own disputed purchase; the loss leaves S -1,000).
// G3  billing.dispute_work_held reads the buyer's dispute hold for what it holds even when the
//     buyer's balance no longer backs it (another dispute's loss took it): the gift's loss leaves
//     T 1,000 for a job that then fails and S -1,000.
// Probes that held: P1 (one job counted as work under way for two disputed gifts: doubled on both
// sides, the accounts together end as one would), P2 (a gift disputed in escrow), R2 (twenty spends
// of the buyer racing eight refits), R3 (a member's calls finishing while the owner funds them).
import assert from 'node:assert/strict';
import { api, key, reportUsage, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, emulator } from '../support/purchases.ts';
import { creditPerToken } from '../support/ai.ts';
import { person, school } from '../support/orgs.ts';
import { buyGift, redeem } from '../support/codes.ts';
import {
  aiHolds,
  claimedJob,
  completeJob,
  coreInvariants,
  dispute,
  figures,
  heldFor,
  pgErrors,
  pgLogSize,
  purchaseDisputeStatus,
  spendAll,
  spendTry,
  streamCall,
} from '../support/disputed.ts';
import { student } from '../support/helpers.ts';

const disputeHolds = (userId: string) => heldFor(userId, 'dispute');

/** S buys `n` gifts of 5,000 that T (S's second account) redeems. */
async function giftsRedeemed(n: number) {
  const s = await student();
  const t = await student();
  const gifts = [];
  for (let i = 0; i < n; i++) {
    const g = await buyGift(s.token, 'mini');
    assert.equal((await redeem(t.token, g.code)).status, 200);
    gifts.push(g);
  }
  await until('T has the gifts', async () => (await balanceOf(t.token)).balance === String(5000 * n));
  return { s, t, gifts };
}

// P1 (probe). One job counted as work under way on two disputed gifts. S buys G1 and G2 (5,000
// each) that T redeems, and Q (5,000). T's jobs A (1,000) and B (10) are claimed; G1 then G2 are
// disputed. When G1 opened, G2's lot was T's cover (not frozen); once B reports, the refit counts
// A for both (billing.dispute_work_in per purchase): S holds 1,000 for each (2,010 with B's 10),
// T's dispute holds leave 1,000 to each, and T may spend 1,000 of the frozen lots. Both lost, T
// keeps 2,000 for a 1,000 job, S pays both. Double, but on both sides: S and T together end as one
// account would (Q's 5,000 less everything spent, none in debt). Seen: S holds 2,010, T may spend
// 1,000 (spent 500), S spends 2,990, S ends at 500, T at 0.
Deno.test('P1 (probe): one job counted as work under way on two disputed gifts: the accounts together end as one would', async () => {
  const { s, t, gifts: [g1, g2] } = await giftsRedeemed(2);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const jobA = await claimedJob(t.id, w, 1000);
  const jobB = await claimedJob(t.id, w, 10);
  await dispute(g1.session_id, 'open');
  await until('G1 disputed', async () => (await purchaseDisputeStatus(g1.session_id)) === 'open');
  await dispute(g2.session_id, 'open');
  await until('G2 disputed', async () => (await purchaseDisputeStatus(g2.session_id)) === 'open');
  const [b] = await completeJob(jobB, w, 10);
  assert.equal(b.status, 'completed');
  const afterRefit = { s: await disputeHolds(s.id), t: await disputeHolds(t.id), tBal: await balanceOf(t.token) };
  const tSpent = (await spendTry(t.token, 500)) ? 500 : 0;
  const sSpent = await spendAll(s.token);
  await dispute(g1.session_id, 'lost');
  await until('G1 lost', async () => (await purchaseDisputeStatus(g1.session_id)) === 'lost');
  await dispute(g2.session_id, 'lost');
  await until('G2 lost', async () => (await purchaseDisputeStatus(g2.session_id)) === 'lost');
  const [a] = await completeJob(jobA, w, 1000);
  assert.equal(a.status, 'completed');
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  // One account: Q, G1, G2 (15,000); the disputes hold 10,000: Q's 5,000 pays everything spent.
  assert.deepEqual(
    {
      together: Number(sAfter.balance) + Number(tAfter.balance) + tSpent + sSpent + 1010,
      sInDebt: sAfter.in_debt,
      tInDebt: tAfter.in_debt,
    },
    { together: 5000, sInDebt: false, tInDebt: false },
    JSON.stringify({ afterRefit, tSpent, sSpent, sAfter, tAfter }),
  );
});

// G2. A refit shrinks the buyer's hold for one dispute and leaves the room it frees to the
// buyer's spending, while another dispute of the buyer's, cut short by that same room, still
// misses it. S buys a gift G (5,000) that T (S's second account) redeems, then Q (5,000) for
// itself. T's job holds 1,000 (work under way). G is disputed: S holds 1,000 of Q for the job's
// share (billing.dispute_work_in), T's dispute hold 4,000. Q is disputed (the bank): Q's hold in S
// would be 5,000, but room is Q's 5,000 less G's 1,000: 4,000 (older payments first). S: balance
// 5,000, held 5,000. The job reports nothing used (complete_job): billing.refit_disputes_drawn
// refits G only (billing.refreeze_disputes(S, G, exact)): G's hold in S shrinks to 0 and T's grows
// back to 5,000; Q's hold, 1,000 short, is not refrozen. S may spend 1,000 of Q's frozen lot, and
// does. Q lost: S -1,000 (a throwaway account); G lost: T 0.
// Yardstick, one account: G and Q (10,000) held whole by the two disputes, the job beside them;
// the job uses nothing: nothing is ever available, the losses leave 0.
// Expected: S spends 0, S 0, T 0. Seen: S spends 1,000 (held 4,000 of 5,000 after the job),
// S -1,000, T 0. At fault: billing.refit_disputes_drawn refreezes only the dispute it refits
// (p_dispute_id) in each account: what its exact shrink frees should go to the other disputes open
// there that the room cut short (refreeze_disputes(account, null) after the exact pass, as a
// dispute's close does).
Deno.test("G2: work ending in T shrinks S's hold for the gift; S's own newer dispute, cut short, is not topped up", async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await dispute(g.session_id, 'open');
  await until('G disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  await dispute(q.session_id, 'open');
  await until('Q disputed', async () => (await purchaseDisputeStatus(q.session_id)) === 'open');
  const atOpen = { s: await balanceOf(s.token), t: await balanceOf(t.token) };
  const [done] = await completeJob(job, w, 0);
  assert.equal(done.status, 'completed');
  const afterJob = { s: await balanceOf(s.token), t: await balanceOf(t.token) };
  const sSpent = await spendAll(s.token);
  await dispute(q.session_id, 'lost');
  await until('Q lost', async () => (await purchaseDisputeStatus(q.session_id)) === 'lost');
  await dispute(g.session_id, 'lost');
  await until('G lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  console.log(JSON.stringify({ atOpen, afterJob, sSpent, sAfter, tAfter }));
  assert.deepEqual({ sSpent, s: sAfter.balance, t: tAfter.balance }, { sSpent: 0, s: '0', t: '0' });
});

// G3. The buyer's hold for work elsewhere counted at a loss although its balance no longer backs
// it. S buys a gift G (5,000) that T redeems, then Q (5,000). T's job holds 1,000 (work under way).
// G is disputed: S holds 1,000 of Q for the job's share, T's dispute hold 4,000. Q is disputed too
// (its hold 4,000: the room) and lost first: Q's 5,000 leave S (balance 0); G's hold in S stays
// (a dispute's hold never gives way): 1,000 held over nothing. G is lost: billing.dispute_work_held
// reads S's hold (1,000) beyond its claim (0) as held for T's job, so the loss leaves T 1,000 of G's
// lot (p_keep) and takes 1,000 from S as spent: S -1,000. The job then fails (its hold released):
// T keeps 1,000 of G's credits, free, and spends them.
// Yardstick, one account: G and Q held whole by the disputes, the job beside them; both lost, the
// job fails: 0 left, nothing spent, no debt.
// Expected: T spends 0, S 0, T 0. Seen: T spends 1,000, S -1,000 (a throwaway account).
// At fault: billing.dispute_work_held (and so sync_purchase_dispute's v_keep and T's dispute hold)
// takes the buyer's hold amount for what it holds, not what the buyer's balance still backs of it
// once another reversal took credits from under it.
Deno.test("G3: the buyer's hold for the redeemer's work, emptied by its other dispute's loss, still leaves the gift's credits to the redeemer", async () => {
  const { s, t, gifts: [g] } = await giftsRedeemed(1);
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await dispute(g.session_id, 'open');
  await until('G disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  await dispute(q.session_id, 'open');
  await until('Q disputed', async () => (await purchaseDisputeStatus(q.session_id)) === 'open');
  const atOpen = { s: await balanceOf(s.token), t: await balanceOf(t.token) };
  await dispute(q.session_id, 'lost');
  await until('Q lost', async () => (await purchaseDisputeStatus(q.session_id)) === 'lost');
  const afterQ = { s: await balanceOf(s.token), t: await balanceOf(t.token) };
  await dispute(g.session_id, 'lost');
  await until('G lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  await testDb`select billing.fail_job(${job}, ${w}, '{"code":"x"}'::jsonb, false)`;
  const tSpent = await spendAll(t.token);
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual(
    { tSpent, s: sAfter.balance, t: tAfter.balance },
    { tSpent: 0, s: '0', t: '0' },
    JSON.stringify({ atOpen, afterQ }),
  );
});

// P2 (probe). A gift disputed while still in escrow (unredeemed) cannot be moved out of it: T's
// redemption does not give T credits it could spend, and the loss leaves S and T at 0.
Deno.test('P2 (probe): a gift disputed before it is redeemed: the redeemer gets nothing to spend', async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  await dispute(g.session_id, 'open');
  await until('G disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const r = await redeem(t.token, g.code);
  const tSpent = await spendAll(t.token);
  await dispute(g.session_id, 'lost');
  await until('G lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await figures(s.id);
  const tAfter = await figures(t.id);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ tSpent, s: sAfter.balance, t: tAfter?.balance ?? '0' }, { tSpent: 0, s: '0', t: '0' }, r.text);
});

const settledCalls = (userId: string) =>
  until('calls settled', async () => {
    const r = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged,
      trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.ai_calls where user_id = ${userId} and status <> 'refused'`;
    return r.every((x) => x.status !== 'held') && r;
  }, 30_000);

// R2 (probe). The buyer spends twenty times at once while eight calls in the redeemer's account,
// placed before the gift's dispute opened, finish (each capture refits the dispute, locking T then
// S). No 5xx, no ERROR in the Postgres log, the ledger whole; lost, S and T together hold what one
// account would (Q less everything spent), neither in debt.
Deno.test("R2 (probe): the buyer's twenty spends racing the refits of eight calls finishing in the redeemer's account", async () => {
  const m = await creditPerToken();
  const { s, t, gifts: [g] } = await giftsRedeemed(1);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const logFrom = await pgLogSize();
  const calls = Array.from({ length: 8 }, (_, i) => streamCall(t.token, m, `words=60 delay=${30 + 2 * i}`, 200));
  await until('the calls held', async () => Number(await aiHolds(t.id)) > 1000, 10_000);
  await dispute(g.session_id, 'open');
  await until('G disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const spends = Array.from({ length: 20 }, () =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 200 * 50, output_tokens: 0 },
    }).then((r) => r.status));
  const [results, spent] = await Promise.all([Promise.all(calls), Promise.all(spends)]);
  const rows = await settledCalls(t.id);
  await coreInvariants([s.id, t.id]);
  const sSpent = await spendAll(s.token);
  const tSpent = await spendAll(t.token);
  await dispute(g.session_id, 'lost');
  await until('G lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
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
    sInDebt: sAfter < 0,
  }, {
    calls: Array(8).fill(200),
    spends: [],
    errors: [],
    unbilled: 0,
    together: 5000 - spentOk * 200 - sSpent - tSpent - charged,
    sInDebt: false,
  }, JSON.stringify({ sAfter, tAfter, sSpent, tSpent, spentOk, charged }));
});

// R3 (probe). A school the student owns: the wallet buys P and R; Ada's allowance gets all of P
// and 2,000 of R. Ada streams eight calls; P is disputed mid-stream (work under way on P's frozen
// lots). While the calls finish (each refit locks Ada's allowance, then the wallet, a lower id),
// the owner funds Ada's allowance ten times at once (the wallet, then the allowance). No 5xx, the
// ledger whole, nothing left held, no ERROR in the Postgres log.
Deno.test("R3 (probe): a member's calls finishing on a disputed school purchase while the owner funds that member's allowance", async () => {
  const m = await creditPerToken();
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  const orgBuys = async () => {
    const co = await api('/checkout/sessions', {
      token: owner.token,
      body: { package_id: 'mini', org_id: org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    const bought = co.body.data as { session_id: string };
    await emulator(`/_emulator/checkout/sessions/${bought.session_id}/pay`, { outcome: 'succeeded' });
    return bought;
  };
  const fund = (amount: string) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount, user_id: ada.id }, headers: key() });
  const p = await orgBuys();
  assert.equal((await fund('5000')).status, 201);
  await orgBuys();
  assert.equal((await fund('2000')).status, 201);
  const logFrom = await pgLogSize();
  const calls = Array.from({ length: 8 }, (_, i) => streamCall(ada.token, m, `words=60 delay=${30 + 2 * i}`, 200));
  const orgAiHeld = async () =>
    Number(
      (await testDb`select coalesce(sum(h.amount), 0)::text as n from billing.holds h
      join billing.accounts a on a.id = h.account_id where a.org_id = ${org} and h.purpose = 'ai' and h.status = 'active'`)[
        0
      ].n,
    );
  await until('the calls held', async () => (await orgAiHeld()) > 1000, 10_000);
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const fundings = Array.from({ length: 10 }, () => fund('100').then((r) => r.status));
  const [results, funded] = await Promise.all([Promise.all(calls), Promise.all(fundings)]);
  const rows = await settledCalls(ada.id);
  const users = [owner.id, ada.id];
  await coreInvariants(users);
  const leftHeld =
    (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.org_id = ${org} and h.status = 'active' and h.purpose <> 'dispute'`)[0].n;
  assert.deepEqual({
    calls: results.map((r) => r.status),
    funded: funded.filter((x) => x !== 201 && x !== 402),
    unbilled: rows.filter((x) => x.unbilled !== '0').length,
    leftHeld,
    errors: await pgErrors(logFrom),
  }, { calls: Array(8).fill(200), funded: [], unbilled: 0, leftHeld: 0, errors: [] });
});
