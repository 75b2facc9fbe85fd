// Per-route latency histograms in Redis, shared by every instance: fixed buckets per minute
// (kept 2 hours) and per hour (kept 26 hours). Requests add to an in-memory batch that is
// flushed at most once a second, off the request path; a Redis failure loses only samples.
import { count } from '../metrics.ts';
import { guarded } from '../adapters/redis.ts';

/** Bucket upper bounds in ms; the last bucket is everything slower. */
export const bucketBounds = [5, 10, 25, 50, 100, 120, 250, 500, 1000, 2500, 5000, Infinity];

export const minuteKey = (t: number) => `lat:m:${Math.floor(t / 60_000)}`;
export const hourKey = (t: number) => `lat:h:${Math.floor(t / 3_600_000)}`;

const pending = new Map<string, number>(); // `${route}|b<i>` | `${route}|n` | `${route}|e` → count
let flushScheduled = false;

export function bucketOf(ms: number): number {
  return bucketBounds.findIndex((b) => ms <= b);
}

/** Records one request; never waits and never throws. */
export function recordLatency(route: string, status: number, ms: number): void {
  const add = (field: string) => pending.set(field, (pending.get(field) ?? 0) + 1);
  add(`${route}|b${bucketOf(ms)}`);
  add(`${route}|n`);
  if (status >= 500) add(`${route}|e`);
  count('http_requests_total', { route, status: String(Math.floor(status / 100)) + 'xx' });
  if (!flushScheduled) {
    flushScheduled = true;
    const done = new Promise<void>((resolve) => {
      // Unref'd: a pending flush never keeps a process (or a test) alive on its own.
      Deno.unrefTimer(setTimeout(() => flushLatency().finally(resolve), 1000));
    });
    (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } }).EdgeRuntime?.waitUntil(done);
  }
}

/** Writes the batch to the minute and hour histograms; auto-pipelining makes it one request. */
export async function flushLatency(now = Date.now()): Promise<void> {
  flushScheduled = false;
  if (pending.size === 0) return;
  const batch = [...pending];
  pending.clear();
  const m = minuteKey(now);
  const h = hourKey(now);
  await guarded((client) =>
    Promise.all([
      ...batch.flatMap(([field, n]) => [client.hincrby(m, field, n), client.hincrby(h, field, n)]),
      client.expire(m, 2 * 3600),
      client.expire(h, 26 * 3600),
    ])
  ).catch(() => count('latency_samples_dropped', {}, batch.length));
}
