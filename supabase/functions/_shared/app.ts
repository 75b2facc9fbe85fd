// The app factory every function uses: Hono with basePath('/<name>'), request ids, CORS from
// an allowlist, one JSON onError/notFound rendering the standard envelope, and request logs.
import { type Context, Hono, type MiddlewareHandler } from 'hono';
import { cors } from 'hono/cors';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { type AuthUser, bearerToken, verifyUserToken } from './auth.ts';
import { rateLimit } from './ratelimit.ts';
import { baseEnv } from './env.ts';
import { AppError, internalError } from './errors.ts';
import { recordLatency } from './latency.ts';
import { constantTimeEqual } from './secrets.ts';
import { errorSummary, log } from './log.ts';

export type AppEnv = { Variables: { requestId: string; user: AuthUser | undefined; authError: AppError | undefined } };
export type AppContext = Context<AppEnv>;

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
 * @example const app = createApp('health', { rateLimited: false })
 */
export function createApp(name: string, opts: { rateLimited?: boolean } = {}): Hono<AppEnv> {
  const app = new Hono<AppEnv>().basePath(`/${name}`);
  const allowed = new Set(baseEnv().CORS_ALLOWED_ORIGINS);

  app.use('*', async function requestContext(c, next) {
    const given = c.req.header('x-request-id');
    const requestId = given && wellFormedRequestId.test(given) ? given : crypto.randomUUID();
    c.set('requestId', requestId);
    const started = performance.now();
    await next();
    c.header('X-Request-ID', requestId);
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
  app.use(
    '*',
    cors({
      origin: (origin) => (allowed.has(origin) ? origin : null),
      allowHeaders: ['authorization', 'x-client-info', 'apikey', 'content-type', 'idempotency-key', 'x-request-id'],
      allowMethods: ['GET', 'POST', 'DELETE', 'OPTIONS'],
      exposeHeaders: ['X-Request-ID', 'Idempotent-Replayed', 'Retry-After', 'Location'],
      maxAge: 600,
    }),
  );
  app.use('*', identify);
  if (opts.rateLimited !== false) app.use('*', rateLimit);
  app.onError((err, c) => errorResponse(c, err));
  app.notFound((c) => errorResponse(c, new AppError('not_found', 'NOT_FOUND', 'No such route.')));
  return app;
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

function signedInUser(c: AppContext): AuthUser {
  const user = c.get('user');
  if (user) return user;
  throw c.get('authError') ??
    new AppError('auth', 'UNAUTHORIZED', 'Sign in: an `Authorization: Bearer <token>` header is required.');
}

/** The signed-in user of a route behind requireUser or requireAdmin. */
export const currentUser = (c: AppContext): AuthUser => signedInUser(c);

/** Requires a valid user JWT; the user is then `currentUser(c)`. */
export const requireUser: MiddlewareHandler<AppEnv> = async function requireUser(c, next) {
  signedInUser(c);
  await next();
};

/**
 * Requires the service role: `Authorization: Bearer <SUPABASE_SERVICE_ROLE_KEY>`, for calls
 * from the product's own backend.
 */
export const requireServiceRole: MiddlewareHandler<AppEnv> = async function requireServiceRole(c, next) {
  const key = Deno.env.get('SUPABASE_SERVICE_ROLE_KEY') ?? '';
  const given = c.req.header('authorization')?.replace(/^Bearer /, '') ?? '';
  if (key.length < 16 || !constantTimeEqual(given, key)) {
    throw new AppError('auth', 'UNAUTHORIZED', 'This route is for the service role.');
  }
  await next();
};

/** Requires a user JWT whose `app_metadata.role` is `admin`. */
export const requireAdmin: MiddlewareHandler<AppEnv> = async function requireAdmin(c, next) {
  if (!signedInUser(c).isAdmin) throw new AppError('forbidden', 'FORBIDDEN', 'This route is for administrators.');
  await next();
};
