// Rate-limit policy in one place: every number has a default from the product plan and an
// environment override. Limits are per minute, in fixed windows.
import { z } from 'zod';
import { parseEnv } from '../env.ts';

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
  // AI calls through the gateway, per student: each already holds its worst case first.
  RATE_LIMIT_AI_CHAT_PER_MIN: perMinute(60),
  RATE_LIMIT_USAGE_BATCH_PER_MIN: perMinute(6_000),
  // Redeeming a code: a person redeems a handful; failed guesses are limited per hour in SQL too.
  RATE_LIMIT_CODES_REDEEM_PER_MIN: perMinute(10),
  // Unauthenticated routes, per client address only. Stripe retries a 429 with backoff for
  // three days, so a throttled genuine delivery arrives late, never lost.
  RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN: perMinute(600),
  RATE_LIMIT_NOTIFY_PER_MIN: perMinute(300),
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

type ClassName =
  | 'checkout_sessions'
  | 'credits_usage'
  | 'usage_batch'
  | 'jobs_create'
  | 'ai_chat'
  | 'codes_redeem'
  | 'default'
  | 'stripe_webhook'
  | 'notify';
let classes: Record<ClassName, RouteClass> | undefined;
/** Every route class, built once from the settings (they are read once too). */
function routeClasses(): Record<ClassName, RouteClass> {
  if (classes) return classes;
  const e = rateLimitEnv();
  const of = (name: ClassName, limit: number, failSoft: boolean) => Object.freeze({ name, limit, failSoft });
  return classes = {
    checkout_sessions: of('checkout_sessions', e.RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN, true),
    credits_usage: of('credits_usage', e.RATE_LIMIT_CREDITS_USAGE_PER_MIN, false),
    usage_batch: of('usage_batch', e.RATE_LIMIT_USAGE_BATCH_PER_MIN, false),
    jobs_create: of('jobs_create', e.RATE_LIMIT_JOBS_CREATE_PER_MIN, false),
    ai_chat: of('ai_chat', e.RATE_LIMIT_AI_CHAT_PER_MIN, false),
    codes_redeem: of('codes_redeem', e.RATE_LIMIT_CODES_REDEEM_PER_MIN, true),
    default: of('default', e.RATE_LIMIT_DEFAULT_PER_MIN, false),
    stripe_webhook: of('stripe_webhook', e.RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN, true),
    notify: of('notify', e.RATE_LIMIT_NOTIFY_PER_MIN, true),
  };
}

/** The per-address limit of an unauthenticated route (see `limitByAddress`). */
export function addressRouteClass(name: 'stripe_webhook' | 'notify'): RouteClass {
  return routeClasses()[name];
}

/** The limit class of a request: the routes the plan names, and everything else. */
export function routeClass(method: string, path: string): RouteClass {
  const c = routeClasses();
  if (method !== 'POST') return c.default;
  switch (path.endsWith('/') ? path.replace(/\/+$/, '') : path) {
    case '/checkout/sessions':
      return c.checkout_sessions;
    case '/credits/usage':
      return c.credits_usage;
    case '/credits/usage/batch':
      return c.usage_batch;
    case '/jobs':
      return c.jobs_create;
    // Every metered AI route shares one per-student limit (its name is chat's, the first route).
    case '/ai/v1/chat/completions':
    case '/ai/v1/responses':
    case '/ai/v1/messages':
    case '/ai/v1/embeddings':
      return c.ai_chat;
    case '/credits/codes/redeem':
      return c.codes_redeem;
    default:
      return c.default;
  }
}
