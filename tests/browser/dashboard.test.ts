// The ops dashboard in Chromium against the local stack, with a dataset planted through the
// real flows (purchases, a partial refund, a lost dispute, provider payments with a fee refund,
// a reconciliation mismatch): the tiles show the API's numbers, formatted for people; the
// page works at phone width; a non-admin is refused. Screenshots go to artifacts/.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest } from '../browser.ts';
import { api, env, newUser, userToken } from '../helpers.ts';
import { buy, chargeOf, emulator } from '../purchases.ts';
import { newProvider, paidPayment } from '../providers.ts';

const dashboard = `${env('SUPABASE_URL')}/functions/v1/admin/dashboard`;
const artifacts = new URL('../../artifacts/', import.meta.url);
const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);

async function plant() {
  const s1 = await userToken(await newUser());
  const s2 = await userToken(await newUser());
  const refunded = await buy(s1, 'plus');
  await emulator(`/_emulator/charges/${await chargeOf(refunded.session_id)}/refund`, { amount: 999 });
  const disputed = await buy(s2, 'starter');
  await emulator(`/_emulator/charges/${await chargeOf(disputed.session_id)}/dispute`, { outcome: 'lost' });
  await userToken(await newUser()); // a user with no activity
  const p = await newProvider();
  const { charge } = await paidPayment(p, 123_456);
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 23_456 });
  const wrong = await paidPayment(p, 5_000);
  await emulator(`/_emulator/charges/${wrong.charge}/tamper`, { application_fee_amount: 1 });
  const admin = await userToken(await newUser(), { admin: true });
  await api('/providers/reconciliation/run', { token: admin, body: { date: day(0) } });
  return admin;
}

async function signIn(page: Page, token: string) {
  const res = await page.goto(dashboard);
  assert.equal(res?.status(), 401, 'no token: the sign-in form');
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

const tile = async (page: Page, kpi: string) => ({
  value: await page.locator(`[data-kpi="${kpi}"]`).getAttribute('data-value'),
  text: (await page.locator(`[data-kpi="${kpi}"] .value`).textContent())?.trim(),
});

browserTest("the dashboard shows the API's numbers, formatted, on a desktop and a phone", async (browser) => {
  const admin = await plant();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, admin);
  assert.equal(await page.locator('#error').isHidden(), true, (await page.locator('#error').textContent()) ?? '');

  // The same range the page asked for (its defaults): the last 30 days up to tomorrow.
  const r = await api(`/admin/metrics?from=${day(-29)}&to=${day(1)}&granularity=day`, { token: admin });
  const total = (r.body.data as {
    total: {
      by_currency: {
        currency: string;
        gmv_cents: number;
        net_revenue_cents: number;
        arpu_cents: number;
        b2b_provider_fees: { take_rate: number };
      }[];
      conversion: { checkout_rate: number };
      credits: { outstanding: string };
      users: { active: number };
    };
  }).total;
  const usd = total.by_currency.find((c) => c.currency === 'usd');
  assert.ok(usd);
  const money = (cents: number) =>
    new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' }).format(cents / 100);
  const pct = (x: number) => `${(x * 100).toFixed(x < 0.1 ? 2 : 1)}%`;

  const gmv = await tile(page, 'gmv');
  assert.equal(Number(gmv.value), usd.gmv_cents);
  assert.equal(gmv.text, money(usd.gmv_cents));
  assert.match(gmv.text ?? '', /^\$\d{1,3}(,\d{3})*\.\d{2}$/, 'currency with thousands separators');
  const net = await tile(page, 'net_revenue');
  assert.equal(Number(net.value), usd.net_revenue_cents);
  assert.equal(net.text, money(usd.net_revenue_cents));
  const take = await tile(page, 'take_rate');
  assert.equal(Number(take.value), usd.b2b_provider_fees.take_rate);
  assert.equal(take.text, pct(usd.b2b_provider_fees.take_rate));
  const arpu = await tile(page, 'arpu');
  assert.equal(Number(arpu.value), usd.arpu_cents);
  const conversion = await tile(page, 'conversion');
  assert.equal(conversion.text, pct(total.conversion.checkout_rate));
  const outstanding = await tile(page, 'outstanding');
  assert.equal(outstanding.value, total.credits.outstanding);
  const [whole, fraction] = total.credits.outstanding.split('.');
  assert.equal(outstanding.text, whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (fraction ? `.${fraction}` : ''));
  assert.equal(Number((await tile(page, 'active_users')).value), total.users.active);

  assert.match((await page.locator('#recon').textContent()) ?? '', /mismatch(es)?: .*fee_mismatch/);
  assert.equal(await page.locator('#revenue-chart svg rect').count() > 0, true, 'the revenue chart is drawn');
  await page.screenshot({ path: new URL('dashboard-desktop.png', artifacts).pathname, fullPage: true });

  // A phone: no sideways scrolling, tiles still readable.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  const overflow = Number(
    await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth'),
  );
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px on a phone`);
  assert.equal(await page.locator('[data-kpi="gmv"]').isVisible(), true);
  await page.screenshot({ path: new URL('dashboard-phone.png', artifacts).pathname, fullPage: true });
});

browserTest('a non-admin who signs in gets 403, not the dashboard', async (browser) => {
  const page = await browser.newPage();
  await page.goto(dashboard);
  await page.locator('#token').fill(await userToken(await newUser()));
  const [res] = await Promise.all([page.waitForNavigation(), page.locator('#use-token').click()]);
  assert.equal(res?.status(), 403);
  assert.match((await page.content()) ?? '', /FORBIDDEN/);
});
