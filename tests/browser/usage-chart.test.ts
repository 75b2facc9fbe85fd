// The student page's "Where your credits went" in Debian's Chromium: one bar a day for the last
// 30 days (today's the tallest after spending today), the models that cost most, and the
// runway in words, the same as the API's; it reads at phone width without sideways scrolling.
import assert from 'node:assert/strict';
import { browserTest, legibility } from '../support/browser.ts';
import { api, env, fund, newUser, spend, userToken } from '../support/helpers.ts';
import { runwayText } from '../../examples/student/usage.ts';
import type { UsageSummary } from '../../supabase/functions/_shared/contract/index.ts';

browserTest('a student sees a bar a day, the models they used and how long their credits last', async (browser) => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '700');
  await spend(token, 40);
  await spend(token, 30);
  const summary = (await api('/credits/usage/summary', { token })).body.data as unknown as UsageSummary;
  assert.equal(summary.runway?.days, 63, '630 left at 70 a week (10 a day)');

  const page = await browser.newPage();
  await page.goto(`${env('STUDENT_PAGE_URL')}?api=${encodeURIComponent(env('SUPABASE_URL'))}`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');

  assert.equal((await page.locator('#runway').textContent())?.trim(), runwayText(summary.runway));
  assert.match(runwayText(summary.runway), /last about 63 days\.$/);
  const heights = await page.locator('#usage-chart .bar').evaluateAll((bars) =>
    bars.map((b) => (b as HTMLElement).style.height)
  );
  assert.equal(heights.length, 30, 'one bar a day for the last 30 days');
  assert.deepEqual(heights.slice(0, -1), Array(29).fill('0%'), 'nothing spent before today');
  assert.equal(heights.at(-1), '100%', "today's bar is the tallest");
  assert.match((await page.locator('#usage-models').textContent()) ?? '', /gpt-4o: 70 credits, 2 requests/);
  assert.match((await page.locator('#usage-chart').getAttribute('aria-label')) ?? '', /70 in all$/);

  for (const width of [390, 1280]) {
    await page.setViewportSize({ width, height: 844 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${width}px: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${width}px: text under 12 px`);
    const box = await page.locator('#usage-chart').boundingBox();
    const last = await page.locator('#usage-chart .bar').last().boundingBox();
    assert.ok(box && last && last.x + last.width <= box.x + box.width + 0.5, `${width}px: every bar inside the chart`);
    assert.ok(last.width >= 3, `${width}px: a bar is wide enough to see (${last.width}px)`);
  }
});
