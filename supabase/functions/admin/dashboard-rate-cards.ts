// The dashboard's Rate cards section (docs/pricing.md): what prices now and later, the open
// drafts with their dry run over the range above, publishing and discarding (each asks why), and
// the audit. Its HTML, and its script: a section of dashboard-script.ts's kind, run with the
// page's helpers.
/// <reference lib="dom" />
import type { RateCardPrices, RateCardSimulation, RateCardsOverview } from '../_shared/contract/index.ts';
import type { DashboardKit } from './dashboard-script.ts';

export const rateCardsSections = `
  <section class="wide"><h2>Rate cards</h2><div id="rate-cards"></div>
    <form id="draft-form" class="draft-form"><label>model<input name="model" required></label>
      <label>input /M<input name="usd_per_million_input" required></label><label>cached /M<input name="usd_per_million_cached_input"></label>
      <label>output /M<input name="usd_per_million_output" required></label><label>reasoning /M<input name="usd_per_million_reasoning"></label>
      <label>image<input name="usd_per_image"></label><label>audio s<input name="usd_per_audio_second"></label>
      <label>markup<input name="markup" required></label><label>why<input name="reason" required></label><button>Draft</button></form>
    <div id="simulation"></div></section>`;

/** Fills the Rate cards section (served as text: everything it uses is inside). */
export function rateCardsScript({ $, get, send, esc, credits, fmtInt, showError }: DashboardKit): void {
  const price = (v: string | null) => v === null ? '<span class="muted">default</span>' : esc(v);
  type CardRow = RateCardPrices & { id: string; version?: number; effective_from?: string };
  function cardRows(cards: CardRow[], extra: (c: CardRow) => string) {
    return cards.map((c) =>
      '<tr><td>' + esc(c.model) + '</td><td>' + (c.version ?? '–') + '</td><td>' + price(c.usd_per_million_input) +
      '</td><td>' + price(c.usd_per_million_cached_input) + '</td><td>' + price(c.usd_per_million_output) +
      '</td><td>' +
      price(c.usd_per_million_reasoning) + '</td><td>' + price(c.usd_per_image) + '</td><td>' +
      price(c.usd_per_audio_second) + '</td><td>' + esc(c.markup) + '</td><td>' + extra(c) + '</td></tr>'
    ).join('');
  }
  const cardHead = '<tr><th>model</th><th>v</th><th>input /M</th><th>cached /M</th><th>output /M</th>' +
    '<th>reasoning /M</th><th>image</th><th>audio s</th><th>markup</th><th></th></tr>';
  const minute = (at: string) => esc(at.slice(0, 16).replace('T', ' '));
  async function loadRateCards() {
    const o = (await get<{ data: RateCardsOverview }>('./rate-cards')).data;
    $('rate-cards').innerHTML = '<div class="cards"><table>' + cardHead +
      cardRows(o.current, () => 'in effect') +
      cardRows(o.scheduled, (c) => 'from ' + minute(c.effective_from ?? '')) +
      cardRows(o.drafts, (d) =>
        '<button data-act="simulate" data-id="' + esc(d.id) + '">Dry run</button> ' +
        '<button data-act="publish" data-id="' + esc(d.id) + '">Publish</button> ' +
        '<button data-act="discard" data-id="' + esc(d.id) + '">Discard</button>') +
      '</table></div>' +
      '<h2>Changes</h2><div class="cards"><table>' +
      o.changes.slice(0, 10).map((c) =>
        '<tr><td class="nowrap">' + minute(c.at) + '</td><td>' + esc(c.action) + '</td><td>' +
        esc((c.after || c.before || {}).model) + '</td><td>' + esc(c.reason) + '</td><td class="muted">' +
        esc(c.admin_id) + '</td></tr>'
      ).join('') + '</table></div>';
  }
  // Margins before → after at today's provider price, or why they are unknown.
  const margins = (s: RateCardSimulation) => {
    const m = s.margins, pct = (p: string | null) => (p === null ? '–' : esc(p) + '%');
    if (!m.provider_price) {
      return 'Margin unknown: no provider price for ' + esc(s.draft.model) + ' at ' + esc(s.draft.upstream) +
        ' (./scripts/prices --write)';
    }
    return "Margin at today's provider price (v" + m.provider_price.version + '): ' + pct(m.before.margin_percent) +
      ' → ' + pct(m.after.margin_percent) + ' (cost $' + esc(m.cost_usd ?? '–') + ')';
  };
  function renderSimulation(s: RateCardSimulation) {
    const t = s.totals;
    const change = t.change_percent === null
      ? 'no cost before'
      : (Number(t.change_percent) > 0 ? '+' : '') + esc(t.change_percent) + '%';
    $('simulation').innerHTML = '<h2>Dry run: ' + esc(s.draft.model) + ' (nothing charged)</h2><p>' +
      fmtInt.format(t.charges) + ' charges of ' + fmtInt.format(t.students) + ' students: ' + credits(t.before) +
      ' → ' +
      credits(t.after) + ' credits (' + change + ')' +
      (t.unpriced_charges ? '; ' + fmtInt.format(t.unpriced_charges) + ' charges it cannot price' : '') +
      '</p><p id="simulation-margins">' + margins(s) + '</p><div class="cards"><table>' +
      s.distribution.buckets.map((b) =>
        '<tr><td>' + esc(b.bucket) + '</td><td>' + fmtInt.format(b.students) + '</td></tr>'
      )
        .join('') +
      '</table></div><h2>Most affected</h2><div class="cards"><table><tr><th>student</th><th>before</th><th>after</th><th>change</th></tr>' +
      s.most_affected.map((m) =>
        '<tr><td class="muted">' + esc(m.user_id) + '</td><td>' + credits(m.before) + '</td><td>' + credits(m.after) +
        '</td><td>' + credits(m.change) + '</td></tr>'
      ).join('') + '</table></div>';
  }
  async function rateCardAction(e: MouseEvent) {
    const b = (e.target as Element).closest<HTMLButtonElement>('button[data-act]');
    if (!b) return;
    const path = './rate-cards/drafts/' + encodeURIComponent(b.dataset.id ?? '');
    try {
      if (b.dataset.act === 'simulate') {
        const at = (id: string) => new Date($<HTMLInputElement>(id).value + 'T00:00:00Z').toISOString();
        const q = '/simulation?from=' + at('from') + '&to=' + at('to');
        renderSimulation((await get<{ data: RateCardSimulation }>(path + q)).data);
        return;
      }
      const reason = prompt('Why? (kept in the audit)');
      if (!reason) return;
      if (b.dataset.act === 'publish') {
        const at = prompt('Effective from (an ISO instant; empty: now)') || undefined;
        await send(path + '/publish', { reason, effective_from: at });
      } else await send(path + '/discard', { reason });
      await loadRateCards();
    } catch (err) {
      showError(err);
    }
  }
  async function draftRateCard(e: SubmitEvent) {
    e.preventDefault();
    const form = $<HTMLFormElement>('draft-form');
    const body: Record<string, string> = {};
    for (const el of Array.from(form.querySelectorAll('input'))) if (el.value !== '') body[el.name] = el.value;
    try {
      await send('./rate-cards/drafts', body);
      form.reset();
      await loadRateCards();
    } catch (err) {
      showError(err);
    }
  }
  $('rate-cards').onclick = rateCardAction;
  $<HTMLFormElement>('draft-form').onsubmit = draftRateCard;
  loadRateCards().catch(showError);
}
