// The dashboard's Margins and Corrections sections in Chromium against the local stack: two
// models charged through POST /credits/usage, one sold under its provider cost; the page shows
// each model's revenue, cost and margin as GET /admin/margins answers them, marks the one under
// the margin_low threshold, shows a model without a provider price as unknown with the pinned
// catalogue's price beside it, lists the latest correction runs a page at a time, and reads at
// desktop and phone width. Screenshots go to artifacts/.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { adminToken, api, env, fund, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { key } from '../support/orgs.ts';
import { cataloguePrice } from '../../supabase/functions/admin/provider-catalogue.ts';

const dashboard = `${env('SUPABASE_URL')}/functions/v1/admin/dashboard`;
const artifacts = new URL('../../artifacts/', import.meta.url);
const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);

/**
 * Two models: `low` sold at 1.2 × 1 USD a million tokens but costing 2; `fine` at 3 × 1, costing 1;
 * and `unpriced`, served by Anthropic with no provider price (the catalogue knows claude-3-haiku…).
 */
async function plant(suffix: string) {
  const low = `dash-low-${suffix}`, fine = `dash-fine-${suffix}`, unpriced = `claude-3-haiku-dash-${suffix}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${unpriced}, 1, 1, 1, 2, now() - interval '1 hour', 'anthropic')`;
  for (const [model, markup, cost] of [[low, '1.2', '2'], [fine, '3', '1']]) {
    await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
      values (${model}, 1, 1, 1, ${markup}, now() - interval '1 hour')`;
    await testDb`insert into billing.provider_prices (model, version, usd_per_million_input, usd_per_million_output, effective_from)
      values (${model}, 1, ${cost}, ${cost}, now() - interval '1 hour')`;
  }
  const user = await newUser();
  await fund(user, '10000');
  const token = await userToken(user);
  for (const model of [low, fine, unpriced]) {
    const r = await reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model, input_tokens: 100_000, output_tokens: 100_000 },
    });
    assert.equal(r.status, 201, r.text);
  }
  return { low, fine, unpriced };
}

async function signIn(page: Page, token: string) {
  await page.goto(dashboard);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

const rowText = async (page: Page, model: string) =>
  ((await page.locator(`#margins tr[data-model="${model}"]`).textContent()) ?? '').trim();

browserTest('margins per model, the low one marked, and correction runs, on a desktop and a phone', async (browser) => {
  const { low, fine, unpriced } = await plant(crypto.randomUUID().slice(0, 8));
  const admin = await adminToken();
  for (let i = 0; i < 11; i++) { // more than a page of runs
    const run = await api('/admin/corrections', {
      token: admin,
      headers: key(),
      body: { model: low, from: '2026-01-01T00:00:00Z', to: '2026-01-02T00:00:00Z', reason: `margins page ${i}` },
    });
    assert.equal(run.status, 201, run.text);
  }
  const report = (await api(`/admin/margins?by=model&from=${day(-29)}&to=${day(1)}`, { token: admin })).body.data as {
    alert_below_percent: string;
    groups: { key: string; revenue_usd: string; cost_usd: string; margin_percent: string }[];
  };
  const group = (model: string) => report.groups.find((g) => g.key === model);
  // 200,000 tokens: sold for 0.24 and 0.6 USD, costing 0.4 and 0.2.
  assert.deepEqual([group(low)?.revenue_usd, group(low)?.cost_usd, group(low)?.margin_percent], [
    '0.24',
    '0.4',
    '-66.67',
  ]);
  assert.deepEqual([group(fine)?.revenue_usd, group(fine)?.cost_usd, group(fine)?.margin_percent], [
    '0.6',
    '0.2',
    '66.67',
  ]);

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, admin);
  await page.locator('#margins table').waitFor();
  assert.equal(await rowText(page, low), `${low}$0.24$0.40-66.67% low`, 'revenue, cost, margin, marked low');
  assert.equal(await rowText(page, fine), `${fine}$0.60$0.20${'66.67'}%`, 'a healthy model is not marked');
  assert.equal(await page.locator(`#margins tr[data-model="${low}"]`).getAttribute('data-low'), 'true');
  const catalogue = cataloguePrice(unpriced, 'anthropic')!;
  await page.locator(`#margins [data-catalogue="${unpriced}"]`).waitFor();
  assert.equal(
    await rowText(page, unpriced),
    `${unpriced}$0.40unknown catalogue: $${catalogue.usd_per_million_input} in, $${catalogue.usd_per_million_output} ` +
      'out per M tokens at anthropicunknown',
    'no provider price: cost and margin unknown, the catalogue figure beside them',
  );
  assert.match(
    await page.locator('#margins').textContent() ?? '',
    new RegExp(`Alert below ${report.alert_below_percent}%`),
  );

  // Corrections: the newest run first, ten a page, then the older ones.
  await page.locator('#corrections table').waitFor();
  const first = (await page.locator('#corrections tr[data-run]').first().textContent()) ?? '';
  assert.match(first, new RegExp(`${low}.*margins page 10.*completed.*0`), first);
  assert.equal(await page.locator('#corrections tr[data-run]').count(), 10);
  await page.locator('#corrections-more').click();
  await page.waitForFunction(() => document.querySelectorAll('#corrections tr[data-run]').length > 10);
  assert.match((await page.locator('#corrections').textContent()) ?? '', /margins page 0/, 'the older page follows');

  for (const [width, name] of [[1280, 'dashboard-margins-desktop'], [390, 'dashboard-margins-phone']] as const) {
    await page.setViewportSize({ width, height: 900 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${name}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${name}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${name}: text cut off`);
    await page.locator('#margins').screenshot({ path: new URL(`${name}.png`, artifacts).pathname });
  }
});
