// Plans on the example student page, in Chromium against the local stack: a student subscribes
// through the emulator's hosted Checkout, is told when invoice.paid has started the plan and sees
// its credits; a failed renewal asks for the card; cancelling says when the plan ends; the card
// and invoices open Stripe's customer portal. Each view is checked at desktop and phone width.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { env, newUser, testDb, userToken } from '../support/helpers.ts';
import { renew } from '../support/plans.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const status = (page: Page) => page.locator('[data-testid="plan-status"]');

browserTest(
  'a student subscribes to a plan, sees its credits, a failed renewal, cancels and opens the portal',
  async (browser) => {
    const id = await newUser();
    const page = await browser.newPage();
    await signInWithToken(page, await userToken(id));
    await status(page).filter({ hasText: 'No plan yet.' }).waitFor();
    const offer = await page.locator('button[data-plan="basic_monthly"]').textContent();
    assert.match(
      offer ?? '',
      /Basic · \$9\.99 a month: 10,000 credits each month, up to 2,000 unused credits carry over/,
    );
    await assertReadable(page, 'plans-on-sale');

    await page.locator('button[data-plan="basic_monthly"]').click();
    await page.waitForURL(/\/_emulator\/checkout\/cs_test_/);
    await page.locator('#pay').click();
    await page.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.get('plan') === 'started');
    await page.waitForSelector('body[data-ready="true"]');
    await page.locator('#notice', { hasText: 'Your plan is active: 10,000 plan credits added.' }).waitFor();
    await status(page).filter({ hasText: /Basic: 10,000 plan credits left this period\. It renews on / }).waitFor();
    await page.locator('#balance', { hasText: '10,000' }).waitFor();
    assert.equal(new URL(page.url()).search, '', 'the return is announced once');
    await assertReadable(page, 'plan-active');

    const [{ sub }] =
      await testDb`select s.stripe_subscription_id as sub from billing.subscriptions s where s.user_id = ${id}`;
    await renew(sub, 'failed');
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    await status(page).filter({ hasText: 'the renewal payment failed. Update your card' }).waitFor();
    assert.equal(await page.locator('#plan-body button', { hasText: 'Cancel plan' }).count(), 0, 'unpaid: no changes');
    await page.locator('#plan-body button', { hasText: 'Card and invoices' }).click();
    await page.waitForURL(/\/_emulator\/billing_portal\//);
  },
);

browserTest('cancelling a plan says when it ends and that nothing more is charged', async (browser) => {
  const id = await newUser();
  const token = await userToken(id);
  const page = await browser.newPage();
  await signInWithToken(page, token);
  await page.locator('button[data-plan="pro_monthly"]').click();
  await page.waitForURL(/\/_emulator\/checkout\/cs_test_/);
  await page.locator('#pay').click();
  await page.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.get('plan') === 'started');
  await status(page).filter({ hasText: 'Pro: 35,000 plan credits left' }).waitFor();
  assert.equal(await page.locator('#plan-body button', { hasText: 'Switch to Basic' }).count(), 1, 'a smaller plan');
  await page.locator('#plan-body button', { hasText: 'Cancel plan' }).click();
  await page.locator('#notice', { hasText: /Your plan ends on .+\. Its credits last until then\./ }).waitFor();
  await status(page).filter({ hasText: 'nothing more will be charged' }).waitFor();
  await assertReadable(page, 'plan-cancelled');
});
