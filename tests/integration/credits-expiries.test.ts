// GET /credits/expiries: every upcoming expiry of a student's own credits, and for a plan what
// its rollover rule carries over, held to what the renewal then actually does.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, spend, userToken } from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';
import { planLots, renew, subscribeTo } from '../support/plans.ts';
import type { Expiry, Page } from '../../supabase/functions/_shared/contract/index.ts';

async function expiries(token: string): Promise<Expiry[]> {
  const r = await api('/credits/expiries', { token });
  assert.equal(r.status, 200, r.text);
  const page = r.body.data as Page<Expiry>;
  assert.equal(page.next_cursor, null);
  return page.items;
}

Deno.test('the plan row says what the renewal rolls over, and the renewal rolls exactly that', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const plan = await subscribeTo(token, 'basic_monthly');
  await spend(token, 5000); // 5,000 left of 10,000; Basic rolls over up to 2,000
  const me = (await api('/checkout/subscription', { token })).body.data as { current_period_end: string };
  const [row, ...rest] = await expiries(token);
  assert.deepEqual(rest, [], 'bought credits without an expiry are no expiry');
  assert.deepEqual(row, {
    ends_at: me.current_period_end,
    source: 'plan',
    credits: '5000',
    rolls_over: '2000',
    expires: '3000',
    plan_id: 'basic_monthly',
    plan_renews: true,
  });

  await renew(plan.stripe_subscription);
  const rolled = (await planLots(id)).filter((l) => l.moved_from !== null);
  assert.deepEqual(rolled.map((l) => l.amount), [row.rolls_over], 'the renewal rolled over what the schedule said');
  assert.equal((await balanceOf(token)).balance, '12000');
  const [next] = await expiries(token);
  assert.equal(next.credits, '12000', "the new period's credits and what rolled into it end together");
  assert.equal(next.rolls_over, '2000');
  await assertLedgerInvariants();
});

Deno.test('a student reads only their own expiries; a signed-out caller none', async () => {
  const mine = await newUser();
  const other = await newUser();
  await fund(other, '100'); // an admin's promotional grant: it expires by policy
  const theirs = await expiries(await userToken(other));
  assert.equal(theirs.length, 1);
  assert.equal(theirs[0].source, 'promotional');
  assert.equal(theirs[0].credits, '100');
  assert.equal(theirs[0].expires, '100');
  assert.equal(theirs[0].plan_renews, null);
  assert.deepEqual(await expiries(await userToken(mine)), []);
  assert.equal((await api('/credits/expiries', {})).status, 401);
});
