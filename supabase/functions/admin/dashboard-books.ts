// The dashboard's books (books.ts, docs/accounting.md): their HTML, style and script, joined into
// dashboard-page.ts's one <style>/<script> (so they carry its CSP nonce). The script is a section
// of dashboard-script.ts's kind: it runs after the page's own, with its helpers.
//   Books: a range of UTC days and a currency, GET ./journal?format=json: each day's balanced
//     entry (debits = credits) with its lines, the reconciliation against the revenue report the
//     answer carries, and the CSV in each flavour (plain, Xero, QuickBooks Online), fetched with
//     the session cookie and saved as a file.
//   Chart of accounts: GET/PUT ./journal/accounts, each account's code, name and Xero tax rate
//     editable; only what changed is sent; a refusal (the standard error envelope) is shown beside
//     the field it names.
//   Account as of: a user id and an instant, GET ./users/:id/balance?at= and ./users/:id/lots?at=:
//     balance, held and available then, and each lot as it stood (what it may pay for, if not any
//     model).
/// <reference lib="dom" />
import type { BalanceAsOf, Lot } from '../_shared/contract/index.ts';
import type { ApiFailure, DashboardKit } from './dashboard-script.ts';
import type { Journal as JournalRows, JournalEntry, JournalLine } from './journal-csv.ts';

export const booksStyle = `
.books-form { display: flex; flex-wrap: wrap; gap: .4rem; align-items: end; margin: 0 0 .6rem; }
.books-form label { display: flex; flex-direction: column; font-size: .8rem; color: #556; }
.books-form input { width: 9rem; }
.books-form input.id { width: min(22rem, 100%); box-sizing: border-box; }
.books-form label:has(input.id) { flex: 1 1 16rem; }
/* Whole words: a table wider than a phone scrolls in its own box (.cards). */
#books td, #books-recon td, #chart td, #as-of td { overflow-wrap: break-word; }
#chart input { width: 100%; min-width: 9rem; box-sizing: border-box; }
#chart input[name="code"] { min-width: 6rem; }
#chart input[name="name"] { min-width: 15rem; }
#chart input[aria-invalid="true"] { outline: 2px solid #b3261e; background: #fde8e8; }
.num { text-align: right; white-space: nowrap; }
details summary { cursor: pointer; margin: .4rem 0; }
`;

const downloads = [['plain', 'Plain CSV'], ['xero', 'Xero CSV'], ['qbo', 'QuickBooks Online CSV']]
  .map(([flavour, label]) => `<button type="button" data-flavour="${flavour}">${label}</button>`).join(' ');

export const booksSections = `
  <section class="wide" id="books-section"><h2>Books</h2>
    <form id="books-form" class="books-form">
      <label>From <input type="date" id="books-from" required></label>
      <label>To (exclusive) <input type="date" id="books-to" required></label>
      <label>Currency <input id="books-currency" value="usd" placeholder="all" maxlength="3" autocomplete="off"></label>
      <button id="books-show">Show</button>
    </form>
    <p id="books-downloads" class="muted">One balanced journal entry per UTC day and currency (docs/accounting.md).
      Download: ${downloads}</p>
    <div id="books" data-testid="books"></div>
    <h2>Reconciliation with the revenue report</h2><div id="books-recon" data-testid="books-recon"></div></section>
  <section class="wide"><h2>Chart of accounts</h2>
    <form id="chart-form"><div id="chart" data-testid="chart"></div>
      <p><button id="chart-save">Save changes</button> <span id="chart-status" class="muted" role="status"></span></p>
      <p id="chart-error" class="bad" role="alert" hidden></p></form></section>
  <section class="wide"><h2>Account as of</h2>
    <form id="as-of-form" class="books-form">
      <label>User id <input id="as-of-user" class="id" required autocomplete="off" placeholder="00000000-0000-4000-8000-000000000000"></label>
      <label>At (UTC unless an offset is given) <input id="as-of-at" required autocomplete="off"></label>
      <button id="as-of-show">Look up</button>
    </form>
    <div id="as-of" data-testid="as-of"></div>
    <button id="as-of-more" class="more" hidden>More lots</button></section>`;

// What GET ./journal answers: the rows journal-csv.ts lays out, each line with what moved it in words (books.ts).
type Line = JournalLine & { description: string };
type Entry = Omit<JournalEntry, 'lines'> & { lines: Line[] };
type Journal = Omit<JournalRows, 'entries'> & { entries: Entry[] };
type Reconciliation = JournalRows['reconciliation'][number];
type Account = {
  key: string;
  code: string;
  name: string;
  tax_rate: string;
  updated_at: string;
  updated_by: string | null;
};
/** Fills the Books, Chart of accounts and Account as of sections (served as text: everything it uses is inside). */
export function booksScript({ $, get, send, download, esc, credits, empty }: DashboardKit): void {
  // Amounts in a currency's major unit as the API writes them ("1234.5" → "1,234.5"): exact, no float.
  const grouped = (s: string) => {
    const [w, f] = s.split('.');
    return w.replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (f === undefined ? '' : '.' + f);
  };
  // Minor units (the reconciliation's cents) in the major unit, by the currency's own places.
  const places = (currency: string) => {
    try {
      return new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() })
        .resolvedOptions().maximumFractionDigits ?? 2;
    } catch {
      return 2;
    }
  };
  const minor = (s: string, currency: string) => {
    const n = places(currency), neg = s.startsWith('-'), digits = s.replace(/^-/, '').padStart(n + 1, '0');
    const text = n ? digits.slice(0, -n) + '.' + digits.slice(-n) : digits;
    return (neg ? '−' : '') + grouped(text);
  };
  const failed = (e: unknown) => '<p class="bad" role="alert">' + esc((e as Error).message || e) + '</p>';
  const cell = (v: string | null) => '<td class="num">' + (v === null ? '' : esc(grouped(v))) + '</td>';

  // Books -------------------------------------------------------------------------------------
  const booksQuery = () => {
    const cur = $<HTMLInputElement>('books-currency').value.trim().toLowerCase();
    return 'from=' + $<HTMLInputElement>('books-from').value + '&to=' + $<HTMLInputElement>('books-to').value +
      (cur ? '&currency=' + encodeURIComponent(cur) : '');
  };

  function renderEntries(j: Journal) {
    if (j.entries.length === 0) return empty;
    const rows = j.entries.map((e) =>
      '<tr data-date="' + esc(e.date) + '" data-currency="' + esc(e.currency) + '" data-debit="' +
      esc(e.debit_total) + '" data-credit="' + esc(e.credit_total) + '"><td class="nowrap">' + esc(e.date) +
      '</td><td>' + esc(e.currency.toUpperCase()) + '</td><td>' + esc(e.reference) + '</td>' + cell(e.debit_total) +
      cell(e.credit_total) + '<td class="' + (e.debit_total === e.credit_total ? 'ok">balanced' : 'bad">unbalanced') +
      '</td><td class="num">' + e.lines.length + '</td></tr>'
    ).join('');
    const lines = j.entries.flatMap((e) =>
      e.lines.map((l) =>
        '<tr><td class="nowrap">' + esc(e.date) + ' ' + esc(e.currency.toUpperCase()) + '</td><td>' + esc(l.code) +
        ' ' + esc(l.name) +
        '</td><td>' + esc(l.description) + '</td>' + cell(l.debit) + cell(l.credit) + '</tr>'
      )
    ).join('');
    return '<div class="cards"><table><tr><th>Day (UTC)</th><th>Currency</th><th>Reference</th>' +
      '<th class="num">Debits</th><th class="num">Credits</th><th></th><th class="num">Lines</th></tr>' + rows +
      '</table></div><details><summary>Every line</summary><div class="cards"><table><tr><th>Day</th>' +
      '<th>Account</th><th>What</th><th class="num">Debit</th><th class="num">Credit</th></tr>' + lines +
      '</table></div></details>';
  }

  const itemNames: Record<string, string> = {
    gmv_cents: 'Credit sales (GMV)',
    refunds_cents: 'Refunds',
    disputes_lost_cents: 'Disputes lost',
    stripe_fees_cents: 'Stripe fees',
    tax_payable_cents: 'Tax payable, net',
    platform_fees_cents: 'Platform fees, net',
    paid_granted_cents: 'Paid credits granted',
    recognised_revenue_cents: 'Revenue recognised on use',
    breakage_revenue_cents: 'Breakage revenue',
    paid_reversed_cents: 'Paid credits reversed',
    debt_settled_cents: 'Debts settled',
    deferred_revenue_change_cents: 'Deferred revenue, change',
  };
  function renderReconciliation(j: Journal) {
    if (j.reconciliation.length === 0) return '<p class="muted">Nothing to reconcile in this range.</p>';
    return j.reconciliation.map((r) =>
      '<div class="cards"><table data-currency="' + esc(r.currency) + '"><tr><th>' + esc(r.currency.toUpperCase()) +
      '</th><th class="num">Journal</th><th class="num">Revenue report</th><th class="num">Difference</th></tr>' +
      r.items.map((i) =>
        '<tr data-item="' + esc(i.item) + '" data-journal="' + esc(i.journal) + '" data-report="' +
        esc(i.revenue_report ?? '') + '" data-ledger="' + esc(i.ledger ?? '') + '" data-difference="' +
        esc(i.difference ?? '') + '"><td>' +
        esc(itemNames[i.item] ?? i.item.replace(/_cents$/, '').replaceAll('_', ' ')) + '</td><td class="num">' +
        minor(i.journal, r.currency) + '</td><td class="num">' +
        (i.revenue_report !== null
          ? minor(i.revenue_report, r.currency)
          : i.ledger !== null
          ? '<span class="muted">ledger</span> ' + minor(i.ledger, r.currency)
          : '<span class="muted">not in the report</span>') +
        '</td><td class="num' + (i.difference === '0' ? ' ok' : '') + '">' +
        (i.difference === null ? '–' : minor(i.difference, r.currency)) + '</td></tr>'
      ).join('') + '</table></div>'
    ).join('') +
      '<p class="muted">Journal − report: zero for money always, and for credits over one day; over several days, ' +
      'the rounding only (at most half a cent per day and source). Deferred revenue is held to the ledger: ' +
      'the rounding only, at most half a cent per day and source.</p>';
  }

  let latestBooks = 0;
  async function loadBooks() {
    const mine = ++latestBooks;
    $('books').dataset.ready = 'false';
    try {
      const j = (await get<{ data: Journal }>('./journal?format=json&' + booksQuery())).data;
      if (mine !== latestBooks) return;
      $('books').innerHTML = renderEntries(j);
      $('books-recon').innerHTML = renderReconciliation(j);
    } catch (e) {
      if (mine !== latestBooks) return;
      $('books').innerHTML = failed(e);
      $('books-recon').innerHTML = '';
    }
    $('books').dataset.ready = 'true';
  }

  async function downloadJournal(e: MouseEvent) {
    const b = (e.target as Element).closest<HTMLButtonElement>('button[data-flavour]');
    if (!b) return;
    const flavour = b.dataset.flavour ?? 'plain';
    b.disabled = true;
    try {
      await download(
        './journal?format=csv&flavour=' + flavour + '&' + booksQuery(),
        'journal-' + flavour + '.csv',
      );
    } catch (err) {
      $('books').innerHTML = failed(err);
    } finally {
      b.disabled = false;
    }
  }

  // Chart of accounts ---------------------------------------------------------------------------
  const fields = ['code', 'name', 'tax_rate'] as const;
  function renderChart(accounts: Account[]) {
    $('chart').innerHTML = '<div class="cards"><table><tr><th>Account</th><th>Code (Xero)</th>' +
      '<th>Name (QuickBooks Online)</th><th>Tax rate (Xero)</th><th>Changed</th></tr>' +
      accounts.map((a) =>
        '<tr data-key="' + esc(a.key) + '"><td>' + esc(a.key) + '</td>' +
        fields.map((f) =>
          '<td><input name="' + f + '" value="' + esc(a[f]) + '" data-saved="' + esc(a[f]) + '" aria-label="' +
          esc(a.key + ' ' + f.replace('_', ' ')) + '"></td>'
        ).join('') + '<td class="muted">' + (a.updated_by ? esc(a.updated_at.slice(0, 16).replace('T', ' ')) : '–') +
        '</td></tr>'
      ).join('') + '</table></div>';
  }
  async function loadChart() {
    try {
      renderChart((await get<{ data: { items: Account[] } }>('./journal/accounts')).data.items);
    } catch (e) {
      $('chart').innerHTML = failed(e);
    }
  }
  async function saveChart(e: SubmitEvent) {
    e.preventDefault();
    const status = $('chart-status'), error = $('chart-error');
    error.hidden = true;
    const inputs = Array.from($('chart').querySelectorAll<HTMLInputElement>('input'));
    for (const i of inputs) i.removeAttribute('aria-invalid');
    // Only what changed: an omitted field stays as it is.
    const changes: Record<string, string>[] = [];
    for (const row of Array.from($('chart').querySelectorAll<HTMLTableRowElement>('tr[data-key]'))) {
      const change: Record<string, string> = {};
      for (const i of Array.from(row.querySelectorAll('input'))) {
        if (i.value !== i.dataset.saved) change[i.name] = i.value.trim();
      }
      if (Object.keys(change).length) changes.push({ key: row.dataset.key ?? '', ...change });
    }
    if (changes.length === 0) {
      status.textContent = 'Nothing changed.';
      return;
    }
    status.textContent = 'Saving…';
    try {
      const chart = await send<{ items: Account[] }>('./journal/accounts', { accounts: changes }, {}, 'PUT');
      renderChart(chart.items);
      status.textContent = 'Saved.';
    } catch (err) {
      status.textContent = '';
      error.textContent = (err as Error).message;
      error.hidden = false;
      // "accounts.2.code": the third account sent, its code.
      const at = /^accounts\.(\d+)\.(\w+)/.exec((err as ApiFailure).field ?? '');
      const bad = at && changes[Number(at[1])]
        ? $('chart').querySelector<HTMLInputElement>(
          'tr[data-key="' + changes[Number(at[1])].key + '"] input[name="' + at[2] + '"]',
        )
        : null;
      if (bad) {
        bad.setAttribute('aria-invalid', 'true');
        bad.focus();
      }
    }
  }

  // Account as of -------------------------------------------------------------------------------
  // An instant as typed: with an offset as it is; a bare date or date-time is UTC.
  const instant = (s: string) => /^\d{4}-\d\d-\d\d$/.test(s) ? s + 'T00:00:00Z' : /T[\d:.]+$/.test(s) ? s + 'Z' : s;
  const appliesTo = (l: Lot) =>
    l.applies_to === null ? '' : l.applies_to.length ? 'only for: ' + l.applies_to.join(', ') : 'for no model';
  const when = (at: string) => esc(at.slice(0, 19).replace('T', ' '));
  const lotRows = (lots: Lot[]) =>
    lots.map((l) =>
      '<tr data-lot="' + esc(l.id) + '"><td>' + esc(l.id) + '</td><td>' + esc(l.source.replaceAll('_', ' ')) +
      '<br><span class="muted">' + esc(l.category) + '</span></td><td class="nowrap">' + when(l.granted_at) +
      '</td><td class="num">' + credits(l.amount) + '</td><td class="num" data-remaining="' + esc(l.remaining) +
      '">' + credits(l.remaining) + '</td><td class="nowrap">' + (l.expires_at ? when(l.expires_at) : 'never') +
      '</td><td class="notes">' +
      [l.frozen ? 'frozen (disputed)' : '', appliesTo(l)].filter(Boolean).map(esc).join('<br>') + '</td></tr>'
    ).join('');
  let asOf: { path: string; at: string; cursor: string | null } | null = null;
  async function lookUp(e: SubmitEvent) {
    e.preventDefault();
    const user = $<HTMLInputElement>('as-of-user').value.trim();
    const at = instant($<HTMLInputElement>('as-of-at').value.trim());
    const path = './users/' + encodeURIComponent(user);
    $('as-of-more').hidden = true;
    try {
      const q = '?at=' + encodeURIComponent(at);
      const [b, page] = await Promise.all([
        get<{ data: BalanceAsOf }>(path + '/balance' + q),
        get<{ data: { items: Lot[]; next_cursor: string | null } }>(path + '/lots' + q + '&limit=50'),
      ]);
      asOf = { path, at, cursor: page.data.next_cursor };
      const x = b.data;
      $('as-of').innerHTML = '<p class="headline" data-kpi="as_of_balance" data-value="' + esc(x.balance) + '">' +
        credits(x.balance) + ' <span class="muted">credits at ' + when(x.as_of) + ' UTC</span></p>' +
        '<p class="muted" data-held="' + esc(x.held) + '" data-available="' + esc(x.available) + '">held ' +
        credits(x.held) + ' · available ' + credits(x.available) +
        (x.expiring ? ' · next expiry ' + credits(x.expiring.amount) + ' on ' + when(x.expiring.at) : '') + '</p>' +
        (page.data.items.length
          ? '<div class="cards"><table><tr><th>Lot</th><th>Source</th><th>Granted</th><th class="num">Amount</th>' +
            '<th class="num">Remaining</th><th>Expires</th><th>Notes</th></tr>' + lotRows(page.data.items) +
            '</table></div>'
          : '<p class="muted">No lots then.</p>');
      $('as-of-more').hidden = !asOf.cursor;
    } catch (err) {
      asOf = null;
      $('as-of').innerHTML = failed(err);
    }
  }
  async function moreLots() {
    if (!asOf?.cursor) return;
    try {
      const page = (await get<{ data: { items: Lot[]; next_cursor: string | null } }>(
        asOf.path + '/lots?at=' + encodeURIComponent(asOf.at) + '&limit=50&cursor=' + asOf.cursor,
      )).data;
      $('as-of').querySelector('table')?.insertAdjacentHTML('beforeend', lotRows(page.items));
      asOf.cursor = page.next_cursor;
      $('as-of-more').hidden = !asOf.cursor;
    } catch (err) {
      $('as-of').insertAdjacentHTML('beforeend', failed(err));
    }
  }

  // The page's range to start with; each section then has its own.
  $<HTMLInputElement>('books-from').value = $<HTMLInputElement>('from').value;
  $<HTMLInputElement>('books-to').value = $<HTMLInputElement>('to').value;
  $<HTMLInputElement>('as-of-at').value = new Date().toISOString().slice(0, 19) + 'Z';
  $<HTMLFormElement>('books-form').onsubmit = (e) => {
    e.preventDefault();
    loadBooks();
  };
  for (const id of ['books-from', 'books-to']) $(id).addEventListener('change', loadBooks);
  $('books-downloads').onclick = downloadJournal;
  $<HTMLFormElement>('chart-form').onsubmit = saveChart;
  $<HTMLFormElement>('as-of-form').onsubmit = lookUp;
  $('as-of-more').addEventListener('click', moreLots);
  loadBooks();
  loadChart();
}
