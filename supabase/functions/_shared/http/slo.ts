// SLO arithmetic over the latency histograms: percentiles, error rate and error-budget burn.
import { z } from 'zod';
import { parseEnv } from '../env.ts';
import { bucketBounds, hourKey, minuteKey } from './latency.ts';
import { redis } from '../adapters/redis.ts';

export interface RouteStats {
  requests: number;
  errors: number;
  error_rate: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  slow_rate: number;
}

export interface SloConfig {
  availability: number; // e.g. 0.995
  p95Ms: number; // e.g. 120
}

const SloEnvSchema = z.object({
  SLO_AVAILABILITY: z.coerce.number().gt(0).lt(1).default(0.995),
  SLO_P95_MS: z.coerce.number().positive().default(120),
});

/** The objectives, from SLO_AVAILABILITY and SLO_P95_MS. */
export function sloConfig(): SloConfig {
  const env = parseEnv(SloEnvSchema);
  return { availability: env.SLO_AVAILABILITY, p95Ms: env.SLO_P95_MS };
}

/**
 * The q-quantile of a bucketed histogram, as the upper bound of the bucket it falls in
 * (conservative: the true value is at most this). Null when there are no samples.
 */
export function quantile(buckets: number[], q: number): number | null {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i];
    if (seen >= rank) return bucketBounds[i];
  }
  return bucketBounds[bucketBounds.length - 1];
}

/** Per-route stats from merged hash fields (`route|b<i>`, `route|n`, `route|e`). */
export function statsByRoute(fields: Record<string, number>, slo: SloConfig): Record<string, RouteStats> {
  const routes = new Map<string, { buckets: number[]; n: number; e: number }>();
  for (const [field, value] of Object.entries(fields)) {
    const [route, kind] = field.split('|');
    const r = routes.get(route) ?? { buckets: bucketBounds.map(() => 0), n: 0, e: 0 };
    if (kind === 'n') r.n += value;
    else if (kind === 'e') r.e += value;
    else r.buckets[Number(kind.slice(1))] += value;
    routes.set(route, r);
  }
  const all = { buckets: bucketBounds.map(() => 0), n: 0, e: 0 };
  for (const r of routes.values()) {
    all.n += r.n;
    all.e += r.e;
    r.buckets.forEach((b, i) => (all.buckets[i] += b));
  }
  routes.set('*', all);
  const sloBucket = bucketBounds.findIndex((b) => b >= slo.p95Ms);
  return Object.fromEntries([...routes].map(([route, r]) => {
    const slow = r.buckets.slice(sloBucket + 1).reduce((a, b) => a + b, 0);
    return [route, {
      requests: r.n,
      errors: r.e,
      error_rate: r.n ? r.e / r.n : 0,
      p50_ms: quantile(r.buckets, 0.5),
      p95_ms: quantile(r.buckets, 0.95),
      p99_ms: quantile(r.buckets, 0.99),
      slow_rate: r.n ? slow / r.n : 0,
    }];
  }));
}

/** Error-budget burn: how many times faster than allowed the budget is being spent. */
export const burnRate = (s: RouteStats, slo: SloConfig) => ({
  availability: s.error_rate / (1 - slo.availability),
  latency: s.slow_rate / 0.05, // the p95 objective allows 5% of requests over the threshold
});

const windows = {
  '5m': { step: 60_000, n: 5, key: minuteKey },
  '1h': { step: 60_000, n: 60, key: minuteKey },
  '24h': { step: 3_600_000, n: 24, key: hourKey },
};

/** Merged histogram fields for each window, read in one pipelined request. */
export async function readWindows(now = Date.now()): Promise<Record<keyof typeof windows, Record<string, number>>> {
  const plan = Object.entries(windows).map(([name, w]) => ({
    name,
    keys: Array.from({ length: w.n }, (_, i) => w.key(now - i * w.step)),
  }));
  // One request (the client pipelines commands issued together), on the patient ops client.
  const client = redis().opsClient;
  const replies = await Promise.all(
    plan.flatMap(({ keys }) => keys.map((k) => client.hgetall<Record<string, number>>(k))),
  );
  let at = 0;
  const out: Record<string, Record<string, number>> = {};
  for (const { name, keys } of plan) {
    const merged: Record<string, number> = {};
    for (let i = 0; i < keys.length; i++) {
      for (const [f, v] of Object.entries(replies[at + i] ?? {})) merged[f] = (merged[f] ?? 0) + Number(v);
    }
    at += keys.length;
    out[name] = merged;
  }
  return out as Record<keyof typeof windows, Record<string, number>>;
}

/** Error-budget burn of every route together, hour by hour over the last 24 hours (oldest first). */
export async function hourlyBurn(slo: SloConfig, now = Date.now()) {
  const hours = Array.from({ length: 24 }, (_, i) => now - (23 - i) * 3_600_000);
  const client = redis().opsClient;
  const replies = await Promise.all(hours.map((t) => client.hgetall<Record<string, number>>(hourKey(t))));
  return hours.map((t, i) => {
    const fields = Object.fromEntries(Object.entries(replies[i] ?? {}).map(([k, v]) => [k, Number(v)]));
    const all = statsByRoute(fields, slo)['*'];
    return { hour: new Date(t - (t % 3_600_000)).toISOString(), requests: all.requests, burn_rate: burnRate(all, slo) };
  });
}
