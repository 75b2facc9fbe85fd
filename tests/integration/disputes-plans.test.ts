// A plan invoice's dispute (issue #77): it stops off-session charges as a package's does
// (auto-recharge off, the card forgotten, no recharge queued), and its events delivered again
// and out of order change nothing once settled. Kept from the plan-dispute attacks of #55
// (session 35). A dispute holds nothing now: it freezes the grant's lots (issue #77), which these
// cases check where they once measured the plan dispute's holds.
import assert from 'node:assert/strict';
import { api, key, spend, student, testDb, until } from '../support/helpers.ts';
import { balanceOf, buy, deliver, emulator } from '../support/purchases.ts';
import { subscribeTo } from '../support/plans.ts';
import { coreInvariants, disputePlan, figures, planCharge, planDisputeStatus } from '../support/disputed.ts';

/** The plan's lots (grant and rollovers) in the student's own account: Σ remaining, all frozen? */
const planLots = async (userId: string) => {
  const [r] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as left, bool_and(l.frozen) as frozen
    from billing.lots l join billing.plan_lots pl on pl.lot_id = l.id join billing.accounts a on a.id = l.account_id
    where a.user_id = ${userId} and l.open`;
  return { left: r.left as string, frozen: r.frozen as boolean | null };
};

// 4. A plan invoice's dispute never stopped off-session charges: a package's dispute calls
//    billing.stop_off_session_charges (auto-recharge off, the saved card forgotten);
//    sync_plan_charge did not, so the disputing customer's saved card could be recharged.
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
  await disputePlan(charge, 'open'); // the plan's 10,000 were spent: nothing of it is left to freeze
  await until('disputed', async () => (await planDisputeStatus(charge)) === 'open');
  assert.equal((await figures(s.id)).held, '0', 'a dispute holds nothing');
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

// 6. Replays and reorders: every dispute event delivered again, out of order, after the close.
Deno.test('a plan dispute: open delivered three times, won, then the open and created events again: frozen, thawed, nothing lost', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  await buy(s.token, 'mini');
  await until('paid', async () => (await balanceOf(s.token)).balance === '9000');
  const charge = await planCharge(plan.stripe_subscription);
  const opened = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false });
  for (let i = 0; i < 3; i++) for (const e of opened.events) assert.ok((await deliver(e)).status < 300);
  await until('disputed', async () => (await planDisputeStatus(charge)) === 'open');
  assert.deepEqual(await planLots(s.id), { left: '4000', frozen: true }, "the plan's 4,000 left are frozen");
  assert.deepEqual([(await figures(s.id)).balance, (await figures(s.id)).held], ['9000', '0'], 'nothing is held');
  const won = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won', deliver: false });
  for (const e of [...won.events, ...opened.events, ...won.events]) assert.ok((await deliver(e)).status < 300);
  const f = await figures(s.id);
  assert.deepEqual([f.balance, f.held], ['9000', '0']);
  assert.deepEqual(
    await planLots(s.id),
    { left: '4000', frozen: false },
    'won, and replayed after: the lots stay thawed',
  );
  await coreInvariants([s.id]);
});
