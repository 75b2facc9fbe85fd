// The app factory every function uses: Hono with basePath('/<name>'), request ids, CORS from
// an allowlist, identity (identify.ts) and rate limits, one JSON onError/notFound rendering the
// standard envelope, and request logs. The routes' guards are middlewares of their own files
// (require-user.ts, require-admin.ts, usage-reporter.ts, feature-flag.ts).
import { Hono } from 'hono';
import { cors } from 'hono/cors';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { AppContext, AppEnv } from '../app-env.ts';
import { identify, identifySession } from './identify.ts';
import { rateLimit } from './ratelimit.ts';
import { baseEnv, ConfigError } from '../env.ts';
import { AppError, internalError } from '../errors.ts';
import { recordLatency } from './latency.ts';
import { Steps } from '../server-timing.ts';
import { errorSummary, log } from '../log.ts';

const wellFormedRequestId = /^[A-Za-z0-9._:-]{8,128}$/;

const metadata = (c: AppContext) => ({ requestId: c.get('requestId'), timestamp: new Date().toISOString() });

/**
 * A success in the envelope: `{data, metadata}`.
 * @example return ok(c, { balance: '10' })
 */
export function ok<T>(c: AppContext, data: T, status: ContentfulStatusCode = 200, headers?: Record<string, string>) {
  return c.json({ data, metadata: metadata(c) }, status, headers);
}

/** The failure envelope of an AppError as text. */
const errorBody = (c: AppContext, err: AppError) => JSON.stringify({ error: err.toJSON(), metadata: metadata(c) });

/** Any error as the AppError the caller sees; a 5xx never shows internals (those are logged). */
export function appErrorOf(c: AppContext, err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof ConfigError) return err.appError();
  if (err instanceof HTTPException && err.status < 500) {
    const code = err.status === 413 ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
    return new AppError('validation', code, err.message || 'The request is not valid.', { status: err.status });
  }
  log.error('unhandled error', { requestId: c.get('requestId'), ...errorSummary(err) });
  return internalError();
}

/** The failure envelope for any error. */
export function errorResponse(c: AppContext, err: unknown): Response {
  const appError = appErrorOf(c, err);
  return c.body(errorBody(c, appError), appError.status as ContentfulStatusCode, {
    'content-type': 'application/json',
    ...appError.options.headers,
  });
}

/** What every route accepts from a browser. */
const allowHeaders = [
  'authorization',
  'x-client-info',
  'apikey',
  'content-type',
  'idempotency-key',
  'x-request-id',
  'x-ai-clamp',
];

/**
 * What the AI SDKs send from a browser besides: the openai and Anthropic SDKs' `x-stainless-*`
 * telemetry, Anthropic's `anthropic-*` and its key in `x-api-key`. The gateway reads none of it
 * but the key; a preflight that does not allow each is a failed call.
 */
const sdkHeader = /^(x-stainless-[a-z0-9-]+|anthropic-[a-z0-9-]+|x-api-key)$/;

/**
 * The headers a preflight from an allowed origin may send: every route's, plus those the
 * preflight asks for that an AI SDK sends, reflected.
 * @example preflightHeaders('content-type, x-stainless-os') // ['authorization', …, 'x-request-id', 'x-stainless-os']
 */
export function preflightHeaders(requested: string | undefined): string[] {
  const asked = (requested ?? '').split(',').map((h) => h.trim().toLowerCase()).filter((h) => sdkHeader.test(h));
  return [...new Set([...allowHeaders, ...asked])];
}

/**
 * Creates a function's app. Routes are declared on the result, relative to `/<name>`.
 * Every request is rate limited unless `rateLimited: false` (health checks, Stripe webhooks).
 * `sessionToken` lets a function take the caller's token from elsewhere when no bearer header
 * is sent (admin: its HttpOnly dashboard cookie; ai: Anthropic's x-api-key header).
 * @example const app = createApp('health', { rateLimited: false })
 */
export function createApp(
  name: string,
  opts: { rateLimited?: boolean; sessionToken?: (c: AppContext) => string | undefined } = {},
): Hono<AppEnv> {
  const app = new Hono<AppEnv>().basePath(`/${name}`);
  const allowed = new Set(baseEnv().CORS_ALLOWED_ORIGINS);

  app.use('*', async function requestContext(c, next) {
    const given = c.req.header('x-request-id');
    const requestId = given && wellFormedRequestId.test(given) ? given : crypto.randomUUID();
    c.set('requestId', requestId);
    const steps = new Steps();
    c.set('steps', steps);
    const started = performance.now();
    await next();
    setResponseHeader(c, 'X-Request-ID', requestId);
    const elapsed = performance.now() - started;
    const timing = steps.header(elapsed);
    if (timing) setResponseHeader(c, 'Server-Timing', timing);
    const durationMs = Math.round(elapsed * 10) / 10;
    log.info('request', {
      requestId,
      function: name,
      method: c.req.method,
      route: c.req.routePath,
      status: c.res.status,
      durationMs,
    });
    recordLatency(`${c.req.method} ${c.req.routePath}`, c.res.status, durationMs);
  });
  let methods: string[] | undefined; // routes are fixed once the first request is routed
  const corsOptions: Parameters<typeof cors>[0] = {
    origin: (origin) => (allowed.has(origin) ? origin : null),
    allowHeaders,
    // Every method a route answers, read from the routes themselves when a browser asks, so a
    // route's method can never be missing from the list.
    allowMethods: () => (methods ??= routeMethods(app)),
    exposeHeaders: [
      'X-Request-ID',
      'Idempotent-Replayed',
      'Retry-After',
      // A 429's exact wait and whether to retry it, as the openai and Anthropic SDKs read them (ratelimit.ts).
      'retry-after-ms',
      'x-should-retry',
      'Location',
      'X-Credits-Held',
      'X-Credits-Charged',
      'X-AI-Call-Id',
      'X-AI-Max-Output-Tokens',
      'X-AI-Answered-By',
      'X-Gateway-Overhead-Ms',
    ],
    maxAge: 600,
  };
  const corsHeaders = cors(corsOptions);
  // CORS headers are for browsers, which send Origin on every cross-origin request. For the
  // rest (servers, the product's backend) Hono's cors would only copy the Response twice:
  // ~40 µs a request (bench/README.md, request-path). Vary: Origin stays on every answer.
  app.use('*', function corsForBrowsers(c, next) {
    if (c.req.method === 'OPTIONS') {
      // What an AI SDK asks for is reflected to listed origins only; Hono's cors takes a fixed list.
      const asked = allowed.has(c.req.header('origin') ?? '') ? c.req.header('access-control-request-headers') : '';
      return cors({ ...corsOptions, allowHeaders: preflightHeaders(asked) })(c, next);
    }
    if (c.req.header('origin')) return corsHeaders(c, next);
    return next().then(() => setResponseHeader(c, 'Vary', 'Origin', true));
  });
  app.use('*', identify);
  if (opts.sessionToken) app.use('*', identifySession(opts.sessionToken));
  if (opts.rateLimited !== false) app.use('*', rateLimit);
  app.onError((err, c) => errorResponse(c, err));
  app.notFound((c) => errorResponse(c, noRouteError(app, c)));
  return app;
}

/**
 * Why nothing answered: 405 with `Allow` when the path is a route of other methods (read from
 * the routes, as CORS's methods are), else 404.
 */
export function noRouteError(app: Hono<AppEnv>, c: AppContext): AppError {
  const allow = methodsAt(app, c.req.path);
  if (allow.length === 0) return new AppError('not_found', 'NOT_FOUND', 'No such route.');
  const listed = [...allow, 'OPTIONS'].join(', ');
  return new AppError('validation', 'METHOD_NOT_ALLOWED', `${c.req.method} is not allowed here: use ${listed}.`, {
    status: 405,
    details: { allow: [...allow, 'OPTIONS'] },
    headers: { Allow: listed },
  });
}

/**
 * The methods whose routes (not middleware) match `path`, HEAD with GET.
 * @example methodsAt(app, '/credits/balance') // ['GET', 'HEAD']
 */
export function methodsAt(app: Hono<AppEnv>, path: string): string[] {
  type Match = [[unknown, { method: string }], unknown][];
  const found = routeMethods(app).filter((m) => {
    if (m === 'OPTIONS') return false;
    const [matches] = app.router.match(m, path) as unknown as [Match];
    return matches.some(([[, route]]) => route.method === m);
  });
  return found.includes('GET') ? [...found, 'HEAD'].sort() : found;
}

/**
 * The methods `app`'s routes answer, plus OPTIONS: what a CORS preflight allows. Middleware
 * (registered for every method as `ALL`) adds none.
 * @example routeMethods(app) // ['DELETE', 'GET', 'OPTIONS', 'PATCH', 'POST', 'PUT']
 */
export function routeMethods(app: Hono<AppEnv>): string[] {
  return [...new Set([...app.routes.map((r) => r.method).filter((m) => m !== 'ALL'), 'OPTIONS'])].sort();
}

/** Sets a header on the response in place: c.header() after the handler copies the whole Response. */
function setResponseHeader(c: AppContext, name: string, value: string, append = false): void {
  try {
    if (append) c.res.headers.append(name, value);
    else c.res.headers.set(name, value);
  } catch { // a response whose headers are immutable (fetched, or Response.redirect())
    c.header(name, value, { append });
  }
}
