// The student page speaks to students, in Chromium at desktop and phone width: a 402 says how
// many more credits are needed with a link to buy them, codes and request ids only behind
// "Details", the error next to the button that caused it, packages by name, bonuses whole or
// with their reason, a balance card that never clips, the school's spending in a member's
// activity, and an invitation card that names the organisation and says to sign in first.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { api, env, fund, newUser, userToken } from '../support/helpers.ts';
import { key, person, school, usage } from '../support/orgs.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const apiBase = env('SUPABASE_URL');
const widths = [[1280, 'desktop'], [390, 'phone']] as const;
const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim();

async function signIn(page: Page, token: string) {
  await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

async function assertLegible(page: Page, what: string) {
  const seen = await legibility(page);
  assert.ok(seen.overflow <= 0, `${what}: scrolls sideways by ${seen.overflow}px`);
  assert.deepEqual(seen.spilled, [], `${what}: text cut off`);
  assert.deepEqual(seen.tooSmall, [], `${what}: text under 12 px`);
}

for (const [width, label] of widths) {
  browserTest(
    `${label}: a refused job says how many more credits, links to buying, and shows it by the button`,
    async (browser) => {
      const page = await browser.newPage({ viewport: { width, height: 844 } });
      await signIn(page, await userToken(await newUser()));
      await page.locator('#job-price', { hasText: 'Costs at most' }).waitFor();
      await page.locator('#start-job').click();
      await page.locator('#error', { hasText: 'more credit' }).waitFor();
      assert.match((await text(page, '#error-text')) ?? '', /^You need [\d,.]+ more credits?$/);
      assert.equal(await text(page, '#error-action'), '— Buy credits');
      assert.equal(await page.locator('#error-link').getAttribute('href'), '#buy');
      // No codes or ids in the main message; they wait behind Details for support.
      const main = (await page.locator('#error > p').first().textContent()) ?? '';
      assert.doesNotMatch(main, /INSUFFICIENT|request|[0-9a-f]{8}-[0-9a-f]{4}/);
      assert.equal(await page.locator('#error-details').getAttribute('open'), null, 'closed until asked');
      assert.match((await text(page, '#error-details-text')) ?? '', /^INSUFFICIENT_CREDITS · request [0-9a-f-]{36}/);
      // Next to the button that caused it: right after its row, and on screen with it.
      const follows = await page.evaluate(
        `document.getElementById('error').previousElementSibling.contains(document.getElementById('start-job'))`,
      );
      assert.equal(follows, true, 'the error box follows the Start button');
      const button = await page.locator('#start-job').boundingBox();
      const error = await page.locator('#error').boundingBox();
      assert.ok(button && error && error.y - (button.y + button.height) < 120, `${label}: the error is by the button`);
      await assertLegible(page, `${label} refused job`);
      await page.screenshot({ path: new URL(`../../artifacts/student-402-${label}.png`, import.meta.url).pathname });
      await page.locator('#error-link').click();
      assert.match(page.url(), /#buy$/, 'the link goes to the packages');
    },
  );

  browserTest(
    `${label}: packages by name, bonuses whole or with their reason, and a huge balance fits its card`,
    async (browser) => {
      const user = await newUser();
      await fund(user, '123456789012.3456');
      const page = await browser.newPage({ viewport: { width, height: 844 } });
      await signIn(page, await userToken(user));
      const cards = await page.locator('.package .muted').allTextContents();
      assert.ok(cards.includes('24,990 credits + 1,249.5 bonus credits (5% extra)'), cards.join(' | '));
      assert.ok(cards.includes('49,990 credits + 4,999 bonus credits'), 'a whole bonus is whole credits');
      assert.equal(await text(page, '#balance'), '123,456,789,012.35');
      await assertLegible(page, `${label} large balance`);
      const fits = await page.evaluate(
        `(() => { const b = document.getElementById('balance'); return b.scrollWidth <= b.clientWidth + 1; })()`,
      );
      assert.equal(fits, true, 'the balance is not clipped');
    },
  );

  browserTest(
    `${label}: signed out, an invitation link names the organisation and says to sign in first`,
    async (browser) => {
      const [owner, ada] = await Promise.all([person('card-owner'), person('card-ada')]);
      const org = await school(owner, [], 'allowance', null);
      const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: ada.email } });
      const { token } = invited.body.data as { token: string };
      const page = await browser.newPage({ viewport: { width, height: 844 } });
      await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}#invitation=${token}`);
      await page.waitForSelector('body[data-ready="true"]');
      const card = (await text(page, '[data-testid="invitation"]')) ?? '';
      assert.match(card, /^Lakeside School has invited you to join: it pays for your credits\./);
      assert.match(card, /Sign in first, with the email address the invitation was sent to/);
      await assertLegible(page, `${label} invitation card`);
    },
  );
}

browserTest("a member sees what the school paid for them in the page's activity", async (browser) => {
  const [owner, ada] = await Promise.all([person('page-owner'), person('page-ada')]);
  const org = await school(owner, [ada]);
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '50' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  assert.equal((await usage(ada.token)).status, 201);
  const page = await browser.newPage();
  await signIn(page, ada.token);
  const activity = (await text(page, '#ledger')) ?? '';
  assert.doesNotMatch(activity, /No activity yet/);
  assert.match(activity, /AI usage \(gpt-4o-mini\) · −[\d.]+ · paid by Lakeside School/);
});
