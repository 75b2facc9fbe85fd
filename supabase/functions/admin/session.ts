// The dashboard's session: a server-side sign-in (a pasted access token, or email and password
// through Supabase Auth's password grant) that sets the token in an HttpOnly; Secure;
// SameSite=Strict cookie scoped to this function, so the page's script never sees it. On later
// requests the cookie becomes the request's identity through identifyWithSessionToken, and
// requireAdmin decides exactly as for a bearer header.
import { getCookie, setCookie } from 'hono/cookie';
import { decodeJwt } from 'jose';
import type { AppContext } from '../_shared/app-env.ts';
import { baseEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { publishableKey } from '../_shared/keys.ts';
import { parseOr400 } from '../_shared/values/query.ts';
import { readBody } from '../_shared/http/validate.ts';
import { type SessionRequest, SessionRequestSchema } from './schemas.ts';

export const sessionCookieName = 'sl_admin_session';
/** The function's public path: the browser sends the cookie to nothing else. */
const cookiePath = '/functions/v1/admin';
/** A script-readable token cookie that no page may keep: cleared whenever a session starts or ends. */
const legacyCookie = { name: 'sl_admin_token', path: '/functions/v1/admin/' };

const isSafe = (c: AppContext) => c.req.method === 'GET' || c.req.method === 'HEAD';

/** Whether `origin` is this function's own: the project URL's origin, or the Host it was sent to. */
function isOwnOrigin(c: AppContext, origin: string): boolean {
  if (origin === new URL(baseEnv().SUPABASE_URL).origin) return true;
  try {
    return new URL(origin).host === c.req.header('host');
  } catch {
    return false;
  }
}

/**
 * Whether a browser says the request comes from another origin. `SameSite=Strict` still sends
 * the cookie from a same-site page on another port or subdomain, so this is checked too.
 * Sec-Fetch-Site (which scripts cannot set) decides when present: a form post under
 * `Referrer-Policy: no-referrer` carries `Origin: null` even from our own page. Without it (old
 * browsers, plain HTTP to a remote host) the Origin header decides; clients that send neither
 * (curl, servers) carry no ambient cookie.
 */
export function isCrossOrigin(c: AppContext): boolean {
  const site = c.req.header('sec-fetch-site');
  if (site) return !(site === 'same-origin' || (site === 'none' && isSafe(c)));
  const origin = c.req.header('origin');
  return origin !== undefined && !isOwnOrigin(c, origin);
}

/** Whether the browser positively says the request comes from our own origin. */
const provenSameOrigin = (c: AppContext) => {
  const origin = c.req.header('origin');
  return c.req.header('sec-fetch-site') === 'same-origin' || (origin !== undefined && isOwnOrigin(c, origin));
};

/** Refuses a sign-in or sign-out posted from another origin (login and logout CSRF). */
export function refuseCrossOrigin(c: AppContext): void {
  if (isCrossOrigin(c)) {
    throw new AppError('forbidden', 'CROSS_ORIGIN_REQUEST', 'This request must come from the dashboard itself.');
  }
}

/**
 * The session cookie's token when it may stand for the caller: no Authorization header (which
 * wins), not cross-origin, and for anything but GET/HEAD proven same-origin (CSRF). createApp
 * makes it the request's identity (identifyWithSessionToken) before rate limiting.
 */
export function sessionToken(c: AppContext): string | undefined {
  const token = getCookie(c, sessionCookieName);
  if (!token || c.req.header('authorization') || isCrossOrigin(c)) return undefined;
  if (!isSafe(c) && !provenSameOrigin(c)) return undefined;
  return token;
}

/** Whether the sign-in came from the HTML form (answered with pages and redirects). */
export const isFormPost = (c: AppContext) =>
  (c.req.header('content-type') ?? '').startsWith('application/x-www-form-urlencoded');

/** The sign-in request, from the form or as JSON. */
export async function readSignIn(c: AppContext): Promise<SessionRequest> {
  const text = await readBody(c, 32 * 1024);
  if (isFormPost(c)) return parseOr400(SessionRequestSchema, Object.fromEntries(new URLSearchParams(text)));
  let json: unknown;
  try {
    json = text === '' ? {} : JSON.parse(text);
  } catch {
    throw new AppError('validation', 'INVALID_JSON', 'The body is not valid JSON.');
  }
  return parseOr400(SessionRequestSchema, json);
}

/** Supabase Auth's password grant, called from the server: the browser never holds the token. */
async function passwordGrant(email: string, password: string): Promise<string> {
  const apikey = publishableKey();
  if (!apikey) {
    throw new AppError(
      'validation',
      'PASSWORD_SIGN_IN_UNAVAILABLE',
      'Password sign-in is not configured here; paste an access token.',
      { field: 'email' },
    );
  }
  let res: Response;
  try {
    res = await fetch(`${baseEnv().SUPABASE_URL}/auth/v1/token?grant_type=password`, {
      method: 'POST',
      headers: { apikey, 'content-type': 'application/json' },
      body: JSON.stringify({ email, password }),
      signal: AbortSignal.timeout(5_000),
    });
  } catch {
    throw new AppError('unavailable', 'AUTH_UNAVAILABLE', 'Supabase Auth did not answer; try again.');
  }
  const body = await res.json().catch(() => ({})) as { access_token?: unknown };
  if (res.status === 429) {
    throw new AppError('rate_limit', 'RATE_LIMITED', 'Too many sign-in attempts; wait a minute.');
  }
  if (res.status >= 500) {
    throw new AppError('unavailable', 'AUTH_UNAVAILABLE', 'Supabase Auth did not answer; try again.');
  }
  if (!res.ok || typeof body.access_token !== 'string') {
    throw new AppError('auth', 'INVALID_CREDENTIALS', 'Wrong email or password.');
  }
  return body.access_token;
}

/** The access token a sign-in names (not yet verified: identifyWithSessionToken does that). */
export const accessTokenFor = (body: SessionRequest): Promise<string> =>
  body.access_token ? Promise.resolve(body.access_token) : passwordGrant(body.email ?? '', body.password ?? '');

const cookieOptions = { httpOnly: true, secure: true, sameSite: 'Strict', path: cookiePath } as const;

/**
 * Sets the session cookie for a verified token, for no longer than the token lives.
 * @returns when the session (the token) expires
 */
export function startSession(c: AppContext, token: string): Date {
  const exp = Number(decodeJwt(token).exp);
  const maxAge = Math.max(0, Math.min(exp - Math.floor(Date.now() / 1000), 34_560_000));
  setCookie(c, sessionCookieName, token, { ...cookieOptions, maxAge });
  setCookie(c, legacyCookie.name, '', { path: legacyCookie.path, maxAge: 0 });
  return new Date(exp * 1000);
}

/** Clears the session cookie (and any legacy one). */
export function endSession(c: AppContext): void {
  setCookie(c, sessionCookieName, '', { ...cookieOptions, maxAge: 0 });
  setCookie(c, legacyCookie.name, '', { path: legacyCookie.path, maxAge: 0 });
}
