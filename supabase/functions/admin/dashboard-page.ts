// The dashboard's HTML, CSS and script, served by the function itself (no CDN, no bundle):
// KPI tiles, SVG charts, the reconciliation table, open alerts and webhook health. The script
// calls this function's JSON routes; the browser sends the HttpOnly session cookie, which the
// script cannot read. One <style> and one <script>, each carrying the response's CSP nonce: no
// inline style attributes or handlers, so the policy needs no 'unsafe-inline'. Sections with
// their own module (dashboard-margins.ts, dashboard-catalog.ts) join the one style and script.
// A table wider than its section scrolls inside its own box (.cards), never the page.
import { marginsScript, marginsSections, marginsStyle } from './dashboard-margins.ts';
import { catalogScript, catalogSections, catalogStyle } from './dashboard-catalog.ts';

const style = `
:root{font:15px/1.45 system-ui,sans-serif;color:#1d2330;background:#f4f5f7}
body{margin:0 auto;max-width:72rem;padding:1rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1rem;margin:0 0 .6rem}
.controls{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:1rem}
.controls label{display:flex;flex-direction:column;font-size:.8rem;color:#556}
input,select,button{font:inherit;padding:.35rem .5rem}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(10.5rem,1fr));gap:.7rem;margin-bottom:1rem}
.tile{background:#fff;border-radius:.6rem;padding:.8rem 1rem;box-shadow:0 1px 2px #0001;container-type:inline-size}
.tile .label{font-size:.8rem;color:#667}.tile .value{font-size:1.45rem;font-weight:650;white-space:nowrap}
.tile .value.long{font-size:clamp(.95rem,11cqi,1.25rem);white-space:normal;overflow-wrap:anywhere}.headline{font-size:1.3rem;font-weight:650;margin:0 0 .3rem}
.headline .muted{font-size:.8rem;font-weight:400}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,21rem),1fr));gap:.7rem}
section{background:#fff;border-radius:.6rem;padding:.9rem 1rem;box-shadow:0 1px 2px #0001;min-width:0}
svg{width:100%;height:auto;display:block}
table{width:100%;border-collapse:collapse;font-size:.88rem}td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #eef}
.ok{color:#1b7a3a}.bad{color:#b3261e}.muted{color:#778;font-size:.85rem}
#error{background:#fde8e8;color:#8a1c1c;padding:.6rem 1rem;border-radius:.5rem;margin-bottom:1rem}
.legend span{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;margin:0 .25rem 0 .6rem}
[hidden]{display:none!important}
.legend .b2c{background:#3558c9}.legend .b2b{background:#2bb08c}
.narrow{max-width:26rem}.narrow input{width:100%;box-sizing:border-box}
.chart .axis{font-size:.8rem;color:#556;margin:.2rem 0}.ticks{display:flex;justify-content:space-between;gap:.5rem}
.nowrap{white-space:nowrap}
.wide{grid-column:1/-1;min-width:0}.cards{overflow-x:auto;max-width:100%}#orgs td{overflow-wrap:anywhere}.draft-form{display:flex;flex-wrap:wrap;gap:.4rem;align-items:end;margin:.6rem 0}
.draft-form input{width:7.5rem}.draft-form label{display:flex;flex-direction:column;font-size:.8rem;color:#556}`;

const script = `
const $ = (id) => document.getElementById(id);
const fmtInt = new Intl.NumberFormat('en-US');
const money = (cents, currency) => new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(cents / 100);
const pct = (x) => x === null || x === undefined ? '–' : (x * 100).toFixed(x < 0.1 ? 2 : 1) + '%';
// Credits for reading, as the student page rounds them: half up to 2 decimals with string
// arithmetic, grouped; "less than 0.01" when tiny. The API and the CSV keep every digit.
function credits(s) {
  const neg = String(s).startsWith('-'), [w, f = ''] = String(s).replace(/^-/, '').split('.');
  const cents = BigInt(w + (f + '00').slice(0, 2)) + (Number(f[2] || '0') >= 5 ? 1n : 0n);
  if (cents === 0n && /[1-9]/.test(f)) return 'less than 0.01';
  const t = cents.toString().padStart(3, '0');
  const text = (t.slice(0, -2) + '.' + t.slice(-2)).replace(/\\.00$/, '').replace(/(\\.\\d)0$/, '$1');
  return (neg && cents !== 0n ? '-' : '') + text.replace(/\\B(?=(\\d{3})+(?!\\d))/g, ',');
}
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

async function get(path) {
  const res = await fetch(path);
  // The session ended (expired, signed out elsewhere, no longer an admin): back to sign-in.
  if (res.status === 401 || res.status === 403) { location.assign('./dashboard'); throw new Error('Signed out'); }
  const body = res.headers.get('content-type')?.includes('json') ? await res.json() : await res.text();
  if (!res.ok) throw new Error(body?.error ? body.error.code + ': ' + body.error.message : 'HTTP ' + res.status);
  return body;
}

// A long number is set smaller, and wraps rather than clips when even that is too wide.
function tile(kpi, label, value, raw) {
  return '<div class="tile" data-kpi="' + kpi + '" data-value="' + esc(raw) + '"><div class="label">' + label +
    '</div><div class="value' + (String(value).length > 9 ? ' long' : '') + '">' + esc(value) + '</div></div>';
}

const empty = '<p class="muted">Nothing in this range.</p>';

// Charts draw shapes only; every word and number around them is HTML at the page's own sizes,
// so it reads the same on a phone and a desktop (SVG text shrinks with the drawing).
function frame(top, svg, labels) {
  const n = labels.length, picks = n <= 3 ? labels : [labels[0], labels[Math.floor((n - 1) / 2)], labels[n - 1]];
  return '<div class="chart"><div class="axis">' + esc(top) + '</div>' + svg + '<div class="axis ticks">' +
    picks.map((l) => '<span>' + esc(l) + '</span>').join('') + '</div></div>';
}

function bars(series, keys, colors, format, none) {
  const w = 640, h = 180, n = series.length || 1, bw = w / n;
  const max = Math.max(0, ...series.map((s) => keys.reduce((a, k) => a + Math.max(0, s[k] || 0), 0)));
  if (max === 0) return none || empty;
  let svg = '<svg viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="bar chart">';
  series.forEach((s, i) => {
    let y = h;
    keys.forEach((k, j) => {
      const v = Math.max(0, s[k] || 0), bh = (v / max) * (h - 4);
      y -= bh;
      svg += '<rect x="' + (i * bw + 1) + '" y="' + y + '" width="' + Math.max(1, bw - 2) + '" height="' + bh +
        '" fill="' + colors[j] + '"><title>' + esc(s.label + ' ' + k + ': ' + format(v)) + '</title></rect>';
    });
  });
  return frame('max ' + format(max), svg + '</svg>', series.map((s) => s.label));
}

function line(series, key, format) {
  const w = 640, h = 160, n = Math.max(1, series.length - 1);
  const vals = series.map((s) => s[key]).filter((v) => v !== null && v !== undefined);
  if (vals.length === 0) return empty;
  if (vals.length === 1) return '<p class="headline">' + esc(format(vals[0])) + '</p><p class="muted">Only one day in this range had checkouts.</p>';
  const max = Math.max(...vals) || 1;
  const pts = series.map((s, i) => s[key] === null ? null : [4 + (i / n) * (w - 8), h - 4 - (s[key] / max) * (h - 8)]);
  const d = pts.filter(Boolean).map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(' ');
  const svg = '<svg viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="line chart"><path d="' + d + '" fill="none" stroke="#3558c9" stroke-width="3"/>' +
    pts.filter(Boolean).map((p) => '<circle cx="' + p[0] + '" cy="' + p[1] + '" r="4" fill="#3558c9"/>').join('') + '</svg>';
  return frame('max ' + format(max), svg, series.map((s) => s.label));
}

/** A period's label: "Nov 3" for days and weeks, "Nov 2026" for months (UTC, as the API's periods). */
function periodLabel(from) {
  const month = $('granularity').value === 'month';
  return new Date(from).toLocaleDateString('en-US', month ? { month: 'short', year: 'numeric', timeZone: 'UTC' } : { month: 'short', day: 'numeric', timeZone: 'UTC' });
}

function render(metrics, ops) {
  const cur = metrics.total.by_currency.find((c) => c.currency === $('currency').value) || metrics.total.by_currency[0];
  const currency = cur ? cur.currency : 'usd';
  const t = metrics.total;
  const lots = (t.credit_lots || []).find((x) => x.currency === currency);
  const lotsNow = (ops.credit_lots || []).find((x) => x.currency === currency);
  // Organisations with activity in the range; money in this currency (or none: spending only).
  const orgs = (metrics.total.organisations || []).filter((o) => o.currency === null || o.currency === currency);
  $('tiles').innerHTML = [
    tile('gmv', 'GMV', money(cur ? cur.gmv_cents : 0, currency), cur ? cur.gmv_cents : 0),
    tile('net_revenue', 'Net revenue', money(cur ? cur.net_revenue_cents : 0, currency), cur ? cur.net_revenue_cents : 0),
    tile('take_rate', 'Take rate (B2B)', pct(cur ? cur.b2b_provider_fees.take_rate : null), cur ? cur.b2b_provider_fees.take_rate : ''),
    tile('arpu', 'ARPU', cur && cur.arpu_cents !== null ? money(cur.arpu_cents, currency) : '–', cur ? cur.arpu_cents : ''),
    tile('conversion', 'Checkout conversion', pct(t.conversion.checkout_rate), t.conversion.checkout_rate ?? ''),
    tile('stripe_fees', 'Stripe fees (B2C)', money(cur ? cur.b2c_credits.stripe_fees_cents : 0, currency),
      cur ? cur.b2c_credits.stripe_fees_cents : 0),
    // Stripe Tax charged on top of prices: owed to tax authorities, never in GMV or revenue.
    tile('tax_collected', 'Tax collected (not revenue)', money(cur ? cur.b2c_credits.tax_collected_cents : 0, currency),
      cur ? cur.b2c_credits.tax_collected_cents : 0),
    tile('platform_fees', 'Platform fees (B2B)', money(cur ? cur.b2b_provider_fees.platform_fees_cents : 0, currency),
      cur ? cur.b2b_provider_fees.platform_fees_cents : 0),
    tile('b2b2c_gmv', 'GMV via organisations', money(orgs.reduce((n, o) => n + o.gmv_cents, 0), currency),
      orgs.reduce((n, o) => n + o.gmv_cents, 0)),
    tile('outstanding', 'Outstanding credits', credits(t.credits.outstanding), t.credits.outstanding),
    tile('active_users', 'Active users', fmtInt.format(t.users.active), t.users.active),
    // Paid credits at their cost: deferred (unspent, now), recognised (spent) and breakage (expired) in the range.
    tile('deferred_revenue', 'Deferred revenue (now)', money(lotsNow ? lotsNow.deferred_revenue_cents : 0, currency),
      lotsNow ? lotsNow.deferred_revenue_cents : 0),
    tile('recognised_revenue', 'Recognised revenue', money(lots ? lots.recognised_revenue_cents : 0, currency),
      lots ? lots.recognised_revenue_cents : 0),
    tile('breakage_revenue', 'Breakage revenue', money(lots ? lots.breakage_revenue_cents : 0, currency),
      lots ? lots.breakage_revenue_cents : 0),
  ].join('');
  const per = metrics.series.map((m) => {
    const c = m.by_currency.find((x) => x.currency === currency);
    return { label: periodLabel(m.from), b2c: c ? c.b2c_credits.net_revenue_cents : 0, b2b: c ? c.b2b_provider_fees.net_revenue_cents : 0,
      rate: m.conversion.checkout_rate };
  });
  $('revenue-chart').innerHTML = bars(per, ['b2c', 'b2b'], ['#3558c9', '#2bb08c'], (v) => money(v, currency));
  $('conversion-chart').innerHTML = line(per, 'rate', pct);
  const hourly = ops.error_budget.hourly;
  const worst = hourly ? Math.max(0, ...hourly.map((h) => h.burn_rate.availability)) : 0;
  $('burn-chart').innerHTML = hourly
    ? '<p class="headline" data-kpi="burn_worst" data-value="' + worst + '">' + worst.toFixed(2) +
      '× <span class="muted">burn in the worst hour</span></p><p class="muted">1× spends the budget exactly over the SLO window.</p>' +
      bars(hourly.map((h) => ({ label: h.hour.slice(11, 16) + ' UTC', burn: h.burn_rate.availability })), ['burn'], ['#d9822b'],
        (v) => v.toFixed(2) + '×', '<p class="muted">No failed requests in the last 24 hours.</p>')
    : '<p class="muted">Latency data (Redis) is not answering.</p>';
  $('recon').innerHTML = ops.reconciliation.length
    ? '<table><tr><th>Provider</th><th>Last run</th><th>Status</th></tr>' + ops.reconciliation.map((r) =>
      // Two providers may share a name: the id tells them apart.
      '<tr><td>' + esc(r.name) + ' <span class="muted">' + esc(String(r.provider_id).slice(0, 8)) + '</span></td><td class="nowrap">' + esc(r.last_day ?? 'never') + '</td><td class="' + (r.mismatches ? 'bad' : 'ok') + '">' +
      (r.mismatches ? esc(r.mismatches + (r.mismatches === 1 ? ' mismatch: ' : ' mismatches: ') + r.kinds.join(', ').replaceAll('_', ' ')) : 'reconciled') + '</td></tr>').join('') + '</table>'
    : '<p class="muted">No providers yet.</p>';
  const standing = ops.organisations;
  $('orgs').innerHTML = '<p class="muted">' + fmtInt.format(standing.count) + ' organisations, ' + fmtInt.format(standing.members) +
    ' funded members; ' + credits(standing.wallet_credits) + ' credits in wallets, ' + credits(standing.allowance_credits) + ' in allowances (now).</p>' +
    (orgs.length
      // Four columns, spending and ARPU under their headline; wider than the section (a phone, long
      // names, large sums), the table scrolls in its own box.
      ? '<div class="cards"><table><tr><th>Organisation</th><th>Members spending</th><th>GMV</th><th>Net revenue</th></tr>' +
        orgs.map((o) => '<tr><td>' + esc(o.name) + '<br><span class="muted">' + esc(o.funding) + ', ' + credits(o.credits_spent) + ' credits spent' +
          (o.invoiced_cents ? ', ' + money(o.invoiced_cents, currency) + ' by invoice' : '') + '</span></td><td>' + fmtInt.format(o.active_members) + ' of ' + fmtInt.format(o.members) +
          '</td><td class="nowrap">' + money(o.gmv_cents, currency) + '</td><td><span class="nowrap">' +
          money(o.net_revenue_cents, currency) + '</span><br><span class="muted nowrap">' +
          (o.arpu_cents === null ? 'no ARPU' : money(o.arpu_cents, currency) + ' ARPU') + '</span></td></tr>').join('') +
        '</table></div>'
      : '<p class="muted">No organisation bought or spent credits in this range.</p>');
  // Promo, gift and sponsor codes in the range (billing.codes_report).
  const codes = t.codes;
  $('codes').innerHTML = codes
    ? '<table><tr><th>Promo codes</th><th>Gifts</th><th>Sponsor codes</th></tr><tr><td>' +
      fmtInt.format(codes.promo_redemptions) + ' redemptions<br><span class="muted">' + credits(codes.promo_credits_granted) +
      ' credits granted, ' + credits(codes.promo_credits_used) + ' used</span></td><td>' + fmtInt.format(codes.gift_sales) +
      ' sold<br><span class="muted nowrap">' + money(codes.gift_sales_cents, currency) + ', ' +
      fmtInt.format(codes.gifts_redeemed) + ' redeemed</span></td><td>' + credits(codes.sponsor_credits_issued) +
      ' credits set aside<br><span class="muted">' + credits(codes.sponsor_credits_redeemed) + ' redeemed, ' +
      fmtInt.format(codes.sponsor_codes_closed) + ' codes closed</span></td></tr></table>'
    : '<p class="muted">No code activity.</p>';
  renderPlans(t.plans, currency);
  $('alerts').innerHTML = ops.alerts.length
    ? '<table>' + ops.alerts.map((a) => '<tr><td class="bad">' + esc(a.condition.replaceAll('_', ' ')) + '</td><td>' + esc(a.summary) + '</td></tr>').join('') + '</table>'
    : '<p class="ok">No open alerts.</p>';
  const w = ops.webhooks_24h;
  $('webhooks').innerHTML = '<p class="headline" data-kpi="webhook_success" data-value="' + esc(w.success_rate ?? '') + '">' + pct(w.success_rate) +
    ' <span class="muted">handled without failure</span></p><p class="muted">' + fmtInt.format(w.received) + ' events in 24 h: ' + fmtInt.format(w.processed) + ' processed, ' +
    fmtInt.format(w.ignored) + ' ignored, ' + fmtInt.format(w.failed) + ' failed</p>';
  const currencies = metrics.total.by_currency.map((c) => c.currency);
  if ($('currency').options.length !== currencies.length) {
    $('currency').innerHTML = (currencies.length ? currencies : ['usd']).map((c) => '<option>' + c + '</option>').join('');
    $('currency').value = currency;
  }
}

// Plans (billing.plan_metrics): subscribers and MRR at the range's end, who came and went in it,
// and what became of the plan credits granted.
function renderPlans(p, currency) {
  if (!p) return;
  const mrr = p.mrr.find((m) => m.currency === currency);
  $('plans').innerHTML = '<p class="headline" data-kpi="mrr" data-value="' + (mrr ? mrr.mrr_cents : 0) + '">' +
    money(mrr ? mrr.mrr_cents : 0, currency) + ' <span class="muted">MRR at the end</span></p><p class="muted">' +
    fmtInt.format(p.subscribers) + ' subscribers, ' + fmtInt.format(p.new_subscribers) + ' new, ' + fmtInt.format(p.churned) +
    ' churned (' + pct(p.churn_rate) + ')</p><table><tr><th>Plan credits granted</th><th>Used</th><th>Expired</th><th>Rolled over</th></tr><tr><td>' +
    credits(p.credits_granted) + '</td><td>' + credits(p.credits_used) + '</td><td>' + credits(p.credits_expired) + '</td><td>' +
    credits(p.credits_rolled_over) + '</td></tr></table>';
}

// Changing both dates fires two loads: only the latest may draw or report an error.
let latestLoad = 0;
async function load() {
  const mine = ++latestLoad;
  $('error').hidden = true;
  document.body.dataset.ready = 'false';
  const q = 'from=' + $('from').value + '&to=' + $('to').value + '&granularity=' + $('granularity').value;
  try {
    const [metrics, ops] = await Promise.all([get('./metrics?' + q), get('./ops')]);
    if (mine !== latestLoad) return;
    window.lastMetrics = metrics.data;
    render(metrics.data, ops.data);
  } catch (e) {
    if (mine !== latestLoad) return;
    $('error').textContent = String(e.message || e);
    $('error').hidden = false;
  }
  document.body.dataset.ready = 'true';
}

async function downloadCsv() {
  const q = 'from=' + $('from').value + '&to=' + $('to').value + '&granularity=' + $('granularity').value + '&format=csv';
  const blob = new Blob([await get('./metrics?' + q)], { type: 'text/csv' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'metrics.csv';
  a.click();
}

// Rate cards (docs/pricing.md): what prices now and later, the open drafts with their dry run
// over the range above, publishing and discarding (each asks why), and the audit.
async function send(path, body) {
  const res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.status === 401) { location.assign('./dashboard'); throw new Error('Signed out'); }
  const json = await res.json();
  if (!res.ok) throw new Error(json.error ? json.error.code + ': ' + json.error.message : 'HTTP ' + res.status);
  return json.data;
}
const price = (v) => v === null ? '<span class="muted">default</span>' : esc(v);
function cardRows(cards, extra) {
  return cards.map((c) => '<tr><td>' + esc(c.model) + '</td><td>' + (c.version ?? '–') + '</td><td>' + price(c.usd_per_million_input) +
    '</td><td>' + price(c.usd_per_million_cached_input) + '</td><td>' + price(c.usd_per_million_output) + '</td><td>' +
    price(c.usd_per_million_reasoning) + '</td><td>' + price(c.usd_per_image) + '</td><td>' + price(c.usd_per_audio_second) +
    '</td><td>' + esc(c.markup) + '</td><td>' + extra(c) + '</td></tr>').join('');
}
const cardHead = '<tr><th>model</th><th>v</th><th>input /M</th><th>cached /M</th><th>output /M</th><th>reasoning /M</th><th>image</th><th>audio s</th><th>markup</th><th></th></tr>';
async function loadRateCards() {
  const o = (await get('./rate-cards')).data;
  $('rate-cards').innerHTML = '<div class="cards"><table>' + cardHead +
    cardRows(o.current, () => 'in effect') +
    cardRows(o.scheduled, (c) => 'from ' + esc(c.effective_from.slice(0, 16).replace('T', ' '))) +
    cardRows(o.drafts, (d) => '<button data-act="simulate" data-id="' + esc(d.id) + '">Dry run</button> ' +
      '<button data-act="publish" data-id="' + esc(d.id) + '">Publish</button> ' +
      '<button data-act="discard" data-id="' + esc(d.id) + '">Discard</button>') + '</table></div>' +
    '<h2>Changes</h2><div class="cards"><table>' + o.changes.slice(0, 10).map((c) => '<tr><td class="nowrap">' + esc(c.at.slice(0, 16).replace('T', ' ')) +
      '</td><td>' + esc(c.action) + '</td><td>' + esc((c.after || c.before || {}).model) + '</td><td>' + esc(c.reason) +
      '</td><td class="muted">' + esc(c.admin_id) + '</td></tr>').join('') + '</table></div>';
}
function renderSimulation(s) {
  const t = s.totals;
  $('simulation').innerHTML = '<h2>Dry run: ' + esc(s.draft.model) + ' (nothing charged)</h2><p>' + fmtInt.format(t.charges) +
    ' charges of ' + fmtInt.format(t.students) + ' students: ' + credits(t.before) + ' → ' + credits(t.after) + ' credits (' +
    (t.change_percent === null ? 'no cost before' : (Number(t.change_percent) > 0 ? '+' : '') + esc(t.change_percent) + '%') + ')' +
    (t.unpriced_charges ? '; ' + fmtInt.format(t.unpriced_charges) + ' charges it cannot price' : '') + '</p><div class="cards"><table>' +
    s.distribution.buckets.map((b) => '<tr><td>' + esc(b.bucket) + '</td><td>' + fmtInt.format(b.students) + '</td></tr>').join('') +
    '</table></div><h2>Most affected</h2><div class="cards"><table><tr><th>student</th><th>before</th><th>after</th><th>change</th></tr>' +
    s.most_affected.map((m) => '<tr><td class="muted">' + esc(m.user_id) + '</td><td>' + credits(m.before) + '</td><td>' +
      credits(m.after) + '</td><td>' + credits(m.change) + '</td></tr>').join('') + '</table></div>';
}
async function rateCardAction(e) {
  const b = e.target.closest('button[data-act]');
  if (!b) return;
  const path = './rate-cards/drafts/' + encodeURIComponent(b.dataset.id);
  try {
    if (b.dataset.act === 'simulate') {
      const from = new Date($('from').value + 'T00:00:00Z').toISOString(), to = new Date($('to').value + 'T00:00:00Z').toISOString();
      renderSimulation((await get(path + '/simulation?from=' + from + '&to=' + to)).data);
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
    $('error').textContent = String(err.message || err);
    $('error').hidden = false;
  }
}
async function draftRateCard(e) {
  e.preventDefault();
  const body = {};
  for (const el of $('draft-form').querySelectorAll('input')) if (el.value !== '') body[el.name] = el.value;
  try {
    await send('./rate-cards/drafts', body);
    $('draft-form').reset();
    await loadRateCards();
  } catch (err) {
    $('error').textContent = String(err.message || err);
    $('error').hidden = false;
  }
}
$('rate-cards').onclick = rateCardAction;
$('draft-form').onsubmit = draftRateCard;
loadRateCards().catch((err) => { $('error').textContent = String(err.message || err); $('error').hidden = false; });

const today = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
$('to').value = today;
$('from').value = new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);
for (const id of ['from', 'to', 'granularity', 'currency']) $(id).onchange = load;
$('csv').onclick = downloadCsv;
$('sign-out').onclick = () => fetch('./session', { method: 'DELETE' }).finally(() => location.assign('./dashboard'));
load();`;

/**
 * The Content-Security-Policy of a page whose <style> (and <script>, if it has one) carry
 * `nonce`: nothing else runs or loads, the script talks only to this origin, forms post only
 * here, and no other page may frame it.
 */
export const contentSecurityPolicy = (nonce: string, withScript: boolean) =>
  [
    "default-src 'none'",
    withScript ? `script-src 'nonce-${nonce}'` : "script-src 'none'",
    `style-src 'nonce-${nonce}'`,
    withScript ? "connect-src 'self'" : "connect-src 'none'",
    "img-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
  ].join('; ');

/** A fresh nonce: 128 random bits, base64. */
export const newNonce = () => btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch] ?? ch);

const head = (title: string, nonce: string) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title><style nonce="${nonce}">${style}${marginsStyle}${catalogStyle}</style></head>`;

export const dashboardPage = (nonce: string) =>
  `${head('ScholarLink · Operations', nonce)}<body>
<h1>ScholarLink · Operations</h1>
<div class="controls">
  <label>From <input type="date" id="from"></label><label>To (exclusive) <input type="date" id="to"></label>
  <label>Granularity <select id="granularity"><option>day</option><option>week</option><option>month</option></select></label>
  <label>Currency <select id="currency"><option>usd</option></select></label>
  <button id="csv">Download CSV</button><button id="sign-out">Sign out</button>
</div>
<div id="error" role="alert" hidden></div>
<div class="tiles" id="tiles"><div class="tile"><div class="label">Loading…</div></div></div>
<div class="grid">
  <section><h2>Net revenue by product line</h2><div class="legend muted"><span class="b2c"></span>B2C credits<span class="b2b"></span>B2B provider fees</div><div id="revenue-chart"></div></section>
  <section><h2>Checkout conversion</h2><div id="conversion-chart"></div></section>
  <section><h2>Error-budget burn (availability, last 24 h)</h2><div id="burn-chart"></div></section>
  <section><h2>Provider reconciliation</h2><div id="recon"></div></section>
  <section><h2>Organisations (B2B2C)</h2><div id="orgs"></div></section>
  <section><h2>Codes</h2><div id="codes" data-testid="codes"></div></section>
  <section><h2>Plans</h2><div id="plans" data-testid="plans"></div></section>
  <section><h2>Open alerts</h2><div id="alerts"></div></section>
  <section><h2>Stripe webhooks</h2><div id="webhooks"></div></section>${marginsSections}
  <section class="wide"><h2>Rate cards</h2><div id="rate-cards"></div>
    <form id="draft-form" class="draft-form"><label>model<input name="model" required></label>
      <label>input /M<input name="usd_per_million_input" required></label><label>cached /M<input name="usd_per_million_cached_input"></label>
      <label>output /M<input name="usd_per_million_output" required></label><label>reasoning /M<input name="usd_per_million_reasoning"></label>
      <label>image<input name="usd_per_image"></label><label>audio s<input name="usd_per_audio_second"></label>
      <label>markup<input name="markup" required></label><label>why<input name="reason" required></label><button>Draft</button></form>
    <div id="simulation"></div></section>${catalogSections}
</div>
<script nonce="${nonce}">${script}${marginsScript}${catalogScript}</script></body></html>`;

/**
 * Sign-in, without any script: plain forms posted to ./session, which verifies the token (or
 * runs Supabase Auth's password grant when the project has a publishable or anon key), requires
 * an administrator, sets the HttpOnly session cookie and redirects to ./dashboard.
 */
export function signInPage(nonce: string, opts: { message?: string; password: boolean }): string {
  return `${head('ScholarLink · Sign in', nonce)}<body>
<h1>ScholarLink · Operations</h1>
${opts.message ? `<div id="error" role="alert">${escapeHtml(opts.message)}</div>` : ''}
<section class="narrow">
${
    opts.password
      ? `<h2>Sign in</h2><form id="password" method="post" action="./session">
<p><input id="email" name="email" type="email" placeholder="email" autocomplete="username" required></p>
<p><input id="pw" name="password" type="password" placeholder="password" autocomplete="current-password" required></p>
<button id="sign-in">Sign in</button></form>
<p class="muted">Or paste an access token:</p>`
      : '<h2>Sign in with an access token</h2><p class="muted">Locally: <code>./scripts/token --admin</code>.</p>'
  }
<form id="paste" method="post" action="./session"><p><input id="token" name="access_token" placeholder="access token" autocomplete="off" required></p>
<button id="use-token">Open the dashboard</button></form>
</section></body></html>`;
}
