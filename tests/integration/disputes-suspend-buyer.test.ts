// A buyer whose own payment is disputed is suspended until the dispute closes (issue #77,
// disputes rule 2): every money path that checks standing answers 403 ACCOUNT_DISPUTED, as a
// ban does. A gift code's redeemer and an organisation's members are not suspended, and what
// they are refused never names the buyer's dispute. A verified organisation's purchase suspends no one (disputes-org-payer.test.ts: an unverified one's payer).
// Won or lost, the suspension lifts.
import assert from 'node:assert/strict';
import { api, fund, key, reportUsage, student, testDb, until } from '../support/helpers.ts';
import { buy } from '../support/purchases.ts';
import { promo, redeem } from '../support/codes.ts';
import { join, person, school, verifyOrg } from '../support/orgs.ts';
import { subscribeTo } from '../support/plans.ts';
import {
  chat,
  coreInvariants,
  dispute,
  disputePlan,
  giftRedeemed,
  openDispute,
  planCharge,
  planDisputeStatus,
  purchaseDisputeStatus,
} from '../support/disputed.ts';

type Json = Record<string, unknown>;
type Answer = { status: number; text: string; body: Json };
const codeOf = (r: Answer) => ((r.body?.error ?? {}) as Json).code;

/** Usage the product's server reports for the user `token` names. */
const usage = (token: string) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 100 },
  });
const hold = (token: string, amount = '10') => api('/credits/holds', { token, headers: key(), body: { amount } });
const job = (token: string) => api('/jobs', { token, headers: key(), body: { type: 'ledger_export', input: {} } });

/** Every path a suspended buyer is refused on, each answer with what was asked. */
async function moneyPaths(token: string): Promise<[string, Answer][]> {
  const code = await promo({ credits: '100', max_redemptions: 5 });
  return [
    ['usage', await usage(token)],
    ['hold', await hold(token)],
    ['job', await job(token)],
    ['ai call', await chat(token, 'gpt-4o-mini', 'reply hello', 20)],
    ['code redemption', await redeem(token, code.code)],
  ];
}

function assertSuspended(answers: [string, Answer][]) {
  for (const [what, r] of answers) {
    assert.equal(r.status, 403, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
    assert.equal(codeOf(r), 'ACCOUNT_DISPUTED', `${what}: ${r.text.slice(0, 300)}`);
  }
}

/** Nothing the refusal says names a dispute or the buyer. */
function assertSilentAbout(r: Answer, buyer: string) {
  assert.doesNotMatch(r.text, /disput/i, r.text);
  assert.doesNotMatch(r.text, new RegExp(buyer), r.text);
  assert.notEqual(codeOf(r), 'ACCOUNT_DISPUTED');
}

const holdsOf = async (userId: string) =>
  (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.purpose <> 'dispute' and h.status = 'active'`)[0].n as number;

Deno.test('a buyer whose purchase is disputed is refused 403 ACCOUNT_DISPUTED on every money path; won lifts it', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until(
    'paid',
    async () =>
      (await testDb`select 1 from billing.purchases where stripe_session_id = ${p.session_id}
    and status = 'paid'`).length > 0,
  );
  await fund(s.id, '100'); // credits that are not the disputed purchase's
  await openDispute(p.session_id);

  const answers = await moneyPaths(s.token);
  assertSuspended(answers);
  const body = answers[0][1].body.error as Json;
  assert.match(String(body.message), /disputed/);
  assert.equal(await holdsOf(s.id), 0, 'no hold was placed');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0, 'no job was queued');
  // An organisation action is refused too.
  const org = await api('/orgs', { token: s.token, body: { name: 'Disputed Study Group' } });
  assert.equal(org.status, 403, org.text);
  assert.equal(codeOf(org), 'ACCOUNT_DISPUTED');

  await dispute(p.session_id, 'won');
  await until('won', async () => (await purchaseDisputeStatus(p.session_id)) === 'won');
  const r = await usage(s.token);
  assert.equal(r.status, 201, `the suspension lifted: ${r.text}`);
  await coreInvariants([s.id]);
});

Deno.test('a lost dispute lifts the suspension too (the buyer may owe, but is no longer suspended)', async () => {
  const s = await student();
  const p = await buy(s.token, 'mini');
  await until(
    'paid',
    async () =>
      (await testDb`select 1 from billing.purchases where stripe_session_id = ${p.session_id}
    and status = 'paid'`).length > 0,
  );
  await openDispute(p.session_id);
  assertSuspended([['usage', await usage(s.token)]]);
  await dispute(p.session_id, 'lost');
  await until('lost', async () => (await purchaseDisputeStatus(p.session_id)) === 'lost');
  await fund(s.id, '100');
  const r = await usage(s.token);
  assert.notEqual(codeOf(r), 'ACCOUNT_DISPUTED', r.text);
  assert.equal(r.status, 201, r.text);
  await coreInvariants([s.id]);
});

Deno.test("a gift's buyer is suspended; its redeemer is not, and what the redeemer is refused never names the dispute", async () => {
  const { s, t, g } = await giftRedeemed();
  await fund(t.id, '100'); // the redeemer's own credits, not the gift's
  await openDispute(g.session_id);

  assertSuspended([['usage', await usage(s.token)], ['hold', await hold(s.token)]]);

  const spent = await usage(t.token);
  assert.equal(spent.status, 201, `the redeemer spends their other credits: ${spent.text}`);
  const tooMuch = await hold(t.token, '1000000');
  assert.equal(tooMuch.status, 402, tooMuch.text);
  assertSilentAbout(tooMuch, s.id);
  const balance = await api('/credits/balance', { token: t.token });
  assert.equal(balance.status, 200, balance.text);
  assertSilentAbout(balance, s.id);
  await coreInvariants([s.id, t.id]);
});

Deno.test("a verified organisation's disputed purchase suspends neither the admin who bought it nor its members", async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [], 'pool', '100');
  await verifyOrg(org); // its wallet answers for its purchases
  await join(owner.token, org, member);
  const p = await buy(owner.token, 'mini', org);
  await until(
    'the wallet paid',
    async () =>
      (await testDb`select 1 from billing.purchases where stripe_session_id = ${p.session_id} and status = 'paid'`)
        .length > 0,
  );
  await openDispute(p.session_id);

  await fund(owner.id, '100');
  const own = await usage(owner.token);
  assert.equal(own.status, 201, `the admin who bought is not suspended: ${own.text}`);
  const other = await person('other');
  const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: other.email } });
  assert.equal(invited.status, 201, `organisation actions go on: ${invited.text}`);
  const used = await usage(member.token);
  assert.notEqual(codeOf(used), 'ACCOUNT_DISPUTED', used.text);
  if (used.status !== 201) assertSilentAbout(used, owner.id);
  await coreInvariants([owner.id, member.id]);
});

Deno.test('a disputed plan invoice suspends its subscriber until the dispute closes', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await until(
    'granted',
    async () =>
      (await testDb`select 1 from billing.plan_grants g join billing.subscriptions x on x.id = g.subscription_id
      where x.stripe_subscription_id = ${plan.stripe_subscription}`).length > 0,
  );
  const charge = await planCharge(plan.stripe_subscription);
  await disputePlan(charge, 'open');
  await until('disputed', async () => (await planDisputeStatus(charge)) === 'open');
  assertSuspended([['usage', await usage(s.token)], ['job', await job(s.token)]]);
  await disputePlan(charge, 'won');
  await until('won', async () => (await planDisputeStatus(charge)) === 'won');
  const r = await usage(s.token);
  assert.equal(r.status, 201, r.text);
  await coreInvariants([s.id]);
});
