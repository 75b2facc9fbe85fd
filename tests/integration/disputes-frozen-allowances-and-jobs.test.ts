// Held (coverage from the #77 attack round): frozen credits in an allowance whose member is
// removed while the dispute is open stay there (a sweep moves free credits only); won, the
// closed-allowance sweep brings them back to the wallet; lost, they are taken back and the member
// is never billed. A job whose hold reserved a gift's lot before its dispute captures what it
// reserved; what it cost past its hold is charged whole, from the frozen rest of the gift when
// no free credit may pay for it (then as debt), and the redeemer owes none of the buyer's dispute.
import assert from 'node:assert/strict';
import { api, fund, key, spend, student, testDb, until } from '../support/helpers.ts';
import { buyGift, redeem } from '../support/codes.ts';
import {
  claimedJob,
  completeJob,
  dispute,
  loseDispute,
  openDispute,
  purchaseDisputeStatus,
} from '../support/disputed.ts';
import { accountOf, schoolAllowanceFunded } from '../support/orgs.ts';
import { ownAccount, reservationInvariants } from '../support/reserved.ts';

for (const outcome of ['won', 'lost'] as const) {
  Deno.test(`a member removed while the allowance is frozen: the frozen credits stay; ${outcome}, the wallet ends whole and the member owes nothing`, async () => {
    const { owner, member, org, purchase: p } = await schoolAllowanceFunded('2000', true);
    await openDispute(p.session_id);
    const removed = await api(`/orgs/${org}/members/${member.id}`, {
      token: owner.token,
      headers: key(),
      method: 'DELETE',
    });
    assert.equal(removed.status, 200, removed.text);
    assert.deepEqual({ ...await accountOf(org, member.id) }, { balance: '2000', held: '0' }, 'frozen: not swept');
    await dispute(p.session_id, outcome);
    await until(outcome, async () => (await purchaseDisputeStatus(p.session_id)) === outcome);
    if (outcome === 'won') {
      // docs/api.md § orgs: a won dispute thaws them where they are; the minute sweep moves them.
      assert.deepEqual({ ...await accountOf(org, member.id) }, { balance: '2000', held: '0' }, 'won: still there');
    }
    await testDb`select billing.sweep_ended_terms(100)`;
    assert.deepEqual({ ...await accountOf(org, member.id) }, { balance: '0', held: '0' });
    assert.deepEqual({ ...await accountOf(org, null) }, { balance: outcome === 'won' ? '5000' : '0', held: '0' });
    await reservationInvariants([owner.id, member.id]);
  });
}

Deno.test("a job's hold on a gift's lot, the gift disputed: it captures what it reserved, its excess draws the frozen rest of the gift; lost, the buyer owes all of the gift that was spent", async () => {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await ownAccount(t.id))?.balance === '5000');
  await spend(t.token, 3800); // 1,200 of the gift left
  await fund(t.id, '300'); // promotional: reserved first
  const w = crypto.randomUUID();
  const job = await claimedJob(t.id, w, 1000); // 300 promotional + 700 of the gift
  await openDispute(g.session_id);
  await completeJob(job, w, 1500);
  // No free credit is left: the 500 past the hold take the frozen 500 of the gift, no debt.
  const [lot] =
    await testDb`select trim_scale(l.remaining)::text as remaining, trim_scale(l.reserved)::text as reserved,
      l.frozen from billing.lots l join billing.purchases p on p.id = l.purchase_id
    where p.stripe_session_id = ${g.session_id}`;
  assert.deepEqual({ ...lot }, { remaining: '0', reserved: '0', frozen: true }, 'the excess took the frozen 500');
  const [excess] = await testDb`select trim_scale(t.amount)::text as amount, t.metadata ->> 'reserved' as reserved,
      t.metadata ->> 'priced' as priced, t.metadata ? 'unbilled' as unbilled,
      (select trim_scale(sum(x.amount))::text from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.purchases p on p.id = l.purchase_id
        where x.transfer_id = t.id and p.stripe_session_id = ${g.session_id}) as from_gift
    from billing.transfers t where t.idempotency_key = ${`job-overage:${job}`} and t.kind = 'usage'`;
  assert.deepEqual(
    { ...excess },
    { amount: '500', reserved: '1000', priced: '1500', unbilled: false, from_gift: '500' },
    'one usage charge of the whole excess',
  );
  const [j] = await testDb`select status from billing.jobs where id = ${job}`;
  assert.equal(j.status, 'completed');
  assert.deepEqual(await ownAccount(t.id), { balance: '0', held: '0' }, 'the job was paid whole, nothing owed');
  await loseDispute(g.session_id);
  assert.deepEqual(await ownAccount(t.id), { balance: '0', held: '0' }, 'the redeemer is not billed for the dispute');
  assert.deepEqual(
    await ownAccount(s.id),
    { balance: '-5000', held: '0' },
    'the buyer owes what was spent of the gift: all of it',
  );
  await reservationInvariants([s.id, t.id]);
});
