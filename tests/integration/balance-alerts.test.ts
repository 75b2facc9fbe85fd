// Balance and cap alerts: once per crossing the tick sees, re-armed when cleared, decided after
// the posting (billing.run_account_watch), delivered by email and as a signed webhook to the
// product's backend.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { Alerts } from '../../supabase/functions/_shared/contract/index.ts';
import {
  api,
  drainOutbox,
  fund,
  newUser,
  reportUsage,
  spawnGateway,
  testDb,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { render } from '../../supabase/functions/notify/notifications.ts';

const key = () => ({ 'idempotency-key': crypto.randomUUID() });

async function student(credits = '100') {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}
/** gpt-4o input: 50 tokens = 1 credit. */
const spend = async (token: string, credits: number) => {
  const r = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });
  assert.equal(r.status, 201, r.text);
};
const put = async (token: string, path: string, body: unknown) => {
  const r = await api(path, { method: 'PUT', token, body });
  assert.equal(r.status, 200, r.text);
  return r.body.data as Alerts;
};
const alertsOf = (user: string) =>
  testDb`select template, payload from billing.notification_outbox where user_id = ${user}
    and template in ('balance_alert', 'product_webhook') order by id`;

Deno.test('a low-balance alert fires once per crossing and re-arms when the balance is back above', async () => {
  const s = await student('100');
  assert.deepEqual((await put(s.token, '/credits/alerts/low-balance', { threshold: '50' })).low_balance, {
    threshold: '50',
    fired: false,
  });
  await spend(s.token, 60);
  await watchTick();
  await spend(s.token, 5);
  await watchTick();
  let rows = await alertsOf(s.id);
  assert.deepEqual(rows.map((r) => r.template), ['balance_alert', 'product_webhook'], 'once, by email and webhook');
  assert.deepEqual([rows[0].payload.kind, rows[0].payload.available], ['balance_below', '40']);
  // 60 spent in the last 7 days: 40 ÷ (60 ÷ 7) = 4.67, about 4 days; the email says so.
  assert.equal(rows[0].payload.runway_days, 4);
  assert.match(render('balance_alert', rows[0].payload).text, /At your last 7 days' pace they last about 4 days\.$/);
  await fund(s.id, '100'); // 135: cleared, re-armed
  await watchTick();
  assert.equal(((await api('/credits/alerts', { token: s.token })).body.data as Alerts).low_balance?.fired, false);
  await spend(s.token, 100);
  await watchTick();
  rows = await alertsOf(s.id);
  assert.equal(rows.filter((r) => r.template === 'balance_alert').length, 2, 'the second crossing fires again');
});

Deno.test('a hold that takes available below the threshold fires it; turning it on when already below fires at once', async () => {
  const s = await student('100');
  await put(s.token, '/credits/alerts/low-balance', { threshold: '30' });
  const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '80' } });
  assert.equal(hold.status, 201);
  await watchTick();
  assert.equal((await alertsOf(s.id)).length, 2);

  const t = await student('10');
  await put(t.token, '/credits/alerts/low-balance', { threshold: '20' });
  const fired = await alertsOf(t.id);
  assert.equal(fired.length, 2, 'already below: fired when set');
  assert.equal(fired[0].payload.runway_days, null, 'no charges, no pace: no runway');
  assert.doesNotMatch(render('balance_alert', fired[0].payload).text, /pace/);
  assert.equal((await put(t.token, '/credits/alerts/low-balance', { threshold: null })).low_balance, null);
});

Deno.test('cap alerts fire at 50, 80 and 100% once each in a period; a released hold re-arms them', async () => {
  const s = await student('1000');
  const capped = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '100' } });
  assert.equal(capped.status, 200);
  await put(s.token, '/credits/alerts/caps', { period: 'day', model: null, percents: [80, 50, 100] });
  await spend(s.token, 50);
  await spend(s.token, 10);
  await spend(s.token, 20);
  await watchTick();
  let sent = (await alertsOf(s.id)).filter((r) => r.template === 'balance_alert').map((r) => r.payload.percent);
  assert.deepEqual(sent, [50, 80]);
  const alerts = (await api('/credits/alerts', { token: s.token })).body.data as Alerts;
  assert.deepEqual(alerts.caps, [{ period: 'day', model: null, percents: [50, 80, 100], fired: [50, 80] }]);

  // A hold of 20 reaches 100%; releasing it clears 100% (re-armed); holding again fires again.
  const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '20' } });
  const id = (hold.body.data as { hold_id: string }).hold_id;
  await watchTick();
  await api(`/credits/holds/${id}/release`, { token: s.token, headers: key(), body: {} });
  await watchTick();
  await spend(s.token, 20);
  await watchTick();
  sent = (await alertsOf(s.id)).filter((r) => r.template === 'balance_alert').map((r) => r.payload.percent);
  assert.deepEqual(sent, [50, 80, 100, 100]);
  const missing = await api('/credits/alerts/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'week', model: null, percents: [50] },
  });
  assert.equal(missing.status, 404, 'alerts need the cap');
});

Deno.test("the product webhook is signed like Stripe's, retried on failure, and every attempt is logged", async () => {
  const secret = 'whsec_' + crypto.randomUUID().replaceAll('-', '');
  const received: { body: string; signature: string }[] = [];
  let fail = false;
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    received.push({ body: await req.text(), signature: req.headers.get('scholarlink-signature') ?? '' });
    return new Response(null, { status: fail ? 500 : 204 });
  });
  const gw = spawnGateway({
    PRODUCT_WEBHOOK_URL: `http://127.0.0.1:${server.addr.port}/billing-events`,
    PRODUCT_WEBHOOK_SECRET: secret,
    OUTBOX_MAX_ATTEMPTS: '5',
  });
  try {
    await gw.ready();
    await drainOutbox(gw.url);
    fail = true;
    const s = await student('10');
    await put(s.token, '/credits/alerts/low-balance', { threshold: '20' });
    const [row] =
      await testDb`select id from billing.notification_outbox where user_id = ${s.id} and template = 'product_webhook'`;
    await drainOutbox(gw.url);
    await testDb`update billing.notification_outbox set next_attempt_at = now() where id = ${row.id}`;
    fail = false;
    await drainOutbox(gw.url);
    const mine = received.filter((r) => JSON.parse(r.body).user_id === s.id);
    assert.equal(mine.length, 2, 'delivered again after a 500');
    const { body, signature } = mine[1];
    const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(signature) ?? [];
    assert.equal(createHmac('sha256', secret).update(`${t}.${body}`).digest('hex'), v1, 'signature verifies');
    assert.deepEqual(
      [JSON.parse(body).type, JSON.parse(body).data.kind, JSON.parse(body).data.available],
      ['billing.alert', 'balance_below', '10'],
    );
    const log =
      await testDb`select attempt, status from billing.webhook_deliveries where outbox_id = ${row.id} order by id`;
    assert.deepEqual(log.map((l) => [l.attempt, l.status]), [[1, 500], [2, 204]]);
    const [done] = await testDb`select status from billing.notification_outbox where id = ${row.id}`;
    assert.equal(done.status, 'sent');
  } finally {
    await gw.kill();
    await server.shutdown();
  }
});
