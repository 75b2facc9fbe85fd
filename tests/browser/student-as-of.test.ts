// The student page's "Your credits at an earlier time" (examples/student/as-of.ts) in Chromium
// against the local stack, on a New York clock: a time picked on the student's own clock reads the
// balance and lots as they stood then (GET /credits/balance?at=, /credits/lots?at= through the
// typed client): before the purchase nothing, between the purchase and a charge the whole
// purchase, empty the balance now; a lot that may pay for some models only says which; a time to
// come is not asked for. Readable at desktop and phone width (screenshots in artifacts/).
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { adminToken, api, newUser, reportUsage, testDb, tokenUser, userToken } from '../support/helpers.ts';
import { key } from '../support/orgs.ts';
import { buy } from '../support/purchases.ts';

const timeZone = 'America/New_York';
/** The database's clock now, as an instant. */
const instant = async () =>
  (await testDb`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`)[0]
    .t as string;
/** An instant on the student's wall clock, to the second (what a datetime-local input holds). */
const wallClock = (at: string) => new Date(at).toLocaleString('sv-SE', { timeZone }).replace(' ', 'T');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function show(page: Page, value: string) {
  await page.locator('#as-of-at').fill(value);
  await page.locator('#as-of-balance').evaluate((e) => (e.textContent = ''));
  await page.locator('#as-of-show').click();
  await page.waitForFunction(() => document.getElementById('as-of-balance')?.textContent !== '');
  return {
    balance: await page.locator('#as-of-balance').getAttribute('data-balance'),
    text: (await page.locator('#as-of-balance').textContent()) ?? '',
    lots: (await page.locator('#as-of-lots').textContent()) ?? '',
  };
}

browserTest(
  'the student page shows the balance and lots as they stood at a time picked on their own clock',
  async (browser) => {
    const token = await userToken(await newUser());
    // Whole seconds between the moves, as a person picks a time: each picked second falls between them.
    const before = await instant();
    await sleep(1100);
    await buy(token, 'mini'); // 5,000 credits
    await sleep(1100);
    const between = await instant();
    await sleep(1100);
    const charged = await reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 1200 * 50, output_tokens: 0 },
    });
    assert.equal(charged.status, 201, charged.text);

    const context = await browser.newContext({ timezoneId: timeZone, viewport: { width: 1280, height: 844 } });
    const page = await context.newPage();
    await signInWithToken(page, token);
    assert.equal((await page.locator('#balance').textContent())?.trim(), '3,800', 'the balance now');

    const earlier = await show(page, wallClock(between));
    assert.equal(earlier.balance, '5000', earlier.text);
    assert.match(earlier.text, new RegExp(`^On .*${between.slice(0, 4)}.*: 5,000 credits\\.$`));
    const row = page.locator('#as-of-lots tr[data-lot]');
    assert.equal(await row.count(), 1);
    assert.deepEqual(
      (await row.locator('td').allTextContents()).filter((_, i) => [0, 2, 3, 4].includes(i)),
      ['Bought credits', '5,000', '5,000', 'never'],
      'the purchase, whole then',
    );

    const first = await show(page, wallClock(before));
    assert.equal(first.balance, '0', first.text);
    assert.equal(first.lots, 'You had no credits yet then.');

    const now = await show(page, '');
    assert.equal(now.balance, '3800', 'empty: now');
    assert.equal(now.text, 'Now: 3,800 credits.');

    // A lot that may pay for some models only says which (applies_to; null: any model).
    const granted = await api('/credits/grants', {
      token: await adminToken(),
      headers: key(),
      body: {
        user_id: tokenUser(token),
        amount: '10',
        reason: 'a course',
        kind: 'promo_grant',
        lot: { applies_to: ['claude-haiku-4-5', 'gpt-4o-mini*'] },
      },
    });
    assert.equal(granted.status, 201, granted.text);
    await show(page, '');
    assert.equal(
      (await page.locator('#as-of-lots tr[data-lot]').first().locator('td').last().textContent())?.trim(),
      'only for: claude-haiku-4-5, gpt-4o-mini*',
    );

    // A time to come is not in the ledger: said beside the form, nothing asked.
    await page.locator('#as-of-at').fill(wallClock(new Date(Date.now() + 86_400_000).toISOString()));
    await page.locator('#as-of-show').click();
    await page.locator('#as-of-note').waitFor();
    assert.match((await page.locator('#as-of-note').textContent()) ?? '', /Pick a time that has passed/);

    await show(page, wallClock(between));
    await assertReadable(page, 'student-as-of');
    for (const width of [1280, 390]) {
      await page.setViewportSize({ width, height: 844 });
      const path = new URL(`../../artifacts/student-as-of-${width}.png`, import.meta.url).pathname;
      await page.locator('#as-of').screenshot({ path });
    }
    await context.close();
  },
);
