// Layered rate limits on Upstash (@upstash/ratelimit, fixed one-minute windows): global, per
// IP, per API key, and per user × route class. All layers go to Redis in one pipelined
// request (the client batches commands issued together). Behind the Redis circuit breaker:
// if Redis is down the request fails open, except route classes marked failSoft, which fall
// back to a per-instance limiter so abuse stays bounded. Headers: X-RateLimit-Limit,
// X-RateLimit-Remaining, X-RateLimit-Reset (seconds) of the tightest layer; Retry-After on 429.
import { Ratelimit } from '@upstash/ratelimit';
import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from './app.ts';
import { AppError } from './errors.ts';
import { count } from './metrics.ts';
import { rateLimitEnv, routeClass } from './ratelimit-config.ts';
import { guarded, redis, RedisUnavailable } from './redis.ts';

interface Layer {
  name: string;
  key: string;
  limit: number;
}
interface Outcome {
  layer: Layer;
  success: boolean;
  remaining: number;
  reset: number; // ms epoch
}

const limiters = new Map<string, Ratelimit>();
function limiterFor(layer: Layer): Ratelimit {
  const id = `${layer.name}:${layer.limit}`;
  let l = limiters.get(id);
  if (!l) {
    l = new Ratelimit({
      redis: redis().client,
      limiter: Ratelimit.fixedWindow(layer.limit, '60 s'),
      prefix: `rl:${layer.name}:${layer.limit}`, // a changed limit starts fresh windows
      timeout: 0, // our breaker owns timeouts; Ratelimit's would let requests through after 5 s
      ephemeralCache: false,
      analytics: false,
    });
    limiters.set(id, l);
  }
  return l;
}

/** The caller's address: the first hop of X-Forwarded-For, as Supabase's gateway sets it. */
export const clientIp = (xff: string | undefined) => xff?.split(',')[0].trim() || 'unknown';

// Per-instance fallback for failSoft routes while Redis is unreachable.
const local = new Map<string, { windowStart: number; count: number }>();
function localLimit(key: string, limit: number, now = Date.now()): Outcome['success'] {
  const windowStart = now - (now % 60_000);
  const w = local.get(key);
  if (!w || w.windowStart !== windowStart) {
    local.set(key, { windowStart, count: 1 });
    if (local.size > 10_000) local.clear(); // bounded memory; a reset only forgives
    return true;
  }
  w.count++;
  return w.count <= limit;
}

async function apiKeyId(key: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(key)));
  return Array.from(digest.slice(0, 12), (b) => b.toString(16).padStart(2, '0')).join('');
}

function tooMany(outcome: Outcome, headers: Record<string, string>): AppError {
  const retryAfter = Math.max(1, Math.ceil((outcome.reset - Date.now()) / 1000));
  return new AppError(
    'rate_limit',
    'RATE_LIMITED',
    `Too many requests (${outcome.layer.name} limit). Retry in ${retryAfter} s.`,
    {
      details: { layer: outcome.layer.name, limit: outcome.layer.limit, retry_after_seconds: retryAfter },
      headers: { ...headers, 'Retry-After': String(retryAfter) },
    },
  );
}

/** The rate-limit middleware; runs after identification, so the user layer uses a verified id. */
export const rateLimit: MiddlewareHandler<AppEnv> = async function rateLimit(c, next) {
  const cfg = rateLimitEnv();
  if (!cfg.RATE_LIMIT_ENABLED || c.req.method === 'OPTIONS') return next();
  const route = routeClass(c.req.method, c.req.path);
  const ip = clientIp(c.req.header('x-forwarded-for'));
  const apiKey = c.req.header('x-api-key');
  const subject = c.get('user')?.id ?? `ip:${ip}`;
  const layers: Layer[] = [
    { name: 'global', key: 'all', limit: cfg.RATE_LIMIT_GLOBAL_PER_MIN },
    { name: 'ip', key: ip, limit: cfg.RATE_LIMIT_IP_PER_MIN },
    ...(apiKey ? [{ name: 'api_key', key: await apiKeyId(apiKey), limit: cfg.RATE_LIMIT_API_KEY_PER_MIN }] : []),
    { name: `route_${route.name}`, key: subject, limit: route.limit },
  ];

  let outcomes: Outcome[];
  try {
    outcomes = await guarded(
      () => Promise.all(layers.map(async (layer) => ({ layer, ...(await limiterFor(layer).limit(layer.key)) }))),
      (rs) =>
        rs.every((r) => typeof r.success === 'boolean' && Number.isFinite(r.remaining) && Number.isFinite(r.reset)),
    );
  } catch (err) {
    if (!(err instanceof RedisUnavailable)) throw err;
    count('rate_limit_fail_open', { route: route.name });
    if (route.failSoft && !localLimit(`${route.name}:${subject}`, route.limit)) {
      count('rate_limit_hits', { layer: 'local_fallback' });
      const reset = Date.now() + 60_000 - (Date.now() % 60_000);
      throw tooMany({
        layer: { name: 'local_fallback', key: subject, limit: route.limit },
        success: false,
        remaining: 0,
        reset,
      }, {});
    }
    return next(); // fail open, and no limit headers that would mislead
  }

  // The tightest layer speaks for the request.
  const tightest = outcomes.reduce((a, b) => (b.remaining / b.layer.limit < a.remaining / a.layer.limit ? b : a));
  const headers = {
    'X-RateLimit-Limit': String(tightest.layer.limit),
    'X-RateLimit-Remaining': String(Math.max(0, tightest.remaining)),
    'X-RateLimit-Reset': String(Math.max(0, Math.ceil((tightest.reset - Date.now()) / 1000))),
  };
  const blocked = outcomes.find((o) => !o.success);
  if (blocked) {
    count('rate_limit_hits', { layer: blocked.layer.name });
    throw tooMany(blocked, headers);
  }
  const soft = outcomes.find((o) => o.layer.limit - o.remaining >= o.layer.limit * cfg.RATE_LIMIT_SOFT_RATIO);
  await next();
  for (const [k, v] of Object.entries(headers)) c.res.headers.set(k, v);
  if (soft) {
    count('rate_limit_soft', { layer: soft.layer.name });
    c.res.headers.set('X-RateLimit-Warning', `soft limit reached: ${soft.layer.name}`);
  }
};
