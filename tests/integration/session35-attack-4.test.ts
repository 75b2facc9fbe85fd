// Attack round 18 on d313a2c (billing.refit_disputes_drawn: after a transfer drew from or gave back
// to lots an open dispute froze, the dispute's holds are refitted in every account it reaches).
// A failing test is a hole: its assertion is the documented rule (docs/credit-lots.md: a dispute
// holds what is left of its purchase wherever its credits are; a student never spends what a
// dispute claims; a lost dispute leaves no more debt than the same credits bought as one package
// in one account, where only what was spent before the dispute opened becomes debt).
import assert from 'node:assert/strict';
import { spend, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import {
  claimedJob,
  completeJob,
  coreInvariants,
  dispute,
  giftRedeemed,
  purchaseDisputeStatus,
  spendAll,
  spendTry,
} from '../support/disputed.ts';

// D0 (yardstick probe). One account: P (5,000) bought, 500 spent, a job holding 1,000 under way,
// Q (5,000) bought, P disputed. What S may spend before the job ends, and what the loss leaves.
Deno.test('probe (yardstick): one account, a job under way when P is disputed: S may spend 3,500; the loss leaves 0', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('P paid', async () => (await balanceOf(s.token)).balance === '5000');
  await spend(s.token, 500);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(s.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '9500');
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await coreInvariants([s.id]);
  await dispute(p.session_id, 'lost');
  await until('P lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  const after = (await balanceOf(s.token)).balance;
  await coreInvariants([s.id]);
  assert.deepEqual({ sSpent, after }, { sSpent: 3500, after: '0' });
});

// D1. The same credits across two accounts: the gift G (5,000) bought by S and redeemed by T (S's
// second account); T spends 500 and runs a job holding 1,000; S buys Q (5,000); G is disputed: T
// holds its lot (4,500), S the 500 spent. S spends all it may at once (before the job ends): 4,500.
// Then the job's capture takes 1,000 of T's frozen gift lot (work under way), which the buyer must
// cover, but S's balance has gone: the refit can grow S's hold by nothing. The loss leaves S at
// -1,000 where the one-account yardstick (D0) leaves 0: S spent 1,000 of what the dispute claimed
// (T's job hold was work under way on the disputed credits, invisible to S's available).
Deno.test("a job under way in the redeemer's account on a disputed gift: the buyer may not spend what it will draw; the loss leaves 0", async () => {
  const { s, t, g } = await giftRedeemed();
  await spend(t.token, 500);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const sSpent = await spendAll(s.token);
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await coreInvariants([s.id, t.id]);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = (await balanceOf(s.token)).balance;
  const tAfter = (await balanceOf(t.token)).balance;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ sSpent, sAfter, tAfter }, { sSpent: 3500, sAfter: '0', tAfter: '0' });
});

// D2. The school form of D1: the school buys P (5,000) and moves it all into Ada's allowance; Ada
// spends 500 and runs a job holding 1,000; the school buys Q (5,000); P is disputed: Ada's
// allowance holds its lot (4,500), the wallet the 500 spent. The owner moves all the wallet may
// (4,500) into Bob's allowance, then Ada's job captures 1,000 of the frozen allowance lot. The
// wallet's hold cannot grow; the loss leaves the wallet at -1,000 where the yardstick (D0) leaves 0.
Deno.test("a member's job under way on a school's disputed purchase: the wallet may not move what it will draw; the loss leaves 0", async () => {
  const { api, key: k } = {
    api: (await import('../support/helpers.ts')).api,
    key: (await import('../support/helpers.ts')).key,
  };
  const { person, school, accountOf } = await import('../support/orgs.ts');
  const { emulator } = await import('../support/purchases.ts');
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'allowance', null);
  const orgBuys = async () => {
    const co = await api('/checkout/sessions', {
      token: owner.token,
      body: { package_id: 'mini', org_id: org },
      headers: k(),
    });
    assert.equal(co.status, 201, co.text);
    const bought = co.body.data as { session_id: string; purchase_id: string };
    await emulator(`/_emulator/checkout/sessions/${bought.session_id}/pay`, { outcome: 'succeeded' });
    return bought;
  };
  const fund = (user_id: string, amount: string) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount, user_id }, headers: k() });
  const p = await orgBuys();
  assert.equal((await fund(ada.id, '5000')).status, 201);
  const { reportUsage } = await import('../support/helpers.ts');
  const adaSpend = await reportUsage('/credits/usage', {
    token: ada.token,
    headers: k(),
    body: { model: 'gpt-4o', input_tokens: 500 * 50, output_tokens: 0 },
  });
  assert.equal(adaSpend.status, 201, adaSpend.text);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(ada.id, w, 1000);
  await orgBuys();
  await dispute(p.session_id, 'open');
  await until('P disputed', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  const walletAtOpen = await accountOf(org, null);
  const moved = (await fund(bob.id, '4500')).status;
  const movedFree = (await fund(bob.id, '3500')).status; // what is the school's to move
  const [done] = await completeJob(job, w, 1000);
  assert.equal(done.status, 'completed');
  await coreInvariants([owner.id, ada.id, bob.id]);
  await dispute(p.session_id, 'lost');
  await until('P lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  const wallet = (await accountOf(org, null)).balance;
  await coreInvariants([owner.id, ada.id, bob.id]);
  assert.deepEqual({ walletAtOpen, moved, movedFree, wallet }, {
    // What Ada spent (500) and what her job under way may still draw of P's frozen credits (1,000).
    walletAtOpen: { balance: '5000', held: '1500' },
    moved: 402, // only 3,500 is the school's to move (D0: one account may spend 3,500)
    movedFree: 201,
    wallet: '0',
  });
});

// D3 (probe). Races across accounts: G bought by S, redeemed by T, T runs three jobs on the
// frozen gift lot; S's dispute lost while the three captures land at once. No 500, nothing
// created or lost, held equal to the live holds.
Deno.test("probe: three captures from a frozen gift lot in the redeemer's account racing the dispute lost", async () => {
  const { s, t, g } = await giftRedeemed();
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const jobs = [await claimedJob(t.id, w, 1000), await claimedJob(t.id, w, 1000), await claimedJob(t.id, w, 1000)];
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  // As the worker does (retryingTransient: a deadlock is tried again, four times over ~8.5 s).
  let deadlocks = 0;
  const retrying = async (j: string) => {
    for (let i = 0;; i++) {
      try {
        return await completeJob(j, w, 1000);
      } catch (e) {
        if (!String(e).includes('deadlock') || i >= 4) throw e;
        deadlocks++;
        await new Promise((r) => setTimeout(r, [100, 400, 1600, 6400][i]));
      }
    }
  };
  const results = await Promise.allSettled([
    ...jobs.map(retrying),
    dispute(g.session_id, 'lost'),
    spendTry(s.token, 100),
  ]);
  const errors = results.filter((r) => r.status === 'rejected').map((r) =>
    String((r as PromiseRejectedResult).reason).slice(0, 200)
  );
  console.log('deadlocks met (retried as the worker does):', deadlocks);
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost', 30_000);
  await coreInvariants([s.id, t.id]);
  const sAfter = await balanceOf(s.token);
  const tAfter = await balanceOf(t.token);
  assert.deepEqual({ errors, tAfter: tAfter.balance }, { errors: [], tAfter: '0' });
  // S paid what the jobs captured before the loss (from Q); a job whose capture came after it
  // found its hold given way to the reversal, and T owes its work (jobs.unbilled, paid before T's
  // next call): so 2,000 plus what T owes is left, or 1,900 plus it if S's 100 landed.
  const [{ owed }] =
    await testDb`select coalesce(sum(unbilled), 0)::int as owed from billing.jobs where user_id = ${t.id}`;
  assert.ok([2000 + owed, 1900 + owed].includes(Number(sAfter.balance)), JSON.stringify({ sAfter, owed }));
});
