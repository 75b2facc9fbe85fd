// Shared by the Deno tests: the local stack's addresses, a test database handle, and a
// signer that makes Supabase-shaped user tokens with the local auth key.
import { importJWK, type JWTPayload, SignJWT } from 'jose';
import postgres from 'postgres';

export const env = (name: string): string => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set: run the tests through ./scripts/test`);
  return v;
};

export const supabaseUrl = env('SUPABASE_URL');
export const functionsUrl = `${supabaseUrl}/functions/v1`;

/** A direct database handle for setting up and checking state (as postgres). */
export const testDb = postgres(env('SUPABASE_DB_URL'), { max: 4, onnotice: () => {}, prepare: false });

const privateJwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const signingKey = await importJWK(privateJwk, 'ES256');

export interface TokenOptions {
  admin?: boolean;
  claims?: JWTPayload;
  ttlSeconds?: number;
}

/** A user token as Supabase Auth would issue it; `claims` override any claim. */
export function userToken(userId: string, opts: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: `${supabaseUrl}/auth/v1`,
    aud: 'authenticated',
    sub: userId,
    role: 'authenticated',
    iat: now,
    exp: now + (opts.ttlSeconds ?? 3600),
    app_metadata: opts.admin ? { role: 'admin' } : {},
    ...opts.claims,
  })
    .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid, typ: 'JWT' })
    .sign(signingKey);
}

/** A fresh user id, inserted into auth.users. */
export async function newUser(): Promise<string> {
  const id = crypto.randomUUID();
  await testDb`insert into auth.users (id) values (${id})`;
  return id;
}

/** Calls a function through the gateway with a JSON body. */
export async function api(
  path: string,
  init: { method?: string; token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Headers; body: Record<string, unknown>; text: string }> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${functionsUrl}${path}`, {
    method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text);
  } catch { /* not JSON: the text is still returned */ }
  return { status: res.status, headers: res.headers, body, text };
}
