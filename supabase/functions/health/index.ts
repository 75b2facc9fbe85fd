// Health and operations: liveness, readiness, SLOs, Prometheus metrics, open alerts, and the
// deep health check. Liveness has no dependencies; readiness is 200 only when the database
// answers, the auth key set loads, the Stripe configuration is valid and, in live mode, no
// setting is unsafe.
import { z } from 'zod';
import { complete } from '../_shared/adapters/ai.ts';
import { aiUpstreams } from '../_shared/adapters/ai-upstreams.ts';
import { createApp, ok } from '../_shared/http/app.ts';
import { requireAdmin, requireAdminUnless } from '../_shared/http/require-admin.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { reloadKeySet } from '../_shared/http/auth.ts';
import { db, jsonb, sql } from '../_shared/adapters/db.ts';
import { parseEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { bucketBounds } from '../_shared/http/latency.ts';
import { assertLiveConfig } from '../_shared/live-config.ts';
import { whole } from '../_shared/values/page.ts';
import { guarded, redis, RedisEnvSchema, redisHealth } from '../_shared/adapters/redis.ts';
import { constantTimeEqual, hasCronSecret } from '../_shared/http/secrets.ts';
import { stripe, StripeEnvSchema } from '../_shared/adapters/stripe.ts';
import { runChecks } from './checks.ts';
import { Exposition } from './prometheus.ts';
import { addAiMetrics } from './ai-metrics.ts';
import { burnRate, readWindows, sloConfig, statsByRoute } from '../_shared/http/slo.ts';

const env = parseEnv(z.object({
  METRICS_TOKEN: z.string().min(16).optional(),
  OUTBOX_BACKLOG_WARN: z.coerce.number().int().positive().default(100),
  AI_HEALTH_DAILY_CALLS: z.coerce.number().int().min(0).default(24),
}));
const slo = sloConfig();
const app = createApp('health', { rateLimited: false });

// Admin routes check the user's standing in the database (requireAdmin), as admin/* does;
// Prometheus and the scheduler use a bearer secret of their own instead.
const hasMetricsToken = (c: AppContext) =>
  !!env.METRICS_TOKEN &&
  constantTimeEqual(c.req.header('authorization')?.replace(/^Bearer /, '') ?? '', env.METRICS_TOKEN);

app.get('/healthz', (c) => ok(c, { status: 'ok' }));

app.get('/readyz', async (c) => {
  const report = await runChecks({
    // The pool itself, not `sql`: the probe reports the driver's own failure, which `sql` would
    // log and map to an API error.
    database: async () => {
      await db()`select 1`;
    },
    jwks: async () => {
      await reloadKeySet();
    },
    // Secrets every function needs, checked without a network call (keys of STRIPE_MODE).
    stripe_config: () => Promise.resolve(void parseEnv(StripeEnvSchema)),
    redis_config: () => Promise.resolve(void parseEnv(RedisEnvSchema)),
    // With STRIPE_MODE=live: nothing that takes real money unsafely (the local AI stand-in, loopback links, …).
    live_config: () => Promise.resolve(assertLiveConfig()),
  });
  // Reported, never failing readiness on their own: Redis (every use fails open or soft) and
  // the outbox backlog (a late email never blocks a payment).
  await guarded((r) => r.ping(), (v) => v === 'PONG').catch(() => {});
  const [{ m }] = await sql`select billing.ops_metrics() -> 'outbox' as m`.catch(() => [{ m: null }]);
  const outbox = m
    ? { status: m.pending > env.OUTBOX_BACKLOG_WARN ? 'degraded' : 'ok', pending: m.pending, failed: m.failed }
    : { status: 'unknown' };
  const full = { ...report, checks: { ...report.checks, redis: redisHealth(), outbox } };
  if (report.status !== 'ok') {
    const failing = Object.entries(report.checks).filter(([, r]) => r.status !== 'ok').map(([k]) => k);
    throw new AppError('unavailable', 'NOT_READY', `Not ready: ${failing.join(', ')}.`, { details: full });
  }
  return ok(c, full);
});

app.get('/slo', requireAdmin, async (c) => {
  const windows = await readWindows().catch(() => {
    throw new AppError('unavailable', 'METRICS_UNAVAILABLE', 'Latency data is in Redis, which is not answering.');
  });
  const out = Object.fromEntries(
    Object.entries(windows).map(([w, fields]) => {
      const stats = statsByRoute(fields, slo);
      return [
        w,
        Object.fromEntries(Object.entries(stats).map(([route, s]) => [route, { ...s, burn_rate: burnRate(s, slo) }])),
      ];
    }),
  );
  return ok(c, { objectives: { availability: slo.availability, p95_ms: slo.p95Ms }, windows: out });
});

app.get('/metrics', requireAdminUnless(hasMetricsToken), async (c) => {
  const [{ m }] = await sql`select billing.ops_metrics() as m`;
  const x = new Exposition();
  const hour = await readWindows().then((w) => w['1h']).catch(() => ({} as Record<string, number>));
  const byRoute: Record<string, number[]> = {};
  let requests = 0;
  let errors = 0;
  for (const [field, v] of Object.entries(hour)) {
    const [route, kind] = field.split('|');
    byRoute[route] ??= bucketBounds.map(() => 0);
    if (kind === 'n') requests += v;
    else if (kind === 'e') errors += v;
    else byRoute[route][Number(kind.slice(1))] += v;
  }
  x.histogram('scholarlink_http_request_duration_ms', 'Request latency over the last hour, all instances.', byRoute)
    .metric('scholarlink_http_requests_last_hour', 'gauge', 'Requests in the last hour, all instances.', [[
      {},
      requests,
    ]])
    .metric('scholarlink_http_errors_last_hour', 'gauge', '5xx answers in the last hour, all instances.', [[
      {},
      errors,
    ]])
    .metric('scholarlink_redis_breaker_open', 'gauge', "1 while this instance's Redis circuit breaker is open.", [[
      {},
      redis().breaker.state === 'open' ? 1 : 0,
    ]])
    .metric(
      'scholarlink_webhook_events',
      'gauge',
      'Stripe events recorded, by type and outcome.',
      (m.webhook_events as Array<
        { type: string; status: string; count: number }
      >).map((e) => [{ type: e.type, status: e.status }, e.count]),
    )
    .metric('scholarlink_webhook_failing', 'gauge', 'Stripe events whose processing is failing.', [[
      {},
      m.webhook_failing,
    ]])
    .metric('scholarlink_webhook_signature_failures_total', 'counter', 'Webhook deliveries with a bad signature.', [[
      {},
      m.webhook_signature_failures,
    ]])
    .metric('scholarlink_outbox_backlog', 'gauge', 'Notifications waiting to be sent.', [[{}, m.outbox.pending]])
    .metric('scholarlink_outbox_failed', 'gauge', 'Notifications that failed after every retry.', [[
      {},
      m.outbox.failed,
    ]])
    .metric(
      'scholarlink_ledger_platform_balance',
      'gauge',
      'Platform account balances (credits).',
      Object.entries(
        m.platform_balances as Record<string, string>,
      ).map(([account, v]) => [{ account }, Number(v)]),
    )
    .metric('scholarlink_ledger_user_balance_total', 'gauge', 'Credits held by users (the unspent liability).', [[
      {},
      Number(m.user_balance_total),
    ]])
    .metric(
      'scholarlink_ledger_org_balance_total',
      'gauge',
      "Credits held by organisations: wallets and members' allowances (the rest of the liability).",
      [[{}, Number(m.org_balance_total)]],
    )
    .metric(
      'scholarlink_ledger_code_balance_total',
      'gauge',
      'Credits behind gift and sponsor codes not yet redeemed (the rest of the liability).',
      [[{}, Number(m.code_balance_total)]],
    )
    .metric('scholarlink_charge_failure_ratio', 'gauge', 'Failed ÷ attempted charges over the last hour.', [[
      {},
      m.charges_last_hour ? m.charge_failures_last_hour / m.charges_last_hour : 0,
    ]])
    .metric('scholarlink_alerts_open', 'gauge', 'Open alerts.', [[{}, m.open_alerts]]);
  await addAiMetrics(x);
  x.counters();
  return c.body(x.toString(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
});

app.get('/alerts', requireAdmin, async (c) => {
  const alerts =
    await sql`select condition, severity, summary, details, opened_at, last_seen_at from billing.open_alerts()`;
  return ok(c, whole(alerts));
});

app.post('/deep', requireAdminUnless(hasCronSecret), async (c) => {
  const day = new Date().toISOString().slice(0, 10);
  const checks: Record<string, () => Promise<void>> = {
    database: async () => {
      await db()`select 1`; // the pool itself, as in /readyz
    },
    jwks: async () => {
      await reloadKeySet();
    },
    // Deep checks bypass the circuit breaker: they are how an operator learns the truth.
    upstash: async () => {
      if ((await redis().opsClient.ping()) !== 'PONG') throw new Error('unexpected reply');
    },
    stripe: async () => {
      await stripe().client.balance.retrieve();
    },
    postmark: async () => {
      const base = Deno.env.get('POSTMARK_API_BASE') ?? 'https://api.postmarkapp.com';
      const res = await fetch(`${base}/server`, {
        headers: { accept: 'application/json', 'X-Postmark-Server-Token': Deno.env.get('POSTMARK_SERVER_TOKEN') ?? '' },
      });
      await res.body?.cancel();
      if (!res.ok) throw new Error(`postmark ${res.status}`);
    },
    ai_provider: async () => {
      // Spend guardrail: at most AI_HEALTH_DAILY_CALLS real calls a day; past that, skipped.
      const used = await redis().opsClient.incr(`deep-health:ai:${day}`);
      if (used > env.AI_HEALTH_DAILY_CALLS) return;
      await complete({
        model: 'gpt-4o-mini',
        upstream: 'openai',
        prompt: 'ping',
        maxTokens: 1,
        onProgress: () => Promise.resolve(),
      });
    },
    // The gateway's upstreams: each one's model list answers with the gateway's key (costs nothing).
    ai_gateway_provider: async () => {
      for (const upstream of aiUpstreams().values()) {
        const res = await fetch(`${upstream.base.replace(/\/$/, '')}/models`, { headers: upstream.auth });
        await res.body?.cancel();
        if (!res.ok) throw new Error(`ai upstream ${upstream.name} ${res.status}`);
      }
    },
  };
  const report = await runChecks(checks, 5000);
  await sql`select billing.record_health_check(${jsonb(report.checks)}, ${report.status === 'ok'})`;
  return ok(c, report, report.status === 'ok' ? 200 : 503);
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
