// Promo codes attacked as a student would: the same code typed another way (case, I/L/O,
// spaces), under fresh Idempotency-Keys at once, and a disable racing the redemptions.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, testDb } from '../helpers.ts';
import { codeOf } from '../money.ts';
import { promo, redeem, student } from '../codes.ts';

const balance = async (token: string) =>
  ((await api('/credits/balance', { token })).body.data as { balance: string }).balance;

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
