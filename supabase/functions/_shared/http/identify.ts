// Who is calling: the identity middlewares set `user` (or the reason there is none, `authError`)
// on the request (AppEnv's variables, app-env.ts); currentUser reads it.
import type { MiddlewareHandler } from 'hono';
import type { AppContext, AppEnv, AuthUser } from '../app-env.ts';
import { AppError } from '../errors.ts';
import { bearerToken, verifyUserToken } from './auth.ts';

/**
 * Verifies a bearer token when one is sent, before rate limiting, so limits key on a verified
 * user id (a forged `sub` cannot spend someone else's quota). The outcome waits in the context
 * for requireUser; a route that needs no user never sees it.
 */
export const identify: MiddlewareHandler<AppEnv> = async function identify(c, next) {
  const header = c.req.header('authorization');
  if (header) await c.get('steps').time('auth', () => identifyWithToken(c, () => bearerToken(header)));
  await next();
};

/**
 * Cookie identity for a function with browser pages (`createApp(name, { sessionToken })`): the
 * token `tokenOf` finds (the admin session cookie, when the request may use it) becomes the
 * identity, before rate limiting so limits key on the verified user.
 */
export const identifySession = (tokenOf: (c: AppContext) => string | undefined): MiddlewareHandler<AppEnv> =>
  async function identifySession(c, next) {
    const token = tokenOf(c);
    if (token) await identifyWithSessionToken(c, token);
    await next();
  };

/**
 * Cookie identity: makes `token` (from an HttpOnly session cookie, or posted to sign in) the
 * request's identity exactly as `identify` does for a bearer header, replacing any earlier
 * outcome, so requireUser, requireAdmin and currentUser treat it the same way.
 * @example await identifyWithSessionToken(c, token) // then requireAdmin(c, next)
 */
export async function identifyWithSessionToken(c: AppContext, token: string): Promise<void> {
  c.set('user', undefined);
  c.set('authError', undefined);
  await identifyWithToken(c, () => token);
}

async function identifyWithToken(c: AppContext, token: () => string): Promise<void> {
  try {
    c.set('user', await verifyUserToken(token()));
  } catch (err) {
    if (!(err instanceof AppError)) throw err;
    c.set('authError', err);
  }
}

/**
 * The signed-in user of a route behind requireUser or requireAdmin; a 401 (why the token was
 * refused, or that none was sent) otherwise.
 * @example const userId = currentUser(c).id
 */
export function currentUser(c: AppContext): AuthUser {
  const user = c.get('user');
  if (user) return user;
  throw c.get('authError') ??
    new AppError('auth', 'UNAUTHORIZED', 'Sign in: an `Authorization: Bearer <token>` header is required.');
}
