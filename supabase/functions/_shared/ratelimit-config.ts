// Rate-limit policy in one place: every number has a default from the product plan and an
// environment override. Limits are per minute, in fixed windows.
import { z } from 'zod';
import { parseEnv } from './env.ts';

const perMinute = (fallback: number) => z.coerce.number().int().positive().default(fallback);

export const RateLimitEnvSchema = z.object({
  RATE_LIMIT_ENABLED: z.enum(['true', 'false']).default('true').transform((v) => v === 'true'),
  RATE_LIMIT_GLOBAL_PER_MIN: perMinute(100_000),
  RATE_LIMIT_IP_PER_MIN: perMinute(1_200),
  RATE_LIMIT_API_KEY_PER_MIN: perMinute(1_200),
  RATE_LIMIT_DEFAULT_PER_MIN: perMinute(100),
  RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN: perMinute(5),
  RATE_LIMIT_CREDITS_USAGE_PER_MIN: perMinute(600),
  RATE_LIMIT_JOBS_CREATE_PER_MIN: perMinute(20),
  RATE_LIMIT_USAGE_BATCH_PER_MIN: perMinute(6_000),
  RATE_LIMIT_SOFT_RATIO: z.coerce.number().gt(0).lte(1).default(0.8),
});
export type RateLimitEnv = z.infer<typeof RateLimitEnvSchema>;

export interface RouteClass {
  name: string;
  limit: number;
  /** When Redis is down: false fails open; true falls back to a per-instance limiter. */
  failSoft: boolean;
}

let env: RateLimitEnv | undefined;
export const rateLimitEnv = (): RateLimitEnv => (env ??= parseEnv(RateLimitEnvSchema));

/** The limit class of a request: the routes the plan names, and everything else. */
export function routeClass(method: string, path: string): RouteClass {
  const e = rateLimitEnv();
  const p = path.replace(/\/+$/, '');
  if (method === 'POST' && p === '/checkout/sessions') {
    return { name: 'checkout_sessions', limit: e.RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN, failSoft: true };
  }
  if (method === 'POST' && p === '/credits/usage') {
    return { name: 'credits_usage', limit: e.RATE_LIMIT_CREDITS_USAGE_PER_MIN, failSoft: false };
  }
  if (method === 'POST' && p === '/credits/usage/batch') {
    return { name: 'usage_batch', limit: e.RATE_LIMIT_USAGE_BATCH_PER_MIN, failSoft: false };
  }
  if (method === 'POST' && p === '/jobs') {
    return { name: 'jobs_create', limit: e.RATE_LIMIT_JOBS_CREATE_PER_MIN, failSoft: false };
  }
  return { name: 'default', limit: e.RATE_LIMIT_DEFAULT_PER_MIN, failSoft: false };
}
