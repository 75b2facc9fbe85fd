// Disputes beside other holds. Two purchases disputed at once: the first dispute's hold covers
// what was spent of its purchase with the buyer's other credits, among them the second
// purchase's lots, so the second dispute holds less than its own lots; when the first closes,
// the second must still hold every credit it froze (nothing of a purchase under dispute is
// spendable). And a dispute's hold does not give way to expiry, in the balance shown too.
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
import { key, person, school, walletOf } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';

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

Deno.test('a dispute still open keeps its purchase frozen when another dispute that held its credits is won', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const first = await buy(token, 'mini');
  assert.equal((await spend(token, 3000)).status, 201, 'three fifths of the first purchase spent');
  const second = await buy(token, 'mini');

  await dispute(first.session_id, 'open'); // holds 5,000: its own 2,000 and 3,000 of the second's
  await dispute(second.session_id, 'open'); // finds only 2,000 not yet held
  assert.deepEqual(await balanceOf(token), { balance: '7000', held: '7000', available: '0' });

  await dispute(first.session_id, 'won');
  assert.deepEqual(
    await balanceOf(token),
    { balance: '7000', held: '5000', available: '2000' },
    'the second dispute now holds all of its purchase',
  );
  const refused = await spend(token, 2001);
  assert.equal(refused.status, 402, 'only the first purchase is spendable');
  assert.equal((await spend(token, 2000)).status, 201);
  assert.equal(await lotsOf(second.purchase_id), '5000', 'nothing of the disputed purchase was spent');

  await dispute(second.session_id, 'lost');
  assert.deepEqual(await balanceOf(token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test("an organisation's second disputed purchase stays frozen in its pool and allowances when the first is won", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
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

  await dispute(first.session_id, 'open'); // the wallet holds 4,000 of its 6,000 for the spent 3,000 and its own 1,000
  await dispute(second.session_id, 'open'); // the wallet's second lot finds 2,000 not yet held
  assert.deepEqual(await walletOf(owner.token, org), { balance: '6000', held: '6000', available: '0' });

  await dispute(first.session_id, 'won');
  assert.deepEqual(
    await walletOf(owner.token, org),
    { balance: '6000', held: '5000', available: '1000' },
    "the wallet holds the second purchase's 5,000 again",
  );
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '1001' }, headers: key() });
  assert.equal(funded.status, 402, 'only the first purchase can be moved');
  await fund('1000');
  assert.equal((await spend(ada.token, 2000)).status, 201, 'Ada spends the first purchase, moved to her');
  assert.equal((await spend(ada.token, 1)).status, 402);
  assert.equal(await lotsOf(second.purchase_id), '5000', 'nothing of the disputed purchase was spent or moved');
  await assertLedgerInvariants();
});

Deno.test("the balance shows what expiry will leave: a dispute's hold does not give way, a student's does", async () => {
  const id = await newUser();
  const token = await userToken(id);
  const bought = await buy(token, 'mini');
  assert.equal((await spend(token, 1)).status, 201);
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
  const held = await api('/credits/holds', { token, headers: key(), body: { amount: '9', ttl_seconds: 600 } });
  assert.equal(held.status, 201, held.text);
  await dispute(bought.session_id, 'open'); // holds 5,000 of the 5,009: the student's hold keeps its 9
  assert.deepEqual(await balanceOf(token), { balance: '5009', held: '5009', available: '0' });

  const [lot] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${id} and l.expires_at is not null and l.purchase_id is null`;
  await backdateLot(lot.id);
  const shown = await balanceOf(token);
  await testDb`select billing.expire_lots(100000)`;
  assert.deepEqual(await balanceOf(token), shown, 'the sweep leaves what the balance showed');
  assert.deepEqual(
    shown,
    { balance: '4999', held: '5000', available: '-1' },
    "the student's hold gave way, the dispute's did not",
  );
  await assertLedgerInvariants();
});
