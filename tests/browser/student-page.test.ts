// The example student page in Debian's Chromium (headless, playwright-core), against the
// local stack: sign in with a local token, buy `starter` through the emulator's hosted
// Checkout page, see 9,990 credits; start a metered job and cancel it; and the error state.
// Screenshots go to artifacts/ (git-ignored).
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest } from '../browser.ts';
import { api, env, fund, newUser, spawnGateway, testDb, userToken } from '../helpers.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const artifacts = new URL('../../artifacts/', import.meta.url);

async function signIn(page: Page, apiBase: string, token: string) {
  await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}`);
  await page.locator('#token').fill(token);
  await page.locator('#sign-in').click();
  await page.waitForSelector('body[data-ready="true"]');
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
      await page.screenshot({ path: new URL('student-after-purchase.png', artifacts).pathname, fullPage: true });

      await page.locator('#start-job').click();
      await page.locator('#cancel-job').waitFor({ state: 'visible' });
      await page.locator('#job-status', { hasText: 'processing' }).waitFor({ timeout: 15_000 });
      assert.equal(await text(page, '#available') === '9,990', false, 'the running job holds its estimate');
      await page.locator('#cancel-job').click();
      await page.locator('#job-status', { hasText: 'cancelled' }).waitFor();
      await page.locator('#available', { hasText: '9,990' }).waitFor();
      await page.screenshot({ path: new URL('student-job-cancelled.png', artifacts).pathname, fullPage: true });
      const [job] = await testDb`select status from billing.jobs where user_id = ${user}`;
      assert.equal(job.status, 'cancelled');
    } finally {
      await gateway.kill();
    }
  },
);

browserTest('an invalid token shows the error state, not a blank page', async (browser) => {
  const page = await browser.newPage();
  await signIn(page, env('SUPABASE_URL'), 'not-a-real-token');
  const error = page.locator('#error');
  await error.waitFor({ state: 'visible' });
  assert.match((await error.textContent()) ?? '', /UNAUTHORIZED/);
  await page.screenshot({ path: new URL('student-error.png', artifacts).pathname });
  // Not a dead end: signing in again brings the form back, with the bad token forgotten.
  await page.locator('#sign-in-again').click();
  await page.locator('#token').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#error').isHidden(), true);
});

browserTest(
  'the page shows what expires when, sets a spending limit, and turns auto-recharge on and off',
  async (browser) => {
    const user = await newUser();
    await fund(user, '100'); // a promotion: it expires by policy
    const token = await userToken(user);
    const page = await browser.newPage();
    await signIn(page, env('SUPABASE_URL'), token);
    assert.match((await text(page, '#expiring')) ?? '', /^100 credits expire on /);
    assert.match((await text(page, '#ledger')) ?? '', /Bonus credits · \+100/);
    assert.equal(
      await text(page, '#recharge-status'),
      'Off. To use it, buy a package with "Keep my card for auto-recharge" ticked.',
    );

    await page.locator('#cap-amount').fill('50');
    await page.locator('#cap-period').selectOption('day');
    await page.locator('#cap-save').click();
    await page.locator('#cap-status', { hasText: 'Today: 0 of 50 credits spent' }).waitFor();
    const [cap] = (await api('/credits/caps', { token })).body.data as { cap: string; period: string }[];
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
      hasText: 'On: the mini package when available falls below 1,000 credits.',
    })
      .waitFor();
    const settings = (await api('/credits/auto-recharge', { token })).body.data as {
      enabled: boolean;
      package_id: string;
    };
    assert.deepEqual([settings.enabled, settings.package_id], [true, 'mini']);
    await page.screenshot({ path: new URL('student-controls.png', artifacts).pathname, fullPage: true });

    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = Number(
      await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth'),
    );
    assert.ok(overflow <= 0, `no sideways scrolling at phone width (${overflow}px)`);
    await page.screenshot({ path: new URL('student-controls-phone.png', artifacts).pathname, fullPage: true });
    await page.locator('#recharge-off').click();
    await page.locator('#recharge-status', { hasText: /^Off\.$/ }).waitFor();
  },
);
