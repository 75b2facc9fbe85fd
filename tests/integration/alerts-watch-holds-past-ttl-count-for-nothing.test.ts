// The tick's account watch (billing.run_account_watch) settles the account before it looks
// (docs/spend-controls.md § Alerts: holds past their TTL "count for nothing here, even when the
// sweep has not ended them yet"; § Auto-recharge: the tick queues a recharge when it finds
// `available` below the threshold). A hold whose TTL passed before the tick looked reserves nothing: the student reads
// all of it available (GET /credits/balance), so the tick neither fires the low-balance alert nor
// queues a recharge the jobs tick would charge to the saved card. pg_cron's release sweep and the
// tick run in the same minute in no set order, so a hold that lapses between two ticks meets this
// whenever the watch runs first. Students' tokens over HTTP; the database moves the hold's TTL (as
// holdsLapse does in the neighbouring tests) and runs the tick.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  awayFromCron,
  backdateLot,
  fund,
  holdsLapse,
  key,
  spend,
  student,
  testDb,
  watchTick,
} from '../support/helpers.ts';
import { balanceOf, rechargingBuyer } from '../support/purchases.ts';

const recharges = async (user: string) =>
  (await testDb`select status from billing.recharges where user_id = ${user} order by created_at`).map((r) => r.status);
const lowAlerts = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.notification_outbox
    where user_id = ${user} and template = 'balance_alert' and payload ->> 'kind' = 'balance_below'`)[0].n as number;

Deno.test('a hold past its TTL when the tick looks sets off no low-balance alert and no recharge', async () => {
  await awayFromCron(); // pg_cron's own release sweep would end the hold first and hide the tick's read
  const s = await rechargingBuyer('1000'); // 9,990 credits, auto-recharge of mini below 1,000
  const on = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '1000' } });
  assert.equal(on.status, 200, on.text);
  await watchTick();
  assert.deepEqual([await lowAlerts(s.id), await recharges(s.id)], [0, []]);

  const h = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '9500', ttl_seconds: 600 } });
  assert.equal(h.status, 201, h.text);
  // The hold's TTL passes before the tick looks: it counts for nothing.
  await holdsLapse(testDb`h.id = ${(h.body.data as { hold_id: string }).hold_id}`);
  assert.deepEqual(await balanceOf(s.token), { balance: '9990', held: '0', available: '9990' });

  await watchTick();
  assert.deepEqual(
    { alerts: await lowAlerts(s.id), recharges: await recharges(s.id) },
    { alerts: 0, recharges: [] },
    'the tick found 9,990 available, far above 1,000: no alert, no card charged',
  );
  await assertLedgerInvariants();
});

Deno.test('a hold that lapsed, then another lot expiring, before the tick looked: the rise between re-arms the alert at once', async () => {
  await awayFromCron(); // the sweeps would post the hold's end and the expiry first: the tick must find both
  const s = await student('1500');
  const on = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '2000' } });
  assert.equal(on.status, 200, on.text);
  const h = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1500', ttl_seconds: 600 } });
  assert.equal(h.status, 201, h.text);
  await fund(s.id, '600'); // a second lot, free
  await watchTick();
  assert.equal(await lowAlerts(s.id), 1, '600 available: the alert fired');
  await spend(s.token, 50); // queues the account for the next tick (550 available)

  // The hold's TTL passes (2,050 available: a rise past 2,000), then the second lot expires (1,500).
  await holdsLapse(testDb`h.id = ${(h.body.data as { hold_id: string }).hold_id}`);
  const [{ lot }] = await testDb`select l.id::text as lot from billing.lots l join billing.accounts a
    on a.id = l.account_id where a.user_id = ${s.id} order by l.id desc limit 1`;
  await backdateLot(lot);
  await watchTick();
  assert.equal(
    await lowAlerts(s.id),
    2,
    "the hold's end re-armed it and the expiry crossed again: it fires at this tick",
  );
  assert.deepEqual(await balanceOf(s.token), { balance: '1500', held: '0', available: '1500' });
  await assertLedgerInvariants();
});
