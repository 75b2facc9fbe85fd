// A stand-in for the part of Supabase Auth (GoTrue) that supabase-js's password sign-in uses;
// hosted Supabase runs the real service, this imitates what these routes answer:
//   POST /auth/v1/token?grant_type=password        {email, password} → a session
//   POST /auth/v1/token?grant_type=refresh_token   {refresh_token}   → a new session
//   GET  /auth/v1/user                             → the token's user
//   POST /auth/v1/logout                           → 204; the session's refresh tokens stop working
// Users are the rows of auth.users, as on hosted: a bcrypt hash in `encrypted_password`
// (checked with pgcrypto's crypt(), which reads GoTrue's $2a$ hashes), sign-in refused until
// `email_confirmed_at` is set or while `banned_until` is ahead. Access tokens are signed as
// scripts/local/token.ts signs them. Refresh tokens live in this process only (GoTrue keeps
// them in auth.refresh_tokens): a restarted gateway asks users to sign in again.
import { Hono } from 'hono';
import { importJWK, jwtVerify, SignJWT } from 'jose';
import postgres from 'postgres';

const env = (name: string) => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const issuer = `${env('SUPABASE_URL')}/auth/v1`;
const config = await Deno.readTextFile(new URL('../../supabase/config.toml', import.meta.url));
const authSection = config.match(/^\[auth\]\n((?:(?!\[).*\n)*)/m)?.[1] ?? ''; // up to the next [section]
const expiresIn = Number(authSection.match(/^jwt_expiry\s*=\s*(\d+)/m)?.[1] ?? 3600);
const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const privateKey = await importJWK(jwk, 'ES256');
const { d: _private, ...publicJwk } = jwk;
const publicKey = await importJWK(publicJwk, 'ES256');
const sql = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {} });

type UserRow = {
  id: string;
  email: string | null;
  role: string | null;
  raw_app_meta_data: Record<string, unknown>;
  raw_user_meta_data: Record<string, unknown>;
  email_confirmed_at: Date | null;
  last_sign_in_at: Date | null;
  created_at: Date;
  updated_at: Date;
};
const userColumns = sql`id, email, role, raw_app_meta_data, raw_user_meta_data, email_confirmed_at,
  last_sign_in_at, created_at, updated_at`;
const refreshTokens = new Map<string, { userId: string; sessionId: string }>();

/** GoTrue's error shape for API version 2024-01-01, which supabase-js asks for. */
const fail = (status: number, code: string, message: string) =>
  Response.json({ code, message }, { status, headers: { 'x-supabase-api-version': '2024-01-01' } });

const userJson = (u: UserRow) => ({
  id: u.id,
  aud: 'authenticated',
  role: u.role ?? 'authenticated',
  email: u.email ?? '',
  email_confirmed_at: u.email_confirmed_at,
  confirmed_at: u.email_confirmed_at,
  phone: '',
  last_sign_in_at: u.last_sign_in_at,
  app_metadata: u.raw_app_meta_data,
  user_metadata: u.raw_user_meta_data,
  identities: [],
  created_at: u.created_at,
  updated_at: u.updated_at,
  is_anonymous: false,
});

async function session(u: UserRow, sessionId: string) {
  const now = Math.floor(Date.now() / 1000);
  const accessToken = await new SignJWT({
    email: u.email ?? '',
    phone: '',
    role: u.role ?? 'authenticated',
    app_metadata: u.raw_app_meta_data,
    user_metadata: u.raw_user_meta_data,
    aal: 'aal1',
    amr: [{ method: 'password', timestamp: now }],
    session_id: sessionId,
    is_anonymous: false,
  })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' })
    .setIssuer(issuer)
    .setAudience('authenticated')
    .setSubject(u.id)
    .setIssuedAt(now)
    .setExpirationTime(now + expiresIn)
    .sign(privateKey);
  const refreshToken = crypto.randomUUID().replaceAll('-', '');
  refreshTokens.set(refreshToken, { userId: u.id, sessionId });
  return {
    access_token: accessToken,
    token_type: 'bearer',
    expires_in: expiresIn,
    expires_at: now + expiresIn,
    refresh_token: refreshToken,
    user: userJson(u),
  };
}

/** The verified claims of the request's bearer token, or null. */
async function bearerClaims(req: Request) {
  const token = req.headers.get('authorization')?.match(/^Bearer (.+)$/i)?.[1];
  if (!token) return null;
  try {
    const { payload } = await jwtVerify(token, publicKey, {
      issuer,
      audience: 'authenticated',
      algorithms: ['ES256'],
      requiredClaims: ['exp', 'sub'],
    });
    return payload as { sub: string; session_id?: string };
  } catch {
    return null;
  }
}

const usable = sql`deleted_at is null and (banned_until is null or banned_until < now())`;

export const authStandin = new Hono().basePath('/auth/v1');

authStandin.post('/token', async (c) => {
  const grant = c.req.query('grant_type');
  const body = await c.req.json().catch(() => ({})) as Record<string, unknown>;
  if (grant === 'password') {
    const { email, password } = body;
    if (typeof email !== 'string' || typeof password !== 'string' || !email || !password) {
      return fail(400, 'validation_failed', 'An email address and a password are required.');
    }
    const [user] = await sql<(UserRow & { confirmed: boolean })[]>`
      select ${userColumns}, email_confirmed_at is not null as confirmed from auth.users
      where lower(email) = lower(${email}) and ${usable}
        and encrypted_password = extensions.crypt(${password}, encrypted_password)`;
    if (!user) return fail(400, 'invalid_credentials', 'Invalid login credentials');
    if (!user.confirmed) return fail(400, 'email_not_confirmed', 'Email not confirmed');
    const [signedIn] = await sql<UserRow[]>`
      update auth.users set last_sign_in_at = now() where id = ${user.id} returning ${userColumns}`;
    return c.json(await session(signedIn, crypto.randomUUID()));
  }
  if (grant === 'refresh_token') {
    const held = typeof body.refresh_token === 'string' ? refreshTokens.get(body.refresh_token) : undefined;
    if (!held) return fail(400, 'refresh_token_not_found', 'Invalid Refresh Token: Refresh Token Not Found');
    refreshTokens.delete(body.refresh_token as string); // rotated: each refresh token works once
    const [user] = await sql<UserRow[]>`select ${userColumns} from auth.users where id = ${held.userId} and ${usable}`;
    if (!user) return fail(400, 'user_not_found', 'User from sub claim in JWT does not exist');
    return c.json(await session(user, held.sessionId));
  }
  return fail(400, 'validation_failed', 'This stand-in supports grant_type password and refresh_token.');
});

authStandin.get('/user', async (c) => {
  const claims = await bearerClaims(c.req.raw);
  if (!claims) return fail(403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature');
  const [user] = await sql<UserRow[]>`select ${userColumns} from auth.users where id = ${claims.sub} and ${usable}`;
  if (!user) return fail(403, 'user_not_found', 'User from sub claim in JWT does not exist');
  return c.json(userJson(user));
});

authStandin.post('/logout', async (c) => {
  const claims = await bearerClaims(c.req.raw);
  if (!claims) return fail(403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature');
  const scope = c.req.query('scope') ?? 'global';
  for (const [token, held] of refreshTokens) {
    const others = scope === 'others' && held.sessionId === claims.session_id;
    const mine = held.userId === claims.sub && (scope !== 'local' || held.sessionId === claims.session_id);
    if (mine && !others) refreshTokens.delete(token);
  }
  return c.body(null, 204);
});

authStandin.notFound(() => fail(404, 'not_found', 'This auth stand-in serves /token, /user and /logout only.'));
