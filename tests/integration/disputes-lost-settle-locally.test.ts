// A lost dispute settles like a refund, locally (issue #77, disputes rule 4 and spending rule
// 8), as kind dispute_reversal: the free frozen credits are taken back at once wherever they
// are; what a hold reserved of them is taken back when that hold ends (the part it returns);
// what was spent of the purchase, work in flight included, is owed by the BUYER (their other
// credits first, then debt) — an organisation's wallet for its own purchases. A gift's redeemer
// and an organisation's member are never billed for it.
import assert from 'node:assert/strict';
import { fund, key, reportUsage, spend, student, sweepExpiredHolds, testDb, until } from '../support/helpers.ts';
import { buy } from '../support/purchases.ts';
import { buyGift, redeem } from '../support/codes.ts';
import {
  dispute,
  disputePlan,
  openDispute,
  planCharge,
  planDisputeStatus,
  purchaseDisputeStatus,
} from '../support/disputed.ts';
import { subscribeTo } from '../support/plans.ts';
import { accountOf, schoolAllowanceFunded } from '../support/orgs.ts';
import {
  capture,
  holdIdOf,
  holdPassesTtl,
  lotsOfPurchase,
  ownAccount,
  placeHold,
  reservationInvariants,
} from '../support/reserved.ts';

const lose = async (session: string) => {
  await dispute(session, 'lost');
  await until('lost', async () => (await purchaseDisputeStatus(session)) === 'lost');
};

/** What dispute reversals took from `userId`'s own account. */
/** What was taken back from a redeemer: it reads as a refund of what they were given, never the buyer's dispute. */
const reversedFrom = async (userId: string) =>
  (await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${userId} and a.org_id is null and t.kind = 'refund_reversal' and t.reference is null`)[0]
    .n as string;

async function redeemedGift() {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await ownAccount(t.id)).balance === '5000');
  return { s, t, g };
}

const usage = (token: string, tokens: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: tokens, output_tokens: 0 },
  });

Deno.test("a gift's lost dispute: the redeemer's free credits go back at once, the reserved part after the hold ends; the buyer owes what was spent", async () => {
  const { s, t, g } = await redeemedGift();
  const spent = await usage(t.token, 100_000);
  assert.equal(spent.status, 201, spent.text);
  const charged = (spent.body.data as { charged: string }).charged;
  const h = await placeHold(t.token, '500');
  assert.equal(h.status, 201, h.text);
  await openDispute(g.session_id);
  await lose(g.session_id);

  // At once: everything free of the gift's lot is taken back; the 500 the hold reserved stays.
  const lots = await lotsOfPurchase(g.session_id);
  assert.equal(lots.length, 1, `the gift's lot stays open with what the hold reserved: ${JSON.stringify(lots)}`);
  assert.deepEqual([lots[0].user_id, lots[0].remaining, lots[0].reserved], [t.id, '500', '500']);
  assert.deepEqual(await ownAccount(t.id), { balance: '500', held: '500' });

  // The hold's work captures 200: the 300 it returns stays reserved, and the minute's tick takes it back.
  const c = await capture(t.token, holdIdOf(h), '200');
  assert.equal(c.status, 200, c.text);
  assert.deepEqual(await ownAccount(t.id), { balance: '300', held: '300' });
  await sweepExpiredHolds();
  assert.deepEqual(await ownAccount(t.id), { balance: '0', held: '0' }, 'the redeemer is never billed');
  assert.equal(await reversedFrom(t.id), String(5000 - Number(charged) - 200));

  // The buyer owes what was spent of the gift: the usage before and the hold's capture.
  const owed = -(Number(charged) + 200);
  assert.deepEqual(await ownAccount(s.id), { balance: String(owed), held: '0' });
  await reservationInvariants([s.id, t.id]);
});

Deno.test("a lost dispute while the redeemer's hold is open: the hold lapsing at its TTL returns its reservation, taken back then", async () => {
  const { s, t, g } = await redeemedGift();
  const h = await placeHold(t.token, '1000');
  assert.equal(h.status, 201, h.text);
  await openDispute(g.session_id);
  await lose(g.session_id);
  assert.deepEqual(await ownAccount(t.id), { balance: '1000', held: '1000' });
  await holdPassesTtl(holdIdOf(h));
  assert.deepEqual(await ownAccount(t.id), { balance: '0', held: '0' });
  assert.deepEqual(await ownAccount(s.id), { balance: '0', held: '0' }, 'nothing was spent: the buyer owes nothing');
  await reservationInvariants([s.id, t.id]);
});

Deno.test('the buyer pays what was spent of their purchase from their other credits first, then owes the rest', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until('paid', async () => (await ownAccount(s.id))?.balance === '5000');
  await spend(s.token, 3000);
  await openDispute(p.session_id);
  await fund(s.id, '1000'); // other credits for any model, granted while the dispute is open
  await lose(p.session_id);
  // 2,000 free taken back; the 3,000 spent owed: 1,000 from the other credits, 2,000 of debt.
  assert.deepEqual(await ownAccount(s.id), { balance: '-2000', held: '0' });
  await reservationInvariants([s.id]);
});

Deno.test("an organisation's lost dispute: the allowance's free credits go back, the member is never billed; the wallet owes what was spent", async () => {
  const { owner, member, org, purchase: p } = await schoolAllowanceFunded('2000', true);
  const used = await usage(member.token, 100_000);
  assert.equal(used.status, 201, used.text);
  const charged = Number((used.body.data as { charged: string }).charged);
  await openDispute(p.session_id);
  await lose(p.session_id);

  const allowance = await accountOf(org, member.id);
  assert.deepEqual({ ...allowance }, { balance: '0', held: '0' }, 'the member keeps nothing and owes nothing');
  const wallet = await accountOf(org, null);
  assert.equal(wallet.balance, String(-charged), 'the wallet owes what its member spent');
  assert.deepEqual(
    await ownAccount(owner.id) ?? { balance: '0', held: '0' },
    { balance: '0', held: '0' },
    'the admin who bought is not billed',
  );
  await reservationInvariants([owner.id, member.id]);
});

Deno.test("a plan invoice's lost dispute: its lot's free credits go back, what it spent is owed from the subscriber's other credits, then debt", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 for any model
  await until('granted', async () => (await ownAccount(s.id))?.balance === '10000');
  await spend(s.token, 6000);
  await buy(s.token, 'mini'); // 5,000 more
  await until('the package paid', async () => (await ownAccount(s.id)).balance === '9000');
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open');
  await until('disputed', async () => (await planDisputeStatus(charge)) === 'open');
  assert.deepEqual(await ownAccount(s.id), { balance: '9000', held: '0' }, 'a dispute freezes, it holds nothing');
  await disputePlan(charge, 'lost');
  await until('lost', async () => (await planDisputeStatus(charge)) === 'lost');
  // 4,000 taken back from the plan's lot; the 6,000 it spent owed: 5,000 from the package, 1,000 of debt.
  assert.deepEqual(await ownAccount(s.id), { balance: '-1000', held: '0' });
  await reservationInvariants([s.id]);
});
