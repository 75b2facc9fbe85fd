// Attack round 19 on 2e065d8 (billing.dispute_work_elsewhere: the buyer's dispute hold also holds
// what job and gateway holds in other accounts may still draw of the purchase's frozen lots).
// A failing test is a hole: its assertion is the one-account yardstick (session35-attack-4 D0:
// a lost dispute leaves no more debt than the same credits in one account, where only what was
// spent before the dispute opened becomes debt, and a student never spends what a dispute claims).
// Holes (student's tools only: two accounts, a gift, a school and a sponsor code of their own):
// E1, E2  dispute_work_elsewhere counts credits for some other model as cover for the work
//         (its `free`): the buyer spends what the work then draws of the frozen lot.
// E4      the loss releases what the buyer held for work elsewhere before that work reports: the
//         work's hold gives way to the reversal and its cost is `unbilled` on the other account.
// E6      the other account's credits counted as cover expire under the work: the same, by the calendar.
// E3      work that ends without drawing the frozen lot (a failed job) leaves the buyer's hold for it.
// Fixed: billing.dispute_work_in counts as cover only credits for any model that do not expire;
// what the buyer holds for work elsewhere, that account's dispute hold no longer holds (so the
// work's hold survives its other credits expiring); a loss leaves that much of the lots there for
// the work and takes it from the buyer (billing.take_back_purchase's p_keep); work that ends in
// such an account refits the dispute (billing.refit_disputes_drawn's p_account_id).
import assert from 'node:assert/strict';
import { api, backdateLot, key, student, sweepExpiredHolds, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, emulator } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import { creditPerToken } from '../support/ai.ts';
import { accountOf, person, school } from '../support/orgs.ts';
import {
  aiHolds,
  claimedJob,
  completeJob,
  coreInvariants,
  dispute,
  figures,
  giftRedeemed,
  purchaseDisputeStatus,
  spendAll,
  spendTry,
  streamCall,
} from '../support/disputed.ts';
import { grantLot } from '../support/lots.ts';
import { subscribeTo } from '../support/plans.ts';

/** A school the student owns (no operator grant), its members their own other accounts. */
async function ownSchool() {
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'allowance', null);
  const orgBuys = async (pkg = 'mini') => {
    const co = await api('/checkout/sessions', {
      token: owner.token,
      body: { package_id: pkg, org_id: org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    const bought = co.body.data as { session_id: string; purchase_id: string };
    await emulator(`/_emulator/checkout/sessions/${bought.session_id}/pay`, { outcome: 'succeeded' });
    return bought;
  };
  const fund = (user_id: string, amount: string, applies_to?: string[]) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount, user_id, applies_to }, headers: key() });
  return { owner, ada, bob, org, orgBuys, fund };
}

// E1. Credits for some models counted as free. The school (the student's own) buys P (5,000) and
// moves it all into Ada's allowance; it buys R (5,000) and moves 1,000 of it into Ada's allowance
// for gpt-4o-mini only. Ada runs a gpt-4o job holding 1,000. P is disputed: Ada's allowance holds
// P's lot (5,000); billing.dispute_work_elsewhere counts the 1,000 for gpt-4o-mini as "other
// credits not frozen" that would pay the job, so the wallet holds nothing for the job's work.
// The owner moves all the wallet has (4,000 of R) to Bob. The job's capture cannot draw the
// gpt-4o-mini credits: it draws 1,000 of P's frozen lot, which the wallet (now 0) can no longer
// cover. The loss leaves the wallet at -1,000. In one account (the yardstick) the dispute holds
// P's 5,000 and the job its 1,000 beside credits for gpt-4o-mini that cannot pay it: 3,000 of R
// may be spent for any model, the job is paid from R, and the loss leaves 0.
Deno.test("credits for another model in a member's allowance are not cover for its job on a disputed purchase: the loss leaves 0", async () => {
  const { owner, ada, bob, org, orgBuys, fund } = await ownSchool();
  const p = await orgBuys();
  assert.equal((await fund(ada.id, '5000')).status, 201);
  await orgBuys(); // R
  const r1 = await fund(ada.id, '1000', ['gpt-4o-mini']);
  assert.equal(r1.status, 201, r1.text);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(ada.id, w, 1000);
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const walletAtOpen = await accountOf(org, null);
  const moved = (await fund(bob.id, '4000')).status;
  const movedFree = moved === 201 ? null : (await fund(bob.id, '3000')).status;
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await coreInvariants([owner.id, ada.id, bob.id]);
  await dispute(p.session_id, 'lost');
  await until('P lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  const wallet = (await accountOf(org, null)).balance;
  await coreInvariants([owner.id, ada.id, bob.id]);
  assert.deepEqual({ walletAtOpen, moved, movedFree, wallet }, {
    walletAtOpen: { balance: '4000', held: '1000' }, // what Ada's job may still draw of P's frozen lot
    moved: 402,
    movedFree: 201,
    wallet: '0',
  });
});

// E2. E1 through the gateway, in the student's own accounts: S owns a school with T (S's second
// account) as a member; the school buys R and S issues T a sponsor code of 1,000 for gpt-4o-mini
// only, which T redeems. S buys a gift G (5,000), T redeems it. T starts a streamed call on
// another model (held ~1,000 of G's credits for any model). G's charge is disputed mid-stream:
// T holds G's lot; billing.dispute_work_elsewhere takes T's 1,000 for gpt-4o-mini as cover for the
// call, so S (the buyer) holds next to nothing and spends all of Q (5,000). The call's capture
// cannot draw credits for gpt-4o-mini: it draws G's frozen lot. The loss leaves S in debt by what
// the call captured. In one account the dispute would have held G and the call its hold beside
// credits for gpt-4o-mini: Q less the call was spendable, and the loss leaves 0.
Deno.test("a streamed call in the redeemer's account, credits for another model there: the gift's buyer may not spend what it draws", async () => {
  const m = await creditPerToken();
  const [s, t] = await Promise.all(['ess', 'tee'].map(person));
  const org = await school(s, [t], 'allowance', null);
  const co = await api('/checkout/sessions', {
    token: s.token,
    body: { package_id: 'mini', org_id: org },
    headers: key(),
  });
  assert.equal(co.status, 201, co.text);
  await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`, {
    outcome: 'succeeded',
  });
  const sc = await api(`/orgs/${org}/sponsor-codes`, {
    token: s.token,
    headers: key(),
    body: { credits: '1000', user_id: t.id, applies_to: ['gpt-4o-mini'] },
  });
  assert.equal(sc.status, 201, sc.text);
  assert.equal((await redeem(t.token, (sc.body.data as { code: string }).code)).status, 200);
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has both', async () => (await balanceOf(t.token)).balance === '6000');
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const call = streamCall(t.token, m, 'words=300 delay=15', 1000);
  await until('the call held', async () => (await aiHolds(t.id)) !== '0', 10_000);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sHeldAtOpen = (await balanceOf(s.token)).held;
  const sSpent = await spendAll(s.token);
  const done = await call;
  assert.equal(done.status, 200, done.text.slice(0, 300));
  const [c] = await until('call settled', async () => {
    const r = await testDb`select status, trim_scale(charged)::text as charged from billing.ai_calls
      where user_id = ${t.id} and status <> 'refused'`;
    return r[0]?.status === 'charged' && r;
  });
  await coreInvariants([s.id, t.id]);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = (await balanceOf(s.token)).balance;
  await coreInvariants([s.id, t.id]);
  const charged = Number(c.charged);
  assert.ok(charged > 500, c.charged);
  // S held what the call might draw and spent the rest; the call's cost is S's to pay, once.
  assert.deepEqual(
    { sSpentAtMost: sSpent <= 5000 - charged, sAfter },
    { sSpentAtMost: true, sAfter: String(5000 - sSpent - charged) },
    JSON.stringify({
      sHeldAtOpen,
      sSpent,
      charged,
    }),
  );
});

// E3. Work that ends without drawing the frozen lot leaves the buyer's hold for it behind. G
// bought by S, redeemed by T; T runs a job holding 1,000 (no other credits); S buys Q; G is
// disputed: S holds 1,000 for what the job may draw (round 18). The job fails (its hold
// released, nothing drawn): nothing of G is spent and no work is under way, yet S still holds
// 1,000 of Q until the dispute ends (months): no refit runs, as none drew a frozen lot. The
// dispute holds 6,000 for a 5,000 claim (the class of session35-attack-3 C1).
Deno.test('a job on a frozen gift lot that fails: the buyer no longer holds what it might have drawn', async () => {
  const { s, t, g } = await giftRedeemed();
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = (await balanceOf(s.token)).held;
  await testDb`select billing.fail_job(${job}, ${w}, '{"code":"x"}'::jsonb, false)`;
  const afterFail = (await balanceOf(s.token)).held;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ atOpen, afterFail }, { atOpen: '1000', afterFail: '0' });
});

// E5 (probe). Races through the gateway: G bought by S, redeemed by T; T streams eight calls on
// G's credits; G is disputed mid-stream; S spends all it may; then the eight captures, a spend of
// S and the dispute's loss land at once. No 5xx to the student, nothing left held, the ledger
// whole, S never in debt. (Seen: every capture came after the loss and found its hold given way:
// each call `unbilled` on T while S got back what it held for them: E4's hole, through the gateway.)
Deno.test("probe: eight streamed calls in the redeemer's account racing the gift's dispute lost", async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const calls = Array.from({ length: 8 }, () => streamCall(t.token, m, 'words=80 delay=25', 300));
  await until('the calls held', async () => Number(await aiHolds(t.id)) > 2000, 10_000);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  const [results, lost, late] = await Promise.all([
    Promise.all(calls),
    dispute(g.session_id, 'lost'),
    spendTry(s.token, 100),
  ]);
  void lost;
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost', 30_000);
  const rows = await until('calls settled', async () => {
    const r = await testDb`select status, trim_scale(coalesce(charged, 0))::text as charged,
      trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.ai_calls where user_id = ${t.id} and status <> 'refused'`;
    return r.every((x) => x.status !== 'held') && r;
  }, 30_000);
  await coreInvariants([s.id, t.id]);
  const sAfter = Number((await balanceOf(s.token)).balance);
  const tAfter = await balanceOf(t.token);
  const statuses = results.map((r) => r.status);
  const leftHeld =
    (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = any(${[s.id, t.id]}::uuid[]) and h.status = 'active'`)[0].n;
  // The calls are paid, none unbilled, by S: from Q, what it held for them (the loss left T that
  // much of G's lots to draw). S and T end with what one account would: Q less S's spending and
  // the calls, and neither below 0.
  const charged = rows.reduce((sum, x) => sum + Number(x.charged), 0);
  const unbilled = rows.reduce((sum, x) => sum + Number(x.unbilled), 0);
  assert.deepEqual({ statuses, leftHeld, unbilled, together: sAfter + Number(tAfter.balance) }, {
    statuses: Array(8).fill(200),
    leftHeld: 0,
    unbilled: 0,
    together: 5000 - sSpent - (late ? 100 : 0) - charged,
  }, JSON.stringify({ sAfter, tAfter, sSpent, late, rows }));
  assert.ok(sAfter >= 0 && Number(tAfter.balance) >= 0, JSON.stringify({ sAfter, tAfter }));
});

// E4. The loss lets go of what the buyer held for work elsewhere before that work is paid. G bought
// by S, redeemed by T (S's second account); T runs a job holding 1,000; S buys Q (5,000); G is
// disputed: S holds 1,000 for what the job may draw (round 18), and spends the 4,000 it may. G is
// lost before the job reports: T's G lot is taken back (T's balance 0, the job's hold gives way)
// and S's dispute hold is released whole. The job then reports 1,000 of work: T's hold captures
// nothing, 1,000 is `unbilled` on T (owed only if T ever calls again: a throwaway account never
// does), and S spends the 1,000 it held for exactly this work. In one account (the yardstick) the
// job's hold sits beside the dispute, its capture is paid from Q, and the loss leaves 0 with
// nothing owed: here the platform served 1,000 of work that nobody pays.
Deno.test("a job in the redeemer's account that reports after the gift's loss: the buyer still pays for it, not an abandoned account", async () => {
  const { s, t, g } = await giftRedeemed();
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  const sLater = await spendTry(s.token, 1000);
  const sAfter = (await balanceOf(s.token)).balance;
  const [{ unbilled }] = await testDb`select trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.jobs
    where id = ${job}`;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ sSpent, sLater, sAfter, tOwes: unbilled }, {
    sSpent: 4000,
    sLater: false, // the 1,000 S held was for this work
    sAfter: '0',
    tOwes: '0',
  });
});

// E4's yardstick (probe): the same in one account. P bought, a job holding 1,000 under way, Q
// bought, P disputed, S spends all it may (4,000), P lost before the job reports: the job's
// capture is paid from Q, nothing is owed, nothing is left to spend.
Deno.test('probe (yardstick): one account, P lost before its job reports: the job is paid, nothing owed', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('P paid', async () => (await balanceOf(s.token)).balance === '5000');
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(s.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '10000');
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  await dispute(p.session_id, 'lost');
  await until('P lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  const sLater = await spendTry(s.token, 1000);
  const sAfter = (await balanceOf(s.token)).balance;
  const [{ unbilled }] = await testDb`select trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.jobs
    where id = ${job}`;
  await coreInvariants([s.id]);
  assert.deepEqual({ sSpent, sLater, sAfter, owes: unbilled }, { sSpent: 4000, sLater: false, sAfter: '0', owes: '0' });
});

// E1's yardstick (probe): one account holding P (5,000), 1,000 for gpt-4o-mini only (here an
// operator's grant, to build the yardstick) and Q (5,000), a gpt-4o job holding 1,000 under way
// when P is disputed: 4,000 may be spent for gpt-4o beside the dispute and the job (Q less the
// job: the credits for gpt-4o-mini are no cover for it), the job is paid from Q, the loss leaves
// the credits for gpt-4o-mini and nothing owed. (E1's wallet had 4,000 beside P, so 3,000.)
Deno.test('probe (yardstick): one account, credits for another model beside a job on a disputed purchase: the loss leaves 0 owed', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('P paid', async () => (await balanceOf(s.token)).balance === '5000');
  assert.equal((await grantLot(s.id, '1000', 'promo_grant', { applies_to: ['gpt-4o-mini'] })).status, 201);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(s.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '11000');
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const spent4000 = await spendTry(s.token, 4000);
  const more = await spendTry(s.token, 1);
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await dispute(p.session_id, 'lost');
  await until('P lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  const after = await figures(s.id);
  await coreInvariants([s.id]);
  assert.deepEqual({ spent4000, more, forAny: after.for_any, inDebt: after.in_debt }, {
    spent4000: true,
    more: false,
    forAny: '0',
    inDebt: false,
  });
});

// E6. "Other credits not frozen" that run out by the calendar. G bought by S, redeemed by T; T
// subscribes to a plan (10,000 for any model this month) and runs a job holding 10,000; S buys Q.
// G is disputed: billing.dispute_work_elsewhere takes T's plan credits as the job's cover, so S
// holds nothing and spends all of Q. T lets the month end (the plan's lot expires, the job still
// under way): nothing refits S; the job's hold gives way to the expiry (T: balance 5,000, held
// 5,000, the dispute's). The job reports 3,000: nothing can pay it, 3,000 is `unbilled` on T (a
// throwaway account never pays it). In one account the spending of Q's 5,000 would have drawn the
// plan's credits first (they spend first), the job been paid from Q, and nothing left owed.
Deno.test("the redeemer's other credits expire under a job on a frozen gift lot: the buyer still covers what it draws", async () => {
  const { s, t, g } = await giftRedeemed();
  await subscribeTo(t.token, 'basic_monthly');
  await until('T has the plan', async () => (await balanceOf(t.token)).balance === '15000');
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 10000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sHeld = (await balanceOf(s.token)).held;
  const sSpent = await spendAll(s.token);
  // The month ends (the student does not renew): the plan's lot falls due and is swept.
  const [lot] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${t.id} and l.purchase_id is null and l.open`;
  await backdateLot(lot.id);
  await testDb`select billing.settle_account(a.id) from billing.accounts a where a.user_id = ${t.id}`;
  const tAfterExpiry = await balanceOf(t.token);
  const [done] = await completeJob(job, w, 3000);
  assert.equal(done.status, 'completed');
  await coreInvariants([s.id, t.id]);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = (await balanceOf(s.token)).balance;
  const [{ unbilled }] = await testDb`select trim_scale(coalesce(unbilled, 0))::text as unbilled from billing.jobs
    where id = ${job}`;
  await coreInvariants([s.id, t.id]);
  // Seen: S held 0 at open and spent 5,000; after the expiry T held only the dispute's 5,000.
  assert.deepEqual({ sInDebt: Number(sAfter) < 0, tOwes: unbilled }, {
    sInDebt: false,
    tOwes: '0', // the job is paid (from Q, as in one account), not left on an abandoned account
  }, JSON.stringify({ sHeld, sSpent, tAfterExpiry, sAfter }));
});

// E7 (probe). A second dispute (S's own Q) opening while captures from the frozen gift lot in T
// refit S's hold, five rounds: no error beyond deadlocks the worker retries, nothing held past
// the balance by disputes, the ledger whole; both lost, nothing left held.
Deno.test("probe: S's own purchase disputed while jobs in the redeemer's account capture from the frozen gift lot", async () => {
  let deadlocks = 0;
  const errors: string[] = [];
  for (let round = 0; round < 5; round++) {
    const s = await student();
    const t = await student();
    const g = await buyGift(s.token, 'mini');
    assert.equal((await redeem(t.token, g.code)).status, 200);
    await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
    const w = 'w-' + crypto.randomUUID().slice(0, 8);
    const jobs = [];
    for (let i = 0; i < 4; i++) jobs.push(await claimedJob(t.id, w, 500));
    const q = await buy(s.token, 'mini');
    await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
    await dispute(g.session_id, 'open');
    await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
    const retrying = async (j: string) => {
      for (let i = 0;; i++) {
        try {
          return await completeJob(j, w, 400);
        } catch (e) {
          if (!String(e).includes('deadlock') || i >= 4) throw e;
          deadlocks++;
          await new Promise((r) => setTimeout(r, [100, 400, 1600, 6400][i]));
        }
      }
    };
    const results = await Promise.allSettled([
      ...jobs.map(retrying),
      dispute(q.session_id, 'open'),
      spendTry(s.token, 1000),
    ]);
    for (const r of results) if (r.status === 'rejected') errors.push(String(r.reason).slice(0, 200));
    await until('Q disputed', async () => (await purchaseDisputeStatus(q.session_id)) === 'open', 30_000);
    await coreInvariants([s.id, t.id]);
    const [over] = await testDb`select count(*)::int as n from billing.accounts a
      where a.user_id = any(${[s.id, t.id]}::uuid[]) and (select coalesce(sum(h.amount), 0) from billing.holds h
        where h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute') > greatest(a.balance, 0)`;
    assert.equal(over.n, 0);
    await dispute(g.session_id, 'lost');
    await until('G lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost', 30_000);
    await dispute(q.session_id, 'lost');
    await until('Q lost', async () => (await purchaseDisputeStatus(q.session_id)) === 'lost', 30_000);
    await coreInvariants([s.id, t.id]);
    const left =
      (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
      where a.user_id = any(${[s.id, t.id]}::uuid[]) and h.status = 'active'`)[0].n;
    assert.equal(left, 0);
  }
  console.log('deadlocks met (retried as the worker does):', deadlocks);
  assert.deepEqual(errors, []);
});

// E8 (probe). One job, two disputes: S buys two gifts (G1, G2), T redeems both (10,000) and runs
// a job holding 1,000; S buys Q; both gifts are disputed. S holds 1,000 for the job once (at G1's
// open G2's lot was T's other credit; at G2's, G1's lot was frozen), not once per dispute.
Deno.test('probe: a job under way in the redeemer account on two disputed gifts: the buyer holds what it may draw once', async () => {
  const s = await student();
  const t = await student();
  const g1 = await buyGift(s.token, 'mini');
  const g2 = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g1.code)).status, 200);
  assert.equal((await redeem(t.token, g2.code)).status, 200);
  await until('T has both', async () => (await balanceOf(t.token)).balance === '10000');
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g1.session_id, 'open');
  await until('G1 disputed', async () => (await purchaseDisputeStatus(g1.session_id)) === 'open');
  await dispute(g2.session_id, 'open');
  await until('G2 disputed', async () => (await purchaseDisputeStatus(g2.session_id)) === 'open');
  const sHeld = (await balanceOf(s.token)).held;
  await coreInvariants([s.id, t.id]);
  assert.equal(sHeld, '1000');
});

// E3 through the gateway: work in T that ends drawing nothing (a call the provider fails, a call
// whose gateway died and the sweep marks failed) no longer has S hold what it might have drawn:
// S holds what G spent (nothing), T's dispute hold G's whole lot again.
Deno.test('a gateway call on a frozen gift lot that the provider fails: the buyer no longer holds what it might have drawn', async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const call = streamCall(t.token, m, 'first_byte_delay=6000 fail=500', 1000);
  const held = await until('the call held', async () => (await aiHolds(t.id)) !== '0' && await aiHolds(t.id), 10_000);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = (await balanceOf(s.token)).held;
  await call;
  await until(
    'the call failed',
    async () => (await testDb`select status from billing.ai_calls where user_id = ${t.id}`)[0]?.status === 'failed',
  );
  const after = { s: (await balanceOf(s.token)).held, t: (await balanceOf(t.token)).held };
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ atOpen: atOpen === held, after }, { atOpen: true, after: { s: '0', t: '5000' } });
});

Deno.test('a gateway call on a frozen gift lot whose gateway died: the sweep that fails it refits the dispute', async () => {
  const m = await creditPerToken();
  const { s, t, g } = await giftRedeemed();
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  const call = streamCall(t.token, m, 'first_byte_delay=4000 no_usage', 1000);
  await until('the call held', async () => (await aiHolds(t.id)) !== '0', 10_000);
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = (await balanceOf(s.token)).held;
  // The gateway is gone (as far as the database knows): its hold's TTL and the minute pass.
  await testDb`update billing.holds h set expires_at = now() - interval '1 second' from billing.ai_calls c
    where c.user_id = ${t.id} and h.id = c.hold_id`;
  await testDb`update billing.ai_calls set created_at = created_at - interval '2 minutes' where user_id = ${t.id}`;
  await sweepExpiredHolds();
  await testDb`select billing.sweep_ai_calls()`;
  const after = { s: (await balanceOf(s.token)).held, t: (await balanceOf(t.token)).held };
  await call;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ atOpen: Number(atOpen) > 0, after }, { atOpen: true, after: { s: '0', t: '5000' } });
});
