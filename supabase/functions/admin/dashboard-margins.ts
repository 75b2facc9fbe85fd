// The dashboard's Margins and Corrections sections: their HTML, style and script, joined into
// dashboard-page.ts's one <style>/<script> (so they carry its CSP nonce). The script is a section
// of dashboard-script.ts's kind: it runs after the page's own, with its helpers.
//   Margins: per model over the range, GET ./margins (revenue, provider cost, margin %), the
//     models under the margin_low alert's threshold marked; "unknown" where some revenue had no
//     provider price (never a made-up 100%), with the pinned catalogue's price for the model at
//     its upstream beside it (GET ./provider-prices; "not in the catalogue" when it has none).
//   Corrections: the latest bulk correction runs, GET ./corrections, a page at a time.
/// <reference lib="dom" />
import type { DashboardKit } from './dashboard-script.ts';

export const marginsStyle = `
.low { font-weight: 650; }
.badge {
  display: inline-block;
  font-size: .8rem;
  padding: 0 .35rem;
  border-radius: .3rem;
  background: #fde8e8;
  color: #8a1c1c;
  margin-left: .3rem;
}
.more { margin-top: .5rem; }
#corrections td, #margins td { overflow-wrap: anywhere; }
.catalogue { display: block; font-size: .8rem; }
`;

export const marginsSections = `
  <section><h2>Margins by model</h2><div id="margins" data-testid="margins"></div></section>
  <section><h2>Corrections</h2><div id="corrections" data-testid="corrections"></div>
    <button id="corrections-more" class="more" hidden>Older runs</button></section>`;

type Margin = { key: string; revenue_usd: string; cost_usd: string | null; margin_percent: string | null };
type MarginReport = { alert_below_percent: string | null; groups: Margin[]; totals: Margin };
type CatalogueRow = {
  model: string;
  upstream: string;
  catalogue: { usd_per_million_input: string; usd_per_million_output: string } | null;
};
type CorrectionRun = {
  id: string;
  model: string;
  from: string;
  to: string;
  failed_only: boolean;
  reason: string;
  status: string;
  created_at: string;
  voided: number;
  credits: string;
};

/** Fills the Margins and Corrections sections (served as text: everything it uses is inside). */
export function marginsScript({ $, get, esc, credits, fmtInt, empty }: DashboardKit): void {
  // USD for reading: 2 decimals from the exact string (no float), "< $0.01" when tiny.
  const usd = (s: string) => {
    const r = credits(s), neg = r.startsWith('-'), abs = neg ? r.slice(1) : r;
    if (abs === 'less than 0.01') return '< $0.01';
    return (neg ? '−$' : '$') + (/\.\d$/.test(abs) ? abs + '0' : /\./.test(abs) ? abs : abs + '.00');
  };
  const below = (row: Margin, limit: string | null) =>
    row.margin_percent !== null && limit !== null && Number(row.margin_percent) < Number(limit);
  const range = () => 'from=' + $<HTMLInputElement>('from').value + '&to=' + $<HTMLInputElement>('to').value;

  // Beside an unknown margin: what the catalogue says the model costs at its upstream.
  const catalogueNote = (model: string, catalogue: Map<string, CatalogueRow> | null) => {
    const row = catalogue?.get(model);
    if (!row) return '';
    return ' <span class="muted catalogue" data-catalogue="' + esc(model) + '">' +
      (row.catalogue
        ? 'catalogue: $' + esc(row.catalogue.usd_per_million_input) + ' in, $' +
          esc(row.catalogue.usd_per_million_output) + ' out per M tokens at ' + esc(row.upstream)
        : 'not in the catalogue') +
      '</span>';
  };

  function renderMargins(report: MarginReport, catalogue: Map<string, CatalogueRow> | null) {
    if (report.groups.length === 0) {
      $('margins').innerHTML = empty;
      return;
    }
    const unknown = '<span class="muted" title="no provider price for some of this revenue">unknown</span>';
    const cell = (row: Margin, low: boolean) =>
      '<td class="nowrap">' + usd(row.revenue_usd) + '</td><td>' +
      (row.cost_usd === null ? unknown + catalogueNote(row.key, catalogue) : usd(row.cost_usd)) + '</td><td' +
      (low ? ' class="bad low"' : '') +
      '><span class="nowrap">' +
      (row.cost_usd === null ? unknown : row.margin_percent === null ? '–' : esc(row.margin_percent) + '%') +
      '</span>' +
      (low ? ' <span class="badge">low</span>' : '') + '</td>';
    $('margins').innerHTML = '<p class="muted">Alert below ' + esc(report.alert_below_percent ?? '–') +
      '% (on a closed day).</p>' +
      '<div class="cards"><table><tr><th>Model</th><th>Revenue</th><th>Provider cost</th><th>Margin</th></tr>' +
      report.groups.map((g) => {
        const low = below(g, report.alert_below_percent);
        return '<tr data-model="' + esc(g.key) + '" data-low="' + low + '"><td>' + esc(g.key) + '</td>' + cell(g, low) +
          '</tr>';
      }).join('') + '<tr data-model=""><th>All</th>' + cell(report.totals, false) + '</tr></table></div>';
  }

  async function loadMargins() {
    try {
      const [report, prices] = await Promise.all([
        get<{ data: MarginReport }>('./margins?by=model&' + range()),
        // The catalogue is a help, not the report: the margins show without it.
        get<{ data: { models: CatalogueRow[] } }>('./provider-prices').catch(() => null),
      ]);
      renderMargins(report.data, prices && new Map(prices.data.models.map((m) => [m.model, m])));
    } catch (e) {
      $('margins').innerHTML = '<p class="bad">' + esc((e as Error).message || e) + '</p>';
    }
  }

  let correctionsCursor: string | null = null;
  const minute = (at: string) => esc(at.slice(0, 16).replace('T', ' '));
  function runRow(r: CorrectionRun) {
    const status = r.status === 'completed' ? '<span class="ok">completed</span>' : '<span class="bad">running</span>';
    return '<tr data-run="' + esc(r.id) + '"><td>' + esc(r.model) + '<br><span class="muted">' + minute(r.from) +
      ' → ' + minute(r.to) + (r.failed_only ? ', failed only' : '') + '</span><br><span class="muted">' +
      esc(r.reason) + '</span></td><td>' + status + '<br><span class="muted nowrap">' + esc(r.created_at.slice(0, 10)) +
      '</span></td><td>' + fmtInt.format(r.voided) + '</td><td class="nowrap">' + credits(r.credits) + '</td></tr>';
  }
  async function loadCorrections(more: boolean) {
    try {
      const after = more && correctionsCursor ? '&cursor=' + correctionsCursor : '';
      const page = (await get<{ data: { items: CorrectionRun[]; next_cursor: string | null } }>(
        './corrections?limit=10' + after,
      )).data;
      const rows = page.items.map(runRow).join('');
      if (!more) {
        $('corrections').innerHTML = page.items.length
          ? '<table><tr><th>Run</th><th>Status</th><th>Charges</th><th>Credits back</th></tr>' + rows + '</table>'
          : '<p class="muted">No correction runs yet.</p>';
      } else $('corrections').querySelector('table')?.insertAdjacentHTML('beforeend', rows);
      correctionsCursor = page.next_cursor;
      $('corrections-more').hidden = !correctionsCursor;
    } catch (e) {
      $('corrections').innerHTML = '<p class="bad">' + esc((e as Error).message || e) + '</p>';
    }
  }

  for (const id of ['from', 'to']) $(id).addEventListener('change', loadMargins);
  $('corrections-more').addEventListener('click', () => loadCorrections(true));
  loadMargins();
  loadCorrections(false);
}
