// The dashboard's script, as typed TypeScript: dashboard-page.ts serves it as text,
// `(${dashboardScript})(…sections)`. Deno strips the types when it loads this module, so a
// function's toString() is the plain JavaScript the browser runs (tests/browser/dashboard.test.ts
// runs it in Chromium). Everything the script needs is inside the function (a module's imports do
// not reach the browser; type-only imports do not need to). Sections with their own module
// (dashboard-rate-cards.ts, dashboard-margins.ts, dashboard-catalog.ts) are functions of the same
// kind, given the helpers below (DashboardKit). The browser sends the HttpOnly session cookie,
// which the script cannot read.
/// <reference lib="dom" />

/** The helpers the page's script gives each section of its own. */
export interface DashboardKit {
  $: <T extends HTMLElement = HTMLElement>(id: string) => T;
  fmtInt: Intl.NumberFormat;
  money: (cents: number, currency: string) => string;
  credits: (s: string | number) => string;
  esc: (s: unknown) => string;
  empty: string;
  get: <T>(path: string) => Promise<T>;
  /** POSTs (or PUTs, …) JSON; answers the envelope's `data`. */
  send: <T>(path: string, body: unknown, headers?: Record<string, string>, method?: string) => Promise<T>;
  /** Saves a GET's answer (a CSV) as a file, with the session like every fetch: the name the server gives, else `name`. */
  download: (path: string, name: string) => Promise<void>;
  showError: (err: unknown) => void;
}

/**
 * What `get`, `send` and `download` throw for an error envelope: its message as the Error's
 * ("VALIDATION_FAILED: accounts.0.code must be …"), and its code and field (`accounts.0.code`).
 */
export type ApiFailure = Error & { code?: string; field?: string; status?: number };

/** A dashboard section of its own module, run after the page's script with its helpers. */
export type DashboardSection = (kit: DashboardKit) => void;

type Cents = number;
type Rate = number | null;

interface CurrencyTotals {
  currency: string;
  gmv_cents: Cents;
  net_revenue_cents: Cents;
  arpu_cents: Cents | null;
  b2c_credits: { stripe_fees_cents: Cents; tax_collected_cents: Cents; net_revenue_cents: Cents };
  b2b_provider_fees: { take_rate: Rate; platform_fees_cents: Cents; net_revenue_cents: Cents };
}

interface OrgActivity {
  name: string;
  currency: string | null;
  funding: string;
  gmv_cents: Cents;
  net_revenue_cents: Cents;
  arpu_cents: Cents | null;
  invoiced_cents: Cents;
  credits_spent: string;
  members: number;
  active_members: number;
}

interface CodesReport {
  promo_redemptions: number;
  promo_credits_granted: string;
  promo_credits_used: string;
  gift_sales: number;
  gift_sales_cents: Cents;
  gifts_redeemed: number;
  sponsor_credits_issued: string;
  sponsor_credits_redeemed: string;
  sponsor_codes_closed: number;
}

interface PlansReport {
  mrr: { currency: string; mrr_cents: Cents }[];
  subscribers: number;
  new_subscribers: number;
  churned: number;
  churn_rate: Rate;
  credits_granted: string;
  credits_used: string;
  credits_expired: string;
  credits_rolled_over: string;
}

/** GET /admin/metrics (the parts the page shows). */
interface Metrics {
  total: {
    by_currency: CurrencyTotals[];
    credit_lots?: { currency: string; recognised_revenue_cents: Cents; breakage_revenue_cents: Cents }[];
    organisations?: OrgActivity[];
    conversion: { checkout_rate: Rate };
    credits: { outstanding: string };
    users: { active: number };
    codes: CodesReport | null;
    plans: PlansReport | null;
  };
  series: { from: string; by_currency: CurrencyTotals[]; conversion: { checkout_rate: Rate } }[];
}

/** GET /admin/ops (the parts the page shows). */
interface Ops {
  credit_lots?: { currency: string; deferred_revenue_cents: Cents }[];
  error_budget: { hourly: { hour: string; burn_rate: { availability: number } }[] | null };
  reconciliation: { name: string; provider_id: string; last_day: string | null; mismatches: number; kinds: string[] }[];
  organisations: { count: number; members: number; wallet_credits: string; allowance_credits: string };
  alerts: { condition: string; summary: string }[];
  webhooks_24h: { success_rate: Rate; received: number; processed: number; ignored: number; failed: number };
}

/** A chart's point: its label and a number per series key. */
type Point = { label: string } & Record<string, number | string | null>;

/** The page's script: fills the tiles, charts and tables, then runs each section with its helpers. */
export function dashboardScript(...sections: DashboardSection[]): void {
  const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
  const fmtInt = new Intl.NumberFormat('en-US');
  const money = (cents: number, currency: string) =>
    new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(cents / 100);
  const pct = (x: Rate | undefined) => x === null || x === undefined ? '–' : (x * 100).toFixed(x < 0.1 ? 2 : 1) + '%';
  // Credits for reading, as the student page rounds them: half up to 2 decimals with string
  // arithmetic, grouped; "less than 0.01" when tiny. The API and the CSV keep every digit.
  const credits = (s: string | number) => {
    const neg = String(s).startsWith('-'), [w, f = ''] = String(s).replace(/^-/, '').split('.');
    const cents = BigInt(w + (f + '00').slice(0, 2)) + (Number(f[2] || '0') >= 5 ? 1n : 0n);
    if (cents === 0n && /[1-9]/.test(f)) return 'less than 0.01';
    const t = cents.toString().padStart(3, '0');
    const text = (t.slice(0, -2) + '.' + t.slice(-2)).replace(/\.00$/, '').replace(/(\.\d)0$/, '$1');
    return (neg && cents !== 0n ? '-' : '') + text.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  };
  const entities: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const esc = (s: unknown) => String(s ?? '').replace(/[&<>"']/g, (c) => entities[c]);
  const showError = (err: unknown) => {
    $('error').textContent = String((err as Error)?.message || err);
    $('error').hidden = false;
  };

  // The session ended (expired, signed out elsewhere, no longer an admin): back to sign-in.
  const signedOut = () => {
    location.assign('./dashboard');
    return new Error('Signed out');
  };
  // The standard error envelope as an Error that keeps its code and field.
  const failure = (status: number, body: { error?: { code: string; message: string; field?: string } }) => {
    const e = body && body.error;
    return Object.assign(new Error(e ? e.code + ': ' + e.message : 'HTTP ' + status), {
      code: e ? e.code : undefined,
      field: e ? e.field : undefined,
      status,
    }) as ApiFailure;
  };
  const fetched = async (path: string) => {
    const res = await fetch(path);
    if (res.status === 401 || res.status === 403) throw signedOut();
    const body = res.headers.get('content-type')?.includes('json') ? await res.json() : await res.text();
    if (!res.ok) throw failure(res.status, body);
    return { res, body };
  };
  const get = async <T>(path: string): Promise<T> => (await fetched(path)).body;
  const send = async <T>(path: string, body: unknown, headers: Record<string, string> = {}, method = 'POST') => {
    const res = await fetch(path, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
    if (res.status === 401) throw signedOut();
    const json = await res.json();
    if (!res.ok) throw failure(res.status, json);
    return json.data as T;
  };
  // The session is an HttpOnly cookie the script cannot read, and a plain link would save an error
  // envelope as the file: the answer is fetched (with the cookie, errors thrown) and saved as a Blob.
  const download = async (path: string, name: string) => {
    const { res, body } = await fetched(path);
    const given = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') || '');
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([body], { type: res.headers.get('content-type') || 'text/csv' }));
    a.download = given ? given[1] : name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  };

  // A long number is set smaller, and wraps rather than clips when even that is too wide.
  const tile = (kpi: string, label: string, value: string, raw: unknown) =>
    '<div class="tile" data-kpi="' + kpi + '" data-value="' + esc(raw) + '"><div class="label">' + label +
    '</div><div class="value' + (value.length > 9 ? ' long' : '') + '">' + esc(value) + '</div></div>';

  const empty = '<p class="muted">Nothing in this range.</p>';

  // Charts draw shapes only; every word and number around them is HTML at the page's own sizes,
  // so it reads the same on a phone and a desktop (SVG text shrinks with the drawing).
  const frame = (top: string, svg: string, labels: string[]) => {
    const n = labels.length;
    const picks = n <= 3 ? labels : [labels[0], labels[Math.floor((n - 1) / 2)], labels[n - 1]];
    return '<div class="chart"><div class="axis">' + esc(top) + '</div>' + svg + '<div class="axis ticks">' +
      picks.map((l) => '<span>' + esc(l) + '</span>').join('') + '</div></div>';
  };

  const value = (p: Point, key: string) => Math.max(0, Number(p[key] ?? 0) || 0);

  function bars(series: Point[], keys: string[], colors: string[], format: (v: number) => string, none?: string) {
    const w = 640, h = 180, bw = w / (series.length || 1);
    const max = Math.max(0, ...series.map((s) => keys.reduce((a, k) => a + value(s, k), 0)));
    if (max === 0) return none || empty;
    let svg = '<svg viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="bar chart">';
    series.forEach((s, i) => {
      let y = h;
      keys.forEach((k, j) => {
        const v = value(s, k), bh = (v / max) * (h - 4);
        y -= bh;
        svg += '<rect x="' + (i * bw + 1) + '" y="' + y + '" width="' + Math.max(1, bw - 2) + '" height="' + bh +
          '" fill="' + colors[j] + '"><title>' + esc(s.label + ' ' + k + ': ' + format(v)) + '</title></rect>';
      });
    });
    return frame('max ' + format(max), svg + '</svg>', series.map((s) => s.label));
  }

  function line(series: Point[], key: string, format: (v: number) => string) {
    const w = 640, h = 160, n = Math.max(1, series.length - 1);
    const vals = series.map((s) => s[key]).filter((v): v is number => typeof v === 'number');
    if (vals.length === 0) return empty;
    if (vals.length === 1) {
      return '<p class="headline">' + esc(format(vals[0])) +
        '</p><p class="muted">Only one day in this range had checkouts.</p>';
    }
    const max = Math.max(...vals) || 1;
    const pts = series.flatMap((s, i) => {
      const v = s[key];
      return typeof v === 'number' ? [[4 + (i / n) * (w - 8), h - 4 - (v / max) * (h - 8)]] : [];
    });
    const d = pts.map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(' ');
    const svg = '<svg viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="line chart"><path d="' + d +
      '" fill="none" stroke="#3558c9" stroke-width="3"/>' +
      pts.map((p) => '<circle cx="' + p[0] + '" cy="' + p[1] + '" r="4" fill="#3558c9"/>').join('') + '</svg>';
    return frame('max ' + format(max), svg, series.map((s) => s.label));
  }

  /** A period's label: "Nov 3" for days and weeks, "Nov 2026" for months (UTC, as the API's periods). */
  function periodLabel(from: string) {
    const month = $<HTMLSelectElement>('granularity').value === 'month';
    return new Date(from).toLocaleDateString(
      'en-US',
      month
        ? { month: 'short', year: 'numeric', timeZone: 'UTC' }
        : { month: 'short', day: 'numeric', timeZone: 'UTC' },
    );
  }

  function render(metrics: Metrics, ops: Ops) {
    const currencySelect = $<HTMLSelectElement>('currency');
    const cur = metrics.total.by_currency.find((c) => c.currency === currencySelect.value) ||
      metrics.total.by_currency[0];
    const currency = cur ? cur.currency : 'usd';
    const t = metrics.total;
    const lots = (t.credit_lots || []).find((x) => x.currency === currency);
    const lotsNow = (ops.credit_lots || []).find((x) => x.currency === currency);
    // Organisations with activity in the range; money in this currency (or none: spending only).
    const orgs = (t.organisations || []).filter((o) => o.currency === null || o.currency === currency);
    const cash = (kpi: string, label: string, cents: number) => tile(kpi, label, money(cents, currency), cents);
    $('tiles').innerHTML = [
      cash('gmv', 'GMV', cur ? cur.gmv_cents : 0),
      cash('net_revenue', 'Net revenue', cur ? cur.net_revenue_cents : 0),
      tile(
        'take_rate',
        'Take rate (B2B)',
        pct(cur ? cur.b2b_provider_fees.take_rate : null),
        cur ? cur.b2b_provider_fees.take_rate : '',
      ),
      tile(
        'arpu',
        'ARPU',
        cur && cur.arpu_cents !== null ? money(cur.arpu_cents, currency) : '–',
        cur ? cur.arpu_cents : '',
      ),
      tile('conversion', 'Checkout conversion', pct(t.conversion.checkout_rate), t.conversion.checkout_rate ?? ''),
      cash('stripe_fees', 'Stripe fees (B2C)', cur ? cur.b2c_credits.stripe_fees_cents : 0),
      // Stripe Tax charged on top of prices: owed to tax authorities, never in GMV or revenue.
      cash('tax_collected', 'Tax collected (not revenue)', cur ? cur.b2c_credits.tax_collected_cents : 0),
      cash('platform_fees', 'Platform fees (B2B)', cur ? cur.b2b_provider_fees.platform_fees_cents : 0),
      cash('b2b2c_gmv', 'GMV via organisations', orgs.reduce((n, o) => n + o.gmv_cents, 0)),
      tile('outstanding', 'Outstanding credits', credits(t.credits.outstanding), t.credits.outstanding),
      tile('active_users', 'Active users', fmtInt.format(t.users.active), t.users.active),
      // Paid credits at their cost: deferred (unspent, now), recognised (spent) and breakage (expired) in the range.
      cash('deferred_revenue', 'Deferred revenue (now)', lotsNow ? lotsNow.deferred_revenue_cents : 0),
      cash('recognised_revenue', 'Recognised revenue', lots ? lots.recognised_revenue_cents : 0),
      cash('breakage_revenue', 'Breakage revenue', lots ? lots.breakage_revenue_cents : 0),
    ].join('');
    const per: Point[] = metrics.series.map((m) => {
      const c = m.by_currency.find((x) => x.currency === currency);
      return {
        label: periodLabel(m.from),
        b2c: c ? c.b2c_credits.net_revenue_cents : 0,
        b2b: c ? c.b2b_provider_fees.net_revenue_cents : 0,
        rate: m.conversion.checkout_rate,
      };
    });
    $('revenue-chart').innerHTML = bars(per, ['b2c', 'b2b'], ['#3558c9', '#2bb08c'], (v) => money(v, currency));
    $('conversion-chart').innerHTML = line(per, 'rate', pct);
    const hourly = ops.error_budget.hourly;
    const worst = hourly ? Math.max(0, ...hourly.map((h) => h.burn_rate.availability)) : 0;
    $('burn-chart').innerHTML = hourly
      ? '<p class="headline" data-kpi="burn_worst" data-value="' + worst + '">' + worst.toFixed(2) +
        '× <span class="muted">burn in the worst hour</span></p><p class="muted">1× spends the budget exactly over the SLO window.</p>' +
        bars(
          hourly.map((h) => ({ label: h.hour.slice(11, 16) + ' UTC', burn: h.burn_rate.availability })),
          ['burn'],
          ['#d9822b'],
          (v) => v.toFixed(2) + '×',
          '<p class="muted">No failed requests in the last 24 hours.</p>',
        )
      : '<p class="muted">Latency data (Redis) is not answering.</p>';
    $('recon').innerHTML = ops.reconciliation.length
      ? '<table><tr><th>Provider</th><th>Last run</th><th>Status</th></tr>' + ops.reconciliation.map((r) =>
        // Two providers may share a name: the id tells them apart.
        '<tr><td>' + esc(r.name) + ' <span class="muted">' + esc(String(r.provider_id).slice(0, 8)) +
        '</span></td><td class="nowrap">' + esc(r.last_day ?? 'never') + '</td><td class="' +
        (r.mismatches ? 'bad' : 'ok') + '">' +
        (r.mismatches
          ? esc(
            r.mismatches + (r.mismatches === 1 ? ' mismatch: ' : ' mismatches: ') +
              r.kinds.join(', ').replaceAll('_', ' '),
          )
          : 'reconciled') +
        '</td></tr>'
      ).join('') + '</table>'
      : '<p class="muted">No providers yet.</p>';
    const standing = ops.organisations;
    $('orgs').innerHTML = '<p class="muted">' + fmtInt.format(standing.count) + ' organisations, ' +
      fmtInt.format(standing.members) + ' funded members; ' + credits(standing.wallet_credits) +
      ' credits in wallets, ' +
      credits(standing.allowance_credits) + ' in allowances (now).</p>' +
      (orgs.length
        // Four columns, spending and ARPU under their headline; wider than the section (a phone, long
        // names, large sums), the table scrolls in its own box.
        ? '<div class="cards"><table><tr><th>Organisation</th><th>Members spending</th><th>GMV</th><th>Net revenue</th></tr>' +
          orgs.map((o) =>
            '<tr><td>' + esc(o.name) + '<br><span class="muted">' + esc(o.funding) + ', ' + credits(o.credits_spent) +
            ' credits spent' + (o.invoiced_cents ? ', ' + money(o.invoiced_cents, currency) + ' by invoice' : '') +
            '</span></td><td>' + fmtInt.format(o.active_members) + ' of ' + fmtInt.format(o.members) +
            '</td><td class="nowrap">' + money(o.gmv_cents, currency) + '</td><td><span class="nowrap">' +
            money(o.net_revenue_cents, currency) + '</span><br><span class="muted nowrap">' +
            (o.arpu_cents === null ? 'no ARPU' : money(o.arpu_cents, currency) + ' ARPU') + '</span></td></tr>'
          ).join('') + '</table></div>'
        : '<p class="muted">No organisation bought or spent credits in this range.</p>');
    // Promo, gift and sponsor codes in the range (billing.codes_report).
    const codes = t.codes;
    $('codes').innerHTML = codes
      ? '<table><tr><th>Promo codes</th><th>Gifts</th><th>Sponsor codes</th></tr><tr><td>' +
        fmtInt.format(codes.promo_redemptions) + ' redemptions<br><span class="muted">' +
        credits(codes.promo_credits_granted) + ' credits granted, ' + credits(codes.promo_credits_used) +
        ' used</span></td><td>' + fmtInt.format(codes.gift_sales) + ' sold<br><span class="muted nowrap">' +
        money(codes.gift_sales_cents, currency) + ', ' + fmtInt.format(codes.gifts_redeemed) +
        ' redeemed</span></td><td>' + credits(codes.sponsor_credits_issued) +
        ' credits set aside<br><span class="muted">' +
        credits(codes.sponsor_credits_redeemed) + ' redeemed, ' + fmtInt.format(codes.sponsor_codes_closed) +
        ' codes closed</span></td></tr></table>'
      : '<p class="muted">No code activity.</p>';
    renderPlans(t.plans, currency);
    $('alerts').innerHTML = ops.alerts.length
      ? '<table>' + ops.alerts.map((a) =>
        '<tr><td class="bad">' + esc(a.condition.replaceAll('_', ' ')) + '</td><td>' + esc(a.summary) + '</td></tr>'
      ).join('') + '</table>'
      : '<p class="ok">No open alerts.</p>';
    const w = ops.webhooks_24h;
    $('webhooks').innerHTML = '<p class="headline" data-kpi="webhook_success" data-value="' +
      esc(w.success_rate ?? '') +
      '">' + pct(w.success_rate) + ' <span class="muted">handled without failure</span></p><p class="muted">' +
      fmtInt.format(w.received) + ' events in 24 h: ' + fmtInt.format(w.processed) + ' processed, ' +
      fmtInt.format(w.ignored) + ' ignored, ' + fmtInt.format(w.failed) + ' failed</p>';
    const currencies = t.by_currency.map((c) => c.currency);
    if (currencySelect.options.length !== currencies.length) {
      currencySelect.innerHTML = (currencies.length ? currencies : ['usd']).map((c) => '<option>' + c + '</option>')
        .join('');
      currencySelect.value = currency;
    }
  }

  // Plans (billing.plan_metrics): subscribers and MRR at the range's end, who came and went in it,
  // and what became of the plan credits granted.
  function renderPlans(p: PlansReport | null, currency: string) {
    if (!p) return;
    const mrr = p.mrr.find((m) => m.currency === currency);
    $('plans').innerHTML = '<p class="headline" data-kpi="mrr" data-value="' + (mrr ? mrr.mrr_cents : 0) + '">' +
      money(mrr ? mrr.mrr_cents : 0, currency) + ' <span class="muted">MRR at the end</span></p><p class="muted">' +
      fmtInt.format(p.subscribers) + ' subscribers, ' + fmtInt.format(p.new_subscribers) + ' new, ' +
      fmtInt.format(p.churned) + ' churned (' + pct(p.churn_rate) +
      ')</p><table><tr><th>Plan credits granted</th><th>Used</th><th>Expired</th><th>Rolled over</th></tr><tr><td>' +
      credits(p.credits_granted) + '</td><td>' + credits(p.credits_used) + '</td><td>' + credits(p.credits_expired) +
      '</td><td>' + credits(p.credits_rolled_over) + '</td></tr></table>';
  }

  const range = () =>
    'from=' + $<HTMLInputElement>('from').value + '&to=' + $<HTMLInputElement>('to').value + '&granularity=' +
    $<HTMLSelectElement>('granularity').value;

  // Changing both dates fires two loads: only the latest may draw or report an error.
  let latestLoad = 0;
  async function load() {
    const mine = ++latestLoad;
    $('error').hidden = true;
    document.body.dataset.ready = 'false';
    try {
      const [metrics, ops] = await Promise.all([
        get<{ data: Metrics }>('./metrics?' + range()),
        get<{ data: Ops }>('./ops'),
      ]);
      if (mine !== latestLoad) return;
      render(metrics.data, ops.data);
    } catch (e) {
      if (mine !== latestLoad) return;
      showError(e);
    }
    document.body.dataset.ready = 'true';
  }

  const downloadCsv = () => download('./metrics?' + range() + '&format=csv', 'metrics.csv').catch(showError);

  $<HTMLInputElement>('to').value = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
  $<HTMLInputElement>('from').value = new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);
  for (const id of ['from', 'to', 'granularity', 'currency']) $(id).onchange = load;
  $('csv').onclick = downloadCsv;
  $('sign-out').onclick = () => fetch('./session', { method: 'DELETE' }).finally(() => location.assign('./dashboard'));
  load();

  const kit: DashboardKit = { $, fmtInt, money, credits, esc, empty, get, send, download, showError };
  for (const section of sections) section(kit);
}
