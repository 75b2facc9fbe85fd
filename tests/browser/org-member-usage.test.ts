// The organisation view's per-member usage in Chromium against the local stack: an owner opens
// a member's line and reads what the school paid for them over the last 30 days (credits,
// requests, the model, a bar a day, the allowance's runway), the same as
// GET /orgs/:id/members/:user_id/usage/summary; a member who spent nothing says so; nothing is
// fetched for a line not opened; it reads at phone width.
import assert from 'node:assert/strict';
import { browserTest, legibility } from '../support/browser.ts';
import { api, env } from '../support/helpers.ts';
import { key, person, school, usage } from '../support/orgs.ts';
import { memberUsageWords } from '../../examples/student/member-usage.ts';
import type { UsageSummary } from '../../supabase/functions/_shared/contract/index.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const apiBase = env('SUPABASE_URL');
const artifacts = new URL('../../artifacts/', import.meta.url);

browserTest("an owner reads each member's usage of the school's credits, on a desktop and a phone", async (browser) => {
  const [owner, ada, bo] = await Promise.all([person('mu-owner'), person('mu-ada'), person('mu-bo')]);
  const org = await school(owner, [ada, bo], 'allowance', '100');
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '20' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  for (let i = 0; i < 2; i++) assert.equal((await usage(ada.token)).status, 201);
  const summary = (await api(`/orgs/${org}/members/${ada.id}/usage/summary`, { token: owner.token })).body
    .data as unknown as UsageSummary;
  assert.equal(summary.totals.requests, 2);
  assert.ok(summary.runway, 'an allowance spent today has a pace');

  const page = await browser.newPage({ viewport: { width: 1280, height: 844 } });
  const asked: string[] = [];
  page.on('request', (r) => r.url().includes('/usage/summary') && asked.push(new URL(r.url()).pathname));
  await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}`);
  await page.locator('#token').fill(owner.token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
  const part = page.locator(`[data-org="${org}"] [data-testid="member-usage"]`);
  await part.waitFor();
  assert.deepEqual(await part.locator('summary').allTextContents(), [owner.email, ada.email, bo.email]);
  assert.equal(asked.filter((p) => p.includes(`/orgs/${org}/`)).length, 0, 'nothing fetched until a line is opened');

  const line = part.locator(`details[data-member="${ada.id}"]`);
  await line.locator('summary').click();
  await line.locator('[data-loaded="true"], .bars.mini').first().waitFor();
  await page.locator(`details[data-member="${ada.id}"][data-loaded="true"]`).waitFor();
  const words = memberUsageWords(summary);
  assert.match(words[0], /^[\d.,]+ credits, 2 requests$/);
  assert.match(words[1], /^gpt-4o-mini: /);
  assert.match(words[2], /^Their allowance lasts about \d+ days? at this pace\.$/);
  assert.deepEqual((await line.locator('p').allTextContents()).map((t) => t.trim()), words, 'the API summary in words');
  const heights = await line.locator('.bars.mini .bar').evaluateAll((bars) =>
    bars.map((b) => (b as HTMLElement).style.height)
  );
  assert.equal(heights.length, 30, 'a bar a day');
  assert.equal(heights.at(-1), '100%', "today's bar is the tallest");

  const quiet = part.locator(`details[data-member="${bo.id}"]`);
  await quiet.locator('summary').click();
  await page.locator(`details[data-member="${bo.id}"][data-loaded="true"]`).waitFor();
  assert.equal((await quiet.locator('p').textContent())?.trim(), 'Nothing paid for in the last 30 days.');
  assert.equal(await quiet.locator('.bars').count(), 0, 'no empty chart');
  assert.equal(asked.filter((p) => p.includes(`/orgs/${org}/`)).length, 2, 'one summary per opened line');

  for (const [width, label] of [[1280, 'desktop'], [390, 'phone']] as const) {
    await page.setViewportSize({ width, height: 844 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${label}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${label}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${label}: text cut off`);
    await part.screenshot({ path: new URL(`org-member-usage-${label}.png`, artifacts).pathname });
  }
});
