// The dashboard's and the sign-in page's HTML, served by the function itself (no CDN, no bundle):
// KPI tiles, SVG charts, the reconciliation table, open alerts and webhook health. Its style is
// dashboard-style.ts, its script dashboard-script.ts (typed TypeScript, served as the text of its
// function). One <style> and one <script>, each carrying the response's CSP nonce: no inline
// style attributes or handlers, so the policy needs no 'unsafe-inline'. Sections with their own
// module (dashboard-margins.ts, dashboard-ai.ts, dashboard-catalog.ts, dashboard-books.ts) join
// the one style and script.
import { marginsScript, marginsSections, marginsStyle } from './dashboard-margins.ts';
import { aiScript, aiSections, aiStyle } from './dashboard-ai.ts';
import { catalogScript, catalogSections, catalogStyle } from './dashboard-catalog.ts';
import { booksScript, booksSections, booksStyle } from './dashboard-books.ts';
import { dashboardScript } from './dashboard-script.ts';
import { rateCardsScript, rateCardsSections } from './dashboard-rate-cards.ts';
import { dashboardStyle } from './dashboard-style.ts';

/** The page's script: the typed functions' own text (Deno has stripped the types), run at once. */
const script =
  `(${dashboardScript})(${rateCardsScript}, ${marginsScript}, ${aiScript}, ${catalogScript}, ${booksScript});`;

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
<title>${title}</title><style nonce="${nonce}">${dashboardStyle}${marginsStyle}${aiStyle}${catalogStyle}${booksStyle}</style></head>`;

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
  <section><h2>Stripe webhooks</h2><div id="webhooks"></div></section>${marginsSections}${aiSections}${booksSections}${rateCardsSections}${catalogSections}
</div>
<script nonce="${nonce}">${script}</script></body></html>`;

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
