// The app factory every function uses: Hono with basePath('/<name>'), request ids, CORS from
// an allowlist, one JSON onError/notFound rendering the standard envelope, and request logs.
import { Hono, type MiddlewareHandler } from 'hono';
import { cors } from 'hono/cors';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { AppContext, AppEnv, AuthUser } from '../app-env.ts';
import { bearerToken, verifyUserToken } from './auth.ts';
import { rateLimit } from './ratelimit.ts';
import { baseEnv, ConfigError } from '../env.ts';
import { AppError, internalError } from '../errors.ts';
import { recordLatency } from './latency.ts';
import { call } from '../adapters/db.ts';
import { serviceKeys } from '../keys.ts';
import { constantTimeEqual } from './secrets.ts';
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

/** The success envelope as text, for responses that are stored and replayed byte for byte. */
export const successBody = (c: AppContext, data: unknown) => JSON.stringify({ data, metadata: metadata(c) });

/** The failure envelope of an AppError as text. */
export const errorBody = (c: AppContext, err: AppError) =>
  JSON.stringify({ error: err.toJSON(), metadata: metadata(c) });

/** The failure envelope for any error; a 5xx never shows internals. */
export function errorResponse(c: AppContext, err: unknown): Response {
  let appError: AppError;
  if (err instanceof AppError) appError = err;
  else if (err instanceof ConfigError) appError = err.appError();
  else if (err instanceof HTTPException && err.status < 500) {
    const code = err.status === 413 ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
    appError = new AppError('validation', code, err.message || 'The request is not valid.', { status: err.status });
  } else {
    log.error('unhandled error', { requestId: c.get('requestId'), ...errorSummary(err) });
    appError = internalError();
  }
  return c.body(errorBody(c, appError), appError.status as ContentfulStatusCode, {
    'content-type': 'application/json',
    ...appError.options.headers,
  });
}

/**
 * Creates a function's app. Routes are declared on the result, relative to `/<name>`.
 * Every request is rate limited unless `rateLimited: false` (health checks, Stripe webhooks).
 * `sessionToken` lets a function with browser pages take the caller from a session cookie when
 * no bearer header is sent (admin: its HttpOnly dashboard cookie).
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
    const started = performance.now();
    await next();
    setResponseHeader(c, 'X-Request-ID', requestId);
    const durationMs = Math.round((performance.now() - started) * 10) / 10;
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
  const corsHeaders = cors({
    origin: (origin) => (allowed.has(origin) ? origin : null),
    allowHeaders: ['authorization', 'x-client-info', 'apikey', 'content-type', 'idempotency-key', 'x-request-id'],
    // Every method a route answers, read from the routes themselves when a browser asks, so a
    // route added later (PATCH /orgs/:id was once refused by browsers) is never left out.
    allowMethods: () => (methods ??= routeMethods(app)),
    exposeHeaders: [
      'X-Request-ID',
      'Idempotent-Replayed',
      'Retry-After',
      'Location',
      'X-Credits-Held',
      'X-Credits-Charged',
      'X-AI-Call-Id',
    ],
    maxAge: 600,
  });
  // CORS headers are for browsers, which send Origin on every cross-origin request. For the
  // rest (servers, the product's backend) Hono's cors would only copy the Response twice:
  // ~40 µs a request (bench/README.md, request-path). Vary: Origin stays on every answer.
  app.use('*', function corsForBrowsers(c, next) {
    if (c.req.method === 'OPTIONS' || c.req.header('origin')) return corsHeaders(c, next);
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
function noRouteError(app: Hono<AppEnv>, c: AppContext): AppError {
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

/**
 * Verifies a bearer token when one is sent, before rate limiting, so limits key on a verified
 * user id (a forged `sub` cannot spend someone else's quota). The outcome waits in the context
 * for requireUser; a route that needs no user never sees it.
 */
const identify: MiddlewareHandler<AppEnv> = async function identify(c, next) {
  const header = c.req.header('authorization');
  if (header) {
    try {
      c.set('user', await verifyUserToken(bearerToken(header)));
    } catch (err) {
      if (!(err instanceof AppError)) throw err;
      c.set('authError', err);
    }
  }
  await next();
};

/**
 * Cookie identity for a function with browser pages (`createApp(name, { sessionToken })`): the
 * token `tokenOf` finds (the admin session cookie, when the request may use it) becomes the
 * identity, before rate limiting so limits key on the verified user.
 */
const identifySession = (tokenOf: (c: AppContext) => string | undefined): MiddlewareHandler<AppEnv> =>
  async function identifySession(c, next) {
    const token = tokenOf(c);
    if (token) await identifyWithSessionToken(c, token);
    await next();
  };

function signedInUser(c: AppContext): AuthUser {
  const user = c.get('user');
  if (user) return user;
  throw c.get('authError') ??
    new AppError('auth', 'UNAUTHORIZED', 'Sign in: an `Authorization: Bearer <token>` header is required.');
}

/** The signed-in user of a route behind requireUser or requireAdmin. */
export const currentUser = (c: AppContext): AuthUser => signedInUser(c);

/**
 * Cookie identity: makes `token` (from an HttpOnly session cookie, or posted to sign in) the
 * request's identity exactly as `identify` does for a bearer header, replacing any earlier
 * outcome, so requireUser, requireAdmin and currentUser treat it the same way.
 * @example await identifyWithSessionToken(c, token) // then requireAdmin(c, next)
 */
export async function identifyWithSessionToken(c: AppContext, token: string): Promise<void> {
  c.set('user', undefined);
  c.set('authError', undefined);
  try {
    c.set('user', await verifyUserToken(token));
  } catch (err) {
    if (!(err instanceof AppError)) throw err;
    c.set('authError', err);
  }
}

/** Requires a valid user JWT; the user is then `currentUser(c)`. */
export const requireUser: MiddlewareHandler<AppEnv> = async function requireUser(c, next) {
  signedInUser(c);
  await next();
};

/**
 * Requires the service role, for calls from the product's own backend: `Authorization: Bearer`
 * the legacy service_role key or any of the project's secret keys (`sb_secret_…`).
 */
export const requireServiceRole: MiddlewareHandler<AppEnv> = async function requireServiceRole(c, next) {
  const given = c.req.header('authorization')?.replace(/^Bearer /, '') ?? '';
  // Every key is compared, so the time taken does not say which one nearly matched.
  const matches = serviceKeys().map((key) => constantTimeEqual(given, key));
  if (!matches.includes(true)) {
    throw new AppError('auth', 'UNAUTHORIZED', 'This route is for the service role.');
  }
  await next();
};

/**
 * Requires a user JWT whose `app_metadata.role` is `admin`, for a route whose one SQL call
 * checks the database role itself (billing.run_money_request with admin): no extra round trip.
 */
export const requireAdminToken: MiddlewareHandler<AppEnv> = async function requireAdminToken(c, next) {
  if (!signedInUser(c).isAdmin) throw new AppError('forbidden', 'FORBIDDEN', 'This route is for administrators.');
  await next();
};

/**
 * Requires a user JWT whose `app_metadata.role` is `admin`, and that the user is still an
 * admin in the database now: a token outlives a revoked role or a deleted user by up to an
 * hour, and admin routes are rare enough to afford the one indexed lookup.
 */
export const requireAdmin: MiddlewareHandler<AppEnv> = async function requireAdmin(c, next) {
  await requireAdminToken(c, async () => {
    await call((sql) => sql`select billing.assert_user_standing(${signedInUser(c).id}, true)`);
  });
  await next();
};

/**
 * requireAdmin, unless `bypass` accepts the request first: a route an operator's machine also
 * calls with a bearer secret of its own (a Prometheus scrape, a scheduled check).
 * @example app.get('/metrics', requireAdminUnless(hasMetricsToken), handler)
 */
export const requireAdminUnless = (bypass: (c: AppContext) => boolean): MiddlewareHandler<AppEnv> =>
  async function requireAdminUnless(c, next) {
    if (bypass(c)) await next();
    else await requireAdmin(c, next);
  };
