import assert from 'node:assert/strict';
import { bucketBounds, bucketOf } from '../../supabase/functions/_shared/http/latency.ts';
import { burnRate, quantile, statsByRoute } from '../../supabase/functions/_shared/http/slo.ts';

const slo = { availability: 0.995, p95Ms: 120 };

/** Histogram fields for a route from raw latencies, as the recorder writes them. */
function fieldsFor(route: string, latencies: number[], errors = 0): Record<string, number> {
  const f: Record<string, number> = { [`${route}|n`]: latencies.length, [`${route}|e`]: errors };
  for (const ms of latencies) f[`${route}|b${bucketOf(ms)}`] = (f[`${route}|b${bucketOf(ms)}`] ?? 0) + 1;
  return f;
}

Deno.test('percentiles of a known distribution land in the right buckets', () => {
  // 1,000 requests: 900 at 8 ms, 60 at 90 ms, 30 at 200 ms, 10 at 3 s.
  const latencies = [...Array(900).fill(8), ...Array(60).fill(90), ...Array(30).fill(200), ...Array(10).fill(3000)];
  const s = statsByRoute(fieldsFor('GET /x', latencies, 5), slo)['GET /x'];
  assert.equal(s.requests, 1000);
  assert.equal(s.p50_ms, 10); // 8 ms is in the ≤10 bucket
  assert.equal(s.p95_ms, 100); // the 950th request is at 90 ms
  assert.equal(s.p99_ms, 250); // the 990th at 200 ms
  assert.equal(s.error_rate, 0.005);
  assert.equal(s.slow_rate, 0.04); // 40 of 1,000 over 120 ms
  const burn = burnRate(s, slo);
  assert.equal(burn.availability.toFixed(6), '1.000000'); // errors at exactly the allowed 0.5%
  assert.equal(burn.latency.toFixed(6), '0.800000'); // 4% slow of the 5% allowed
});

Deno.test('the overall row merges every route', () => {
  const stats = statsByRoute({ ...fieldsFor('a', [1, 2, 3]), ...fieldsFor('b', [300]) }, slo);
  assert.equal(stats['*'].requests, 4);
  assert.equal(stats['*'].p99_ms, 500);
});

Deno.test('quantile of an empty histogram is null; the slowest bucket is unbounded', () => {
  assert.equal(quantile(bucketBounds.map(() => 0), 0.5), null);
  assert.equal(quantile(bucketBounds.map((_, i) => (i === bucketBounds.length - 1 ? 1 : 0)), 0.5), Infinity);
});
