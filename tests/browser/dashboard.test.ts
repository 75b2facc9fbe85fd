// The ops dashboard in Chromium against the local stack, with a dataset planted through the
// real flows (purchases, a partial refund, a lost dispute, provider payments with a fee refund,
// a reconciliation mismatch): the tiles show the API's numbers, formatted for people; every
// text is readable (12 px or more as drawn, nothing cut off, no sideways scrolling) at desktop
// and phone width; an empty range says so; a non-admin is refused. Sign-in is a server-side exchange: the
// session cookie is HttpOnly (the page's script never sees the token), Secure (Chromium keeps
// it on http://127.0.0.1, a secure context) and SameSite=Strict; the CSP stops injected
// script, foreign connections and framing. Screenshots go to artifacts/.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { adminToken, api, env, newUser, userToken } from '../support/helpers.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { roundedCredits } from '../../examples/student/credits.ts';
import { newProvider, paidPayment } from '../support/providers.ts';
import { key, person, school, usage } from '../support/orgs.ts';

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
  const admin = await adminToken();
  await api('/providers/reconciliation/run', { token: admin, body: { date: day(0) } });
  // An organisation that buys credits for its pool, which a member spends.
  const [owner, member] = await Promise.all([person('dash-owner'), person('dash-member')]);
  const org = await school(owner, [member], 'pool', null);
  await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { name: 'Dashboard Academy' } });
  const co = await api('/checkout/sessions', {
    token: owner.token,
    body: { package_id: 'mini', org_id: org },
    headers: key(),
  });
  await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`);
  assert.equal((await usage(member.token)).status, 201);
  return admin;
}

/** Clicks `selector` and returns the document response that ends at `path` (after redirects). */
async function navigateBy(page: Page, selector: string, path: string) {
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.request().isNavigationRequest() && new URL(r.url()).pathname.endsWith(path)),
    page.locator(selector).click(),
  ]);
  await page.waitForLoadState();
  return res;
}

async function signIn(page: Page, token: string) {
  const res = await page.goto(dashboard);
  assert.equal(res?.status(), 401, 'no token: the sign-in form');
  await page.locator('#token').fill(token);
  const landed = await navigateBy(page, '#use-token', '/admin/dashboard');
  assert.equal(landed.status(), 200, 'the form post redirects to the dashboard');
  await page.waitForSelector('body[data-ready="true"]');
}

/** What a person sees at this width: no sideways scrolling, no text under 12 px, none cut off. */
async function assertLegible(page: Page, width: number, name: string) {
  await page.setViewportSize({ width, height: 900 });
  const seen = await legibility(page);
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll('body *')].filter((e) => {
      if (e.getBoundingClientRect().right <= innerWidth + 1) return false;
      for (let p = e.parentElement; p; p = p.parentElement) {
        if (getComputedStyle(p).overflowX !== 'visible') return false;
      }
      return true;
    }).slice(0, 5).map((e) => `${e.tagName}#${e.id}.${e.className}<${e.parentElement?.id}`)
  );
  assert.ok(seen.overflow <= 0, `${name}: scrolls sideways by ${seen.overflow}px (${wide.join(', ')})`);
  assert.deepEqual(seen.tooSmall, [], `${name}: text under 12 px`);
  assert.deepEqual(seen.spilled, [], `${name}: text cut off`);
  await page.screenshot({ path: new URL(`${name}.png`, artifacts).pathname, fullPage: true });
}

const tile = async (page: Page, kpi: string) => ({
  value: await page.locator(`[data-kpi="${kpi}"]`).getAttribute('data-value'),
  text: (await page.locator(`[data-kpi="${kpi}"] .value`).textContent())?.trim(),
});

browserTest("the dashboard shows the API's numbers, formatted, on a desktop and a phone", async (browser) => {
  const admin = await plant();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Deferred revenue is a figure of now (the minute sweep's expiries move it): compared with the
  // /admin/ops answer the page itself was given.
  const opsSeen = page.waitForResponse((res) => new URL(res.url()).pathname.endsWith('/admin/ops'));
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
        b2b_provider_fees: { take_rate: number; platform_fees_cents: number };
        b2c_credits: { stripe_fees_cents: number; tax_collected_cents: number };
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
  const stripeFees = await tile(page, 'stripe_fees');
  assert.equal(Number(stripeFees.value), usd.b2c_credits.stripe_fees_cents);
  assert.equal(stripeFees.text, money(usd.b2c_credits.stripe_fees_cents));
  const tax = await tile(page, 'tax_collected');
  assert.equal(Number(tax.value), usd.b2c_credits.tax_collected_cents);
  assert.equal(tax.text, money(usd.b2c_credits.tax_collected_cents));
  const platformFees = await tile(page, 'platform_fees');
  assert.equal(Number(platformFees.value), usd.b2b_provider_fees.platform_fees_cents);
  assert.equal(platformFees.text, money(usd.b2b_provider_fees.platform_fees_cents));
  const conversion = await tile(page, 'conversion');
  assert.equal(conversion.text, pct(total.conversion.checkout_rate));
  const outstanding = await tile(page, 'outstanding');
  assert.equal(outstanding.value, total.credits.outstanding);
  assert.equal(outstanding.text, roundedCredits(total.credits.outstanding), 'rounded for reading, exact in the API');
  assert.equal(Number((await tile(page, 'active_users')).value), total.users.active);
  // Credit lots: recognised and breakage revenue in the range, deferred revenue now.
  const lines = (r.body.data as { total: { credit_lots: Record<string, number | string>[] } }).total.credit_lots
    .find((x) => x.currency === 'usd');
  const recognised = await tile(page, 'recognised_revenue');
  assert.equal(Number(recognised.value), Number(lines?.recognised_revenue_cents ?? 0));
  assert.equal(recognised.text, money(Number(lines?.recognised_revenue_cents ?? 0)));
  const opsRes = await opsSeen;
  assert.equal(opsRes.status(), 200);
  const ops = (await opsRes.json()).data as { credit_lots: Record<string, number | string>[] };
  const now = ops.credit_lots.find((x) => x.currency === 'usd');
  const deferred = await tile(page, 'deferred_revenue');
  assert.equal(Number(deferred.value), Number(now?.deferred_revenue_cents ?? 0));
  assert.equal(deferred.text, money(Number(now?.deferred_revenue_cents ?? 0)));

  assert.match((await page.locator('#recon').textContent()) ?? '', /mismatch(es)?: .*fee mismatch/);
  // Organisations (B2B2C): the tile sums their GMV; the table has the one planted above.
  const orgs =
    (r.body.data as { total: { organisations: { name: string; currency: string | null; gmv_cents: number }[] } })
      .total.organisations;
  const viaOrgs = orgs.filter((o) => o.currency === 'usd').reduce((n, o) => n + o.gmv_cents, 0);
  assert.ok(viaOrgs >= 500, 'the planted purchase counts');
  assert.equal(Number((await tile(page, 'b2b2c_gmv')).value), viaOrgs);
  const row = page.locator('#orgs tr', { hasText: 'Dashboard Academy' }).first();
  assert.match(
    (await row.textContent()) ?? '',
    /pool, [\d.,]+ credits spent1 of 1\$5\.00\$[\d.]+\$[\d.]+ ARPU/,
    'spending, members, GMV, net revenue, ARPU',
  );
  // Codes: the range's promo redemptions, gift sales and sponsor funding, as the API has them.
  const codes = (r.body.data as { total: { codes: { promo_redemptions: number; gift_sales: number } } }).total.codes;
  assert.match(
    (await page.locator('#codes').textContent()) ?? '',
    new RegExp(
      `${codes.promo_redemptions.toLocaleString('en-US')} redemptions.*${
        codes.gift_sales.toLocaleString('en-US')
      } sold`,
    ),
  );
  // Plans: MRR at the range's end in the chosen currency, subscribers and churn, as the API has them.
  const plans = (r.body.data as {
    total: { plans: { subscribers: number; churned: number; mrr: { currency: string; mrr_cents: number }[] } };
  }).total.plans;
  const mrr = plans.mrr.find((m) => m.currency === 'usd')?.mrr_cents ?? 0;
  assert.equal(await page.locator('[data-kpi="mrr"]').getAttribute('data-value'), String(mrr));
  assert.match(
    (await page.locator('#plans').textContent()) ?? '',
    new RegExp(`${plans.subscribers.toLocaleString('en-US')} subscribers, \\d+ new, ${plans.churned} churned`),
  );
  const recon = (await api('/admin/ops', { token: admin })).body.data as { reconciliation: { provider_id: string }[] };
  assert.equal(await page.locator('#recon tr').count(), recon.reconciliation.length + 1, 'a row per provider');
  assert.equal(await page.locator('#revenue-chart svg rect').count() > 0, true, 'the revenue chart is drawn');
  assert.match((await page.locator('#burn-chart .headline').textContent()) ?? '', /^\d+\.\d\d× burn in the worst hour/);
  await assertLegible(page, 1280, 'dashboard-desktop');
  await page.setViewportSize({ width: 390, height: 900 });
  await page.reload(); // laid out afresh at phone width
  await page.waitForSelector('body[data-ready="true"]');
  await assertLegible(page, 390, 'dashboard-phone');
  assert.equal(await page.locator('[data-kpi="gmv"]').isVisible(), true);
});

browserTest('an empty range says so instead of drawing blank axes', async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, await adminToken());
  await page.locator('#from').fill('2020-01-01');
  await page.locator('#to').fill('2020-02-01');
  await page.locator('#to').dispatchEvent('change');
  await page.waitForSelector('body[data-ready="true"]');
  await page.locator('#revenue-chart', { hasText: 'Nothing in this range.' }).waitFor();
  assert.equal(await page.locator('#error').isHidden(), true, 'the superseded load (from alone) reports nothing');
  assert.equal(await page.locator('#conversion-chart').textContent(), 'Nothing in this range.');
  assert.equal(await page.locator('#revenue-chart svg, #conversion-chart svg').count(), 0, 'no empty axes');
  assert.equal((await tile(page, 'gmv')).text, '$0.00');
  await assertLegible(page, 1280, 'dashboard-empty');
});

browserTest(
  'a non-admin who signs in lands on the sign-in page (403) with the reason, and no cookie',
  async (browser) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(dashboard);
    await page.locator('#token').fill(await userToken(await newUser()));
    const res = await navigateBy(page, '#use-token', '/admin/session');
    assert.equal(res.status(), 403);
    assert.match((await page.locator('#error').textContent()) ?? '', /administrators/);
    assert.equal(await page.locator('#token').isVisible(), true, 'a way back: the sign-in form');
    await assertLegible(page, 390, 'dashboard-refused-phone');
    assert.deepEqual((await context.cookies()).filter((c) => c.name === 'sl_admin_session'), []);
  },
);

browserTest(
  'the session cookie is HttpOnly, Secure and Strict; the page never sees the token; sign-out ends it',
  async (browser) => {
    const token = await adminToken();
    const context = await browser.newContext();
    const page = await context.newPage();
    await signIn(page, token);
    const [cookie] = (await context.cookies()).filter((c) => c.name === 'sl_admin_session');
    assert.ok(cookie, 'Chromium kept the Secure cookie on http://127.0.0.1');
    assert.equal(cookie.value, token);
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.secure, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/functions/v1/admin');
    const visible = String(await page.evaluate('document.cookie'));
    assert.ok(!visible.includes('sl_admin_session') && !visible.includes(token), 'document.cookie has no token');
    assert.ok(!(await page.content()).includes(token), 'nor does the page');

    const res = await navigateBy(page, '#sign-out', '/admin/dashboard');
    assert.equal(res.status(), 401, 'signed out: the sign-in page');
    assert.deepEqual((await context.cookies()).filter((c) => c.name === 'sl_admin_session'), []);
  },
);

browserTest('the CSP stops injected script, connections to other hosts, and framing', async (browser) => {
  const page = await browser.newPage();
  await signIn(page, await adminToken());
  // A string, so this file needs no DOM types.
  await page.evaluate(`
    document.body.insertAdjacentHTML('beforeend', '<img src="x" onerror="window.pwnedByHandler = true">');
    const s = document.createElement('script');
    s.textContent = 'window.pwnedByScript = true';
    document.body.append(s);`);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate('window.pwnedByHandler === undefined && window.pwnedByScript === undefined'), true);
  const elsewhere = await page.evaluate(
    (url) => fetch(url).then(() => 'reached', () => 'blocked'),
    `${env('STRIPE_API_BASE')}/`,
  );
  assert.equal(elsewhere, 'blocked', 'connect-src is this origin only');
  const same = await page.evaluate(() => fetch('./ops').then((r) => r.status));
  assert.equal(same, 200, 'the page reaches its own API with the cookie alone');

  // Framed by another page (here a blank one; any origin, even its own, is refused).
  const framer = await browser.newPage();
  const refused: string[] = [];
  framer.on('console', (m) => refused.push(m.text()));
  await framer.setContent(`<iframe id="f" src="${dashboard}"></iframe>`);
  await framer.waitForTimeout(1000);
  const framed = framer.frames().find((f) => f !== framer.mainFrame());
  assert.ok(framed, 'the frame element exists');
  assert.match(framed.url(), /^chrome-error:/, 'Chromium refused to load the dashboard in the frame');
  assert.equal(await framed.locator('#paste, #tiles').count(), 0, 'nothing of the dashboard renders');
  assert.ok(refused.some((m) => m.includes("frame-ancestors 'none'")), refused.join(' | '));
});
