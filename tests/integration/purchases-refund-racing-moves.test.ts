// A refund arriving while the purchase's credits are being moved (an allowance funded, a gift or
// a sponsor code redeemed). Found with gift codes: take_back_purchase listed the purchase's lots
// before it waited for their accounts' locks, so lots a move created meanwhile were out of its
// sight: the refund came from the buyer as debt while the credits stayed where they were moved.
// It now lists them again once it holds the locks, until the list stands still.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { key, person, school, walletOf } from '../support/orgs.ts';
import { chargeOf, emulator } from '../support/purchases.ts';

Deno.test("a full refund racing an allowance funding takes the credits back from the allowances, not as the wallet's debt", async () => {
  for (let i = 0; i < 3; i++) {
    const [owner, ada, bo] = await Promise.all(['owner', 'ada', 'bo'].map(person));
    const org = await school(owner, [ada, bo], 'allowance', null);
    const co = await api('/checkout/sessions', {
      token: owner.token,
      body: { package_id: 'mini', org_id: org },
      headers: key(),
    });
    const { session_id } = co.body.data as { session_id: string };
    await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
    const charge = await chargeOf(session_id);
    await Promise.all([
      api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '2500' }, headers: key() }),
      emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 }),
    ]);
    assert.equal((await walletOf(owner.token, org)).balance, '0', 'no debt: nothing was spent');
    const [{ left }] = await testDb`select trim_scale(coalesce(sum(balance), 0))::text as left from billing.accounts
                                    where org_id = ${org}`;
    assert.equal(left, '0', 'no allowance keeps refunded credits');
  }
  await assertLedgerInvariants();
});
