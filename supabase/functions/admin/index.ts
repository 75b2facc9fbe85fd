// The people who run the business: daily reports, metrics over any range (JSON or CSV), an
// ops overview, and the dashboard page that shows them. Admin JWT only: every route answers
// 403 to a signed-in non-admin. The numbers are defined once, in SQL (docs/metrics.md).
import { type AppContext, createApp, ok, requireAdmin } from '../_shared/app.ts';
import { verifyUserToken } from '../_shared/auth.ts';
import { call } from '../_shared/db.ts';
import { AppError } from '../_shared/errors.ts';
import { hourlyBurn, sloConfig } from '../_shared/slo.ts';
import { readQuery } from '../_shared/validate.ts';
import { type Metrics, metricsCsv } from './csv.ts';
import { dashboardPage, signInPage } from './dashboard-page.ts';
import { DailyReportSchema, MetricsSchema } from './schemas.ts';

const app = createApp('admin');
const slo = sloConfig();

const csv = (c: AppContext, body: string, name: string) =>
  c.body(body, 200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': `attachment; filename="${name}"`,
  });

app.get('/reports/daily', requireAdmin, async (c) => {
  const q = readQuery(c, DailyReportSchema);
  const [row] = await call((sql) =>
    sql<{ metrics: Metrics; computed_at: Date | null }[]>`
      select coalesce(d.metrics, billing.revenue_metrics(${q.date}::timestamp at time zone 'UTC',
               (${q.date}::date + 1)::timestamp at time zone 'UTC')) as metrics, d.computed_at
      from (select 1) one left join billing.daily_revenue d on d.day = ${q.date}::date`
  );
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
  const [row] = await call((sql) =>
    sql<{ total: Metrics; series: Metrics[] }[]>`
      select billing.revenue_metrics(${q.from}::timestamp at time zone 'UTC', ${q.to}::timestamp at time zone 'UTC') as total,
             billing.metrics_series(${q.from}::date, ${q.to}::date, ${q.granularity}) as series`
  );
  if (q.format === 'csv') return csv(c, metricsCsv(row.series), `metrics-${q.from}-${q.to}-${q.granularity}.csv`);
  return ok(c, { from: q.from, to: q.to, granularity: q.granularity, total: row.total, series: row.series });
});

app.get('/ops', requireAdmin, async (c) => {
  const [{ overview }] = await call((sql) => sql`select billing.ops_overview() as overview`);
  // Latency data lives in Redis: without it the rest of the page still works.
  const burn = await hourlyBurn(slo).catch(() => null);
  return ok(c, { ...overview, error_budget: { objectives: slo, hourly: burn } });
});

/**
 * The dashboard. A browser cannot send a bearer header on navigation, so the page also
 * accepts the token from the `sl_admin_token` cookie its sign-in form sets; without one it
 * answers 401 with that sign-in form, and a non-admin gets 403.
 */
app.get('/dashboard', async (c) => {
  const cookie = c.req.header('cookie')?.match(/(?:^|;\s*)sl_admin_token=([A-Za-z0-9._~+/=-]+)/)?.[1];
  const token = c.req.header('authorization')?.replace(/^Bearer /, '') ?? cookie;
  const page = (html: string, status: 200 | 401 | 403) =>
    c.html(html, status, {
      'content-security-policy':
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' https: http:; img-src data:; form-action 'self'",
      'cache-control': 'no-store',
    });
  if (!token) return page(signInPage(), 401);
  const user = await verifyUserToken(token).catch(() => null);
  if (!user) return page(signInPage('That token is not valid or has expired.'), 401);
  if (!user.isAdmin) {
    throw new AppError('forbidden', 'FORBIDDEN', 'This page is for administrators.');
  }
  return page(dashboardPage(), 200);
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
