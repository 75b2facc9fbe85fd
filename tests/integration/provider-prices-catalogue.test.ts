// ./scripts/prices against the local stack: provider prices keyed by model and upstream, compared
// with the pinned catalogue (@pydantic/genai-prices). A price the provider changed is shown, the
// operator's --write records it as a new version (once), --drafts proposes a card at a markup whose
// dry run shows the margins before and after, and a model the catalogue does not know is unknown,
// never $0. Expected prices are read from the package at test time, not typed here.
// (docs/pricing.md § Provider prices from the catalogue)
import assert from 'node:assert/strict';
import { adminToken, api, fund, newAdmin, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { key } from '../support/orgs.ts';
import { cataloguePrice, type Comparison, times } from '../../supabase/functions/admin/provider-catalogue.ts';

const root = new URL('../../', import.meta.url).pathname;

type Output = {
  source: string;
  rows: Comparison[];
  written: { model: string; upstream: string; version: number; written: boolean }[];
  drafted: { draft_id: string; model: string; markup: string }[];
};

async function prices(...args: string[]): Promise<Output & { table: string }> {
  const out = await new Deno.Command(`${root}scripts/prices`, {
    args: [...args, '--json'],
    stdin: 'null',
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  return { ...JSON.parse(new TextDecoder().decode(out.stdout)), table: stderr };
}

/** A model the catalogue prices by its prefix (claude-3-haiku…), new to this run, served by Anthropic. */
const haiku = () => `claude-3-haiku-t${crypto.randomUUID().slice(0, 8)}`;

Deno.test('a provider price the catalogue changed becomes a new version on --write and a draft whose dry run shows margins before and after', async () => {
  const model = haiku();
  const catalogue = cataloguePrice(model, 'anthropic');
  assert.ok(catalogue, 'the pinned catalogue prices claude-3-haiku at anthropic');
  // What the provider charged before it doubled its prices: half the catalogue's, every kind.
  const half = (v: string | null) => (v === null ? null : times(v, '0.5'));
  const old = {
    input: half(catalogue.usd_per_million_input)!,
    cached: half(catalogue.usd_per_million_cached_input),
    output: half(catalogue.usd_per_million_output)!,
    write: half(catalogue.usd_per_million_cache_write),
    write1h: half(catalogue.usd_per_million_cache_write_1h),
  };
  // The card was set at those prices × 2: at the old cost, a 50% margin.
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_cached_input,
    usd_per_million_output, usd_per_million_cache_write, usd_per_million_cache_write_1h, markup, effective_from, upstream)
    values (${model}, 1, ${old.input}, ${old.cached}, ${old.output}, ${old.write}, ${old.write1h}, 2,
      now() - interval '1 hour', 'anthropic')`;
  await testDb`insert into billing.provider_prices (model, upstream, version, usd_per_million_input,
    usd_per_million_cached_input, usd_per_million_output, usd_per_million_cache_write, usd_per_million_cache_write_1h,
    effective_from) values (${model}, 'anthropic', 1, ${old.input}, ${old.cached}, ${old.output}, ${old.write},
      ${old.write1h}, now() - interval '1 hour')`;
  const user = await newUser();
  await fund(user, '1000');
  const charged = await reportUsage('/credits/usage', {
    token: await userToken(user),
    headers: key(),
    body: { model, input_tokens: 200_000, output_tokens: 40_000 },
  });
  assert.equal(charged.status, 201, charged.text);

  // The comparison: the tables' old price against the catalogue's.
  const shown = await prices('--model', model);
  assert.match(shown.source, /^@pydantic\/genai-prices@\d/);
  const [row] = shown.rows;
  assert.deepEqual([row.model, row.upstream, row.verdict], [model, 'anthropic', 'changed']);
  assert.equal(row.provider_price?.usd_per_million_input, old.input);
  assert.equal(row.catalogue?.usd_per_million_input, catalogue.usd_per_million_input);
  assert.match(shown.table, new RegExp(`${model}\\s+anthropic\\s+.*CHANGED`));
  assert.deepEqual(shown.written, [], 'nothing is written without --write');

  // --write: the catalogue's price as version 2, from now; again, nothing more.
  const wrote = await prices('--model', model, '--write');
  assert.deepEqual(wrote.written, [{ model, upstream: 'anthropic', version: 2, written: true }]);
  const [v2] = await testDb`select usd_per_million_input::text as input, usd_per_million_output::text as output,
      usd_per_million_cache_write_1h::text as write1h, effective_from <= now() as live, source_url
    from billing.provider_prices where model = ${model} and upstream = 'anthropic' and version = 2`;
  assert.equal(Number(v2.input), Number(catalogue.usd_per_million_input));
  assert.equal(Number(v2.output), Number(catalogue.usd_per_million_output));
  assert.equal(v2.write1h === null, catalogue.usd_per_million_cache_write_1h === null);
  assert.ok(v2.live);
  assert.match(String(v2.source_url), /@pydantic\/genai-prices@/);
  const again = await prices('--model', model, '--write');
  assert.equal(again.rows[0].verdict, 'same');
  assert.deepEqual(again.written, [], 'the same price again writes nothing');

  // --drafts at markup 3: a draft at the catalogue's prices, nothing published.
  const admin = await newAdmin();
  const drafted = await prices('--model', model, '--drafts', '--markup', '3', '--admin', admin);
  assert.equal(drafted.drafted.length, 1);
  const [{ draft_id }] = drafted.drafted;
  const [card] = await testDb`select count(*)::int as versions from billing.rate_cards where model = ${model}`;
  assert.equal(card.versions, 1, 'a draft prices nothing until published');
  const [audit] = await testDb`select admin_id, reason from billing.rate_card_changes where draft_id = ${draft_id}`;
  assert.equal(audit.admin_id, admin);
  assert.match(audit.reason, /catalogue prices .* at markup 3/);

  // Today's dry run: before, the old card earns nothing at the new cost; the draft earns 2/3.
  const from = new Date(Date.now() - 3_600_000).toISOString(), to = new Date(Date.now() + 60_000).toISOString();
  const sim = await api(`/admin/rate-cards/drafts/${draft_id}/simulation?from=${from}&to=${to}`, {
    token: await adminToken(),
  });
  assert.equal(sim.status, 200, sim.text);
  const { draft, margins } = sim.body.data as {
    draft: { usd_per_million_input: string; markup: string; upstream: string };
    margins: {
      provider_price: { version: number; upstream: string } | null;
      cost_usd: string | null;
      before: { revenue_usd: string; margin_usd: string | null; margin_percent: string | null };
      after: { revenue_usd: string; margin_usd: string | null; margin_percent: string | null };
    };
  };
  assert.deepEqual([Number(draft.usd_per_million_input), draft.markup, draft.upstream], [
    Number(catalogue.usd_per_million_input),
    '3',
    'anthropic',
  ]);
  assert.deepEqual([margins.provider_price?.version, margins.provider_price?.upstream], [2, 'anthropic']);
  const cost = (200_000 * Number(catalogue.usd_per_million_input) + 40_000 * Number(catalogue.usd_per_million_output)) /
    1e6;
  assert.ok(Math.abs(Number(margins.cost_usd) - cost) < 1e-12, `cost ${margins.cost_usd}, expected ${cost}`);
  assert.deepEqual([margins.before.revenue_usd, margins.before.margin_percent, margins.before.margin_usd], [
    margins.cost_usd,
    '0',
    '0',
  ]);
  assert.deepEqual([margins.after.revenue_usd, margins.after.margin_percent], [times(margins.cost_usd!, '3'), '66.67']);
});

Deno.test('a routed model the catalogue does not know is unknown, never $0, and --write writes nothing for it', async () => {
  const model = `catalogue-unknown-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 2, 2, now() - interval '1 minute')`;
  const out = await prices('--model', model, '--write');
  const [row] = out.rows;
  assert.deepEqual([row.verdict, row.catalogue, row.provider_price], ['unknown', null, null]);
  assert.match(out.table, /not in the catalogue: unknown, never \$0/);
  assert.deepEqual(out.written, []);
  const [{ n }] = await testDb`select count(*)::int as n from billing.provider_prices where model = ${model}`;
  assert.equal(n, 0, 'no provider price is made up');
  const admin = await newAdmin();
  assert.deepEqual((await prices('--model', model, '--drafts', '--markup', '2', '--admin', admin)).drafted, []);
});

Deno.test('a routed model without a provider price is missing: its margin unknown, the catalogue figure beside it', async () => {
  const model = haiku();
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${model}, 1, 1, 5, 2, now() - interval '1 minute', 'anthropic')`;
  const catalogue = cataloguePrice(model, 'anthropic')!;
  const shown = await prices('--model', model);
  assert.equal(shown.rows[0].verdict, 'missing');
  const r = await api('/admin/provider-prices', { token: await adminToken() });
  assert.equal(r.status, 200, r.text);
  const listed = (r.body.data as { models: Comparison[] }).models.find((m) => m.model === model);
  assert.deepEqual(
    [listed?.verdict, listed?.provider_price, listed?.catalogue?.usd_per_million_output],
    ['missing', null, catalogue.usd_per_million_output],
  );
});

Deno.test('a provider price at another upstream does not cost a model served elsewhere', async () => {
  const model = `upstream-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${model}, 1, 1, 1, 2, now() - interval '1 minute', 'anthropic')`;
  await testDb`insert into billing.provider_prices (model, upstream, version, usd_per_million_input,
    usd_per_million_output, effective_from) values (${model}, 'openai', 1, 1, 1, now() - interval '1 minute')`;
  const user = await newUser();
  await fund(user, '100');
  const r = await reportUsage('/credits/usage', {
    token: await userToken(user),
    headers: key(),
    body: { model, input_tokens: 1000, output_tokens: 1000 },
  });
  assert.equal(r.status, 201, r.text);
  const margins = await api('/admin/margins?by=model', { token: await adminToken() });
  const row = (margins.body.data as { groups: { key: string; cost_usd: string | null; uncosted_credits: string }[] })
    .groups.find((g) => g.key === model);
  assert.deepEqual(
    [row?.cost_usd, row?.uncosted_credits],
    [null, '4'],
    'an openai price does not cost an anthropic call',
  );
});

Deno.test('./scripts/prices refuses --drafts without a markup or an admin, and --markup alone', async () => {
  for (
    const [args, says] of [
      [['--drafts', '--admin', crypto.randomUUID()], /--drafts needs --markup/],
      [['--drafts', '--markup', '3'], /--drafts needs --admin/],
      [['--markup', '3'], /--markup and --admin go with --drafts/],
    ] as const
  ) {
    const out = await new Deno.Command(`${root}scripts/prices`, { args: [...args], stdout: 'piped', stderr: 'piped' })
      .output();
    assert.equal(out.code, 2, args.join(' '));
    assert.match(new TextDecoder().decode(out.stderr), says);
  }
});
