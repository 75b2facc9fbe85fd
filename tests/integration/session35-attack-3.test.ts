// Attack round 17 on 5ce2143 (billing.refreeze_disputes' exact shrink after a void;
// billing.cancel_job keeping a running job's hold). A failing test is a hole: its assertion is
// the documented rule (docs/credit-lots.md: a dispute holds what is left of its purchase wherever
// its credits are, as far as the balance goes; a void gives nothing under dispute back to spend,
// and takes no more than the dispute claims).
import assert from 'node:assert/strict';
import { spend, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import { voidCharge } from '../support/money.ts';
import {
  claimedJob,
  coreInvariants,
  dispute,
  giftRedeemed,
  jobUsage,
  purchaseDisputeStatus,
  spendTry,
} from '../support/disputed.ts';

const transferOf = (r: { body: { data?: unknown } }) => String((r.body.data as { transfer_id: string }).transfer_id);

/** Every active dispute hold of these users, as [user label, amount]. */
const disputeHolds = async (who: Record<string, string>) => {
  const rows = await testDb`select a.user_id::text as u, trim_scale(sum(h.amount))::text as amount
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = any(${Object.values(who)}::uuid[]) and h.purpose = 'dispute' and h.status = 'active'
    group by a.user_id`;
  const out: Record<string, string> = {};
  for (const [label, id] of Object.entries(who)) out[label] = rows.find((r) => r.u === id)?.amount ?? '0';
  return out;
};

// ---------------------------------------------------------------------------------------------
// C1. A gift bought by S, redeemed by T (S's second account). T spends 2,000 of it (charge C),
//     S buys a package Q of 5,000 of their own. The gift's charge is disputed: T holds its lot
//     (3,000), S, the buyer, the 2,000 spent (from Q). An operator voids C: the 2,000 return to
//     T's frozen gift lot, and freeze_voided_credits refreezes the dispute in T's account only
//     (p_account_id): T now holds 5,000, S keeps 2,000 though nothing of the gift is spent any
//     more. 7,000 held for a 5,000 claim: S's own Q credits are frozen for months. The
//     yardstick (session35-attack-2 B2, one account): a void never leaves a dispute holding more
//     than its purchase.
Deno.test("a void into a gift lot in the redeemer's account: the gift's dispute holds 5,000 in all, not 7,000", async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini'); // 5,000
  const r = await redeem(t.token, g.code);
  assert.equal(r.status, 200, r.text);
  await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
  const c = await spend(t.token, 2000);
  const q = await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = await disputeHolds({ s: s.id, t: t.id });
  const v = await voidCharge(transferOf(c));
  assert.equal(v.status, 200, v.text);
  const afterVoid = await disputeHolds({ s: s.id, t: t.id });
  const sCanSpend = await spendTry(s.token, 5000);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ atOpen, afterVoid, sCanSpend }, {
    atOpen: { s: '2000', t: '3000' },
    afterVoid: { s: '0', t: '5000' }, // the gift is whole in T's lot: nothing of it is S's to cover
    sCanSpend: true, // Q is S's own, undisputed
  });
  void q;
});

// C2. Work under way in the redeemer's account spends the frozen gift lot: T (the gift's
//     redeemer, S's second account) spent 500 (charge C) and runs a job holding 1,000 when the
//     gift's charge is disputed: T holds its lot (4,500), S the 500 spent. The job's capture
//     takes 1,000 more of the gift (only a job's hold reaches frozen lots): 1,500 of the gift
//     are now spent, which the buyer covers (as a package's dispute holds its spent credits).
//     Then C is voided. The dispute must still hold 5,000 in all (T's lot 4,000 + S 1,000), so a
//     loss leaves S at 0 (S's Q taken only for what the gift spent), never in debt.
Deno.test("a job capture from a frozen gift lot, then a void: the gift's dispute still holds 5,000; a loss leaves S at 0", async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini'); // 5,000
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
  const c = await spend(t.token, 500);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  const atOpen = await disputeHolds({ s: s.id, t: t.id });
  const [done] = await testDb`select status from billing.complete_job(${job}, ${w}, '{"text":"x"}'::jsonb,
    ${jobUsage(1000)}::text::jsonb)`;
  assert.equal(done.status, 'completed');
  const afterJob = await disputeHolds({ s: s.id, t: t.id });
  const v = await voidCharge(transferOf(c));
  assert.equal(v.status, 200, v.text);
  const afterVoid = await disputeHolds({ s: s.id, t: t.id });
  const sAvail = (await balanceOf(s.token)).available;
  const tAvail = (await balanceOf(t.token)).available;
  // S spends all it may.
  if (Number(sAvail) > 0) await spend(s.token, Math.floor(Number(sAvail)));
  await coreInvariants([s.id, t.id]);
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = await balanceOf(s.token);
  const tAfter = await balanceOf(t.token);
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ atOpen, afterJob, afterVoid, sAvail, tAvail, sAfter: sAfter.balance, tAfter: tAfter.balance }, {
    // S: the 500 spent and the 1,000 T's job may still draw (round 18); T: the rest of its lot (round 19).
    atOpen: { s: '1500', t: '3500' },
    afterJob: { s: '1500', t: '3500' },
    afterVoid: { s: '1000', t: '4000' },
    sAvail: '4000',
    tAvail: '0',
    sAfter: '0',
    tAfter: '0',
  });
});

// C3. C2 without the void: the job's capture of 1,000 from T's frozen gift lot alone leaves the
//     buyer's hold at 500 (the claim it covers is now 1,500 spent) and T's at 4,500 over a balance
//     of 3,500: 4,000 effectively held for a 5,000 claim. S spends 4,500; the loss leaves S at
//     -1,000 where a package's dispute (which holds spent credits too) would leave 0.
Deno.test('a job capture from a frozen gift lot: the buyer covers what it spent; a loss leaves S at 0, not in debt', async () => {
  const { s, t, g } = await giftRedeemed();
  await spend(t.token, 500);
  const w = 'w-' + crypto.randomUUID().slice(0, 8);
  const job = await claimedJob(t.id, w, 1000);
  await buy(s.token, 'mini');
  await until('Q paid', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(g.session_id, 'open');
  await until('gift disputed', async () => (await purchaseDisputeStatus(g.session_id)) === 'open');
  await testDb`select billing.complete_job(${job}, ${w}, '{"text":"x"}'::jsonb, ${jobUsage(1000)}::text::jsonb)`;
  const sAvail = (await balanceOf(s.token)).available;
  const tBal = await balanceOf(t.token);
  if (Number(sAvail) > 0) await spend(s.token, Math.floor(Number(sAvail)));
  await dispute(g.session_id, 'lost');
  await until('gift lost', async () => (await purchaseDisputeStatus(g.session_id)) === 'lost');
  const sAfter = (await balanceOf(s.token)).balance;
  await coreInvariants([s.id, t.id]);
  assert.deepEqual({ sAvail, tHeldNotOverBalance: Number(tBal.held) <= Number(tBal.balance), sAfter }, {
    sAvail: '3500', // Q's 5,000 less the gift's 1,500 spent
    tHeldNotOverBalance: true,
    sAfter: '0',
  });
});

// C4 (probe). One charge drew from two packages' lots (P1, P2, 10,000); Q (5,000) bought after;
// both disputed (P1 held 5,000 from Q's balance, P2 starved); the charge voided: each dispute's
// own lot is whole again (P1 stays 5,000, P2 grows to 5,000), Q's 5,000 are spendable, both
// losses leave 0.
Deno.test('probe: a void of a charge drawn from two disputed packages: each holds its own, Q spendable, 0 after both losses', async () => {
  const s = await student();
  const p1 = await buy(s.token, 'mini');
  await until('P1', async () => (await balanceOf(s.token)).balance === '5000');
  const p2 = await buy(s.token, 'mini');
  await until('P2', async () => (await balanceOf(s.token)).balance === '10000');
  const c = await spend(s.token, 10000);
  await buy(s.token, 'mini');
  await until('Q', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(p1.session_id, 'open');
  await until('P1 open', async () => (await purchaseDisputeStatus(p1.session_id)) === 'open');
  await dispute(p2.session_id, 'open');
  await until('P2 open', async () => (await purchaseDisputeStatus(p2.session_id)) === 'open');
  assert.equal((await voidCharge(transferOf(c))).status, 200);
  const f = await balanceOf(s.token);
  const spent = await spendTry(s.token, 5000);
  const more = await spendTry(s.token, 1);
  await coreInvariants([s.id]);
  await dispute(p1.session_id, 'lost');
  await until('P1 lost', async () => (await purchaseDisputeStatus(p1.session_id)) === 'lost');
  await dispute(p2.session_id, 'lost');
  await until('P2 lost', async () => (await purchaseDisputeStatus(p2.session_id)) === 'lost');
  const after = await balanceOf(s.token);
  await coreInvariants([s.id]);
  assert.deepEqual({ f, spent, more, after }, {
    f: { balance: '15000', held: '10000', available: '5000' },
    spent: true,
    more: false,
    after: { balance: '0', held: '0', available: '0' },
  });
});

// C5 (probe). C4's void racing P1's dispute being won: whichever commits first, P2 ends holding
// its whole lot (5,000), P1 nothing; 10,000 spendable.
Deno.test('probe: a void racing the older dispute won: the newer holds its own 5,000, nothing more', async () => {
  const s = await student();
  const p1 = await buy(s.token, 'mini');
  await until('P1', async () => (await balanceOf(s.token)).balance === '5000');
  const p2 = await buy(s.token, 'mini');
  await until('P2', async () => (await balanceOf(s.token)).balance === '10000');
  const c = await spend(s.token, 10000);
  await buy(s.token, 'mini');
  await until('Q', async () => (await balanceOf(s.token)).balance === '5000');
  await dispute(p1.session_id, 'open');
  await until('P1 open', async () => (await purchaseDisputeStatus(p1.session_id)) === 'open');
  await dispute(p2.session_id, 'open');
  await until('P2 open', async () => (await purchaseDisputeStatus(p2.session_id)) === 'open');
  const [v] = await Promise.all([voidCharge(transferOf(c)), dispute(p1.session_id, 'won')]);
  assert.equal(v.status, 200, v.text);
  await until('P1 won', async () => (await purchaseDisputeStatus(p1.session_id)) === 'won');
  const f = await balanceOf(s.token);
  await coreInvariants([s.id]);
  assert.deepEqual(f, { balance: '15000', held: '5000', available: '10000' });
});
