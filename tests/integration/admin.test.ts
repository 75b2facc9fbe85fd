// The admin routes: 403 for every non-admin, 401 without a token; metrics that follow real
// purchases and provider payments; CSV; the daily report, live or stored.
import assert from 'node:assert/strict';
import { adminToken, api, newUser, testDb, userToken } from '../support/helpers.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { newProvider, paidPayment } from '../support/providers.ts';

const admin = await adminToken();
const today = () => new Date().toISOString().slice(0, 10);
const tomorrow = () => new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
const routes = [
  `/admin/reports/daily?date=${today()}`,
  '/admin/metrics',
  '/admin/ops',
  '/admin/rate-cards',
  '/admin/dashboard',
];

type Usd = {
  currency: string;
  gmv_cents: number;
  net_revenue_cents: number;
  b2c_credits: Record<string, number>;
  b2b_provider_fees: Record<string, number>;
};
async function usdToday(): Promise<Usd> {
  const r = await api(`/admin/metrics?from=${today()}&to=${tomorrow()}`, { token: admin });
  assert.equal(r.status, 200, r.text);
  const total = (r.body.data as { total: { by_currency: Usd[] } }).total;
  return total.by_currency.find((c) => c.currency === 'usd') as Usd;
}

Deno.test('every admin route: 401 without a token, 403 for a signed-in non-admin', async () => {
  const student = await userToken(await newUser());
  for (const path of routes) {
    const anonymous = await api(path);
    assert.equal(anonymous.status, 401, path);
    const r = await api(path, { token: student });
    assert.equal(r.status, 403, path);
    if (path === '/admin/dashboard') {
      assert.match(r.text, /<form id="paste" method="post" action="\.\/session">/, 'the page: sign-in again');
      assert.match(r.text, /This route is for administrators/);
    } else assert.equal((r.body.error as { code: string }).code, 'FORBIDDEN');
  }
  const viaCookie = await fetch(`${Deno.env.get('SUPABASE_URL')}/functions/v1/admin/dashboard`, {
    headers: { cookie: `sl_admin_session=${student}` },
  });
  assert.equal(viaCookie.status, 403, 'the dashboard cookie is checked like a bearer token');
  assert.ok(
    viaCookie.headers.getSetCookie().some((c) => /^sl_admin_session=;.*Max-Age=0/.test(c)),
    'a refused cookie is cleared, not sticky',
  );
  await viaCookie.body?.cancel();
});

Deno.test('metrics follow a purchase, a refund, a lost dispute and a provider payment with a fee refund', async () => {
  const before = await usdToday();
  const s1 = await userToken(await newUser());
  const s2 = await userToken(await newUser());
  const refunded = await buy(s1, 'starter'); // 999¢, Stripe fee round(28.971) + 30 = 59¢
  await emulator(`/_emulator/charges/${await chargeOf(refunded.session_id)}/refund`, { amount: 300 });
  const disputed = await buy(s2, 'mini'); // 500¢, fee 15 + 30 = 45¢
  await emulator(`/_emulator/charges/${await chargeOf(disputed.session_id)}/dispute`, { outcome: 'lost' });
  const p = await newProvider();
  const { charge } = await paidPayment(p, 10_000); // fee 300¢
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 5_000 }); // fee refund 150¢

  const after = await usdToday();
  const delta = (f: (u: Usd) => number) => f(after) - (before ? f(before) : 0);
  assert.equal(delta((u) => u.b2c_credits.gmv_cents), 1_499);
  assert.equal(delta((u) => u.b2c_credits.refunds_cents), 300);
  assert.equal(delta((u) => u.b2c_credits.disputes_lost_cents), 500);
  assert.equal(delta((u) => u.b2c_credits.stripe_fees_cents), 104);
  assert.equal(delta((u) => u.b2c_credits.net_revenue_cents), 1_499 - 300 - 500 - 104);
  assert.equal(delta((u) => u.b2b_provider_fees.gmv_cents), 10_000);
  assert.equal(delta((u) => u.b2b_provider_fees.platform_fees_cents), 300);
  assert.equal(delta((u) => u.b2b_provider_fees.fee_refunds_cents), 150);
  assert.equal(delta((u) => u.gmv_cents), 11_499);
  assert.equal(delta((u) => u.net_revenue_cents), 595 + 150);
});

Deno.test('metrics as CSV, by period, currency and product line; bad ranges are 400', async () => {
  const res = await fetch(
    `${Deno.env.get('SUPABASE_URL')}/functions/v1/admin/metrics?from=${today()}&to=${tomorrow()}&format=csv`,
    { headers: { authorization: `Bearer ${admin}` } },
  );
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/csv/);
  const lines = (await res.text()).trim().split('\r\n');
  assert.equal(
    lines[0],
    'period_start,period_end,currency,product_line,gmv_cents,net_revenue_cents,take_rate,active_users,paying_users,arpu_cents,checkout_rate',
  );
  assert.ok(lines.some((l) => /,usd,b2b_provider_fees,\d+,\d+,0\.0\d+/.test(l)), lines.join('\n'));
  for (
    const q of [
      'from=2026-02-30',
      `from=${tomorrow()}&to=${today()}`,
      'from=2020-01-01&to=2026-01-01',
      'granularity=year',
      'extra=1',
    ]
  ) {
    assert.equal((await api(`/admin/metrics?${q}`, { token: admin })).status, 400, q);
  }
  const weeks = await api(`/admin/metrics?from=2026-11-01&to=2026-11-23&granularity=week`, { token: admin });
  assert.equal((weeks.body.data as { series: unknown[] }).series.length, 4, 'ISO weeks, the first clipped to from');
});

Deno.test('the daily report is live until the nightly run stores the day; re-running replaces it', async () => {
  const live = await api(`/admin/reports/daily?date=${today()}`, { token: admin });
  assert.equal(live.status, 200);
  await testDb`delete from billing.daily_revenue where day = current_date`;
  const unstored = await api(`/admin/reports/daily?date=${today()}`, { token: admin });
  assert.equal((unstored.body.data as { stored: boolean }).stored, false);
  await testDb`select billing.refresh_daily_revenue(current_date)`;
  await testDb`select billing.refresh_daily_revenue(current_date)`;
  const stored = await api(`/admin/reports/daily?date=${today()}`, { token: admin });
  const data = stored.body.data as { stored: boolean; metrics: { from: string } };
  assert.equal(data.stored, true);
  assert.match(data.metrics.from, new RegExp(`^${today()}`));
});
