// The people who run the business: daily reports, metrics over any range (JSON or CSV), an
// ops overview, margins, rate cards (drafts, their dry run, publishing: rate-cards.ts), packages and plans (catalog.ts), and the dashboard page that shows them. Admin only: every route answers 403 to
// a signed-in non-admin. The caller is a bearer token or the dashboard's HttpOnly session
// cookie (session.ts), both checked by requireAdmin. The numbers are defined once, in SQL
// (docs/metrics.md).
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser, identifyWithSessionToken } from '../_shared/http/identify.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { createServerKey, getModelAccess, listServerKeys, revokeServerKey, setModelAccess } from './ai-access.ts';
import { aiStats, aiSummary, listCalls, oneCall } from './ai-calls.ts';
import type { AppContext } from '../_shared/app-env.ts';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { publishableKey } from '../_shared/keys.ts';
import { hourlyBurn, sloConfig } from '../_shared/http/slo.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { isUuid } from '../_shared/values/query.ts';
import { pageOf } from '../_shared/values/page.ts';
import { createPromoCode, disablePromoCode, listPromoCodes } from './codes.ts';
import { type Metrics, metricsCsv } from './csv.ts';
import { contentSecurityPolicy, dashboardPage, newNonce, signInPage } from './dashboard-page.ts';
import {
  ContinueRunSchema,
  CorrectionPreviewSchema,
  CorrectionRunSchema,
  CorrectionsQuerySchema,
  DailyReportSchema,
  MarginsSchema,
  MetricsSchema,
  VoidRequestSchema,
} from './schemas.ts';
import { rateCardRoutes } from './rate-cards.ts';
import { catalogueSource, compareRoutes, type Route } from './provider-catalogue.ts';
import { catalogRoutes } from './catalog.ts';
import { bookRoutes } from './books.ts';
import {
  accessTokenFor,
  endSession,
  isFormPost,
  readSignIn,
  refuseCrossOrigin,
  sessionToken,
  startSession,
} from './session.ts';

const app = createApp('admin', { sessionToken });
const slo = sloConfig();

// Every answer, JSON included: never framed, never sniffed, never leaks its URL as a referrer.
app.use('*', async function securityHeaders(c, next) {
  await next();
  c.header('X-Frame-Options', 'DENY');
  c.header('X-Content-Type-Options', 'nosniff');
  c.header('Referrer-Policy', 'no-referrer');
  c.header('Cross-Origin-Opener-Policy', 'same-origin');
  if (!c.res.headers.has('content-security-policy')) {
    c.header('Content-Security-Policy', "default-src 'none'; frame-ancestors 'none'; base-uri 'none'");
  }
});

/** An HTML page under a fresh nonce and its own policy; never cached (it is per admin). */
function page(c: AppContext, status: number, withScript: boolean, render: (nonce: string) => string) {
  const nonce = newNonce();
  return c.html(render(nonce), status as ContentfulStatusCode, {
    'content-security-policy': contentSecurityPolicy(nonce, withScript),
    'cache-control': 'no-store',
  });
}

/** The sign-in page (no script), with what went wrong if anything. */
const signIn = (c: AppContext, status: number, message?: string) =>
  page(c, status, false, (nonce) => signInPage(nonce, { message, password: publishableKey() !== undefined }));

const csv = (c: AppContext, body: string, name: string) =>
  c.body(body, 200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': `attachment; filename="${name}"`,
  });

app.get('/reports/daily', requireAdmin, async (c) => {
  const q = readQuery(c, DailyReportSchema);
  const [row] = await sql<
    { metrics: Metrics; computed_at: Date | null }[]
  >`select * from billing.get_daily_report(${q.date}::date)`;
  if (q.format === 'csv') return csv(c, metricsCsv([row.metrics]), `daily-${q.date}.csv`);
  // stored: false when the nightly run has not reached this day yet (the numbers are live).
  return ok(c, {
    date: q.date,
    stored: row.computed_at !== null,
    computed_at: row.computed_at?.toISOString() ?? null,
    metrics: row.metrics,
  });
});

app.get('/metrics', requireAdmin, async (c) => {
  const q = readQuery(c, MetricsSchema);
  const [{ report }] = await sql<{ report: { total: Metrics; series: Metrics[] } }[]>`
      select billing.metrics_report(${q.from}::date, ${q.to}::date, ${q.granularity}) as report`;
  const { total, series } = report;
  if (q.format === 'csv') return csv(c, metricsCsv(series), `metrics-${q.from}-${q.to}-${q.granularity}.csv`);
  return ok(c, { from: q.from, to: q.to, granularity: q.granularity, total, series });
});

// Revenue, provider cost and margin per model, organisation or student (docs/pricing.md § Provider cost and margins).
app.get('/margins', requireAdmin, async (c) => {
  const q = readQuery(c, MarginsSchema);
  const [{ report }] = await sql<
    { report: Record<string, unknown> }[]
  >`select billing.margins_report(${q.from}::date, ${q.to}::date, ${q.by}) as report`;
  return ok(c, report);
});

// Every routed model's provider price beside the pinned catalogue's (docs/pricing.md § Provider
// prices from the catalogue): the margins section shows the catalogue's figure where a margin is unknown.
app.get('/provider-prices', requireAdmin, async (c) => {
  const [{ routes }] = await sql<{ routes: Route[] }[]>`select billing.provider_price_routes() as routes`;
  return ok(c, { source: catalogueSource, models: compareRoutes(routes) });
});

app.get('/ops', requireAdmin, async (c) => {
  const [{ overview }] = await sql`select billing.ops_overview() as overview`;
  // Latency data lives in Redis: without it the rest of the page still works.
  const burn = await hourlyBurn(slo).catch(() => null);
  // The same field names as GET /health/slo.
  const objectives = { availability: slo.availability, p95_ms: slo.p95Ms };
  return ok(c, { ...overview, error_budget: { objectives, hourly: burn } });
});

app.post('/codes', requireAdmin, createPromoCode);
app.get('/codes', requireAdmin, listPromoCodes);
app.post('/codes/:id/disable', requireAdmin, disablePromoCode);

// The AI gateway: who may call which model, the keys trusted servers report usage with, the call log.
app.get('/model-access', requireAdmin, getModelAccess);
app.put('/model-access', requireAdmin, setModelAccess);
app.post('/server-keys', requireAdmin, createServerKey);
app.get('/server-keys', requireAdmin, listServerKeys);
app.delete('/server-keys/:id', requireAdmin, revokeServerKey);
app.get('/ai/calls', requireAdmin, listCalls);
app.get('/ai/calls/:id', requireAdmin, oneCall);
app.get('/ai/stats', requireAdmin, aiStats);
app.get('/ai/summary', requireAdmin, aiSummary);

// Corrections (docs/pricing.md § Corrections): the money moves in SQL (53-corrections.sql), which
// checks the admin's standing again in the same statement.
const chargeId = (raw: string): string => {
  if (!/^[1-9][0-9]{0,17}$/.test(raw)) throw new AppError('not_found', 'CHARGE_NOT_FOUND', 'No such charge.');
  return raw;
};
const runId = (raw: string): string => {
  if (!isUuid(raw)) throw new AppError('not_found', 'CORRECTION_NOT_FOUND', 'No such correction run.');
  return raw;
};

app.post('/charges/:id/void', requireAdmin, async (c) => {
  const id = chargeId(c.req.param('id'));
  const { reason } = await readJson(c, VoidRequestSchema);
  const [{ voided }] = await sql`select billing.void_charge(${currentUser(c).id}, ${id}::bigint, ${reason}) as voided`;
  return ok(c, voided);
});

app.post('/corrections/preview', requireAdmin, async (c) => {
  const f = await readJson(c, CorrectionPreviewSchema);
  const [{ preview }] = await sql`select billing.preview_correction(${
    currentUser(c).id
  }, ${f.model}, ${f.from}::timestamptz, ${f.to}::timestamptz,
          ${f.failed_only}) as preview`;
  return ok(c, preview);
});

// The run is recorded, then its first batch runs in a transaction of its own; pg_cron (or
// /continue) does the rest, one batch a transaction.
app.post('/corrections', requireAdmin, async (c) => {
  const key = idempotencyKey(c);
  const r = await readJson(c, CorrectionRunSchema);
  const admin = currentUser(c).id;
  const [{ run }] = await sql<{ run: { id: string; replayed: boolean } }[]>`
      select billing.start_correction_run(${admin}, ${key}, ${r.model}, ${r.from}::timestamptz, ${r.to}::timestamptz,
        ${r.failed_only}, ${r.reason}) as run`;
  const [{ state }] = await sql`select billing.continue_correction_run(${admin}, ${run.id}::uuid, 500) as state`;
  return ok(c, { ...state as object, replayed: run.replayed }, run.replayed ? 200 : 201);
});

app.get('/corrections', requireAdmin, async (c) => {
  const q = readQuery(c, CorrectionsQuerySchema);
  const [{ runs }] = await sql<{ runs: { id: string }[] }[]>`
      select billing.list_correction_runs(${currentUser(c).id}, ${q.cursor ?? null}, ${q.limit + 1}) as runs`;
  return ok(c, pageOf(runs, q.limit, (last) => last.id));
});

app.get('/corrections/:id', requireAdmin, async (c) => {
  const id = runId(c.req.param('id'));
  const [{ run }] = await sql`select billing.get_correction_run(${currentUser(c).id}, ${id}::uuid) as run`;
  return ok(c, run);
});

app.post('/corrections/:id/continue', requireAdmin, async (c) => {
  const id = runId(c.req.param('id'));
  const { batch } = await readJson(c, ContinueRunSchema);
  const [{ state }] = await sql`select billing.continue_correction_run(${
    currentUser(c).id
  }, ${id}::uuid, ${batch}) as state`;
  return ok(c, state);
});

rateCardRoutes(app);
catalogRoutes(app);
bookRoutes(app);

/**
 * The dashboard, for an admin signed in with the session cookie (or a bearer header). Anyone
 * else gets the sign-in page: 401 when signed out or the token is bad, 403 for a non-admin,
 * and a cookie that failed is cleared so the next visit starts clean.
 */
app.get('/dashboard', async (c) => {
  try {
    await requireAdmin(c, () => Promise.resolve());
  } catch (err) {
    if (!(err instanceof AppError) || err.status >= 500) throw err;
    if (sessionToken(c)) endSession(c);
    const signedOut = !c.get('user') && !c.get('authError');
    return signIn(c, err.status, signedOut ? undefined : err.message);
  }
  return page(c, 200, true, dashboardPage);
});

/**
 * Sign-in: the token is verified and requireAdmin applied before the cookie is set. The form
 * gets a redirect to the dashboard (or the sign-in page again with the reason); JSON callers
 * get `{user_id, expires_at}` or the error envelope. The token never appears in a body.
 */
app.post('/session', async (c) => {
  refuseCrossOrigin(c);
  const form = isFormPost(c);
  let token: string;
  try {
    token = await accessTokenFor(await readSignIn(c));
    await identifyWithSessionToken(c, token);
    await requireAdmin(c, () => Promise.resolve());
  } catch (err) {
    if (!form || !(err instanceof AppError)) throw err;
    endSession(c);
    return signIn(c, err.status, err.message);
  }
  const expiresAt = startSession(c, token);
  if (form) return c.redirect('./dashboard', 303);
  return ok(c, { user_id: currentUser(c).id, expires_at: expiresAt.toISOString() });
});

/** Sign-out: clears the cookie (the access token itself lives until it expires). */
app.delete('/session', (c) => {
  refuseCrossOrigin(c);
  endSession(c);
  return ok(c, { signed_out: true });
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
