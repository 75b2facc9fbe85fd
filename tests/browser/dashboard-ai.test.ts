// The dashboard's AI calls section in Chromium against the local stack: a student calls a model
// of this test's own through the gateway (whole, streamed, and once failed by the stand-in with a
// 500); the section shows that model's row with its call count and error rate, the student among
// the top spenders with the credits GET /admin/ai/stats answers, and the failure with its code,
// for the last hour and the last day, at desktop and phone width. Values the API sends are shown
// as text (a model name with markup is not run), and no call is an empty state. Screenshots go
// to artifacts/.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInToDashboard } from '../support/browser.ts';
import { ask, callsOf, settled, student } from '../support/ai.ts';
import { adminToken, api, testDb } from '../support/helpers.ts';
import { roundedCredits } from '../../examples/student/credits.ts';

const artifacts = new URL('../../artifacts/', import.meta.url);

const textOf = async (page: Page, selector: string) => ((await page.locator(selector).textContent()) ?? '').trim();

type Ms = number | null;
type ModelRow = {
  model: string;
  calls: number;
  errors: number;
  error_rate: string | null;
  credits: string;
  ttft_p50_ms: Ms;
  ttft_p95_ms: Ms;
  duration_p50_ms: Ms;
  duration_p95_ms: Ms;
};
/** A time as the panel writes it: "850 ms", "1.25 s", or a dash when there is none. */
const ms = (n: Ms) => n === null ? '–' : n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(n < 10_000 ? 2 : 1)} s`;
type Stats = {
  hour: { models: ModelRow[]; top_spenders: { user_id: string; credits: string }[] };
  day: { models: ModelRow[] };
};

browserTest(
  'the AI panel shows a model’s calls, error rate, top spender and its failure with the code',
  async (browser) => {
    // A dear model of this test's own (100 credits a token), so its row is this test's alone and
    // its spender is among the hour's top spenders, whatever else the suite spent.
    const model = `gpt-dash-${crypto.randomUUID().slice(0, 8)}`;
    await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
    values (${model}, 1, 100000, 100000, 10, now() - interval '1 minute')`;
    const s = await student('100000');
    await s.openai.chat.completions.create({ model, messages: ask('hello #standin words=5'), max_tokens: 20 });
    const stream = await s.openai.chat.completions.create({
      model,
      messages: ask('again #standin words=5 first_byte_delay=120'),
      max_tokens: 20,
      stream: true,
    });
    for await (const _ of stream) { /* read to the end */ }
    await settled(s.id);
    await assert.rejects(
      s.openai.chat.completions.create({ model, messages: ask('once more #standin fail=500'), max_tokens: 20 }),
    );
    const failed = (await callsOf(s.id)).find((c) => c.status === 'failed');
    assert.equal(failed?.failure, 'PROVIDER_ERROR_500');

    const admin = await adminToken();
    const stats = (await api('/admin/ai/stats', { token: admin })).body.data as Stats;
    const row = stats.hour.models.find((m) => m.model === model);
    assert.deepEqual([row?.calls, row?.errors, row?.error_rate], [3, 1, '0.3333']);
    const spender = stats.hour.top_spenders.find((t) => t.user_id === s.id);
    assert.ok(spender, 'the student is among the top spenders');
    assert.equal(spender.credits, row?.credits, 'all they spent was on this model');

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await signInToDashboard(page, admin);
    await page.locator('#ai table[data-testid="ai-models"]').waitFor();
    assert.equal(await page.locator('#ai-hour').getAttribute('aria-pressed'), 'true', 'the last hour is shown first');
    const modelRow = `#ai tr[data-model="${model}"]`;
    assert.equal(await page.locator(`${modelRow} td[data-calls]`).getAttribute('data-calls'), '3');
    assert.equal(
      await textOf(page, modelRow),
      `${model}32 charged, 1 failed33.3%1 error${ms(row!.ttft_p50_ms)} / ${ms(row!.ttft_p95_ms)}` +
        `${ms(row!.duration_p50_ms)} / ${ms(row!.duration_p95_ms)}${roundedCredits(row!.credits)}`,
      'calls by outcome, error rate, time to first token and duration (p50 / p95), credits rounded for reading',
    );
    assert.notEqual(row!.ttft_p50_ms, null, 'the streamed call measured its first token');
    assert.equal(
      await textOf(page, `#ai tr[data-user="${s.id}"]`),
      `${s.id}2${roundedCredits(spender.credits)}`,
      'the top spender: user id, charged calls, credits',
    );
    const failure = `#ai tr[data-call="${failed!.id}"]`;
    assert.match(await textOf(page, failure), new RegExp(`${model}\\s*chat\\s*PROVIDER_ERROR_500\\s*openai 500$`));

    await page.locator('#ai-day').click();
    await page.waitForFunction(() => document.getElementById('ai-day')?.getAttribute('aria-pressed') === 'true');
    assert.equal(await page.locator(`${modelRow} td[data-calls]`).getAttribute('data-calls'), '3', 'the last day too');
    await page.locator(failure).waitFor();

    await assertReadable(page, 'the AI panel');
    await page.locator('#ai').screenshot({ path: new URL('dashboard-ai-phone.png', artifacts).pathname });
  },
);

browserTest('the AI panel says when there were no calls, and shows what the API sends as text', async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const none = {
    since: '2026-01-01T00:00:00Z',
    models: [],
    by_outcome: [],
    top_spenders: [],
    refusals: [],
    latest_failures: [],
    latest_fallbacks: [],
  };
  const marked = '<img src=x onerror="document.body.dataset.pwned=1">';
  let answer: unknown = { hour: none, day: none };
  await page.route('**/admin/ai/stats', (route) => route.fulfill({ json: { data: answer } }));
  await signInToDashboard(page, await adminToken());
  await page.locator('#ai', { hasText: 'No AI calls in the last hour.' }).waitFor();
  await page.locator('#ai-day').click();
  await page.locator('#ai', { hasText: 'No AI calls in the last day.' }).waitFor();

  const figures = {
    model: marked,
    calls: 1,
    charged: 0,
    failed: 1,
    refused: 0,
    errors: 1,
    error_rate: '1',
    ttft_p50_ms: null,
    ttft_p95_ms: null,
    duration_p50_ms: 1500,
    duration_p95_ms: 1500,
    credits: '0',
  };
  const failure = {
    id: marked,
    created_at: '2026-01-01T00:00:00Z',
    model: marked,
    endpoint: 'chat',
    outcome: 'failed',
    code: marked,
    upstream_status: null,
    upstream: null,
    attempts: null,
  };
  const fallback = {
    id: 'f1',
    created_at: '2026-01-01T00:01:00Z',
    model: 'gpt-4o-mini',
    endpoint: 'chat',
    outcome: 'charged',
    upstream: 'backup',
    attempts: [{ upstream: 'openai', failure: 'PROVIDER_ERROR_500', status: 500, ms: 12 }, {
      upstream: marked,
      failure: 'PROVIDER_TIMEOUT',
      status: null,
      ms: 1000,
    }],
  };
  const refusals = [{ code: 'VALIDATION_FAILED', calls: 3 }, { code: marked, calls: 1 }];
  answer = {
    hour: none,
    day: { ...none, models: [figures], refusals, latest_failures: [failure], latest_fallbacks: [fallback] },
  };
  await page.locator('#ai-hour').click();
  await page.locator('#ai-day').click();
  await page.locator('#ai table[data-testid="ai-failures"]').waitFor();
  assert.equal(await page.locator('#ai img').count(), 0, 'no markup from the API is run');
  assert.equal(await page.evaluate('document.body.dataset.pwned ?? null'), null);
  assert.match(
    await textOf(page, '#ai table[data-testid="ai-models"]'),
    /<img src=x.*100%.*– \/ –.*1\.50 s \/ 1\.50 s/s,
  );
  assert.match(await textOf(page, '#ai'), /No call was charged\./);
  assert.equal(
    await textOf(page, '#ai table[data-testid="ai-refusals"]'),
    `CodeCallsVALIDATION_FAILED3${marked}1`,
    'refusals split by code, most first, the code shown as text',
  );
  assert.equal(
    await textOf(page, '#ai table[data-testid="ai-fallbacks"]'),
    `When (UTC)ModelAnswered byFailed before2026-01-01 00:01gpt-4o-minichatbackupchargedopenai PROVIDER_ERROR_500${marked} PROVIDER_TIMEOUT`,
    'a call that moved on says who answered and what failed before it, as text',
  );
});
