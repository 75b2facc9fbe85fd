// A paid purchase's refunds and dispute, now three functions (sync_purchase_payment, _refunds,
// _dispute) called in turn by sync_purchase: whatever order Stripe's events arrive in, however
// often, and however they race the student's spending, the purchase is taken back once (a
// partial refund, then what a lost dispute leaves), and only what was spent stays as debt.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, newUser, spend, testDb, userToken } from '../support/helpers.ts';
import {
  balanceOf,
  buy,
  chargeOf,
  deliverWithRetries,
  emulator,
  type SignedEvent,
  startCheckout,
} from '../support/purchases.ts';

async function student() {
  const id = await newUser();
  return { id, token: await userToken(id) };
}

/** What was taken back of a purchase, by kind (refund_reversal, dispute_reversal). */
async function reversedOf(purchaseId: string) {
  const [p] = await testDb`select trim_scale(credits_refund_reversed)::text as refunded, amount_refunded_cents,
    dispute_status from billing.purchases where id = ${purchaseId}`;
  return p;
}

// starter: 999 cents for 9,990 credits, no bonus. A 333-cent refund takes back 3,330; a lost
// dispute the 6,660 left. 1,000 were spent before: that much stays as debt, never more.
Deno.test('a partial refund then a lost dispute take the purchase back once, in order or not', async () => {
  for (const order of ['as sent', 'reversed', 'all at once, twice'] as const) {
    const s = await student();
    const co = await buy(s.token, 'starter');
    await spend(s.token, 1000);
    const charge = await chargeOf(co.session_id);
    const held: SignedEvent[] = [];
    held.push(...(await emulator(`/_emulator/charges/${charge}/refund`, { amount: 333, deliver: false })).events);
    held.push(...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false })).events);
    held.push(...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false })).events);
    if (order === 'as sent') { for (const e of held) assert.ok((await deliverWithRetries(e)).status < 300); }
    else if (order === 'reversed') {
      for (const e of held.toReversed()) assert.ok((await deliverWithRetries(e)).status < 300);
    } else {
      const all = await Promise.all([...held, ...held].map(deliverWithRetries));
      assert.ok(all.every((r) => r.status < 300), JSON.stringify(all.map((r) => r.status)));
    }
    assert.deepEqual(await balanceOf(s.token), { balance: '-1000', held: '0', available: '-1000' }, order);
    const p = await reversedOf(co.purchase_id);
    assert.equal(p.amount_refunded_cents, 333, order);
    assert.equal(p.dispute_status, 'lost', order);
    const [{ taken }] =
      await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as taken from billing.transfers t
      where t.kind in ('refund_reversal', 'dispute_reversal') and t.reference = ${charge}`;
    assert.equal(taken, '9990', `${order}: the purchase is taken back once`);
  }
  await assertLedgerInvariants();
});

Deno.test('a refund and a dispute racing the student spending leave no credit of the purchase spendable', async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  const charge = await chargeOf(co.session_id);
  const spends = Array.from({ length: 10 }, () => spend(s.token, 500).catch((e) => e));
  await Promise.all([
    ...spends,
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 333 }),
    emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }),
  ]);
  // Whatever was spent before the dispute froze the rest, nothing of the purchase is available.
  const open = await balanceOf(s.token);
  assert.ok(Number(open.available) <= 0, JSON.stringify(open));
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  const [{ spent }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as spent from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage'`;
  assert.deepEqual(await balanceOf(s.token), {
    balance: String(-Number(spent)),
    held: '0',
    available: String(-Number(spent)),
  });
  await assertLedgerInvariants();
});

// plus: 2,499 cents for 24,990 credits and a 1,249.5-credit bonus. Refunded a cent at a time
// and then the rest, the whole charge takes back every credit, the bonus's half included.
Deno.test('a purchase refunded in pieces and then in full takes back every credit, fractional bonus included', async () => {
  const s = await student();
  const co = await buy(s.token, 'plus');
  assert.deepEqual(await balanceOf(s.token), { balance: '26239.5', held: '0', available: '26239.5' });
  const charge = await chargeOf(co.session_id);
  for (let i = 0; i < 3; i++) await emulator(`/_emulator/charges/${charge}/refund`, { amount: 1 });
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 2499 - 3 });
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test("a purchase's payment, refund and lost dispute delivered last to first, then again: granted once, taken back once", async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'starter');
  const held = [...(await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false })).events];
  const charge = await chargeOf(co.session_id);
  held.push(...(await emulator(`/_emulator/charges/${charge}/refund`, { amount: 333, deliver: false })).events);
  held.push(...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false })).events);
  held.push(...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false })).events);
  for (const e of [...held.toReversed(), ...held]) assert.ok((await deliverWithRetries(e)).status < 300, e.type);
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  const [{ granted, taken }] = await testDb`select
      trim_scale(coalesce(sum(t.amount) filter (where t.kind = 'purchase'), 0))::text as granted,
      trim_scale(coalesce(sum(t.amount) filter (where t.kind in ('refund_reversal', 'dispute_reversal')), 0))::text as taken
    from billing.transfers t where t.reference = ${charge} or t.reference = ${co.session_id}`;
  assert.deepEqual({ granted, taken }, { granted: '9990', taken: '9990' });
  await assertLedgerInvariants();
});
