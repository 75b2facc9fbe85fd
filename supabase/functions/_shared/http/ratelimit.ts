// Layered rate limits on Upstash (fixed one-minute windows): global, per client address, per
// API key, and per user × route class. Every layer of a request is checked and counted by one
// Lua script in one Redis command, and concurrent requests share one HTTP round trip (the client
// batches commands issued together). The windows are @upstash/ratelimit's fixedWindow (same
// keys, same expiry) without its per-layer promise machinery, which was most of the limiter's
// CPU, with one difference: a request is counted only when every layer lets it through. Counted
// before the check (fixedWindow's way), a request refused by its own user or address layer still
// spent the shared ones, and one client refused at its own limit could empty the global window
// for everyone.
// Behind the Redis circuit breaker: if Redis is down the request fails open, except route
// classes marked failSoft, which fall back to a per-instance limiter so abuse stays bounded.
// Unauthenticated routes outside `rateLimit` (Stripe webhooks, signed notifications) use
// `limitByAddress`. Headers: X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset
// (seconds) of the tightest layer; on 429 also the wait (`retryHeaders`).
import { createHash } from 'node:crypto';
import type { Redis } from '@upstash/redis';
import type { MiddlewareHandler, Next } from 'hono';
import type { AppContext, AppEnv } from '../app-env.ts';
import { clientAddress } from './client-address.ts';
import { serviceKeys } from '../keys.ts';
import { serverKeyPattern } from './usage-reporter.ts';
import { AppError } from '../errors.ts';
import { count } from '../metrics.ts';
import { addressRouteClass, rateLimitEnv, type RouteClass, routeClass } from './ratelimit-config.ts';
import { guarded, localWindow, RedisUnavailable } from '../adapters/redis.ts';

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

const windowMs = 60_000;

// KEYS: one counter per layer; ARGV[1]: the window (ms), ARGV[i + 1]: layer i's limit. Returns
// each layer's count with this request in it, in order. If every layer has room, each counter
// goes up by one (its expiry started when its window is new: fixedWindow's steps); if one has
// none, nothing is counted, so a refused request spends no layer's budget. One script: Redis
// runs it alone, so parallel requests are counted exactly. The flag (Upstash's, as fixedWindow's
// script declares it) lets Upstash lock only these keys; the local bridge strips it.
const countScript = `#!lua flags=allow-key-locking
local counts = {}
local room = true
for i, key in ipairs(KEYS) do
  counts[i] = tonumber(redis.call('GET', key) or '0') + 1
  if counts[i] > tonumber(ARGV[i + 1]) then room = false end
end
if room then
  for i, key in ipairs(KEYS) do
    if redis.call('INCRBY', key, 1) == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  end
end
return counts`;
const countScriptSha = createHash('sha1').update(countScript).digest('hex');

/** One command checks and counts every layer: EVALSHA, or EVAL once when Redis does not know the script yet. */
async function countLayers(client: Redis, keys: string[], limits: number[]): Promise<number[]> {
  const args = [String(windowMs), ...limits.map(String)];
  try {
    return await client.evalsha<string[], number[]>(countScriptSha, keys, args);
  } catch (err) {
    if (!String(err).includes('NOSCRIPT')) throw err;
    return await client.eval<string[], number[]>(countScript, keys, args);
  }
}

/** A layer's counter for the current window; the limit is part of it, so a new limit starts fresh. */
const windowKey = (layer: Layer, bucket: number) => `rl:${layer.name}:${layer.limit}:${layer.key}:${bucket}`;

function apiKeyId(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 24);
}

/**
 * A trusted server's own budget: usage reports name many users, so a server key (or the
 * service role) is the subject, not its address, which it shares with nobody else's limit.
 */
function reporterSubject(authorization: string | undefined): string | undefined {
  const bearer = authorization?.replace(/^Bearer /, '');
  if (!bearer || !(serverKeyPattern.test(bearer) || serviceKeys().includes(bearer))) return undefined;
  return `server:${apiKeyId(bearer)}`;
}

/**
 * The longest wait a 429 asks the SDKs to sit through: the openai SDK's own backoff reaches 8 s.
 * A fixed window can mean waiting most of a minute, which an SDK would sit through silently (the
 * openai, Anthropic and AI SDKs honour a Retry-After up to 60 s): past this they fail instead.
 */
export const sdkRetryWaitMs = 8_000;

/** A wait in whole seconds, rounded up, at least one (Retry-After's and the message's). */
const waitSeconds = (waitMs: number) => Math.max(1, Math.ceil(waitMs / 1000));

/**
 * A 429's wait, as the SDKs read it. Up to `sdkRetryWaitMs`: `Retry-After` (whole seconds,
 * rounded up), `retry-after-ms` (exact; the openai, Anthropic and AI SDKs prefer it) and
 * `x-should-retry: true`. Longer: only `x-should-retry: false`, so the openai and Anthropic SDKs
 * fail at once and the AI SDK, which reads no x-should-retry but waits any Retry-After under 60 s,
 * falls back to its own short backoff (2 s, 4 s) and then fails. The wait itself is still in the
 * message, `details.retry_after_seconds` and X-RateLimit-Reset.
 * @example retryHeaders(2_500) // { 'Retry-After': '3', 'retry-after-ms': '2500', 'x-should-retry': 'true' }
 * @example retryHeaders(48_000) // { 'x-should-retry': 'false' }
 */
export function retryHeaders(waitMs: number): Record<string, string> {
  const ms = Math.max(0, Math.ceil(waitMs));
  if (ms > sdkRetryWaitMs) return { 'x-should-retry': 'false' };
  return {
    'Retry-After': String(waitSeconds(ms)),
    'retry-after-ms': String(ms),
    'x-should-retry': 'true',
  };
}

function tooMany(outcome: Outcome, headers: Record<string, string>): AppError {
  const waitMs = outcome.reset - Date.now();
  const retryAfter = waitSeconds(waitMs);
  return new AppError(
    'rate_limit',
    'RATE_LIMITED',
    `Too many requests (${outcome.layer.name} limit: ${outcome.layer.limit} a minute). Retry in ${retryAfter} s.`,
    {
      details: { layer: outcome.layer.name, limit: outcome.layer.limit, retry_after_seconds: retryAfter },
      // X-RateLimit-Reset even from the local fallback, which has no other limit headers.
      headers: { 'X-RateLimit-Reset': String(retryAfter), ...headers, ...retryHeaders(waitMs) },
    },
  );
}

/**
 * Checks `layers` in Redis and throws 429 past a limit; returns the tightest layer's headers
 * and the soft-limited layer, if any. With Redis unavailable: undefined (fail open), or for a
 * failSoft route a per-instance window of the same size, which can only be more lenient than
 * the shared one, so it never refuses a caller the shared window would have let through.
 */
async function enforce(
  layers: Layer[],
  route: RouteClass,
  subject: string,
): Promise<{ headers: Record<string, string>; soft?: Layer } | undefined> {
  let outcomes: Outcome[];
  try {
    const bucket = Math.floor(Date.now() / windowMs);
    const used = await guarded(
      (client) => countLayers(client, layers.map((l) => windowKey(l, bucket)), layers.map((l) => l.limit)),
      (rs) => Array.isArray(rs) && rs.length === layers.length && rs.every((n) => Number.isFinite(n)),
    );
    const reset = (bucket + 1) * windowMs;
    outcomes = layers.map((layer, i) => ({
      layer,
      success: used[i] <= layer.limit,
      remaining: Math.max(0, layer.limit - used[i]),
      reset,
    }));
  } catch (err) {
    if (!(err instanceof RedisUnavailable)) throw err;
    count('rate_limit_fail_open', { route: route.name });
    if (route.failSoft && !localWindow(`${route.name}:${subject}`, route.limit)) {
      count('rate_limit_hits', { layer: 'local_fallback' });
      const reset = Date.now() + 60_000 - (Date.now() % 60_000);
      throw tooMany({
        layer: { name: 'local_fallback', key: subject, limit: route.limit },
        success: false,
        remaining: 0,
        reset,
      }, {});
    }
    return undefined; // fail open, and no limit headers that would mislead
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
  const soft = outcomes.find((o) =>
    o.layer.limit - o.remaining >= o.layer.limit * rateLimitEnv().RATE_LIMIT_SOFT_RATIO
  );
  return { headers, soft: soft?.layer };
}

/** Runs the rest of the request, then adds the limit headers (and the soft warning). */
async function nextWithHeaders(c: AppContext, next: Next, checked: Awaited<ReturnType<typeof enforce>>) {
  await next();
  if (!checked) return;
  for (const [k, v] of Object.entries(checked.headers)) c.res.headers.set(k, v);
  if (checked.soft) {
    count('rate_limit_soft', { layer: checked.soft.name });
    c.res.headers.set('X-RateLimit-Warning', `soft limit reached: ${checked.soft.name}`);
  }
}

/** The rate-limit middleware; runs after identification, so the user layer uses a verified id. */
export const rateLimit: MiddlewareHandler<AppEnv> = async function rateLimit(c, next) {
  const cfg = rateLimitEnv();
  if (!cfg.RATE_LIMIT_ENABLED || c.req.method === 'OPTIONS') return next();
  const route = routeClass(c.req.method, c.req.path);
  const ip = clientAddress(c);
  const apiKey = c.req.header('x-api-key');
  const subject = c.get('user')?.id ?? reporterSubject(c.req.header('authorization')) ?? `ip:${ip}`;
  const layers: Layer[] = [
    { name: 'global', key: 'all', limit: cfg.RATE_LIMIT_GLOBAL_PER_MIN },
    { name: 'ip', key: ip, limit: cfg.RATE_LIMIT_IP_PER_MIN },
    ...(apiKey ? [{ name: 'api_key', key: apiKeyId(apiKey), limit: cfg.RATE_LIMIT_API_KEY_PER_MIN }] : []),
    { name: `route_${route.name}`, key: subject, limit: route.limit },
  ];
  await nextWithHeaders(c, next, await c.get('steps').time('limit', () => enforce(layers, route, subject)));
};

/**
 * A per-address limit for an unauthenticated route that skips `rateLimit` (no global layer, so
 * traffic elsewhere can never starve it), checked before the body is read or a signature is
 * computed. Fails soft: with Redis down, a per-instance window of the same size.
 * @example app.post('/', limitByAddress('stripe_webhook'), handler)
 */
export function limitByAddress(name: 'stripe_webhook' | 'notify'): MiddlewareHandler<AppEnv> {
  return async function limitByAddress(c, next) {
    if (!rateLimitEnv().RATE_LIMIT_ENABLED) return next();
    const route = addressRouteClass(name);
    const address = clientAddress(c);
    const layer = { name: `address_${name}`, key: address, limit: route.limit };
    await nextWithHeaders(c, next, await enforce([layer], route, address));
  };
}
