// ./scripts/prices: provider prices against the pinned catalogue (supabase/functions/admin/
// provider-catalogue.ts). Reads the routed models and their provider prices from the database,
// prints the comparison; --write records the changed and missing ones as new versions
// (billing.record_provider_prices), --drafts drafts rate cards at a markup through the drafts path
// (billing.draft_rate_card, audited under an admin) and prints each draft's dry run's margins.
// The table and notes go to stderr, --json to stdout.
import postgres from 'postgres';
import { parseArgs } from 'node:util';
import {
  catalogueSource,
  compareRoutes,
  type Comparison,
  type DraftCard,
  proposeDraft,
  type Route,
  type TokenPrices,
} from '../../supabase/functions/admin/provider-catalogue.ts';

const { values: opts } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: 'string' },
    write: { type: 'boolean', default: false },
    drafts: { type: 'boolean', default: false },
    markup: { type: 'string' },
    admin: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});

const dbUrl = Deno.env.get('SUPABASE_DB_URL');
if (!dbUrl) {
  console.error('SUPABASE_DB_URL is not set: the database whose provider prices to compare');
  Deno.exit(1);
}
const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
const say = (line = '') => console.error(line);

/** A price list as one cell: input / cached input / output / 5-minute write / hour-long write ('–': the default). */
const cell = (p: TokenPrices | null) =>
  p === null ? 'none' : [
    p.usd_per_million_input,
    p.usd_per_million_cached_input,
    p.usd_per_million_output,
    p.usd_per_million_cache_write,
    p.usd_per_million_cache_write_1h,
  ].map((v) => v ?? '–').join(' / ');

const verdictSays = {
  same: 'same',
  changed: 'CHANGED',
  missing: 'MISSING: margin unknown',
  unknown: 'not in the catalogue: unknown, never $0',
} as const;

function printTable(rows: Comparison[]) {
  const table = [
    ['model', 'upstream', 'tables (USD per million: in / cached / out / write 5m / write 1h)', `catalogue`, ''],
    ...rows.map((r) => [
      r.model,
      r.upstream,
      cell(r.provider_price) + (r.provider_price ? ` (v${r.provider_price.version})` : ''),
      r.catalogue ? cell(r.catalogue) + (r.catalogue.tiered ? ' (base tier)' : '') : 'unknown',
      verdictSays[r.verdict],
    ]),
  ];
  const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
  say(`Provider prices against ${catalogueSource} ('–': the input price)`);
  for (const row of table) say(row.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd());
}

type Written = { model: string; upstream: string; version: number; written: boolean };
type Drafted = {
  draft_id: string;
  model: string;
  upstream: string;
  markup: string;
  margins: {
    cost_usd: string | null;
    before: { revenue_usd: string; margin_percent: string | null };
    after: { revenue_usd: string; margin_percent: string | null };
  };
};

async function write(rows: Comparison[]): Promise<Written[]> {
  const prices = rows.filter((r) => r.verdict === 'changed' || r.verdict === 'missing').map((r) => ({
    model: r.model,
    upstream: r.upstream,
    usd_per_million_input: r.catalogue!.usd_per_million_input,
    usd_per_million_cached_input: r.catalogue!.usd_per_million_cached_input,
    usd_per_million_output: r.catalogue!.usd_per_million_output,
    usd_per_million_cache_write: r.catalogue!.usd_per_million_cache_write,
    usd_per_million_cache_write_1h: r.catalogue!.usd_per_million_cache_write_1h,
    source_url: r.catalogue!.source_url ? `${r.catalogue!.source_url} (${catalogueSource})` : catalogueSource,
  }));
  if (!prices.length) return [];
  const [{ written }] = await sql<{ written: Written[] }[]>`
    select billing.record_provider_prices(${sql.json(prices)}::jsonb) as written`;
  return written;
}

async function draft(rows: Comparison[], markup: string, admin: string): Promise<Drafted[]> {
  const cards = rows.map((r) => proposeDraft(r, markup)).filter((c): c is DraftCard => c !== null);
  if (!cards.length) return [];
  const reason = `catalogue prices (${catalogueSource}) at markup ${markup}: ./scripts/prices --drafts`;
  return await sql.begin(async (tx) => {
    await tx`select billing.assert_user_standing(${admin}::uuid, true)`;
    const out: Drafted[] = [];
    for (const card of cards) {
      const [{ d }] = await tx<{ d: { id: string } }[]>`
        select billing.draft_rate_card(${admin}::uuid, ${tx.json(card)}::jsonb, ${reason}) as d`;
      const [{ s }] = await tx<{ s: { margins: Drafted['margins'] } }[]>`
        select billing.simulate_rate_card(${d.id}::uuid, now() - interval '30 days', now()) as s`;
      out.push({ draft_id: d.id, model: card.model, upstream: card.upstream, markup, margins: s.margins });
    }
    return out;
  });
}

const percent = (p: string | null) => (p === null ? 'unknown' : `${p}%`);

try {
  const [{ routes }] = await sql<{ routes: Route[] }[]>`select billing.provider_price_routes() as routes`;
  const rows = compareRoutes(routes.filter((r) => opts.model === undefined || r.model === opts.model));
  if (opts.model !== undefined && rows.length === 0) {
    say(`no routed model named ${opts.model} (no rate card in effect)`);
    Deno.exit(1);
  }
  printTable(rows);
  const written = opts.write ? await write(rows) : [];
  for (const w of written) {
    say(`${w.model} at ${w.upstream}: ${w.written ? `wrote version ${w.version}, from now` : 'unchanged'}`);
  }
  if (!opts.write && rows.some((r) => r.verdict === 'changed' || r.verdict === 'missing')) {
    say('Nothing written: --write records the catalogue prices above as new provider_prices versions.');
  }
  const drafted = opts.drafts ? await draft(rows, opts.markup!, opts.admin!) : [];
  for (const d of drafted) {
    say(
      `draft ${d.draft_id}: ${d.model} at ${d.upstream}, markup ${d.markup}; dry run, last 30 days: margin ` +
        `${percent(d.margins.before.margin_percent)} before, ${percent(d.margins.after.margin_percent)} after` +
        (d.margins.cost_usd === null ? ' (no provider price: --write first)' : ` (cost $${d.margins.cost_usd})`),
    );
  }
  if (opts.drafts && !drafted.length) {
    say(`No draft: every card already sells at the catalogue's prices × ${opts.markup}.`);
  }
  if (drafted.length) say('Each draft prices nothing until published: POST /admin/rate-cards/drafts/:id/publish.');
  if (opts.json) console.log(JSON.stringify({ source: catalogueSource, rows, written, drafted }, null, 2));
} finally {
  await sql.end();
}
