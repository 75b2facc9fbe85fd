// Plan rollover attacked with student tokens only (the emulator's test controls stand in for
// Stripe and the card network; the sweep is run as pg_cron runs it): the renewal against the
// expiry sweep, debt, holds, parallel spending, replays and reports. Each held or was fixed.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, newUser, spend, testDb, userToken } from '../helpers.ts';
import { balanceOf, buy, chargeOf, deliver, emulator } from '../purchases.ts';
import { planLots, renew, subscribeTo } from '../plans.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}
const key = () => ({ 'idempotency-key': crypto.randomUUID() });

/** Time passes: the period's plan lots are `ago` past their expiry, then the minute sweep runs. */
async function periodEndsAndSweeps(userId: string, ago = '1 hour'): Promise<void> {
  await testDb`with l as (update billing.lots x set expires_at = now() - ${ago}::interval
                          from billing.plan_lots pl join billing.accounts a on true
                          where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${userId} and x.open
                          returning x.account_id, x.expires_at)
               update billing.accounts a set next_expiry = (select min(expires_at) from l) from l where a.id = l.account_id`;
  await testDb`select billing.expire_lots(500)`;
}

/** Net credits that left the user's lots as breakage (an un-expiry counts back). */
async function breakage(userId: string): Promise<string> {
  const [r] = await testDb`select trim_scale(coalesce(sum(a.amount), 0))::text as n from billing.lot_allocations a
    join billing.lots l on l.id = a.lot_id join billing.accounts x on x.id = l.account_id
    where x.user_id = ${userId} and a.kind = 'expiry'`;
  return r.n;
}

// Hole (fixed): credits brought back from breakage that paid a debt were not counted against
// the rollover cap, so each expired lot of the period (the grant, each rollover lot, each
// upgrade) paid up to a whole cap of debt: a refunded package's spent credits were forgiven
// out of breakage, beyond the plan's rule.
Deno.test('a rollover that pays a debt counts what paid it against the cap', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; basic rolls up to 2,000
  await renew(plan.stripe_subscription); // period 2: 2,000 rolled (its own lot) + 10,000
  const mini = await buy(s.token, 'mini'); // 5,000 package credits, spent after the plan's
  const late = await renew(plan.stripe_subscription, 'paid', false); // period 3 charged, webhooks late
  await periodEndsAndSweeps(s.id); // period 2's two plan lots (12,000) expire
  assert.equal(await breakage(s.id), '20000'); // period 1's 8,000 over the cap, then period 2's 12,000
  await spend(s.token, 5000);
  await emulator(`/_emulator/charges/${await chargeOf(mini.session_id)}/refund`, {}); // 5,000 spent: owed
  assert.equal((await balanceOf(s.token)).balance, '-5000');
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  // 2,000 roll back from breakage and pay 2,000 of the debt; period 3's 10,000 pay the other 3,000.
  assert.equal((await balanceOf(s.token)).balance, '7000', JSON.stringify(await planLots(s.id)));
  assert.equal(await breakage(s.id), '18000', 'only the cap comes back from breakage');
});
