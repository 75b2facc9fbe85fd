// Codes on the example student page, in Chromium against the local stack: a student buys a gift
// through the emulator's hosted Checkout and is shown its code (their balance unchanged); a
// friend redeems it on their own page and sees the credits arrive; a mistyped code says so in a
// student's words. An organisation's owner sponsors a student by email from the organisation view,
// is shown the code once, revokes another; the student redeems theirs. Each view is checked at
// desktop and phone width.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { api, env, newUser, userToken } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim();

browserTest('a student gives a gift through Checkout; a friend redeems its code on their page', async (browser) => {
  const buyer = await browser.newPage();
  await signInWithToken(buyer, await userToken(await newUser()));
  await buyer.locator('button[data-gift="starter"]').click();
  await buyer.waitForURL(/\/_emulator\/checkout\/cs_test_/);
  await buyer.locator('#pay').click();
  await buyer.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.has('session_id'));
  await buyer.waitForSelector('body[data-ready="true"]');
  const notice = await buyer.locator('#notice', { hasText: 'Your gift code' }).textContent() ?? '';
  const code = notice.match(/[0-9A-Z]{5}(-[0-9A-Z]{5}){3}/)?.[0];
  assert.ok(code, notice);
  assert.equal(await text(buyer, '#balance'), '0', "a gift is not the buyer's credits");
  await assertReadable(buyer, 'gift-bought');

  const friend = await browser.newPage();
  await signInWithToken(friend, await userToken(await newUser()));
  await friend.locator('#code').fill('not-a-code-at-all-xx');
  await friend.locator('#redeem').click();
  await friend.locator('#error', { hasText: 'A code is 20 letters' }).waitFor();
  await friend.locator('#code').fill(code.toLowerCase());
  await friend.locator('#redeem').click();
  await friend.locator('#notice', { hasText: '9,990 credits from a gift were added' }).waitFor();
  await friend.locator('#balance', { hasText: '9,990' }).waitFor();
  // The page reloads its parts together after a redemption: the ledger may land after the balance.
  await friend.locator('#ledger', { hasText: /Gift or sponsor code redeemed · \+9,990/ }).waitFor();
  await assertReadable(friend, 'gift-redeemed');
});

browserTest('an owner sponsors a student from the organisation view; the student redeems the code', async (browser) => {
  const owner = await person('owner');
  const student = await person('student');
  const org = await school(owner, [student], 'allowance', '100');
  // A sponsor code names a member or an invitee: someone-else is invited, not yet joined.
  await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: 'someone-else@school.test' } });
  const page = await browser.newPage();
  await signInWithToken(page, owner.token);
  const view = page.locator(`[data-org="${org}"]`);
  const sponsor = async (email: string, credits: string) => {
    await view.locator('input[aria-label="student to sponsor"]').fill(email);
    await view.locator('input[aria-label="credits to give"]').fill(credits);
    await view.locator('button', { hasText: 'Sponsor' }).click();
    const status = page.locator(`[data-org="${org}"] [data-testid="org-status"]`, { hasText: 'Code for' });
    return (await status.textContent() ?? '').match(/[0-9A-Z]{5}(-[0-9A-Z]{5}){3}/)?.[0] ?? '';
  };
  const code = await sponsor(student.email, '30');
  assert.ok(code, 'the code is shown once');
  await sponsor('someone-else@school.test', '20');
  await page.locator(`[data-org="${org}"] [data-testid="org-wallet"]`, { hasText: '50 credits' }).waitFor();
  await page.locator(`[data-org="${org}"] [data-testid="org-sponsor-codes"] button`, { hasText: 'Revoke' }).first()
    .click();
  await page.locator(`[data-org="${org}"] [data-testid="org-status"]`, { hasText: 'Code revoked' }).waitFor();
  await page.locator(`[data-org="${org}"] [data-testid="org-wallet"]`, { hasText: '70 credits' }).waitFor();
  await assertReadable(page, 'org-sponsor');

  const mine = await browser.newPage();
  await signInWithToken(mine, student.token);
  await mine.locator('#code').fill(code);
  await mine.locator('#redeem').click();
  await mine.locator('#notice', { hasText: '30 credits from your organisation were added' }).waitFor();
});
