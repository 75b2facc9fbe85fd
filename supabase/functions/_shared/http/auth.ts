// Verifies Supabase Auth user tokens with jose: ES256/RS256 against the project's key set,
// inline from SUPABASE_JWKS when the platform provides it, else fetched from the JWKS URL
// (cached at most 10 minutes). Hosted projects must use asymmetric JWT signing keys: the
// legacy HS256 secret cannot reach a function (SUPABASE_* secrets are reserved).
// A verified token is remembered (see VerifiedTokens): the signature check was the costliest
// step of a request.
import { createHash } from 'node:crypto';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  type FlattenedJWSInput,
  type JWSHeaderParameters,
  type JWTPayload,
  jwtVerify,
} from 'jose';
import type { AuthUser } from '../app-env.ts';
import { AppError } from '../errors.ts';
import { baseEnv } from '../env.ts';
import { inlineJwks } from '../keys.ts';
import { isUuid } from '../values/query.ts';

/** What jwtVerify asks for a key: the local set, the remote one, or the local one falling back. */
type KeyResolver = (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>;
let remote: ReturnType<typeof createRemoteJWKSet> | undefined;
let resolver: KeyResolver | undefined;

const remoteSet = () =>
  remote ??= createRemoteJWKSet(new URL(`${baseEnv().SUPABASE_URL}/auth/v1/.well-known/jwks.json`), {
    cacheMaxAge: 10 * 60 * 1000,
    cooldownDuration: 30 * 1000,
    timeoutDuration: 3000,
  });

/** The project's key set, shared by every request of this instance. */
export function keySet(): KeyResolver {
  if (!resolver) {
    const inline = inlineJwks();
    const local = inline ? createLocalJWKSet(inline) : undefined;
    // A key rotated in after this instance started is not in its inline set: ask the JWKS URL.
    resolver = local
      ? (header: JWSHeaderParameters, token: FlattenedJWSInput) =>
        local(header, token).catch((err) => {
          if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err;
          return remoteSet()(header, token);
        })
      : remoteSet();
  }
  return resolver;
}

/**
 * Fetches the key set again (readiness checks): a network check for the JWKS URL, nothing to
 * do for an inline SUPABASE_JWKS.
 * @example await reloadKeySet()
 */
export async function reloadKeySet(): Promise<void> {
  if (!inlineJwks()) await remoteSet().reload();
}

const unauthorized = (message: string) => new AppError('auth', 'UNAUTHORIZED', message);

/**
 * Tokens whose signature and claims were verified, by SHA-256 of the token, until the token
 * expires or `maxAgeMs` passes, whichever is first; at most `max` of them, least recently used
 * out first. Only successes are kept: a refused token is checked again every time.
 *
 * Why this is safe: verification is a pure function of the token, the key set and the clock.
 * The clock is honoured (an entry ends at the token's `exp`, as jose would refuse it then); a
 * changed key set reaches remembered tokens within `maxAgeMs`, the same order as the remote
 * key set's own 10-minute cache. Whether the user may still act is never cached here: a
 * deleted or banned user and a revoked admin are refused by SQL on every request
 * (billing.standing_refusal inside every money route's statement, and requireAdmin's query),
 * exactly as before. A different token (a tampered one included) has a different hash, so it
 * is verified from scratch.
 * @example const cache = new VerifiedTokens(); const user = await cache.verify(token, verifyOnce)
 */
export class VerifiedTokens {
  readonly #entries = new Map<string, { user: AuthUser; until: number }>();

  constructor(
    readonly max = 10_000,
    readonly maxAgeMs = 5 * 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.#entries.size;
  }

  /** The user `token` names: remembered, or from `verify` (which must throw on a bad token). */
  async verify(token: string, verify: (token: string) => Promise<VerifiedToken>): Promise<AuthUser> {
    const key = createHash('sha256').update(token).digest('base64');
    const hit = this.#entries.get(key);
    if (hit) {
      this.#entries.delete(key); // re-inserted below or dropped: Map order is recency order
      if (this.now() < hit.until) {
        this.#entries.set(key, hit);
        return hit.user;
      }
    }
    const { user, expiresAt } = await verify(token);
    const until = Math.min(expiresAt, this.now() + this.maxAgeMs);
    if (this.#entries.size >= this.max) this.#entries.delete(this.#entries.keys().next().value as string);
    this.#entries.set(key, { user, until });
    return user;
  }
}

/** A verified token's user, and when the token expires (ms since the epoch). */
export interface VerifiedToken {
  user: AuthUser;
  expiresAt: number;
}

const verifiedTokens = new VerifiedTokens();

/**
 * Verifies a bearer token and returns the user it names; throws a 401 AppError otherwise.
 * A token verified before is answered from memory (VerifiedTokens) until it expires.
 * @example const user = await verifyUserToken(token)
 */
export function verifyUserToken(token: string): Promise<AuthUser> {
  // Refused by its shape before the cache hashes it: a server's key on every usage report is no JWT.
  if (!jwtShape.test(token)) return Promise.reject(malformedToken);
  return verifiedTokens.verify(token, verifyUncached);
}

let verifyOptions: Parameters<typeof jwtVerify>[2] | undefined;

/** Three dot-separated parts (jose decides the rest): anything else is no JWT (a server's key, say). */
const jwtShape = /^[^.]+\.[^.]+\.[^.]*$/;

/**
 * The refusal of a token that is no JWT: one instance, as it names nobody and carries nothing of
 * the request (no hashing, no jose decoding, no error built: ~3 % of a usage request's CPU).
 */
const malformedToken = unauthorized('The access token is malformed.');

async function verifyUncached(token: string): Promise<VerifiedToken> {
  try {
    decodeProtectedHeader(token);
  } catch {
    throw malformedToken;
  }
  verifyOptions ??= {
    issuer: `${baseEnv().SUPABASE_URL}/auth/v1`,
    audience: 'authenticated',
    requiredClaims: ['exp', 'sub', 'iat'],
    algorithms: ['ES256', 'RS256'],
  };
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, keySet(), verifyOptions));
  } catch (err) {
    const expired = (err as { code?: string }).code === 'ERR_JWT_EXPIRED';
    throw unauthorized(expired ? 'The access token has expired.' : 'The access token is not valid.');
  }
  refuseLifetime(payload.iat as number, payload.exp as number); // both required, numbers (jwtVerify)
  if (typeof payload.sub !== 'string' || !isUuid(payload.sub) || payload.role !== 'authenticated') {
    throw unauthorized('The access token does not name a signed-in user.');
  }
  const appMetadata = payload.app_metadata as { role?: unknown } | undefined;
  const user: AuthUser = Object.freeze({
    id: payload.sub.toLowerCase(),
    email: typeof payload.email === 'string' ? payload.email : undefined,
    isAdmin: appMetadata?.role === 'admin',
  });
  return { user, expiresAt: (payload.exp as number) * 1000 }; // required and checked by jwtVerify
}

/** How far ahead of this clock a token's `iat` may be: the issuer's clock may run a little ahead. */
const clockSkewSeconds = 30;

/**
 * Refuses a token issued in the future or living longer than Supabase Auth issues them
 * (AUTH_TOKEN_MAX_LIFETIME_SECONDS): such a token was not made by the project's Auth, and a
 * leaked one would otherwise stay usable for as long as its signer chose.
 */
function refuseLifetime(iat: number, exp: number): void {
  if (iat > Date.now() / 1000 + clockSkewSeconds) throw unauthorized('The access token is issued in the future.');
  if (exp - iat > baseEnv().AUTH_TOKEN_MAX_LIFETIME_SECONDS) {
    throw unauthorized('The access token lives longer than this project allows.');
  }
}

/** The bearer token of a request, or a 401. */
export function bearerToken(header: string | undefined): string {
  const m = header?.match(/^Bearer ([A-Za-z0-9._~+/=-]+)$/);
  if (!m) throw unauthorized('Sign in: an `Authorization: Bearer <token>` header is required.');
  return m[1];
}
