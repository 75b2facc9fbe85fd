// Upstash Redis behind a short timeout and a circuit breaker. Every call that can hang,
// fail, or answer nonsense counts as a failure; callers get RedisUnavailable, never a wait.
import { Redis } from '@upstash/redis';
import { z } from 'zod';
import { CircuitBreaker } from './breaker.ts';
import { parseEnv } from './env.ts';
import { count } from './metrics.ts';

export const RedisEnvSchema = z.object({
  UPSTASH_REDIS_REST_URL: z.url(),
  UPSTASH_REDIS_REST_TOKEN: z.string().min(1),
  REDIS_TIMEOUT_MS: z.coerce.number().int().positive().default(50),
  REDIS_BREAKER_FAILURES: z.coerce.number().int().positive().default(5),
  REDIS_BREAKER_COOLDOWN_MS: z.coerce.number().int().positive().default(30_000),
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

export function redis(): RedisHandles {
  if (!cached) {
    const env = parseEnv(RedisEnvSchema);
    const client = new Redis({
      url: env.UPSTASH_REDIS_REST_URL,
      token: env.UPSTASH_REDIS_REST_TOKEN,
      enableTelemetry: false,
      retry: { retries: 0 },
      // Each request aborts after the timeout, so a hung bridge costs at most that long.
      signal: () => AbortSignal.timeout(env.REDIS_TIMEOUT_MS),
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
    breaker.failure();
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
