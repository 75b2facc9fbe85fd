// The dashboard's AI calls section: its HTML, style and script, joined into dashboard-page.ts's
// one <style>/<script> (so they carry its CSP nonce), run with dashboard-script.ts's helpers.
// GET ./ai/stats answers the last hour and the last day at once; a toggle picks which is drawn:
// per model the calls, error rate, p50/p95 time to first token and duration; the top spenders;
// refusals by code; the latest failures with their codes. Every value from the API is escaped; credits are the
// API's exact strings, rounded for reading by the kit's `credits` (no float).
/// <reference lib="dom" />
import type { DashboardKit } from './dashboard-script.ts';

export const aiStyle = `
#ai-window { display: flex; gap: .3rem; margin-bottom: .5rem; }
#ai-window button[aria-pressed="true"] { font-weight: 650; }
#ai h3 { font-size: .9rem; margin: .8rem 0 .3rem; }
/* On a phone the model and failure tables scroll in their box (.cards) rather than break words. */
#ai table[data-testid="ai-models"] { min-width: 38rem; }
#ai table[data-testid="ai-failures"] { min-width: 26rem; }
#ai td.id { overflow-wrap: anywhere; }
`;

export const aiSections = `
  <section class="wide"><h2>AI calls</h2>
    <div id="ai-window" role="group" aria-label="window">
      <button id="ai-hour" aria-pressed="true">Last hour</button><button id="ai-day" aria-pressed="false">Last day</button>
    </div>
    <div id="ai" data-testid="ai"><p class="muted">Loading…</p></div></section>`;

/** One model's figures, as billing.ai_call_stats answers them (the parts the page shows). */
type ModelStats = {
  model: string;
  calls: number;
  charged: number;
  failed: number;
  refused: number;
  errors: number;
  error_rate: string | null;
  ttft_p50_ms: number | null;
  ttft_p95_ms: number | null;
  duration_p50_ms: number | null;
  duration_p95_ms: number | null;
  credits: string;
};
type Spender = { user_id: string; calls: number; credits: string };
type Failure = {
  id: string;
  created_at: string;
  model: string | null;
  endpoint: string;
  outcome: string;
  code: string | null;
  upstream_status: number | null;
  upstream: string | null;
  attempts: Attempt[] | null;
};
/** An upstream that failed before the first byte, so the call moved on (ai_calls.attempts). */
type Attempt = { upstream: string; model?: string; failure: string; status: number | null; ms: number };
type Fallback = {
  id: string;
  created_at: string;
  model: string | null;
  endpoint: string;
  outcome: string;
  upstream: string | null;
  attempts: Attempt[];
};
type Refusals = { code: string | null; calls: number };
type Window = {
  since: string;
  models: ModelStats[];
  top_spenders: Spender[];
  refusals: Refusals[];
  latest_failures: Failure[];
  latest_fallbacks: Fallback[];
};
type AiStats = { hour: Window; day: Window };

/** Fills the AI calls section (served as text: everything it uses is inside). */
export function aiScript({ $, get, esc, credits, fmtInt }: DashboardKit): void {
  let stats: AiStats | null = null;
  let shown: 'hour' | 'day' = 'hour';

  const ms = (n: number | null) =>
    n === null ? '–' : n < 1000 ? fmtInt.format(n) + ' ms' : (n / 1000).toFixed(n < 10_000 ? 2 : 1) + ' s';
  const pair = (p50: number | null, p95: number | null) =>
    '<span class="nowrap">' + esc(ms(p50)) + '</span> / <span class="nowrap">' + esc(ms(p95)) + '</span>';
  // A share of the calls that reached the provider (null: none did), not money: a float is fine.
  const rate = (r: string | null) => r === null ? '–' : (Number(r) * 100).toFixed(1).replace(/\.0$/, '') + '%';
  const minute = (at: string) => esc(at.slice(0, 16).replace('T', ' '));
  /** What failed before the upstream that answered: `openai PROVIDER_ERROR_500, …`. */
  const tried = (attempts: Attempt[] | null) =>
    (attempts ?? []).map((a) => esc(a.upstream) + (a.model ? '/' + esc(a.model) : '') + ' ' + esc(a.failure))
      .join('<br>');

  function modelRow(m: ModelStats) {
    const parts = [[m.charged, 'charged'], [m.failed, 'failed'], [m.refused, 'refused']]
      .filter(([n]) => Number(n) > 0).map(([n, what]) => fmtInt.format(Number(n)) + ' ' + what).join(', ');
    return '<tr data-model="' + esc(m.model) + '"><td>' + esc(m.model) + '</td><td data-calls="' + esc(m.calls) +
      '">' + fmtInt.format(m.calls) + '<br><span class="muted">' + esc(parts) + '</span></td><td' +
      (m.errors ? ' class="bad"' : '') + '>' + esc(rate(m.error_rate)) + '<br><span class="muted">' +
      fmtInt.format(m.errors) + (m.errors === 1 ? ' error' : ' errors') + '</span></td><td>' +
      pair(m.ttft_p50_ms, m.ttft_p95_ms) + '</td><td>' + pair(m.duration_p50_ms, m.duration_p95_ms) +
      '</td><td class="nowrap">' + esc(credits(m.credits)) + '</td></tr>';
  }

  function render() {
    if (!stats) return;
    const w = stats[shown];
    for (const which of ['hour', 'day'] as const) {
      $('ai-' + which).setAttribute('aria-pressed', String(which === shown));
    }
    if (w.models.length === 0) {
      $('ai').innerHTML = '<p class="muted">No AI calls in the last ' + shown + '.</p>';
      return;
    }
    $('ai').innerHTML = '<div class="cards"><table data-testid="ai-models"><tr><th>Model</th><th>Calls</th>' +
      '<th>Error rate</th><th>First token p50 / p95</th><th>Duration p50 / p95</th><th>Credits</th></tr>' +
      w.models.map(modelRow).join('') + '</table></div>' +
      '<p class="muted">Error rate: errors of the provider or the gateway over the calls that reached the provider.</p>' +
      '<h3>Top spenders</h3>' +
      (w.top_spenders.length
        ? '<div class="cards"><table data-testid="ai-spenders"><tr><th>User</th><th>Calls</th><th>Credits</th></tr>' +
          w.top_spenders.map((s) =>
            '<tr data-user="' + esc(s.user_id) + '"><td class="id">' + esc(s.user_id) + '</td><td>' +
            fmtInt.format(s.calls) +
            '</td><td class="nowrap">' + esc(credits(s.credits)) + '</td></tr>'
          ).join('') + '</table></div>'
        : '<p class="muted">No call was charged.</p>') +
      '<h3>Refusals by code</h3>' +
      (w.refusals.length
        ? '<div class="cards"><table data-testid="ai-refusals"><tr><th>Code</th><th>Calls</th></tr>' +
          w.refusals.map((r) =>
            '<tr data-code="' + esc(r.code ?? '') + '"><td>' + esc(r.code ?? '–') + '</td><td>' +
            fmtInt.format(r.calls) + '</td></tr>'
          ).join('') + '</table></div>'
        : '<p class="ok">No refusals.</p>') +
      '<h3>Latest failures</h3>' +
      (w.latest_failures.length
        ? '<div class="cards"><table data-testid="ai-failures"><tr><th>When (UTC)</th><th>Model</th><th>Code</th></tr>' +
          w.latest_failures.map((f) =>
            '<tr data-call="' + esc(f.id) + '"><td class="nowrap">' + minute(f.created_at) + '</td><td>' +
            esc(f.model ?? '(unpriced)') + '<br><span class="muted">' + esc(f.endpoint) +
            '</span></td><td class="bad">' +
            esc(f.code ?? f.outcome) +
            (typeof f.upstream_status !== 'number'
              ? ''
              : '<br><span class="muted">' + esc(f.upstream ?? 'upstream') + ' ' + esc(f.upstream_status) +
                '</span>') +
            (f.attempts ? '<br><span class="muted">after ' + tried(f.attempts) + '</span>' : '') +
            '</td></tr>'
          ).join('') + '</table></div>'
        : '<p class="ok">No failures.</p>') +
      '<h3>Fallbacks</h3>' +
      (w.latest_fallbacks.length
        ? '<div class="cards"><table data-testid="ai-fallbacks"><tr><th>When (UTC)</th><th>Model</th>' +
          '<th>Answered by</th><th>Failed before</th></tr>' +
          w.latest_fallbacks.map((f) =>
            '<tr data-call="' + esc(f.id) + '"><td class="nowrap">' + minute(f.created_at) + '</td><td>' +
            esc(f.model ?? '(unpriced)') + '<br><span class="muted">' + esc(f.endpoint) + '</span></td><td' +
            (f.outcome === 'charged' ? '>' : ' class="bad">') + esc(f.upstream ?? '–') +
            '<br><span class="muted">' + esc(f.outcome) + '</span></td><td class="muted">' + tried(f.attempts) +
            '</td></tr>'
          ).join('') + '</table></div>'
        : '<p class="ok">No call needed a fallback upstream.</p>');
  }

  async function load() {
    try {
      stats = (await get<{ data: AiStats }>('./ai/stats')).data;
      render();
    } catch (e) {
      $('ai').innerHTML = '<p class="bad">' + esc((e as Error).message || e) + '</p>';
    }
  }

  for (const which of ['hour', 'day'] as const) {
    $('ai-' + which).addEventListener('click', () => {
      shown = which;
      render();
      load(); // the figures move with time: the window asked for is read afresh
    });
  }
  load();
}
