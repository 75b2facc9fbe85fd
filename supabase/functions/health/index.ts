// Liveness and readiness. Liveness has no dependencies; readiness is 200 only when the
// database answers and the auth key set loads, else 503 naming the failing check.
import { createApp, ok } from '../_shared/app.ts';
import { keySet } from '../_shared/auth.ts';
import { db } from '../_shared/db.ts';
import { AppError } from '../_shared/errors.ts';
import { guarded, redisHealth } from '../_shared/redis.ts';
import { runChecks } from './checks.ts';

const app = createApp('health', { rateLimited: false });

app.get('/healthz', (c) => ok(c, { status: 'ok' }));

app.get('/readyz', async (c) => {
  const report = await runChecks({
    database: async () => {
      await db()`select 1`;
    },
    jwks: async () => {
      await keySet().reload();
    },
  });
  // Redis is reported but never fails readiness: every Redis use fails open or soft.
  await guarded((r) => r.ping(), (v) => v === 'PONG').catch(() => {});
  const withRedis = { ...report, checks: { ...report.checks, redis: redisHealth() } };
  if (report.status !== 'ok') {
    const failing = Object.entries(report.checks).filter(([, r]) => r.status !== 'ok').map(([k]) => k);
    throw new AppError('unavailable', 'NOT_READY', `Not ready: ${failing.join(', ')}.`, { details: withRedis });
  }
  return ok(c, withRedis);
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
