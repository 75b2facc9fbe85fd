// GET /admin/margins over real HTTP: a model's revenue, provider cost and margin follow the
// charges the ledger made and the provider price in effect then (docs/pricing.md § Provider
// cost and margins), per model and per student; admins only; a bad grouping is refused.
import assert from 'node:assert/strict';
import { adminToken, api, fund, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { key } from '../support/orgs.ts';

type Margin = {
  key?: string;
  revenue_credits: string;
  revenue_usd: string;
  cost_usd: string | null;
  margin_usd: string | null;
  margin_percent: string | null;
  uncosted_credits: string;
};
type Margins = { from: string; to: string; by: string; totals: Margin; groups: Margin[]; days: Margin[] };

const admin = await adminToken();

const margins = async (query: string) => {
  const r = await api(`/admin/margins${query}`, { token: admin });
  assert.equal(r.status, 200, r.text);
  return r.body.data as unknown as Margins;
};

Deno.test('a model sold at 2/8 and bought at 1/4 per million tokens keeps 66.67% of its revenue', async () => {
  const model = `margins-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 2, 8, 1.5, now() - interval '1 minute')`;
  await testDb`insert into billing.provider_prices (model, version, usd_per_million_input, usd_per_million_output,
    effective_from) values (${model}, 1, 1, 4, now() - interval '1 minute')`;
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '100');
  for (const [input, output] of [[1000, 500], [2000, 250]]) {
    const r = await reportUsage('/credits/usage', {
      token,
      body: { model, input_tokens: input, output_tokens: output },
      headers: key(),
    });
    assert.equal(r.status, 201, r.text);
  }
  // Revenue: (3000 × 2 + 750 × 8) × 1.5 / 1000 = 18 credits = 0.018 USD; cost (3000 + 750 × 4) / 10^6.
  const expected = {
    revenue_credits: '18',
    revenue_usd: '0.018',
    cost_usd: '0.006',
    margin_usd: '0.012',
    margin_percent: '66.67',
    uncosted_credits: '0',
  };
  const byModel = await margins('?by=model');
  assert.equal(byModel.by, 'model');
  assert.equal(byModel.days.length, 30, 'the last 30 days, today included');
  assert.deepEqual(byModel.groups.find((g) => g.key === model), { key: model, ...expected });
  const byStudent = await margins('?by=student');
  assert.deepEqual(byStudent.groups.find((g) => g.key === user), { key: user, ...expected });
  const byOrg = await margins('?by=org');
  assert.equal(byOrg.groups.find((g) => g.key === user), undefined, "a student's own charges are no organisation's");
});

Deno.test('a model sold without a provider price has an unknown cost and margin, never 100%', async () => {
  const model = `margins-unpriced-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 2, 8, 1.5, now() - interval '1 minute')`;
  const user = await newUser();
  await fund(user, '100');
  const r = await reportUsage('/credits/usage', {
    token: await userToken(user),
    body: { model, input_tokens: 1000, output_tokens: 500 },
    headers: key(),
  });
  assert.equal(r.status, 201, r.text);
  const row = (await margins('?by=model')).groups.find((g) => g.key === model);
  assert.deepEqual(row, {
    key: model,
    revenue_credits: '9',
    revenue_usd: '0.009',
    cost_usd: null,
    margin_usd: null,
    margin_percent: null,
    uncosted_credits: '9',
  });
  const mine = (await margins('?by=student')).groups.find((g) => g.key === user);
  assert.equal(mine?.margin_percent, null, "the student's margin is unknown too");
});

Deno.test("the default rate card's models have provider prices, each with its source and date", async () => {
  const rows = await testDb`select distinct on (r.model) r.model, p.source_url, p.source_checked_on
    from billing.rate_cards r left join billing.provider_prices p on p.model = r.model and p.upstream = r.upstream
    where r.model in ('gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5') order by r.model, p.version desc`;
  assert.equal(rows.length, 3);
  for (const r of rows) {
    assert.match(String(r.source_url), /^https:\/\/(platform\.openai\.com|docs\.anthropic\.com)\//, r.model);
    assert.ok(r.source_checked_on instanceof Date, `${r.model} has the day its price was read`);
  }
});

Deno.test('GET /admin/margins refuses a bad grouping or range with 400 VALIDATION_FAILED', async () => {
  for (const query of ['?by=school', '?from=2026-02-01&to=2026-01-01', '?from=2024-01-01&to=2026-01-01']) {
    const r = await api(`/admin/margins${query}`, { token: admin });
    assert.equal(r.status, 400, query);
    assert.equal((r.body.error as { code: string }).code, 'VALIDATION_FAILED', query);
  }
});

Deno.test('GET /admin/margins: 401 without a token, 403 for a signed-in non-admin', async () => {
  assert.equal((await api('/admin/margins')).status, 401);
  assert.equal((await api('/admin/margins', { token: await userToken(await newUser()) })).status, 403);
});
