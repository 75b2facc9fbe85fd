// Promo codes through the real API: an admin makes one, students redeem it. A redemption is a
// promotional lot with the code's expiry; the same code again (under its key, or typed another
// way) answers the first redemption; the budget and the cap hold exactly under concurrent
// redemptions and a disable racing them; failed guesses are limited and every attempt is audited
// without the code.
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import { codeHash, normalizeCode } from '../../supabase/functions/_shared/domain/codes.ts';
import { adminToken, api, assertLedgerInvariants, key, student, testDb } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { balance, promo, redeem } from '../support/codes.ts';

const hashOf = (code: string) => codeHash(normalizeCode(code) ?? '');

Deno.test('redeeming a promo code grants a promotional lot expiring when the code says', async () => {
  const at = new Date(Date.now() + 20 * 86_400_000).toISOString();
  const p = await promo({ credits: '25', max_redemptions: 5, lot_expires_at: at });
  const s = await student();
  // Typed loosely: lower case, spaces instead of hyphens, O for 0.
  const r = await redeem(s.token, p.code.toLowerCase().replaceAll('-', ' ').replaceAll('0', 'o'));
  assert.equal(r.status, 200, r.text);
  assert.equal(dataOf(r).credits, '25');
  assert.equal(dataOf(r).balance, '25');
  const lots = (await api('/credits/lots', { token: s.token })).body.data as LotPage;
  assert.equal(lots.items.length, 1);
  assert.equal(lots.items[0].category, 'promotional');
  assert.equal(lots.items[0].expires_at, at);
  await assertLedgerInvariants();
});

Deno.test('redeeming the same code twice answers the first redemption and grants once', async () => {
  const p = await promo({ credits: '10', budget: '1000' });
  const s = await student();
  const first = await redeem(s.token, p.code);
  const again = await redeem(s.token, p.code); // another Idempotency-Key
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(dataOf(again), dataOf(first));
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.to_account_id
                               where a.user_id = ${s.id}`;
  assert.equal(n, 1);
});

Deno.test('the same student redeeming one code 10 times at once (the route allows 10 a minute) gets one grant, one answer', async () => {
  const p = await promo({ credits: '7', budget: '700' });
  const s = await student();
  const all = await Promise.all(Array.from({ length: 10 }, () => redeem(s.token, p.code)));
  assert.ok(all.every((r) => r.status === 200), all.map((r) => r.text).join('\n'));
  assert.equal(new Set(all.map((r) => dataOf(r).transfer_id)).size, 1);
  assert.equal(((await api('/credits/balance', { token: s.token })).body.data as { balance: string }).balance, '7');
  const [{ redeemed }] = await testDb`select redeemed_count as redeemed from billing.codes where id = ${p.id}`;
  assert.equal(redeemed, 1);
});

Deno.test('concurrent redemptions never overspend a code: its budget and its cap hold exactly', async () => {
  const byBudget = await promo({ credits: '10', budget: '50' }); // 5 redemptions
  const byCap = await promo({ credits: '3', max_redemptions: 4 });
  const people = await Promise.all(Array.from({ length: 12 }, () => student()));
  const [a, b] = await Promise.all([
    Promise.all(people.map((s) => redeem(s.token, byBudget.code))),
    Promise.all(people.map((s) => redeem(s.token, byCap.code))),
  ]);
  assert.equal(a.filter((r) => r.status === 200).length, 5, a.map((r) => r.status).join(','));
  assert.ok(a.filter((r) => r.status !== 200).every((r) => codeOf(r) === 'CODE_EXHAUSTED'));
  assert.equal(b.filter((r) => r.status === 200).length, 4);
  const rows = await testDb`select id, trim_scale(redeemed_credits)::text as credits, redeemed_count from billing.codes
                            where id in (${byBudget.id}, ${byCap.id}) order by redeemed_count desc`;
  assert.deepEqual(rows.map((r) => [r.credits, r.redeemed_count]), [['50', 5], ['12', 4]]);
  const [{ granted }] =
    await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as granted from billing.transfers t
                                     where t.metadata ->> 'code_id' = ${byBudget.id}`;
  assert.equal(granted, '50');
  await assertLedgerInvariants();
});

Deno.test('a disabled, not yet valid or expired promo code grants nothing (409 CODE_NOT_REDEEMABLE)', async () => {
  const admin = await adminToken();
  const off = await promo({ credits: '5', budget: '50' });
  const disabled = await api(`/admin/codes/${off.id}/disable`, { token: admin, method: 'POST', body: {} });
  assert.equal(disabled.status, 200, disabled.text);
  const later = await promo({ credits: '5', budget: '50', valid_from: new Date(Date.now() + 3_600_000).toISOString() });
  const over = await promo({ credits: '5', budget: '50' });
  await testDb`update billing.codes set valid_from = now() - interval '2 days', valid_until = now() - interval '1 day'
               where id = ${over.id}`;
  const s = await student();
  for (const [code, reason] of [[off.code, 'disabled'], [later.code, 'not yet valid'], [over.code, 'expired']]) {
    const r = await redeem(s.token, code);
    assert.equal(r.status, 409, r.text);
    assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE');
    assert.equal((r.body.error as { details: { reason: string } }).details.reason, reason);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.code_redemptions where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('guessing stops after 10 unknown codes an hour: then even a real code is refused (429)', async () => {
  const s = await student();
  const p = await promo({ credits: '5', budget: '50' });
  // Nine unknown codes through the API (under the route's 10 a minute), the tenth on the record.
  for (let i = 0; i < 9; i++) {
    const r = await redeem(s.token, `ZZZZZ-ZZZZZ-ZZZZZ-ZZZ${String(i).padStart(2, '0')}`);
    assert.equal(codeOf(r), 'CODE_NOT_FOUND', r.text);
  }
  await testDb`insert into billing.code_attempts (user_id, hash_prefix, outcome) values (${s.id}, 'aaaaaaaaaaaa', 'CODE_NOT_FOUND')`;
  const refused = await redeem(s.token, p.code);
  assert.equal(refused.status, 429, refused.text);
  assert.equal(codeOf(refused), 'CODE_ATTEMPTS_LIMIT');
  assert.equal((refused.body.error as { details: { scope: string } }).details.scope, 'user');
});

Deno.test('every attempt is audited with a hash prefix, never the code', async () => {
  const s = await student();
  const p = await promo({ credits: '5', budget: '50' });
  await redeem(s.token, p.code);
  await redeem(s.token, p.code);
  await redeem(s.token, 'YYYYY-YYYYY-YYYYY-YYYYY');
  const rows =
    await testDb`select hash_prefix, outcome, code_id from billing.code_attempts where user_id = ${s.id} order by id`;
  assert.deepEqual(rows.map((r) => r.outcome), ['redeemed', 'repeated', 'CODE_NOT_FOUND']);
  assert.equal(rows[0].hash_prefix, hashOf(p.code).slice(0, 12));
  assert.equal(rows[0].code_id, p.id);
  const bare = normalizeCode(p.code) ?? '';
  const [{ leaks }] = await testDb`
    select (select count(*) from billing.code_attempts x where x::text like ${'%' + bare + '%'})
         + (select count(*) from billing.codes x where x::text like ${'%' + bare + '%'})
         + (select count(*) from billing.idempotency_keys x where x::text like ${'%' + bare + '%'})
         + (select count(*) from billing.transfers x where x::text like ${'%' + bare + '%'}) as leaks`;
  assert.equal(Number(leaks), 0);
});

Deno.test('an admin lists promo codes with what was redeemed; a student cannot make or list them', async () => {
  const p = await promo({ credits: '4', max_redemptions: 3, note: 'spring fair' });
  const s = await student();
  await redeem(s.token, p.code);
  const list = await api('/admin/codes?limit=100', { token: await adminToken() });
  assert.equal(list.status, 200, list.text);
  const row = (list.body.data as { items: Record<string, unknown>[] }).items.find((x) => x.id === p.id);
  assert.equal(row?.redeemed_count, 1);
  assert.equal(row?.redeemed_credits, '4');
  assert.equal(row?.code, undefined, 'the code is never listed');
  assert.equal((await api('/admin/codes', { token: s.token })).status, 403);
  const made = await api('/admin/codes', { token: s.token, headers: key(), body: { credits: '1000', budget: '1000' } });
  assert.equal(made.status, 403);
});

Deno.test('a replayed redemption answers what it answered, even after the code was disabled', async () => {
  const p = await promo({ credits: '3', budget: '30' });
  const s = await student();
  const k = crypto.randomUUID();
  const first = await redeem(s.token, p.code, k);
  await testDb`update billing.codes set status = 'disabled' where id = ${p.id}`;
  const replay = await redeem(s.token, p.code, k);
  assert.equal(replay.status, 200);
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.deepEqual(dataOf(replay), dataOf(first));
  assert.equal(await balance(s.token), '3');
  const other = await redeem(s.token, 'ABCDE-ABCDE-ABCDE-ABCDE', k);
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', 'a key names one request');
});

/** The code as someone might type it: lower case, look-alikes for 1 and 0, spaces for hyphens. */
const retyped = (code: string) => code.toLowerCase().replaceAll('1', 'l').replaceAll('0', 'o').replaceAll('-', ' ');

Deno.test('one promo code typed several ways at once, under fresh keys, grants once', async () => {
  const p = await promo({ credits: '7', budget: '700' });
  const s = await student();
  const variants = [p.code, retyped(p.code), p.code.replaceAll('-', ''), ` ${p.code.toLowerCase()} `];
  const rs = await Promise.all(variants.flatMap((v) => [redeem(s.token, v), redeem(s.token, v)]));
  assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.text).join('\n'));
  assert.equal(new Set(rs.map((r) => JSON.stringify((r.body.data as { transfer_id: string }).transfer_id))).size, 1);
  assert.equal(await balance(s.token), '7');
  await assertLedgerInvariants();
});

Deno.test('a promo code disabled while students redeem it: nobody is granted after the disable', async () => {
  const p = await promo({ credits: '2', max_redemptions: 100 });
  const students = await Promise.all(Array.from({ length: 8 }, () => student()));
  const disable = testDb`select billing.disable_promo_code(${p.id})`;
  const rs = await Promise.all(students.map((s) => redeem(s.token, p.code)));
  await disable;
  assert.ok(rs.every((r) => r.status === 200 || codeOf(r) === 'CODE_NOT_REDEEMABLE'), rs.map((r) => r.text).join('\n'));
  const [{ n, total }] = await testDb`select redeemed_count as n, trim_scale(redeemed_credits)::text as total
    from billing.codes where id = ${p.id}`;
  assert.equal(n, rs.filter((r) => r.status === 200).length);
  assert.equal(total, String(2 * n));
  const late = await redeem((await student()).token, p.code);
  assert.equal(codeOf(late), 'CODE_NOT_REDEEMABLE', late.text);
  await assertLedgerInvariants();
});
