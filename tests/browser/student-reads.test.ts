// The student page read without help, in Chromium at 1280 and 390 px (screenshots in artifacts/):
// a plan holder sees what they can spend, every upcoming expiry with its amount (the plan's
// credits ending with the period and what its rule carries over, as the API computes them), every
// ledger line in words with the model it paid for (a promo code is not a purchase bonus), and a
// usage chart with a credits axis, dates and the busiest day's value; a school member sees what
// they can spend first, their allowance included, never a bare "0" above it.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { api } from '../support/helpers.ts';
import { key, person, school, usage } from '../support/orgs.ts';
import { promo, redeem } from '../support/codes.ts';
import { subscribeTo } from '../support/plans.ts';
import { roundedCredits } from '../../examples/student/credits.ts';
import type { Balance, Expiry, Page as List } from '../../supabase/functions/_shared/contract/index.ts';

const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim() ?? '';

async function screenshots(page: Page, name: string) {
  await assertReadable(page, name);
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 844 });
    const path = new URL(`../../artifacts/${name}-${width}.png`, import.meta.url).pathname;
    await page.screenshot({ path, fullPage: true });
  }
}

browserTest('a plan holder reads what they can spend, what ends when, and every line in words', async (browser) => {
  const me = await person('reader');
  await subscribeTo(me.token, 'basic_monthly');
  const code = await promo({ credits: '25', budget: '100' });
  assert.equal((await redeem(me.token, code.code)).status, 200);
  assert.equal((await usage(me.token)).status, 201);
  const balance = (await api('/credits/balance', { token: me.token })).body.data as Balance;
  const [plan] = ((await api('/credits/expiries', { token: me.token })).body.data as List<Expiry>).items
    .filter((e) => e.source === 'plan');

  const page = await browser.newPage({ viewport: { width: 1280, height: 844 } });
  await signInWithToken(page, me.token);
  assert.equal(await text(page, '#spendable'), roundedCredits(balance.available));
  const expiries = await page.locator('#expiries li').allTextContents();
  assert.ok(
    expiries.some((line) =>
      line.includes(`${roundedCredits(plan.credits)} plan credits end with this period: 2,000 carry over`) &&
      line.includes('(Basic: up to 2,000 unused credits carry over)') &&
      line.endsWith(`${roundedCredits(plan.expires)} expire.`)
    ),
    expiries.join('\n'),
  );
  assert.ok(expiries.some((line) => /: 25 promotional credits expire\.$/.test(line)), expiries.join('\n'));

  const ledger = await text(page, '#ledger');
  assert.match(ledger, /AI usage \(gpt-4o-mini\) · −/, 'a charge names its model');
  assert.match(ledger, /Promotional credits · \+25/, 'a redeemed promo code');
  assert.match(ledger, /Your plan's credits for this period · \+10,000/);
  assert.doesNotMatch(ledger, /Bonus/, 'a promo code is not a purchase bonus');
  assert.doesNotMatch(ledger, /\b[a-z]+_[a-z_]+\b/, 'no raw ledger kind');

  // The chart: a credits axis (the busiest day at the top, 0 at the bottom), three dates, the values in words.
  const y = await page.locator('#usage-y span').allTextContents();
  assert.equal(y.length, 3);
  assert.equal(y[2], '0');
  assert.equal((await page.locator('#usage-x span').allTextContents()).length, 3);
  assert.match(
    await text(page, '#usage-caption'),
    new RegExp(`the most, ${y[0].replace('.', '\\.')}, on \\d+ \\w+\\.$`),
  );
  await screenshots(page, 'student-reads-plan');
});

browserTest('a school member sees what they can spend first, their allowance included', async (browser) => {
  const [owner, ada] = await Promise.all([person('reads-owner'), person('reads-ada')]);
  const org = await school(owner, [ada], 'allowance', '100');
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '50' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);

  const page = await browser.newPage({ viewport: { width: 1280, height: 844 } });
  await signInWithToken(page, ada.token);
  assert.equal(await text(page, '#balance-card h2'), 'You can spend');
  assert.equal(await text(page, '#spendable'), '50', 'the allowance counts in what she can spend');
  assert.equal(await text(page, '#spend-parts'), "50 from Lakeside School's allowance · 0 of your own");
  await screenshots(page, 'student-reads-member');
});
