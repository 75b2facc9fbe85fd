// Credits for some models only (docs/credit-lots.md): set by an admin grant and a promo code, shown
// on the lots, honoured by the AI gateway (a call for another model is a 402 naming the credits it
// could not use; a call for the model is paid by them), and a gateway hold racing a charge.
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import { ask, callsOf, gatewayUrl } from '../ai.ts';
import { adminToken, api, assertLedgerInvariants, key, newUser, reportUsage, testDb, userToken } from '../helpers.ts';
import { issue } from '../codes.ts';
import { person, school, usage } from '../orgs.ts';
import OpenAI from 'openai';

async function grant(userId: string, amount: string, lot: Record<string, unknown>) {
  return await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: userId, amount, reason: 'credits for some models', kind: 'promo_grant', lot },
  });
}

async function studentWithMiniCredits() {
  const id = await newUser();
  const r = await grant(id, '50', { applies_to: ['gpt-4o-mini*'] });
  assert.equal(r.status, 201, r.text);
  const token = await userToken(id);
  return { id, token, openai: new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 }) };
}

Deno.test("a grant for some models shows its list on the student's lots; a bad list grants nothing", async () => {
  const s = await studentWithMiniCredits();
  const lots = (await api('/credits/lots', { token: s.token })).body.data as LotPage;
  assert.deepEqual(lots.items.map((l) => l.applies_to), [['gpt-4o-mini*']]);
  for (const applies_to of [[], ['gpt 4o'], ['*'], Array.from({ length: 21 }, (_, i) => `m${i}`)]) {
    const bad = await grant(s.id, '5', { applies_to });
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

Deno.test('parallel gateway calls for two models on general and restricted credits never leave a hold unpaid', async () => {
  const s = await studentWithMiniCredits();
  const fund = await grant(s.id, '20', {});
  assert.equal(fund.status, 201, fund.text);
  const calls = await Promise.allSettled(Array.from({ length: 8 }, (_, i) =>
    s.openai.chat.completions.create({
      model: i % 2 ? 'gpt-4o' : 'gpt-4o-mini',
      messages: ask(`race ${i} #standin words=20`),
      max_tokens: 200,
    })));
  assert.ok(calls.some((c) => c.status === 'fulfilled'), 'some calls went through');
  const rows = await testDb`select c.status, t.metadata ->> 'unbilled' as unbilled from billing.ai_calls c
    left join billing.transfers t on t.id = c.transfer_id where c.user_id = ${s.id}`;
  for (const r of rows) assert.ok(r.status !== 'held', 'every call settled');
  assert.ok(rows.every((r) => !r.unbilled || r.unbilled === '0'), 'no call was left partly unbilled');
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
