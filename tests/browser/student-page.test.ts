// The example student page in Debian's Chromium (headless, playwright-core), against the
// local stack: sign in with a password (Supabase Auth's grant, the local stand-in) or a pasted
// token, and sign out; buy `starter` through the emulator's hosted Checkout page, see 9,990
// credits; a metered job priced before it starts, started and cancelled, or refused; and a way
// back from every error. Each view is checked for what a person sees at desktop and phone
// width. Screenshots go to artifacts/ (git-ignored).
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility, passwordUser } from '../support/browser.ts';
import { api, env, fund, newUser, spawnGateway, testDb, userToken } from '../support/helpers.ts';
import { roundedCredits } from '../../examples/student/credits.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const artifacts = new URL('../../artifacts/', import.meta.url);

async function signIn(page: Page, apiBase: string, token: string) {
  await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('#app:not([hidden]), #error:not([hidden])');
  await page.waitForSelector('body[data-ready="true"]');
}

/** Readable at desktop and phone width: no sideways scrolling, no text under 12 px, none cut off. */
async function assertLegible(page: Page, name: string) {
  for (const [width, label] of [[1280, 'desktop'], [390, 'phone']] as const) {
    await page.setViewportSize({ width, height: 844 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${name}, ${label}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${name}, ${label}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${name}, ${label}: text cut off`);
    await page.screenshot({ path: new URL(`student-${name}-${label}.png`, artifacts).pathname, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 844 });
}

const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim();

browserTest(
  'a student buys starter through Checkout and sees 9,990 credits; a job starts and is cancelled',
  async (browser) => {
    // A gateway of its own whose local AI model is slow, so the job can be seen running and cancelled.
    const gateway = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '1500' });
    await gateway.ready();
    try {
      const user = await newUser();
      const token = await userToken(user);
      const page = await browser.newPage();
      await signIn(page, gateway.url.replace(/\/functions\/v1$/, ''), token);
      assert.equal(await text(page, '#balance'), '0');
      assert.match((await text(page, '#ledger')) ?? '', /No activity yet/, 'the empty state is shown');

      await page.locator('button[data-package="starter"]').click();
      await page.waitForURL(/\/_emulator\/checkout\/cs_test_/);
      await page.locator('#pay').click();
      await page.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.has('session_id'));
      await page.waitForSelector('body[data-ready="true"]');
      await page.locator('#notice', { hasText: 'Payment received' }).waitFor();
      assert.equal(await text(page, '#balance'), '9,990');
      const fromApi = (await api('/credits/balance', { token })).body.data as { balance: string };
      assert.equal(fromApi.balance, '9990', 'the page shows what the API says');
      assert.match((await text(page, '#ledger')) ?? '', /Bought credits · \+9,990/, "in a student's words");
      // Shown once: the session id left the address, so a reload does not announce it again.
      assert.equal(new URL(page.url()).searchParams.has('session_id'), false);
      await page.reload();
      await page.waitForSelector('body[data-ready="true"]');
      assert.equal(await page.locator('#notice').isHidden(), true, 'a reload does not announce the payment again');
      await assertLegible(page, 'after-purchase');

      // Priced before it starts, from the rate card; the price is what the job then holds.
      const price = (await text(page, '#job-price')) ?? '';
      const shown = price.match(/^Costs at most (.+) credits:/)?.[1];
      assert.ok(shown, price);
      assert.match((await text(page, '#standin-note')) ?? '', /stand-in answers.*reverse your prompt/s);
      await page.locator('#start-job').click();
      await page.locator('#cancel-job').waitFor({ state: 'visible' });
      await page.locator('#job-status', { hasText: 'Working' }).waitFor({ timeout: 15_000 });
      const [hold] = await testDb`
        select h.amount::text from billing.holds h join billing.accounts a on a.id = h.account_id
        where a.user_id = ${user} and h.status = 'active'`;
      assert.equal(shown, roundedCredits(hold.amount), 'the price shown is the hold the job took');
      assert.notEqual(await text(page, '#available'), '9,990', 'the running job holds its price');
      await page.locator('#cancel-job').click();
      await page.locator('#job-status', { hasText: 'Cancelled' }).waitFor();
      await page.locator('#available', { hasText: '9,990' }).waitFor();
      await page.screenshot({ path: new URL('student-job-cancelled.png', artifacts).pathname, fullPage: true });
      const [job] = await testDb`select status from billing.jobs where user_id = ${user}`;
      assert.equal(job.status, 'cancelled');
    } finally {
      await gateway.kill();
    }
  },
);

browserTest('a bad or expired token is not a dead end: every part says so and Sign in again works', async (browser) => {
  const page = await browser.newPage();
  await signIn(page, env('SUPABASE_URL'), await userToken(await newUser(), { ttlSeconds: -60 }));
  const error = page.locator('#error');
  await error.waitFor({ state: 'visible' });
  assert.match((await text(page, '#error-text')) ?? '', /^You have been signed out\. Sign in again to continue\.$/);
  assert.match((await text(page, '#error-details-text')) ?? '', /UNAUTHORIZED · request /, 'the code is for support');
  assert.equal(await page.locator('#app').isHidden(), true, 'no "…" or "Loading packages…" forever');
  assert.equal(await page.locator('#retry').isHidden(), true, 'a rejected token is not retried');
  await assertLegible(page, 'error');
  // Signing in again brings the form back, with the bad token forgotten.
  await page.locator('#sign-in-again').click();
  await page.locator('#token').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#error').isHidden(), true);
  assert.equal(await page.evaluate('sessionStorage.getItem("token")'), null);
});

browserTest('an API that cannot be reached says so in every part and offers Try again', async (browser) => {
  const page = await browser.newPage();
  // Nothing listens on port 9: every request fails before an answer.
  await signIn(page, 'http://127.0.0.1:9', await userToken(await newUser()));
  await page.locator('#retry').waitFor({ state: 'visible' });
  assert.equal(
    await text(page, '#error-text'),
    "We couldn't reach ScholarLink at http://127.0.0.1:9. Check your connection and that ScholarLink is running at " +
      'that address, then try again.',
  );
  assert.match(
    (await text(page, '#error-details-text')) ?? '',
    new RegExp(`allow this page's origin ${new URL(pageUrl).origin} \\(CORS_ALLOWED_ORIGINS\\)`),
  );
  assert.equal(await text(page, '#balance'), '—', 'no "…" forever');
  assert.equal(await text(page, '#packages'), 'Packages could not be loaded.');
  assert.equal(await text(page, '#ledger'), 'Activity could not be loaded.');
  assert.equal(await text(page, '#job-price'), 'The price could not be loaded.');
  await page.locator('#retry').click();
  await page.locator('#retry').waitFor({ state: 'visible' });
  await page.locator('#sign-out').click();
  await page.locator('#token').waitFor({ state: 'visible' });
});

browserTest("the page the stack serves calls the stack's own API, whatever its ports (no ?api=)", async (browser) => {
  const user = await newUser();
  await fund(user, '7');
  const page = await browser.newPage();
  const called: string[] = [];
  page.on('request', (r) => called.push(new URL(r.url()).origin));
  await page.goto(pageUrl);
  await page.locator('#token').fill(await userToken(user));
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
  await page.locator('#balance', { hasText: '7' }).waitFor();
  const origins = new Set(called);
  origins.delete(new URL(pageUrl).origin);
  assert.deepEqual([...origins], [new URL(env('SUPABASE_URL')).origin]);
});

browserTest('a student signs in with a password, and signing out forgets the session', async (browser) => {
  const password = 'correct horse battery staple';
  const user = await passwordUser(password);
  await fund(user.id, '12.3456');
  const page = await browser.newPage();
  await page.goto(`${pageUrl}?api=${encodeURIComponent(env('SUPABASE_URL'))}`);
  await page.waitForSelector('body[data-ready="true"]');
  await assertLegible(page, 'sign-in');
  await page.locator('#email').fill(user.email);
  await page.locator('#password').fill('wrong password');
  await page.locator('#sign-in').click();
  await page.locator('#error', { hasText: 'Invalid login credentials' }).waitFor();

  await page.locator('#password').fill(password);
  await page.locator('#sign-in').click();
  await page.locator('#app').waitFor({ state: 'visible' });
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await text(page, '#balance'), '12.35', 'rounded for reading');
  assert.match((await text(page, '#ledger')) ?? '', /Promotional credits · \+12\.35/);

  await page.locator('#sign-out').click();
  await page.locator('#email').waitFor({ state: 'visible' });
  const kept = await page.evaluate('Object.keys(sessionStorage).filter((k) => k !== "api")');
  assert.deepEqual(kept, [], 'nothing of the session is left in the tab');
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await page.locator('#app').isHidden(), true, 'a reload stays signed out');
});

browserTest('a job the balance cannot cover is refused before it starts and says so', async (browser) => {
  const page = await browser.newPage();
  await signIn(page, env('SUPABASE_URL'), await userToken(await newUser()));
  await page.locator('#job-price', { hasText: 'Costs at most' }).waitFor();
  await page.locator('#prompt').fill('A longer question costs more: '.repeat(20));
  assert.match((await text(page, '#job-price')) ?? '', /^Costs at most [\d.,]+ credits:/, 'priced as it is typed');
  await page.locator('#start-job').click();
  await page.locator('#error', { hasText: 'more credits' }).waitFor();
  assert.equal(await text(page, '#job-status'), 'Not started');
  assert.equal(await page.locator('#job-progress').isHidden(), true);
  assert.equal(await page.locator('#start-job').isEnabled(), true, 'it can be tried again after buying credits');
});

browserTest(
  'the page shows what expires when, sets a spending limit, and turns auto-recharge on and off',
  async (browser) => {
    const user = await newUser();
    await fund(user, '100'); // a promotion: it expires by policy
    const token = await userToken(user);
    const page = await browser.newPage();
    await signIn(page, env('SUPABASE_URL'), token);
    assert.match((await text(page, '#expiries')) ?? '', /\d{4}: 100 promotional credits expire\.$/);
    assert.match((await text(page, '#ledger')) ?? '', /Promotional credits · \+100/);
    assert.equal(
      await text(page, '#recharge-status'),
      'Off. To use it, buy a package with "Keep my card for auto-recharge" ticked.',
    );

    await page.locator('#cap-amount').fill('50');
    await page.locator('#cap-period').selectOption('day');
    await page.locator('#cap-save').click();
    await page.locator('#cap-status', { hasText: 'Today: 0 of 50 credits spent' }).waitFor();
    const [cap] = ((await api('/credits/caps', { token })).body.data as { items: { cap: string; period: string }[] })
      .items;
    assert.deepEqual([cap.period, cap.cap], ['day', '50'], 'the page set what the API has');

    await page.locator('#save-card').check();
    await page.locator('button[data-package="starter"]').click();
    await page.waitForURL(/\/_emulator\/checkout\/cs_test_/);
    await page.locator('#pay').click();
    await page.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.has('session_id'));
    await page.waitForSelector('body[data-ready="true"]');
    await page.locator('#recharge-status', { hasText: /^Off\.$/ }).waitFor();
    await page.locator('#recharge-package').selectOption('mini');
    await page.locator('#recharge-threshold').fill('1000');
    await page.locator('#recharge-on').click();
    await page.locator('#recharge-status', {
      hasText: 'On: the Mini package when available falls below 1,000 credits.',
    })
      .waitFor();
    const settings = (await api('/credits/auto-recharge', { token })).body.data as {
      enabled: boolean;
      package_id: string;
    };
    assert.deepEqual([settings.enabled, settings.package_id], [true, 'mini']);
    await assertLegible(page, 'controls');
    await page.locator('#recharge-off').click();
    await page.locator('#recharge-status', { hasText: /^Off\.$/ }).waitFor();
  },
);
