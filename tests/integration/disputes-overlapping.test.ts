// Disputes beside one another (issue #77: disputes freeze and settle locally). Two purchases
// disputed at once: each freezes its own lots, wherever they are; when the first closes (won),
// its lots are free again and the second's stay frozen, so nothing of a purchase under dispute is
// spent or moved; lost, the second takes back its own lots only. The buyer is suspended while
// either is open; an organisation is not. And the balance shows what expiry will leave: a frozen
// lot does not stop a student's hold from being captured, nor an expired lot from expiring.
// (Rewritten from the dispute-hold version: the amounts a dispute held became frozen lots.)
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  newUser,
  reportUsage,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { key, person, school, verifyOrg, walletOf } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, deliver, emulator } from '../support/purchases.ts';

/** gpt-4o input: 50 tokens = 1 credit. */
const spend = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });
const dispute = async (session: string, outcome: 'open' | 'won' | 'lost') =>
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome });

/** Σ remaining of a purchase's lots, wherever they are. */
async function lotsOf(purchase: string) {
  const [{ left }] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as left from billing.lots l
    where l.purchase_id = ${purchase}`;
  return left;
}

/** The purchase's lots: Σ remaining and whether every one is frozen. */
async function frozenLotsOf(purchase: string) {
  const [r] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as left, bool_and(l.frozen) as frozen
    from billing.lots l where l.purchase_id = ${purchase} and l.open`;
  return { left: r.left as string, frozen: r.frozen as boolean | null };
}
const codeOf = (r: { body: Record<string, unknown> }) => (r.body.error as { code?: string } | undefined)?.code;

Deno.test('a dispute still open keeps its purchase frozen when another dispute of the same buyer is won', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const first = await buy(token, 'mini');
  assert.equal((await spend(token, 3000)).status, 201, 'three fifths of the first purchase spent');
  const second = await buy(token, 'mini');

  await dispute(first.session_id, 'open');
  await dispute(second.session_id, 'open');
  assert.deepEqual(await frozenLotsOf(first.purchase_id), { left: '2000', frozen: true });
  assert.deepEqual(await frozenLotsOf(second.purchase_id), { left: '5000', frozen: true });
  assert.deepEqual(await balanceOf(token), { balance: '7000', held: '0', available: '0' });

  await dispute(first.session_id, 'won');
  assert.deepEqual(await frozenLotsOf(first.purchase_id), { left: '2000', frozen: false });
  assert.deepEqual(await frozenLotsOf(second.purchase_id), { left: '5000', frozen: true }, 'the second stays frozen');
  assert.deepEqual(await balanceOf(token), { balance: '7000', held: '0', available: '2000' });
  const suspended = await spend(token, 1);
  assert.equal(suspended.status, 403, 'the second dispute still suspends the buyer');
  assert.equal(codeOf(suspended), 'ACCOUNT_DISPUTED');

  await dispute(second.session_id, 'lost');
  assert.equal(await lotsOf(second.purchase_id), '0', 'the loss took back its own lots');
  assert.deepEqual(await balanceOf(token), { balance: '2000', held: '0', available: '2000' });
  assert.equal((await spend(token, 2001)).status, 402, 'only the first purchase is spendable');
  assert.equal((await spend(token, 2000)).status, 201);
  await assertLedgerInvariants();
});

Deno.test("an organisation's second disputed purchase stays frozen in its wallet when the first is won; the organisation is not suspended", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const orgBuys = async () => {
    const co = await api('/checkout/sessions', {
      token: owner.token,
      body: { package_id: 'mini', org_id: org },
      headers: key(),
    });
    assert.equal(co.status, 201, co.text);
    const bought = co.body.data as { session_id: string; purchase_id: string };
    await emulator(`/_emulator/checkout/sessions/${bought.session_id}/pay`, { outcome: 'succeeded' });
    return bought;
  };
  const fund = async (amount: string) => {
    const r = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount }, headers: key() });
    assert.equal(r.status, 201, r.text);
  };
  const first = await orgBuys();
  await fund('3000');
  assert.equal((await spend(ada.token, 3000)).status, 201, "Ada spends the first purchase's 3,000");
  const second = await orgBuys();
  await fund('1000'); // the wallet's 2,000 of the first go first: 1,000 of it to Ada

  await dispute(first.session_id, 'open'); // the wallet's 1,000 and Ada's 1,000 of the first freeze
  await dispute(second.session_id, 'open'); // the wallet's 5,000 of the second freeze
  assert.equal((await walletOf(owner.token, org)).available, '0');
  assert.equal((await spend(ada.token, 1)).status, 402, "Ada's allowance is frozen too");

  await dispute(first.session_id, 'won');
  assert.deepEqual(await frozenLotsOf(second.purchase_id), { left: '5000', frozen: true });
  assert.equal((await walletOf(owner.token, org)).available, '1000', 'the first purchase is free again');
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '1001' }, headers: key() });
  assert.equal(funded.status, 402, 'only the first purchase can be moved');
  await fund('1000');
  assert.equal((await spend(ada.token, 2000)).status, 201, 'Ada spends the first purchase, moved to her');
  assert.equal((await spend(ada.token, 1)).status, 402);
  assert.equal(await lotsOf(second.purchase_id), '5000', 'nothing of the disputed purchase was spent or moved');
  await assertLedgerInvariants();
});

Deno.test('the balance shows what expiry will leave: a hold placed before the freeze stays, an expiring lot expires', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const bought = await buy(token, 'mini');
  assert.equal((await spend(token, 1)).status, 201);
  // Placed before the promotion exists, the hold reserves 9 of the purchase's lot.
  const held = await api('/credits/holds', { token, headers: key(), body: { amount: '9', ttl_seconds: 600 } });
  assert.equal(held.status, 201, held.text);
  const granted = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: {
      user_id: id,
      amount: '10',
      reason: 'trial',
      lot: { category: 'promotional', expires_at: new Date(Date.now() + 30 * 86_400_000).toISOString() },
    },
  });
  assert.equal(granted.status, 201, granted.text);
  await dispute(bought.session_id, 'open'); // the purchase's lot freezes: the hold keeps what it reserved
  assert.deepEqual(await balanceOf(token), { balance: '5009', held: '9', available: '10' });

  const [lot] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${id} and l.expires_at is not null and l.purchase_id is null`;
  await backdateLot(lot.id);
  const shown = await balanceOf(token);
  await testDb`select billing.expire_lots(100000)`;
  assert.deepEqual(await balanceOf(token), shown, 'the sweep leaves what the balance showed');
  assert.deepEqual(
    shown,
    { balance: '4999', held: '9', available: '0' },
    'the promotion expired; the rest is frozen or held',
  );
  await assertLedgerInvariants();
});

// A partial refund beside a dispute of the same charge (disputes rule 6): whatever the order they
// happen in, and whatever order their webhooks arrive in, the purchase's credits are taken back
// once: the refund's share (2,000 of 5,000 for 200¢ of 500¢) and the lost dispute the rest, the
// 3,000 spent owed by the buyer.
Deno.test('a partial refund and a lost dispute of the same charge converge in any order, events in any order', async () => {
  const refund = async (session: string, deliver = true) =>
    await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 200, deliver });
  const orders: Record<string, (session: string) => Promise<void>> = {
    'refund, open, lost': async (x) => {
      await refund(x);
      await dispute(x, 'open');
      await dispute(x, 'lost');
    },
    'open, refund, lost': async (x) => {
      await dispute(x, 'open');
      await refund(x);
      await dispute(x, 'lost');
    },
    'open, lost, refund': async (x) => {
      await dispute(x, 'open');
      await dispute(x, 'lost');
      await refund(x);
    },
    'refund, open, lost, delivered last first and again': async (x) => {
      const charge = await chargeOf(x);
      const events = [
        ...(await refund(x, false)).events,
        ...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false })).events,
        ...(await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false })).events,
      ];
      for (const e of [...events].reverse()) assert.ok((await deliver(e)).status < 300);
      for (const e of events) assert.ok((await deliver(e)).status < 300);
    },
  };
  const seen: Record<string, unknown> = {};
  for (const [order, run] of Object.entries(orders)) {
    const id = await newUser();
    const token = await userToken(id);
    const bought = await buy(token, 'mini');
    assert.equal((await spend(token, 3000)).status, 201);
    await run(bought.session_id);
    const [p] = await testDb`select dispute_status, amount_refunded_cents as cents from billing.purchases
      where id = ${bought.purchase_id}`;
    seen[order] = { balance: await balanceOf(token), left: await lotsOf(bought.purchase_id), ...p };
  }
  const expected = {
    balance: { balance: '-3000', held: '0', available: '-3000' },
    left: '0',
    dispute_status: 'lost',
    cents: 200,
  };
  assert.deepEqual(seen, Object.fromEntries(Object.keys(orders).map((o) => [o, expected])));
  await assertLedgerInvariants();
});
