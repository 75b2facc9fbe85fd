// Verifies Supabase Auth user tokens with jose: ES256/RS256 against the project's JWKS
// (cached at most 10 minutes), HS256 only when SUPABASE_JWT_SECRET is set.
import { createRemoteJWKSet, decodeProtectedHeader, type JWTPayload, jwtVerify } from 'jose';
import { AppError } from './errors.ts';
import { baseEnv } from './env.ts';
import { isUuid } from './validate.ts';

export interface AuthUser {
  id: string;
  email?: string;
  isAdmin: boolean;
}

let jwks: ReturnType<typeof createRemoteJWKSet> | undefined;

/** The project's remote key set, shared by every request of this instance. */
export function keySet() {
  jwks ??= createRemoteJWKSet(new URL(`${baseEnv().SUPABASE_URL}/auth/v1/.well-known/jwks.json`), {
    cacheMaxAge: 10 * 60 * 1000,
    cooldownDuration: 30 * 1000,
    timeoutDuration: 3000,
  });
  return jwks;
}

const unauthorized = (message: string) => new AppError('auth', 'UNAUTHORIZED', message);

/**
 * Verifies a bearer token and returns the user it names; throws a 401 AppError otherwise.
 * @example const user = await verifyUserToken(token)
 */
export async function verifyUserToken(token: string): Promise<AuthUser> {
  const env = baseEnv();
  let alg: string | undefined;
  try {
    alg = decodeProtectedHeader(token).alg;
  } catch {
    throw unauthorized('The access token is malformed.');
  }
  const options = {
    issuer: `${env.SUPABASE_URL}/auth/v1`,
    audience: 'authenticated',
    requiredClaims: ['exp', 'sub'],
  };
  let payload: JWTPayload;
  try {
    if (alg === 'HS256' && env.SUPABASE_JWT_SECRET) {
      const secret = new TextEncoder().encode(env.SUPABASE_JWT_SECRET);
      ({ payload } = await jwtVerify(token, secret, { ...options, algorithms: ['HS256'] }));
    } else {
      ({ payload } = await jwtVerify(token, keySet(), { ...options, algorithms: ['ES256', 'RS256'] }));
    }
  } catch (err) {
    const expired = (err as { code?: string }).code === 'ERR_JWT_EXPIRED';
    throw unauthorized(expired ? 'The access token has expired.' : 'The access token is not valid.');
  }
  if (typeof payload.sub !== 'string' || !isUuid(payload.sub) || payload.role !== 'authenticated') {
    throw unauthorized('The access token does not name a signed-in user.');
  }
  const appMetadata = payload.app_metadata as { role?: unknown } | undefined;
  return {
    id: payload.sub.toLowerCase(),
    email: typeof payload.email === 'string' ? payload.email : undefined,
    isAdmin: appMetadata?.role === 'admin',
  };
}

/** The bearer token of a request, or a 401. */
export function bearerToken(header: string | undefined): string {
  const m = header?.match(/^Bearer ([A-Za-z0-9._~+/=-]+)$/);
  if (!m) throw unauthorized('Sign in: an `Authorization: Bearer <token>` header is required.');
  return m[1];
}
