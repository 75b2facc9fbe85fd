// The daily provider reconciliation against Stripe: a clean day finds nothing for a provider;
// each planted difference (missing fee, wrong fee, payout missing, duplicate charge) is found
// with its kind, amounts and Stripe ids, and raises an alert.
import assert from 'node:assert/strict';
import { adminToken, api, env, newUser, testDb, userToken } from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';
import { newProvider, paidPayment, type Provider } from '../support/providers.ts';

const admin = await adminToken();
const today = () => new Date().toISOString().slice(0, 10);

type Mismatch = {
  kind: string;
  provider_id: string;
  expected_cents: number | null;
  actual_cents: number | null;
  payment_id: string | null;
  stripe_ids: string[];
};

/** Runs the day's reconciliation as an admin and returns the mismatches of one provider. */
async function reconcile(p: Provider): Promise<Mismatch[]> {
  // A call pages through Stripe for a few seconds; a busy day takes more than one (202 until done).
  let r = await api('/providers/reconciliation/run', { token: admin, body: { date: today() } });
  for (let i = 0; r.status === 202 && i < 200; i++) {
    r = await api('/providers/reconciliation/run', { token: admin, body: { date: today() } });
  }
  assert.equal(r.status, 200, r.text);
  const got = await api(`/providers/reconciliation?date=${today()}`, { token: admin });
  assert.equal(got.status, 200);
  assert.deepEqual(got.body.data, r.body.data, 'GET returns what the run stored');
  return (got.body.data as { mismatches: Mismatch[] }).mismatches.filter((m) => m.provider_id === p.id);
}

Deno.test('a clean day — payments, a refund, payouts paid and failed — reconciles with nothing to report', async () => {
  const p = await newProvider();
  const { charge } = await paidPayment(p, 10_000);
  await paidPayment(p, 333);
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 2_500 });
  await emulator(`/_emulator/accounts/${p.account}/payouts`, { outcome: 'paid', amount: 5_000 });
  await emulator(`/_emulator/accounts/${p.account}/payouts`, { outcome: 'failed', amount: 1_000 });
  assert.deepEqual(await reconcile(p), []);
});

Deno.test('a fee Stripe does not have, and a fee of the wrong amount, are found', async () => {
  const p = await newProvider();
  const missing = await paidPayment(p, 10_000);
  const wrong = await paidPayment(p, 20_000);
  await emulator(`/_emulator/charges/${missing.charge}/tamper`, { application_fee_amount: null });
  await emulator(`/_emulator/charges/${wrong.charge}/tamper`, { application_fee_amount: 599 });
  const found = await reconcile(p);
  const byKind = Object.fromEntries(found.map((m) => [m.kind, m]));
  assert.deepEqual(Object.keys(byKind).sort(), ['fee_mismatch', 'fee_missing']);
  assert.equal(byKind.fee_missing.payment_id, missing.pay.payment_id);
  assert.equal(byKind.fee_missing.expected_cents, 300);
  assert.equal(byKind.fee_missing.actual_cents, null);
  assert.ok(byKind.fee_missing.stripe_ids.includes(missing.charge));
  assert.equal(byKind.fee_mismatch.expected_cents, 600);
  assert.equal(byKind.fee_mismatch.actual_cents, 599);
});

Deno.test('a payout Stripe made but no webhook reported is found, and the balance no longer agrees', async () => {
  const p = await newProvider();
  await paidPayment(p, 10_000);
  const { events } = await emulator(`/_emulator/accounts/${p.account}/payouts`, { outcome: 'paid', deliver: false });
  const payoutId = JSON.parse(events[0].payload).data.object.id;
  const found = await reconcile(p);
  const missing = found.find((m) => m.kind === 'payout_missing');
  assert.ok(missing, JSON.stringify(found));
  assert.deepEqual(missing.stripe_ids, [payoutId]);
  assert.equal(missing.actual_cents, 9_700);
  const balance = found.find((m) => m.kind === 'balance_mismatch');
  assert.equal(balance?.expected_cents, 9_700);
  assert.equal(balance?.actual_cents, 0);
});

Deno.test('a second charge for one payment is a duplicate charge', async () => {
  const p = await newProvider();
  const { pay, charge } = await paidPayment(p, 4_200);
  const dup = await (await fetch(`${env('STRIPE_API_BASE')}/_emulator/charges/${charge}/duplicate`, { method: 'POST' }))
    .json();
  const found = await reconcile(p);
  const duplicate = found.find((m) => m.kind === 'duplicate_charge');
  assert.ok(duplicate, JSON.stringify(found));
  assert.equal(duplicate.payment_id, pay.payment_id);
  assert.deepEqual(duplicate.stripe_ids.sort(), [charge, dup.id].sort());
});

Deno.test('mismatches raise the reconciliation alert; overdue payouts raise payout_delay', async () => {
  const p = await newProvider();
  const { charge } = await paidPayment(p, 1_000);
  await emulator(`/_emulator/charges/${charge}/tamper`, { application_fee_amount: 1 });
  assert.equal((await reconcile(p)).length, 1);
  await testDb`select billing.evaluate_alerts()`;
  const [alert] =
    await testDb`select details from billing.alerts where condition = 'reconciliation_mismatch' and status = 'open'`;
  assert.ok(alert, 'the alert is open');
  assert.ok(alert.details.mismatches >= 1);

  const id = `po_test_${crypto.randomUUID()}`;
  await testDb`insert into billing.provider_payouts (id, provider_id, amount_cents, currency, status, arrival_date, stripe_created_at)
    values (${id}, ${p.id}, 100, 'usd', 'in_transit', now() - interval '3 days', now() - interval '5 days')`;
  try {
    await testDb`select billing.evaluate_alerts()`;
    const [late] =
      await testDb`select details from billing.alerts where condition = 'payout_delay' and status = 'open'`;
    assert.ok(late?.details.overdue >= 1);
  } finally {
    await testDb`delete from billing.provider_payouts where id = ${id}`;
  }
});

Deno.test('reconciliation is for admins (or the cron secret); a day never run is a 404', async () => {
  const user = await userToken(await newUser());
  assert.equal((await api(`/providers/reconciliation?date=${today()}`, { token: user })).status, 403);
  assert.equal((await api('/providers/reconciliation/run', { token: user, body: {} })).status, 403);
  assert.equal((await api('/providers/reconciliation/run', { body: {} })).status, 401);
  const byCron = await api('/providers/reconciliation/run', {
    headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
    body: { date: '2001-01-01' },
  });
  assert.equal(byCron.status, 200, byCron.text);
  assert.equal((await api('/providers/reconciliation?date=1999-01-01', { token: admin })).status, 404);
  assert.equal((await api('/providers/reconciliation?date=yesterday', { token: admin })).status, 400);
});
