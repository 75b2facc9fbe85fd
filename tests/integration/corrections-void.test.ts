// Voiding one charge (POST /admin/charges/:id/void): the credits go back into the lots it drew,
// once however many times it is asked, an expired lot's share expires again, the summaries net
// it (every token kind too), a removed member's charge goes back to the school, and only an admin
// may do it (docs/pricing.md § Corrections). Where the credits land: corrections-void-lots.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  key,
  newUser,
  reportUsage,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { checkLots, codeOf, dataOf, everyKind, fullCard, spendWith } from '../support/money.ts';
import { person, school, usage, walletOf } from '../support/orgs.ts';
import { balanceOf } from '../support/purchases.ts';

async function charge(token: string, credits: number): Promise<string> {
  const r = await spendWith(token, crypto.randomUUID(), credits);
  assert.equal(r.status, 201, r.text);
  return dataOf(r).transfer_id as string;
}

const voidCharge = (admin: string, id: string, reason = 'provider outage') =>
  api(`/admin/charges/${id}/void`, { token: admin, body: { reason } });

async function balance(token: string): Promise<string> {
  const r = await api('/credits/balance', { token });
  return dataOf(r).balance as string;
}

Deno.test('a void gives the charge back into the very lots it drew, with its audit row', async () => {
  const s = await student('100');
  const id = await charge(s.token, 30);
  const admin = await adminToken();
  const r = await voidCharge(admin, id);
  assert.equal(r.status, 200, r.text);
  const v = dataOf(r);
  assert.equal(v.amount, '30');
  assert.equal(v.user_id, s.id);
  assert.equal(v.replayed, false);
  assert.equal(await balance(s.token), '100');
  const [lot] = await testDb`select l.id, l.remaining from billing.lots l join billing.accounts a on a.id = l.account_id
                              where a.user_id = ${s.id}`;
  assert.deepEqual(v.lots, [{ lot_id: String(lot.id), amount: '30', expired: false }]);
  assert.equal(Number(lot.remaining), 100);
  const [audit] = await testDb`select reason, voided_by from billing.charge_voids where charge_id = ${id}`;
  assert.equal(audit.reason, 'provider outage');
  await assertLedgerInvariants();
});

Deno.test('twenty parallel voids of one charge make one void transfer and give it back once', async () => {
  const s = await student('100');
  const id = await charge(s.token, 40);
  const admin = await adminToken();
  const answers = await Promise.all(Array.from({ length: 20 }, () => voidCharge(admin, id)));
  assert.deepEqual(answers.map((a) => a.status), Array(20).fill(200));
  assert.equal(answers.filter((a) => dataOf(a).replayed === false).length, 1);
  assert.equal(new Set(answers.map((a) => dataOf(a).void_transfer_id)).size, 1);
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.transfers where kind = 'void' and reference = ${id}`;
  assert.equal(n, 1);
  assert.equal(await balance(s.token), '100');
  await assertLedgerInvariants();
});

Deno.test('a void of a charge whose lot has expired since brings nothing expired back to life', async () => {
  const s = await student('100');
  const id = await charge(s.token, 25);
  const [lot] = await testDb`select l.id from billing.lots l join billing.accounts a on a.id = l.account_id
                              where a.user_id = ${s.id}`;
  await backdateLot(String(lot.id));
  await testDb`select billing.expire_lots(1000)`;
  assert.equal(await balance(s.token), '0');
  const r = await voidCharge(await adminToken(), id, 'late correction');
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(dataOf(r).lots, [{ lot_id: String(lot.id), amount: '25', expired: true }]);
  assert.equal(await balance(s.token), '0', 'the returned share expired at once (breakage)');
  const spend = await spendWith(s.token, crypto.randomUUID(), 1);
  assert.equal(spend.status, 402, spend.text);
  await assertLedgerInvariants();
});

Deno.test('a void returns the cap room to today and the summary nets the charge', async () => {
  const s = await student('100');
  const cap = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '50' } });
  assert.equal(cap.status, 200, cap.text);
  const id = await charge(s.token, 50);
  assert.equal((await spendWith(s.token, crypto.randomUUID(), 1)).status, 402, 'the cap is full');
  assert.equal((await voidCharge(await adminToken(), id)).status, 200);
  const again = await spendWith(s.token, crypto.randomUUID(), 50);
  assert.equal(again.status, 201, `the cap room came back: ${again.text}`);
  const today = new Date().toISOString().slice(0, 10);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const sum = await api(`/credits/usage/summary?from=${today}&to=${tomorrow}`, { token: s.token });
  assert.equal(sum.status, 200, sum.text);
  const totals = dataOf(sum).totals as { credits: string; requests: number };
  assert.deepEqual([totals.credits, totals.requests], ['50', 1], 'one charge of 50 is left');
  await assertLedgerInvariants();
});

Deno.test("a student reading another student's summary gets only their own", async () => {
  const a = await student('100');
  const b = await student('100');
  await voidCharge(await adminToken(), await charge(a.token, 10));
  const other = await api(`/credits/usage/summary?user_id=${a.id}`, { token: b.token });
  assert.equal(other.status, 400, other.text);
  const own = await api('/credits/usage/summary', { token: b.token });
  assert.equal((dataOf(own).totals as { requests: number }).requests, 0);
});

Deno.test("a school member's charge voided goes back to the wallet and the school's usage nets it", async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'pool', '100');
  const r = await usage(member.token);
  assert.equal(r.status, 201, r.text);
  const before = await walletOf(owner.token, org);
  const v = await voidCharge(await adminToken(), dataOf(r).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  assert.equal(dataOf(v).user_id, member.id);
  assert.equal(dataOf(v).org_id, org);
  const after = await walletOf(owner.token, org);
  assert.equal(Number(after.balance) - Number(before.balance), Number(dataOf(v).amount));
  const from = new Date(Date.now() - 86_400_000).toISOString();
  const to = new Date(Date.now() + 86_400_000).toISOString();
  const use = await api(`/orgs/${org}/usage?from=${from}&to=${to}`, { token: owner.token });
  assert.equal(use.status, 200, use.text);
  const rows = (dataOf(use).items ?? use.body.data) as { credits: string; charges: number }[];
  assert.deepEqual(rows.map((x) => [x.credits, x.charges]), [['0', 0]]);
  await assertLedgerInvariants();
});

Deno.test('only an admin voids, only a charge, and a reason is required', async () => {
  const s = await student('100');
  const id = await charge(s.token, 5);
  const mine = await voidCharge(s.token, id);
  assert.deepEqual([mine.status, codeOf(mine)], [403, 'FORBIDDEN']);
  const admin = await adminToken();
  for (const bad of ['0', 'abc', '-1', '1e3', '99999999999999999999', '9223372036854775807']) {
    const r = await voidCharge(admin, bad);
    assert.deepEqual([r.status, codeOf(r)], [404, 'CHARGE_NOT_FOUND'], bad);
  }
  const [grant] = await testDb`select t.id from billing.transfers t join billing.accounts a on a.id = t.to_account_id
                                where a.user_id = ${s.id} and t.kind = 'promo_grant'`;
  const g = await voidCharge(admin, String(grant.id));
  assert.deepEqual([g.status, codeOf(g)], [404, 'CHARGE_NOT_FOUND']);
  for (const reason of ['', '   ', 'x'.repeat(501), 'a\u0000b']) {
    const r = await voidCharge(admin, id, reason);
    assert.equal(r.status, 400, r.text);
  }
  assert.equal(await balance(s.token), '95', 'nothing was voided');
});

Deno.test('a charge that did not draw its whole amount from lots is refused with CHARGE_NOT_VOIDABLE', async () => {
  const s = await student('10');
  const admin = await newUser();
  await testDb`update auth.users set raw_app_meta_data = '{"role": "admin"}' where id = ${admin}`;
  // A charge older than lots: written by hand, in a transaction rolled back.
  const err = await testDb.begin(async (sql) => {
    const [t] = await sql`
      insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key)
      select 'usage', a.id, billing.platform_account_id('usage_revenue'), 1, ${crypto.randomUUID()}
      from billing.accounts a where a.user_id = ${s.id} returning id`;
    const e = await sql`select billing.void_charge(${admin}, ${t.id}, 'old')`.catch((e: Error) => e);
    throw e;
  }).catch((e: Error) => e);
  assert.equal((err as Error).message, 'CHARGE_NOT_VOIDABLE');
});

Deno.test('the usage summary after a void of a charge with every kind nets credits, requests and tokens', async () => {
  const model = await fullCard();
  const id = await newUser();
  await fund(id, '1000');
  const token = await userToken(id);
  const usage = { model, ...everyKind };
  // Caller metadata cannot plant token counts: a ledger-owned key is refused, nothing charged.
  const planted = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { ...usage, metadata: { input_tokens: 999999, note: 'x' } },
  });
  assert.equal(planted.status, 400, planted.text);
  const r = await reportUsage('/credits/usage', { token, headers: key(), body: { ...usage, metadata: { note: 'x' } } });
  assert.equal(r.status, 201, r.text);
  assert.equal(dataOf(r).charged, '382');
  assert.equal((await voidCharge(await adminToken(), dataOf(r).transfer_id as string)).status, 200);
  const today = new Date().toISOString().slice(0, 10);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const sum = await api(`/credits/usage/summary?from=${today}&to=${tomorrow}`, { token });
  assert.equal(sum.status, 200, sum.text);
  const totals = dataOf(sum).totals as Record<string, unknown>;
  assert.equal(totals.credits, '0', JSON.stringify(totals));
  assert.equal(totals.requests, 0, JSON.stringify(totals));
  const text = JSON.stringify(dataOf(sum));
  assert.ok(!/999999|"-\d/.test(text), `no caller counts, no negatives: ${text}`);
  assert.equal((await balanceOf(token)).balance, '1000');
  await assertLedgerInvariants();
});

// The void lands in the allowance that paid; the every-minute sweep (sweep_ended_terms, run here
// as pg_cron would) returns what sits in the allowance of someone no longer a member.
Deno.test("a removed member's voided allowance charge goes back to the school within the sweep's minute", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '100' },
  });
  assert.equal(funded.status, 201, funded.text);
  const used = await reportUsage('/credits/usage', {
    token: ada.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 1500, output_tokens: 0 }, // 30 credits
  });
  assert.equal(used.status, 201, used.text);
  assert.deepEqual(dataOf(used).paid_by, { org_id: org }, used.text);
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);

  const v = await voidCharge(await adminToken(), dataOf(used).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  await testDb`select billing.sweep_ended_terms(100)`;
  const [stranded] = await testDb`select trim_scale(a.balance)::text as balance from billing.accounts a
    where a.org_id = ${org} and a.member_id = ${ada.id}`;
  await assertLedgerInvariants();
  await checkLots();
  assert.equal(stranded.balance, '0', `${stranded.balance} credits sit in a removed member's allowance`);
});
