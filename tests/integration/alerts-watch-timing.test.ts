// Alerts and auto-recharge run from the tick, after the posting, on the account as the tick finds
// it (docs/spend-controls.md). Changing a setting never loses or repeats a crossing, whenever the
// tick runs: each scenario runs with and without a tick at the moment that matters and must end
// the same. A change of one setting keeps the other's crossing (billing.rearm_watched), the same
// threshold saved again keeps its own, and credits given back (a hold released or timed out after
// a refund) never charge the card by themselves.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  fund,
  holdsLapse,
  key,
  newUser,
  spend,
  sweepExpiredHolds,
  testDb,
  tick,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { chargeOf, emulator, rechargingBuyer } from '../support/purchases.ts';

const recharges = async (user: string) =>
  (await testDb`select status from billing.recharges where user_id = ${user} order by created_at`).map((r) => r.status);
const lowAlerts = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.notification_outbox
    where user_id = ${user} and template = 'balance_alert' and payload ->> 'kind' = 'balance_below'`)[0].n as number;
const available = async (user: string) =>
  (await testDb`select trim_scale(balance - held)::text as v from billing.accounts where user_id = ${user}`)[0].v;
const hold = async (token: string, amount: string) => {
  const r = await api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 600 } });
  assert.equal(r.status, 201, r.text);
  return (r.body.data as { hold_id: string }).hold_id;
};

for (const tickBetween of [false, true]) {
  const when = tickBetween ? 'the tick looked in between' : 'no tick in between';

  Deno.test(`a second low-balance crossing alerts again though auto-recharge was changed meanwhile (${when})`, async () => {
    const id = await newUser();
    await fund(id, '100');
    const token = await userToken(id);
    const set = await api('/credits/alerts/low-balance', { method: 'PUT', token, body: { threshold: '50' } });
    assert.equal(set.status, 200, set.text);
    await spend(token, 70); // 30: below 50
    await watchTick();
    assert.equal(await lowAlerts(id), 1);
    await fund(id, '100'); // 130: back above
    if (tickBetween) await watchTick();
    const off = await api('/credits/auto-recharge', { method: 'PUT', token, body: { enabled: false } });
    assert.equal(off.status, 200, off.text);
    await spend(token, 100); // 30: below again
    await watchTick();
    assert.equal(await lowAlerts(id), 2);
    await assertLedgerInvariants();
  });

  Deno.test(`the same low-balance threshold saved again while below alerts once for the crossing (${when})`, async () => {
    const id = await newUser();
    await fund(id, '100');
    const token = await userToken(id);
    const set = () => api('/credits/alerts/low-balance', { method: 'PUT', token, body: { threshold: '50' } });
    assert.equal((await set()).status, 200);
    await watchTick();
    await spend(token, 70); // 30: below 50
    if (tickBetween) await watchTick();
    assert.equal((await set()).status, 200);
    await watchTick();
    assert.equal(await lowAlerts(id), 1);
    await assertLedgerInvariants();
  });

  Deno.test(`a second recharge crossing recharges though the low-balance alert was changed meanwhile (${when})`, async () => {
    const s = await rechargingBuyer('1000'); // 9,990 available, recharge below 1,000
    await watchTick();
    await spend(s.token, 9000); // 990: below
    await watchTick();
    await tick(); // charged off-session, credited by the webhook: 5,990
    assert.deepEqual(await recharges(s.id), ['succeeded']);
    if (tickBetween) await watchTick();
    const set = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '10' } });
    assert.equal(set.status, 200, set.text);
    await spend(s.token, 5500); // 490: below again
    await watchTick();
    assert.deepEqual(await recharges(s.id), ['succeeded', 'queued']);
    await assertLedgerInvariants();
  });
}

for (const end of ['times out', 'is released'] as const) {
  Deno.test(`a hold that ${end} after a refund left the account below charges no card`, async () => {
    const s = await rechargingBuyer('1000');
    const h = await hold(s.token, '500'); // 9,490: above
    await watchTick();
    await emulator(`/_emulator/charges/${await chargeOf(s.session)}/refund`, { amount: 900 }); // 490 available
    await watchTick();
    if (end === 'times out') {
      await holdsLapse(testDb`h.id = ${h}`);
      await sweepExpiredHolds();
    } else {
      const r = await api(`/credits/holds/${h}/release`, { token: s.token, headers: key(), body: {} });
      assert.equal(r.status, 200, r.text);
    }
    assert.equal(await available(s.id), '990'); // still below 1,000, and nothing was spent
    await watchTick();
    assert.deepEqual(await recharges(s.id), []);
    await spend(s.token, 10); // a spend that finds it below does
    await watchTick();
    assert.deepEqual(await recharges(s.id), ['queued']);
    await assertLedgerInvariants();
  });
}
