// Credits for some models only (docs/credit-lots.md): set by an admin grant, a promo code, an
// allowance and a sponsor code, shown on the lots, honoured by the AI gateway (a call for another
// model is a 402 naming the credits it could not use; a call for the model is paid by them), with
// gateway holds racing charges; then what attacks with students' tokens tried: many models held at
// once, a pool's figures in a member's 402, a revoked sponsor code's credits, a member's removal,
// a school's credits for one model as cover for a refund, a chargeback or a dispute of the
// student's own purchase, and sponsor codes filling the model lists before a paid plan.
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import { ask, callsOf, gatewayUrl } from '../support/ai.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  key,
  newUser,
  reportUsage,
  spend,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { issue, redeem } from '../support/codes.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';
import { planLots, subscribeTo } from '../support/plans.ts';
import { join, person, school, usage } from '../support/orgs.ts';
import { grantLot, models, orgGrant } from '../support/lots.ts';
import OpenAI from 'openai';

async function studentWithMiniCredits() {
  const id = await newUser();
  const r = await grantLot(id, '50', 'promo_grant', { applies_to: ['gpt-4o-mini*'] });
  assert.equal(r.status, 201, r.text);
  const token = await userToken(id);
  return { id, token, openai: new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 }) };
}

Deno.test("a grant for some models shows its list on the student's lots; a bad list grants nothing", async () => {
  const s = await studentWithMiniCredits();
  const lots = (await api('/credits/lots', { token: s.token })).body.data as LotPage;
  assert.deepEqual(lots.items.map((l) => l.applies_to), [['gpt-4o-mini*']]);
  for (const applies_to of [[], ['gpt 4o'], ['*'], Array.from({ length: 21 }, (_, i) => `m${i}`)]) {
    const bad = await grantLot(s.id, '5', 'promo_grant', { applies_to });
    assert.equal(bad.status, 400, JSON.stringify(applies_to));
  }
  const [n] = await testDb`select count(*)::int as n from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id}`;
  assert.equal(n.n, 1, 'no refused grant left a lot');
});

Deno.test('the gateway will not spend credits for gpt-4o-mini on gpt-4o, and spends them on gpt-4o-mini', async () => {
  const s = await studentWithMiniCredits();
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi #standin words=3'), max_tokens: 16 }),
    (e: { status: number; error: { code: string; details: Record<string, string> } }) => {
      assert.equal(e.status, 402);
      assert.equal(e.error.code, 'INSUFFICIENT_CREDITS');
      assert.equal(e.error.details.restricted, '50');
      assert.equal(e.error.details.model, 'gpt-4o');
      return true;
    },
  );
  assert.equal((await callsOf(s.id)).length, 0, 'the provider was never called');
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('hi #standin words=3'),
    max_tokens: 16,
  });
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal((r.usage as unknown as { cost: string }).cost, c.charged);
  const [lot] = await testDb`select trim_scale(l.remaining)::text as r from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id}`;
  assert.equal(lot.r, String(50 - Number(c.charged)), 'the call was paid by the restricted lot');
  await assertLedgerInvariants();
});

Deno.test('a promo code for some models grants each redeemer a lot for those models only', async () => {
  const created = await api('/admin/codes', {
    token: await adminToken(),
    headers: key(),
    body: { credits: '7', max_redemptions: 5, applies_to: ['claude*'] },
  });
  assert.equal(created.status, 201, created.text);
  const code = (created.body.data as { code: string; applies_to: string[] }).code;
  assert.deepEqual((created.body.data as { applies_to: string[] }).applies_to, ['claude*']);
  const id = await newUser();
  const token = await userToken(id);
  const redeemed = await api('/credits/codes/redeem', { token, headers: key(), body: { code } });
  assert.equal(redeemed.status, 200, redeemed.text);
  const lots = (await api('/credits/lots', { token })).body.data as LotPage;
  assert.deepEqual(lots.items.map((l) => [l.remaining, l.applies_to]), [['7', ['claude*']]]);
  const debit = await api('/credits/holds', { token, headers: key(), body: { amount: '1' } });
  assert.equal(debit.status, 402, "a student's own hold is for no model: it cannot reserve credits for claude only");
});

Deno.test('parallel gateway calls for two models on general and restricted credits are each charged their whole price, no hold left active', async () => {
  const s = await studentWithMiniCredits();
  const fund = await grantLot(s.id, '20', 'promo_grant');
  assert.equal(fund.status, 201, fund.text);
  const calls = await Promise.allSettled(Array.from({ length: 8 }, (_, i) =>
    s.openai.chat.completions.create({
      model: i % 2 ? 'gpt-4o' : 'gpt-4o-mini',
      messages: ask(`race ${i} #standin words=20`),
      max_tokens: 200,
    })));
  assert.ok(calls.some((c) => c.status === 'fulfilled'), 'some calls went through');
  const rows = await testDb`select c.status, h.status as hold, trim_scale(c.charged)::text as charged,
      trim_scale((billing.price_usage(c.model, (c.usage ->> 'input_tokens')::bigint,
        (c.usage ->> 'output_tokens')::bigint, 0, 0)).amount)::text as price,
      trim_scale(coalesce(h.captured_amount, 0) + coalesce(o.amount, 0))::text as posted
    from billing.ai_calls c left join billing.holds h on h.id = c.hold_id
    left join billing.transfers o on o.idempotency_key = 'ai-overage:' || c.id
    where c.user_id = ${s.id} and c.status <> 'refused'`;
  for (const r of rows) {
    assert.ok(r.status !== 'held' && r.hold !== 'active', `every call settled: ${JSON.stringify(r)}`);
  }
  // Each answer is charged the card's whole price of its usage, as the ledger posted it.
  for (const r of rows.filter((r) => r.status === 'charged')) {
    assert.deepEqual([r.charged, r.posted], [r.price, r.price], JSON.stringify(r));
  }
  const [a] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(70 - (select coalesce(sum(c.charged), 0) from billing.ai_calls c where c.user_id = ${s.id}))::text as left,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open), 0)
        - a.balance)::text as debt
    from billing.accounts a where a.user_id = ${s.id}`;
  assert.deepEqual([a.balance, a.held, a.debt], [a.left, '0', '0'], 'the 70 credits less the charges, no debt');
  const [wrong] = await testDb`
    select count(*)::int as n from billing.lot_allocations x
    join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id} and x.amount > 0 and not billing.lot_pays_for(l.applies_to, t.metadata ->> 'model')`;
  assert.equal(wrong.n, 0, 'no credit paid for a model its lot may not pay for');
  await assertLedgerInvariants();
});

Deno.test('a school funds an allowance for some models: the member spends it on those only; the same key with another list is refused', async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'allowance', '100');
  const k = key();
  const fund = (applies_to: string[]) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, headers: k, body: { amount: '10', applies_to } });
  const funded = await fund(['gpt-4o-mini*']);
  assert.equal(funded.status, 201, funded.text);
  const again = await fund(['gpt-4o*']);
  assert.equal(again.status, 409, again.text);
  assert.equal(again.body.error && (again.body.error as { code: string }).code, 'IDEMPOTENCY_KEY_REUSED');

  const onGpt4o = await reportUsage('/credits/usage', {
    token: member.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 1000, output_tokens: 0 },
  });
  assert.equal(onGpt4o.status, 402, onGpt4o.text);
  const onMini = await usage(member.token);
  assert.equal(onMini.status, 201, onMini.text);
  assert.deepEqual((onMini.body.data as { paid_by: unknown }).paid_by, { org_id: org });
  const [lot] = await testDb`select l.applies_to, trim_scale(l.remaining)::text as remaining from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.org_id = ${org} and a.member_id = ${member.id}`;
  assert.deepEqual(lot.applies_to, ['gpt-4o-mini*']);
  await assertLedgerInvariants();
});

Deno.test('a sponsor code for some models gives its student credits for those models only', async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'allowance', '100');
  const issued = await issue(owner.token, org, { credits: '5', user_id: member.id, applies_to: ['claude*'] });
  assert.equal(issued.status, 201, issued.text);
  const redeemed = await api('/credits/codes/redeem', {
    token: member.token,
    headers: key(),
    body: { code: (issued.body.data as { code: string }).code },
  });
  assert.equal(redeemed.status, 200, redeemed.text);
  const lots = (await api('/credits/lots', { token: member.token })).body.data as LotPage;
  assert.deepEqual(lots.items.map((l) => [l.remaining, l.applies_to]), [['5', ['claude*']]]);
  await assertLedgerInvariants();
});

// ============================================================ attacks

type Json = Record<string, unknown>;
const data = <T = Json>(r: { body: Json }) => r.body.data as T;

/** A non-streamed gateway call; `wait` ms before the (stand-in) provider answers. */
const call = (token: string, model: string, wait: number) =>
  api('/ai/v1/chat/completions', {
    token,
    body: {
      model,
      messages: [{ role: 'user', content: `#standin words=20 first_byte_delay=${wait}` }],
      max_tokens: 100,
    },
  });

const activeHolds = async (userId: string) =>
  (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.status = 'active'`)[0].n as number;

Deno.test('nine models held at once: a gateway call on an account with a restricted lot is charged its full price', async () => {
  const [m1, ...others] = await models(8);
  const id = await newUser();
  await fund(id, '1000'); // credits for anything
  assert.equal((await grantLot(id, '1', 'promo_grant', { applies_to: [m1] })).status, 201); // one credit for one model: the account now plans its draws
  const token = await userToken(id);

  // A hold of the student's own (no model), then two calls on m1, then one call on each other model:
  // nine classes of holds (the most reserve_hold lets in).
  const own = await api('/credits/holds', { token, headers: key(), body: { amount: '1', ttl_seconds: 600 } });
  assert.equal(own.status, 201, own.text);
  const long = [call(token, m1, 12_000)];
  const measured = call(token, m1, 5_000);
  await until('three holds', async () => (await activeHolds(id)) === 3);
  for (const m of others) long.push(call(token, m, 12_000));
  await until('ten holds', async () => (await activeHolds(id)) === 10);

  const r = await measured;
  assert.equal(r.status, 200, r.text);
  const u = r.body.usage as { prompt_tokens: number; completion_tokens: number; cost: string };
  const [price] =
    await testDb`select trim_scale((billing.price_usage(${m1}, ${u.prompt_tokens}, ${u.completion_tokens})).amount)::text as p`;
  assert.ok(Number(price.p) > 0, 'the answer has a price');
  await Promise.all(long);
  await api(`/credits/holds/${data(own).hold_id}/release`, { token, method: 'POST', headers: key() });
  // The student had more than enough credits for any model; the answer must be paid for.
  assert.equal(u.cost, price.p, `the answer of ${price.p} credits was charged ${u.cost}`);
  await assertLedgerInvariants();
});

Deno.test("a member's 402 on a pooled wallet never tells how many restricted credits the school has", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'pool', null);
  await orgGrant(org, '100', 'promo_grant'); // credits for anything, expiring as promotions do
  await orgGrant(org, '7777.25', 'adjustment', ['gpt-4o-mini']); // the school's credits for one model

  const h = await api('/credits/holds', { token: ada.token, headers: key(), body: { amount: '50', ttl_seconds: 600 } });
  assert.equal(h.status, 201, h.text);
  // Time passes: the promotion expires under the member's hold (the pool still has more than it holds).
  const [promo] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.org_id = ${org} and a.member_id is null and l.expires_at is not null`;
  await backdateLot(promo.id);

  const c = await api(`/credits/holds/${data(h).hold_id}/capture`, { token: ada.token, headers: key(), body: {} });
  // Whatever the answer, the school's balance (7777.25, all restricted) is not the member's to read.
  assert.ok(
    !c.text.includes('7777.25'),
    `the pool's restricted credits are in the member's answer: ${c.status} ${c.text}`,
  );
  await assertLedgerInvariants();
});

Deno.test('a sponsor code revoked (or past its window) gives the wallet back its credits as they were, not narrowed', async () => {
  const [owner, eve, ada] = await Promise.all(['owner', 'eve', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '1000'); // credits for anything
  await join(owner.token, org, eve, 'admin'); // a delegated admin
  // Eve sets the whole wallet aside for a member, for one model only, and takes it back.
  const r = await issue(eve.token, org, { credits: '1000', user_id: ada.id, applies_to: ['claude-haiku-4-5'] });
  assert.equal(r.status, 201, r.text);
  const revoked = await api(`/orgs/${org}/sponsor-codes/${data(r).id}`, { token: eve.token, method: 'DELETE' });
  assert.equal(revoked.status, 200, revoked.text);

  const lots = await testDb`select l.applies_to from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.org_id = ${org} and a.member_id is null and l.open`;
  assert.deepEqual(lots.map((l) => l.applies_to), [null], 'the wallet has its 1,000 credits for anything again');
  // What that means: the owner funds Ada's allowance, and Ada can spend it on a real model.
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '10' },
  });
  assert.equal(funded.status, 201, funded.text);
  const spent = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: '#standin words=3' }], max_tokens: 10 },
  });
  assert.equal(spent.status, 200, spent.text);
  await assertLedgerInvariants();
});

Deno.test('a member with nine models in flight on a restricted allowance can still be removed (the allowance swept back)', async () => {
  const [m1, ...others] = await models(9);
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '1000', 'adjustment');
  await orgGrant(org, '1', 'promo_grant', [m1]); // drawn first into the allowance: it now plans its draws
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '500' },
  });
  assert.equal(funded.status, 201, funded.text);
  const [allowance] = await testDb`select a.id, a.restricted_lots from billing.accounts a
    where a.org_id = ${org} and a.member_id = ${ada.id}`;
  assert.ok(allowance.restricted_lots, 'the allowance has a restricted lot');
  const held = async () =>
    (await testDb`select count(*)::int as n from billing.holds where account_id = ${allowance.id} and status = 'active'`)[
      0
    ]
      .n as number;

  const calls = [m1, ...others].map((m) => call(ada.token, m, 8_000));
  await until('nine holds on the allowance', async () => (await held()) === 9);

  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  await Promise.all(calls);
  assert.equal(
    removed.status,
    200,
    `the owner cannot remove a member while they keep nine models in flight: ${removed.text}`,
  );
  await assertLedgerInvariants();
});

// ============================================================ restricted credits as cover

/**
 * Ada, a member of a school that sponsors her with 5,000 credits for claude-haiku-4-5 only (a
 * sponsor code she redeemed), then buys starter (9,990 credits for 999¢) with her own card.
 */
async function sponsoredBuyer() {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '5000');
  const issued = await issue(owner.token, org, { credits: '5000', user_id: ada.id, applies_to: ['claude-haiku-4-5'] });
  assert.equal(issued.status, 201, issued.text);
  const redeemed = await redeem(ada.token, data<{ code: string }>(issued).code);
  assert.equal(redeemed.status, 200, redeemed.text);
  const co = await buy(ada.token, 'starter');
  return { ada, purchase: co.purchase_id, charge: await chargeOf(co.session_id) };
}

/** What is left of the credits for some models only in a user's own account. */
const restrictedLeft = async (userId: string) =>
  (await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as r from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${userId} and l.applies_to is not null`)[0].r;

const haiku = (token: string) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'claude-haiku-4-5', input_tokens: 100_000, output_tokens: 0 }, // 400 credits
  });

Deno.test("an operator's refund or a lost chargeback of a student's purchase never takes the school's credits for one model: what was spent is debt", async () => {
  for (const how of ['refund', 'lost chargeback'] as const) {
    const s = await sponsoredBuyer();
    await spend(s.ada.token, 1230); // on gpt-4o, from her own credits
    if (how === 'refund') {
      const r = await api('/checkout/refunds', {
        token: await adminToken(),
        headers: key(),
        body: { purchase_id: s.purchase },
      });
      assert.equal(r.status, 202, r.text);
    } else {
      await emulator(`/_emulator/charges/${s.charge}/dispute`, { outcome: 'open' });
      await emulator(`/_emulator/charges/${s.charge}/dispute`, { outcome: 'lost' });
    }
    assert.equal(await restrictedLeft(s.ada.id), '5000', `${how}: the school's 5,000 credits for haiku are all hers`);
    assert.equal((await balanceOf(s.ada.token)).balance, '3770', `${how}: the 1,230 spent on gpt-4o are owed`);
    assert.equal(await spend(s.ada.token, 1).catch(() => null), null, `${how}: nothing pays for gpt-4o`);
    assert.equal((await haiku(s.ada.token)).status, 201, `${how}: the school's credits still pay for haiku`);
  }
  await assertLedgerInvariants();
});

Deno.test("while a student's purchase is disputed, the school's credits for one model are no cover: the buyer spends nothing, and the loss takes none of them", async () => {
  const s = await sponsoredBuyer();
  await spend(s.ada.token, 1230);
  await emulator(`/_emulator/charges/${s.charge}/dispute`, { outcome: 'open' });
  // The buyer is suspended while their dispute is open (docs/credit-lots.md § Refunds, disputes
  // and debt 4): no charge, for the disputed credits' model or the school's.
  const onGpt4o = await reportUsage('/credits/usage', {
    token: s.ada.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 49_200, output_tokens: 0 }, // 984 credits
  });
  assert.equal(onGpt4o.status, 403, `984 credits of the disputed purchase were spent on gpt-4o: ${onGpt4o.text}`);
  assert.equal((await haiku(s.ada.token)).status, 403, "nor the school's credits while suspended");
  await emulator(`/_emulator/charges/${s.charge}/dispute`, { outcome: 'lost' });
  assert.equal(await restrictedLeft(s.ada.id), '5000', 'the lost dispute took none of them');
  await assertLedgerInvariants();
});

Deno.test('sponsor codes for seven model lists never stop a paid plan for an eighth from granting, nor a ninth code from redeeming', async () => {
  const lists = await models(9);
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '1');
  // The school's admin sends seven codes of 0.01 credits, each for another model; Ada redeems them.
  for (const m of lists.slice(0, 7)) {
    const issued = await issue(owner.token, org, { credits: '0.01', user_id: ada.id, applies_to: [m] });
    assert.equal(issued.status, 201, issued.text);
    const r = await redeem(ada.token, data<{ code: string }>(issued).code);
    assert.equal(r.status, 200, r.text);
  }
  // A $5 plan whose credits are for one more model; Ada subscribes and pays.
  const planId = `t_plan_${crypto.randomUUID().slice(0, 8)}`;
  const admin = await adminToken();
  const created = await api('/admin/plans', {
    token: admin,
    headers: key(),
    body: {
      id: planId,
      name: 'Course model',
      price_cents: 500,
      interval: 'month',
      credits: '5000',
      applies_to: [lists[7]],
      sort_order: 9000,
      reason: 'a test plan',
    },
  });
  assert.equal(created.status, 201, created.text);
  try {
    const sub = await subscribeTo(ada.token, planId);
    const lots = await planLots(ada.id);
    const [failed] = await testDb`select count(*)::int as n from billing.stripe_events e
      where e.type = 'invoice.paid' and e.status = 'failed' and e.last_error like '%INVALID_LOT%'
        and e.received_at > now() - interval '1 minute'`;
    assert.deepEqual(
      lots.map((l) => l.amount),
      ['5000'],
      `Stripe took $5 for ${sub.stripe_subscription} and the plan granted ${JSON.stringify(lots)} ` +
        `(${failed.n} invoice.paid failed on INVALID_LOT)`,
    );
  } finally {
    const r = await api(`/admin/plans/${planId}/retire`, { token: admin, body: { reason: 'test done' } });
    assert.equal(r.status, 200, r.text);
  }
  // A ninth list, sent by the school: granted like the others (an account holds any number of lists).
  const ninth = await issue(owner.token, org, { credits: '0.01', user_id: ada.id, applies_to: [lists[8]] });
  assert.equal(ninth.status, 201, ninth.text);
  const redeemed = await redeem(ada.token, data<{ code: string }>(ninth).code);
  assert.equal(redeemed.status, 200, redeemed.text);
  const [held] = await testDb`select count(distinct l.applies_to)::int as n from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${ada.id} and l.open`;
  assert.equal(held.n, 9, 'nine lists held');
  await assertLedgerInvariants();
});

// A student who owes money beside a school's credits for one model is in debt. The 402 says so (docs/api.md: every debit is refused while a debt lasts,
// `details.debt = true`), or the client sends her to the wrong fix.
Deno.test("a student who owes 1,230 beside the school's credits for one model is told so: a charge for another model is 402 with details.debt true", async () => {
  const s = await sponsoredBuyer();
  await spend(s.ada.token, 1230);
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: s.purchase },
  });
  assert.equal(refunded.status, 202, refunded.text);
  const [owed] = await testDb`select trim_scale(sum(l.remaining) - a.balance)::text as d from billing.accounts a
    join billing.lots l on l.account_id = a.id and l.open where a.user_id = ${s.ada.id} group by a.balance`;
  assert.equal(owed.d, '1230', 'the debt (Σ remaining − balance, docs/credit-lots.md)');
  const r = await reportUsage('/credits/usage', {
    token: s.ada.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 1000, output_tokens: 0 },
  });
  assert.equal(r.status, 402, r.text);
  const details = (r.body.error as { details: Record<string, unknown> }).details;
  assert.equal(details.debt, true, `she owes ${owed.d} and the 402 says ${JSON.stringify(details)}`);
  await assertLedgerInvariants();
});
