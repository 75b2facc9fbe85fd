// Upstash Redis behind a timeout and a circuit breaker. Every call that can hang, fail, or
// answer nonsense counts as a failure; callers get RedisUnavailable, never a long wait.
// The defaults are measured (bench/redis-latency.ts, docs/rate-limits.md): an edge region can
// be 25-100 ms from Upstash with a tail past 200 ms, and a cold isolate's first call also pays
// the TLS handshake, so 300 ms lets healthy calls through while a hung Redis costs a few
// requests 300 ms each before the breaker opens.
import { Redis } from '@upstash/redis';
import { z } from 'zod';
import { CircuitBreaker } from './breaker.ts';
import { parseEnv } from '../env.ts';
import { count } from '../metrics.ts';

export const RedisEnvSchema = z.object({
  UPSTASH_REDIS_REST_URL: z.url(),
  UPSTASH_REDIS_REST_TOKEN: z.string().min(1),
  REDIS_TIMEOUT_MS: z.coerce.number().int().positive().default(300),
  REDIS_BREAKER_FAILURES: z.coerce.number().int().positive().default(5),
  REDIS_BREAKER_COOLDOWN_MS: z.coerce.number().int().positive().default(10_000),
});

/** Thrown instead of waiting when Redis is down, slow or the breaker is open. */
export class RedisUnavailable extends Error {}

interface RedisHandles {
  client: Redis;
  opsClient: Redis;
  breaker: CircuitBreaker;
  timeoutMs: number;
}
let cached: RedisHandles | undefined;

const timedOut = new RedisUnavailable('timeout');
/**
 * A signal that aborts after `ms`. AbortSignal.timeout does the same but builds a DOMException
 * when its timer fires, which it does for every request, long after the answer came back: on
 * the request path that was measurable (bench/README.md, request-path). The timer is unref'd,
 * so it never keeps a process alive.
 */
function deadline(ms: number): AbortSignal {
  const controller = new AbortController();
  Deno.unrefTimer(setTimeout(() => controller.abort(timedOut), ms));
  return controller.signal;
}

export function redis(): RedisHandles {
  if (!cached) {
    const env = parseEnv(RedisEnvSchema);
    const client = new Redis({
      url: env.UPSTASH_REDIS_REST_URL,
      token: env.UPSTASH_REDIS_REST_TOKEN,
      enableTelemetry: false,
      retry: { retries: 0 },
      // Each request aborts after the timeout, so a hung bridge costs at most that long.
      signal: () => deadline(env.REDIS_TIMEOUT_MS),
    });
    // Admin reads and diagnostics are off the request path: a patient client, no breaker.
    const opsClient = new Redis({
      url: env.UPSTASH_REDIS_REST_URL,
      token: env.UPSTASH_REDIS_REST_TOKEN,
      enableTelemetry: false,
      retry: { retries: 0 },
      signal: () => AbortSignal.timeout(3000),
    });
    cached = {
      client,
      opsClient,
      breaker: new CircuitBreaker(env.REDIS_BREAKER_FAILURES, env.REDIS_BREAKER_COOLDOWN_MS),
      timeoutMs: env.REDIS_TIMEOUT_MS,
    };
  }
  return cached;
}

/**
 * Runs a Redis call through the breaker with a hard timeout; `valid` rejects malformed replies.
 * @example const n = await guarded((r) => r.incr('k'), (v) => typeof v === 'number')
 */
export async function guarded<T>(fn: (client: Redis) => Promise<T>, valid: (v: T) => boolean = () => true): Promise<T> {
  const { client, breaker, timeoutMs } = redis();
  if (!breaker.allow()) throw new RedisUnavailable('breaker open');
  const started = Date.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const result = await Promise.race([
      fn(client),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RedisUnavailable('timeout')), timeoutMs + 10);
      }),
    ]);
    if (!valid(result)) throw new RedisUnavailable('malformed reply');
    breaker.success();
    return result;
  } catch (err) {
    breaker.failure(started);
    count('redis_failures');
    throw err instanceof RedisUnavailable ? err : new RedisUnavailable('redis call failed');
  } finally {
    clearTimeout(timer);
  }
}

/** For readiness: ok (closed), degraded (failing but not yet open, or probing), open. */
export function redisHealth(): { status: 'ok' | 'degraded' | 'open'; consecutiveFailures: number; opened: number } {
  const { breaker } = redis();
  const state = breaker.state;
  const status = state === 'open'
    ? 'open'
    : state === 'half_open' || breaker.consecutiveFailures > 0
    ? 'degraded'
    : 'ok';
  return { status, consecutiveFailures: breaker.consecutiveFailures, opened: breaker.opened };
}

const local = new Map<string, { windowStart: number; count: number }>();
/**
 * A per-instance fixed window, for when Redis is unreachable: adds `weight` to `key`'s current
 * window and says whether it is still within `limit`. Memory is bounded; a reset only forgives.
 * @example if (!localWindow('checkout_sessions:u1', 5)) refuse()
 */
export function localWindow(key: string, limit: number, windowMs = 60_000, weight = 1, now = Date.now()): boolean {
  const windowStart = now - (now % windowMs);
  const w = local.get(key);
  if (!w || w.windowStart !== windowStart) {
    if (local.size >= 10_000) local.clear();
    local.set(key, { windowStart, count: weight });
    return weight <= limit;
  }
  w.count += weight;
  return w.count <= limit;
}
