// Attack round 15 on da2e095 (a plan invoice's dispute holds what a package's does: `dispute:<id>`
// for what is left in the grant's lots, `dispute:<id>:spent` for what it spent). The yardstick is
// a package's dispute (sync_purchase_dispute, refreeze_disputes, freeze_voided_credits): a plan's
// dispute must freeze, and a lost one take back, exactly what a package's would in its place.
import assert from 'node:assert/strict';
import { api, key, spend, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, deliver, emulator } from '../support/purchases.ts';
import { subscribeTo } from '../support/plans.ts';
import { voidCharge } from '../support/money.ts';
import {
  activeDisputes,
  coreInvariants,
  dispute,
  disputePlan,
  figures,
  planCharge,
  planDisputeStatus,
  purchaseDisputeStatus,
  spendTry,
} from '../support/disputed.ts';

/** The dispute holds on the student's own account: key suffix, amount, covers. */
const disputeHolds = async (userId: string) =>
  (await testDb`select h.idempotency_key as key, trim_scale(h.amount)::text as amount, h.metadata -> 'covers' as covers
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.purpose = 'dispute' and h.status = 'active' order by h.created_at, h.amount desc`)
    .map((h) => ({ ...h }));

// ---------------------------------------------------------------------------------------------
// 1. A package's won dispute next to an open plan dispute: refreeze_disputes tops up only
//    purchases' disputes, so the plan's dispute, starved by the package's older hold, stays
//    starved once the package's dispute is won.
Deno.test('a package dispute won beside an open plan dispute: the plan dispute gets the freed balance (as a second package would)', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 for any model (priority 5)
  const p = await buy(s.token, 'mini'); // 5,000
  await until('both paid', async () => (await balanceOf(s.token)).balance === '15000');
  await spend(s.token, 10000); // the plan's 10,000 (spent first)
  await dispute(p.session_id, 'open'); // the package: 5,000 held
  await until('package held', async () => (await figures(s.id)).held === '5000');
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open'); // the plan's 10,000 spent: nothing left of the balance to hold
  await until('plan dispute open', async () => (await planDisputeStatus(charge)) === 'open');
  await dispute(p.session_id, 'won');
  await until('package won', async () => (await purchaseDisputeStatus(p.session_id)) === 'won');
  // Yardstick: two packages (P1 5,000 untouched disputed first, P2 10,000 spent disputed second):
  // P1 won → refreeze_disputes grows P2's hold to 5,000 (what the balance allows). The plan's
  // dispute must likewise hold the 5,000 now free: held 5,000, nothing spendable.
  const f = await figures(s.id);
  const r = await spendTry(s.token, 5000); // the student spends what the package's win freed
  await disputePlan(charge, 'lost');
  await until('plan lost', async () => (await planDisputeStatus(charge)) === 'lost');
  const after = await figures(s.id);
  assert.deepEqual({ held: f.held, spendable: r, balanceAfterLoss: after.balance }, {
    held: '5000',
    spendable: false,
    balanceAfterLoss: '-5000', // 10,000 taken back from 5,000: 5,000 owed, as a second package's loss leaves
  });
  await coreInvariants([s.id]);
});

Deno.test('yardstick: two package disputes, the older won: the newer one is topped up to what the balance allows', async () => {
  const s = await student();
  const p2 = await buy(s.token, 'mini'); // spent first (older)
  await until('P2 paid', async () => (await balanceOf(s.token)).balance === '5000');
  const p1 = await buy(s.token, 'mini');
  await until('P1 paid', async () => (await balanceOf(s.token)).balance === '10000');
  await spend(s.token, 5000); // P2's 5,000
  await dispute(p1.session_id, 'open');
  await until('P1 held', async () => (await figures(s.id)).held === '5000');
  await dispute(p2.session_id, 'open');
  await until('P2 open', async () => (await purchaseDisputeStatus(p2.session_id)) === 'open');
  await dispute(p1.session_id, 'won');
  await until('P1 won', async () => (await purchaseDisputeStatus(p1.session_id)) === 'won');
  const f = await figures(s.id);
  const r = await spendTry(s.token, 5000);
  await dispute(p2.session_id, 'lost');
  await until(
    'P2 lost',
    async () => (await activeDisputes(s.id)) === 0 && (await purchaseDisputeStatus(p2.session_id)) === 'lost',
  );
  assert.deepEqual({ held: f.held, spendable: r, balanceAfterLoss: (await figures(s.id)).balance }, {
    held: '5000',
    spendable: false,
    balanceAfterLoss: '0',
  });
  await coreInvariants([s.id]);
});

// 2. The other way round: an open plan dispute holds the balance, a package's dispute opens
//    starved, the plan's dispute is won. sync_plan_charge releases its holds but never calls
//    refreeze_disputes (sync_purchase_dispute does, on every close), so the package's dispute
//    stays at 0 and the student spends the package's frozen lots.
Deno.test('a plan dispute won beside an open package dispute: the package dispute gets the freed balance (as after a package win)', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 (priority 5)
  const p = await buy(s.token, 'mini'); // 5,000
  await until('both paid', async () => (await balanceOf(s.token)).balance === '15000');
  await spend(s.token, 10000); // the plan's 10,000
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open'); // spent 10,000: the whole balance (5,000) held, key :spent
  await until('plan held', async () => (await figures(s.id)).held === '5000');
  await dispute(p.session_id, 'open'); // nothing left of the balance to hold
  await until('package open', async () => (await purchaseDisputeStatus(p.session_id)) === 'open');
  await disputePlan(charge, 'won');
  await until('plan won', async () => (await planDisputeStatus(charge)) === 'won');
  // Yardstick (the test above): an older package's dispute won tops the newer one up. The
  // package's 5,000 must stay frozen: held 5,000, none spendable, and its loss leaves 0.
  const f = await figures(s.id);
  const r = await spendTry(s.token, 5000);
  await dispute(p.session_id, 'lost');
  await until('package lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  assert.deepEqual({ held: f.held, spendable: r, balanceAfterLoss: (await figures(s.id)).balance }, {
    held: '5000',
    spendable: false,
    balanceAfterLoss: '0',
  });
  await coreInvariants([s.id]);
});

// 3. An operator's void (POST /admin/charges/:id/void, an outage correction) returns spent credits
//    into a disputed plan's frozen lot. freeze_voided_credits grows only a purchase's dispute hold
//    (it joins billing.purchases), so when the plan's `:spent` hold was cut short by the balance,
//    the credits the void returned are spendable though the dispute still claims them.
Deno.test('a void into a disputed plan lot stays frozen (as into a disputed package): a loss leaves nothing owed', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000
  const c = await spend(s.token, 6000);
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open'); // 4,000 left held; the 6,000 spent: no balance beyond it
  await until('plan held', async () => (await figures(s.id)).held === '4000');
  const v = await voidCharge(String((c.body.data as { transfer_id: string }).transfer_id));
  assert.equal(v.status, 200, v.text);
  // Yardstick: a package's dispute hold grows by what a void returns into its frozen lots
  // (freeze_voided_credits; corrections-void-lots.test.ts). Here: 10,000 held, none spendable,
  // and the loss takes the 10,000 back from the plan's own lot: balance 0.
  const f = await figures(s.id);
  const r = await spendTry(s.token, 6000);
  await disputePlan(charge, 'lost');
  await until('plan lost', async () => (await planDisputeStatus(charge)) === 'lost');
  assert.deepEqual({ held: f.held, spendable: r, balanceAfterLoss: (await figures(s.id)).balance }, {
    held: '10000',
    spendable: false,
    balanceAfterLoss: '0',
  });
  await coreInvariants([s.id]);
});

Deno.test('yardstick: a void into a disputed package whose hold the balance cut short grows the hold', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini'); // 5,000
  await until('paid', async () => (await balanceOf(s.token)).balance === '5000');
  const c = await spend(s.token, 3000);
  await dispute(p.session_id, 'open');
  await until('held', async () => (await figures(s.id)).held === '2000');
  const v = await voidCharge(String((c.body.data as { transfer_id: string }).transfer_id));
  assert.equal(v.status, 200, v.text);
  const f = await figures(s.id);
  const r = await spendTry(s.token, 3000);
  await dispute(p.session_id, 'lost');
  await until('lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  assert.deepEqual({ held: f.held, spendable: r, balanceAfterLoss: (await figures(s.id)).balance }, {
    held: '5000',
    spendable: false,
    balanceAfterLoss: '0',
  });
  await coreInvariants([s.id]);
});

// 4. A plan invoice's dispute never stops off-session charges: sync_purchase_dispute calls
//    billing.stop_off_session_charges (auto-recharge off, the saved card forgotten) before its
//    holds lower what is available; sync_plan_charge does not, so the plan dispute's own holds
//    cross the threshold and queue a recharge of the disputing customer's saved card.
Deno.test("a plan's dispute turns auto-recharge off and forgets the card (as a package's): no recharge is queued", async () => {
  const s = await student();
  const co = await api('/checkout/sessions', {
    token: s.token,
    headers: key(),
    body: { package_id: 'starter', save_card: true },
  });
  assert.equal(co.status, 201, co.text);
  await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`, {
    outcome: 'succeeded',
  });
  await until('starter paid', async () => (await balanceOf(s.token)).balance === '9990');
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await until('plan paid', async () => (await balanceOf(s.token)).balance === '19990');
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(on.status, 200, on.text);
  await spend(s.token, 10000); // the plan's 10,000: 9,990 available, above the threshold
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open'); // the 10,000 spent: 9,990 held, available 0
  await until('plan held', async () => (await figures(s.id)).held === '9990');
  const [{ n }] = await testDb`select count(*)::int as n from billing.recharges where user_id = ${s.id}`;
  const settings = (await api('/credits/auto-recharge', { token: s.token })).body.data as {
    enabled: boolean;
    disabled_reason: string | null;
    card_saved: boolean;
  };
  // Yardstick: auto-recharge.test.ts "a dispute turns auto-recharge off and forgets the card".
  assert.deepEqual({
    recharges: n,
    enabled: settings.enabled,
    reason: settings.disabled_reason,
    card: settings.card_saved,
  }, {
    recharges: 0,
    enabled: false,
    reason: 'dispute',
    card: false,
  });
  await coreInvariants([s.id]);
});

// 5. Races: a plan's dispute opening while twenty charges race it. Whatever the order, the
//    dispute holds min(10,000, the balance then) (left + spent), and whatever was spent after it
//    came from the 5,000 it left: held + what is free = the balance, and the loss leaves
//    5,000 − spent (negative only by what was spent before the dispute: as a package's would).
Deno.test('twenty charges racing a plan dispute opening: the holds are what the balance allowed; the loss takes exactly the grant', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await buy(s.token, 'mini');
  await until('both paid', async () => (await balanceOf(s.token)).balance === '15000');
  const charge = await planCharge(plan.stripe_subscription);
  const results = await Promise.all([
    disputePlan(charge, 'open').then(() => 'dispute'),
    ...Array.from({ length: 20 }, () => spendTry(s.token, 500)),
  ]);
  const spent = results.filter((r) => r === true).length * 500;
  await until('plan open', async () => (await planDisputeStatus(charge)) === 'open');
  const held = (await figures(s.id)).held;
  await coreInvariants([s.id]);
  await disputePlan(charge, 'lost');
  await until('plan lost', async () => (await planDisputeStatus(charge)) === 'lost');
  const f = await figures(s.id);
  assert.deepEqual({ held, balance: f.balance, heldAfter: f.held }, {
    held: String(Math.min(10000, 15000 - spent)),
    balance: String(5000 - spent),
    heldAfter: '0',
  });
  await coreInvariants([s.id]);
});

// 6. Replays and reorders: every dispute event delivered again, out of order, after the close.
Deno.test('a plan dispute: open delivered three times, won, then the open and created events again: nothing held, nothing lost', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  await buy(s.token, 'mini');
  await until('paid', async () => (await balanceOf(s.token)).balance === '9000');
  const charge = await planCharge(plan.stripe_subscription);
  const opened = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false });
  for (let i = 0; i < 3; i++) for (const e of opened.events) assert.ok((await deliver(e)).status < 300);
  await until('held', async () => (await figures(s.id)).held === '9000');
  assert.deepEqual(
    (await disputeHolds(s.id)).map((h) => [h.key.replace(/^dispute:[^:]+/, 'dispute'), h.amount]).sort(),
    [
      ['dispute', '4000'],
      ['dispute:spent', '5000'],
    ],
  );
  const won = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won', deliver: false });
  for (const e of [...won.events, ...opened.events, ...won.events]) assert.ok((await deliver(e)).status < 300);
  const f = await figures(s.id);
  assert.deepEqual([f.balance, f.held], ['9000', '0']);
  await coreInvariants([s.id]);
});
