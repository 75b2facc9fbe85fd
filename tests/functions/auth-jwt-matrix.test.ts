// Every way a bearer token can be wrong gets 401 in the envelope; only a valid one passes.
import assert from 'node:assert/strict';
import { exportSPKI, generateKeyPair, importJWK, SignJWT } from 'jose';
import { createApp, ok } from '../../supabase/functions/_shared/http/app.ts';
import { currentUser } from '../../supabase/functions/_shared/http/identify.ts';
import { requireAdmin } from '../../supabase/functions/_shared/http/require-admin.ts';
import { requireUser } from '../../supabase/functions/_shared/http/require-user.ts';
import { env, newAdmin, supabaseUrl, userToken } from '../support/helpers.ts';

const app = createApp('probe');
app.get('/me', requireUser, (c) => ok(c, { id: currentUser(c).id }));
app.get('/admin', requireAdmin, (c) => ok(c, { id: currentUser(c).id }));

const userId = crypto.randomUUID();
const b64url = (o: unknown) => btoa(JSON.stringify(o)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
const privateJwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const { d: _d, ...publicJwk } = privateJwk;
const now = () => Math.floor(Date.now() / 1000);
const standardClaims = () => ({
  iss: `${supabaseUrl}/auth/v1`,
  aud: 'authenticated',
  sub: userId,
  role: 'authenticated',
  iat: now(),
  exp: now() + 600,
});

async function signWithLocalKey(claims: Record<string, unknown>) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid })
    .sign(await importJWK(privateJwk, 'ES256'));
}

async function call(path: string, token?: string) {
  const res = await app.request(`/probe${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, body: await res.json() };
}

Deno.test('a valid Supabase-shaped token passes and names its user', async () => {
  const { status, body } = await call('/me', await userToken(userId));
  assert.equal(status, 200);
  assert.equal(body.data.id, userId);
});

const badTokens: Array<[string, () => Promise<string | undefined>]> = [
  ['no token', () => Promise.resolve(undefined)],
  ['a malformed token', () => Promise.resolve('not.a.jwt')],
  ['alg: none', () => Promise.resolve(`${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(standardClaims())}.`)],
  ['HS256 signed with the public key as the secret', async () => {
    const { createHmac } = await import('node:crypto');
    const pem = await exportSPKI(await importJWK(publicJwk, 'ES256') as CryptoKey);
    const head = `${b64url({ alg: 'HS256', typ: 'JWT', kid: privateJwk.kid })}.${b64url(standardClaims())}`;
    const sig = createHmac('sha256', pem).update(head).digest('base64url');
    return `${head}.${sig}`;
  }],
  ['an unknown kid', async () => {
    const { privateKey } = await generateKeyPair('ES256');
    return new SignJWT(standardClaims()).setProtectedHeader({ alg: 'ES256', kid: crypto.randomUUID() }).sign(
      privateKey,
    );
  }],
  ['the right kid but another key', async () => {
    const { privateKey } = await generateKeyPair('ES256');
    return new SignJWT(standardClaims()).setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid }).sign(privateKey);
  }],
  ['an expired token', () => signWithLocalKey({ ...standardClaims(), iat: now() - 7200, exp: now() - 3600 })],
  ['no exp', () => {
    const { exp: _exp, ...claims } = standardClaims();
    return signWithLocalKey(claims);
  }],
  ['no iat', () => {
    const { iat: _iat, ...claims } = standardClaims();
    return signWithLocalKey(claims);
  }],
  ['an iat a day in the future', () => signWithLocalKey({ ...standardClaims(), iat: now() + 86_400 })],
  ['an iat a minute in the future', () => signWithLocalKey({ ...standardClaims(), iat: now() + 60 })],
  ['an exp ten years out', () => signWithLocalKey({ ...standardClaims(), exp: now() + 10 * 365 * 86_400 })],
  ['a lifetime of a week and a second', () => signWithLocalKey({ ...standardClaims(), exp: now() + 604_801 })],
  ['a wrong iss', () => signWithLocalKey({ ...standardClaims(), iss: 'https://evil.example/auth/v1' })],
  ['a wrong aud', () => signWithLocalKey({ ...standardClaims(), aud: 'anon' })],
  ['no sub', () => {
    const { sub: _sub, ...claims } = standardClaims();
    return signWithLocalKey(claims);
  }],
  ['an anon-role token (like the anon key)', () => signWithLocalKey({ ...standardClaims(), role: 'anon' })],
  [
    'a service_role token (like the legacy service key)',
    () => signWithLocalKey({ ...standardClaims(), role: 'service_role' }),
  ],
];

for (const [name, make] of badTokens) {
  Deno.test(`a request with ${name} gets 401 in the envelope`, async () => {
    const { status, body } = await call('/me', await make());
    assert.equal(status, 401);
    assert.equal(body.error.type, 'auth');
    assert.equal(body.error.code, 'UNAUTHORIZED');
    assert.equal(body.error.retryable, false);
    assert.ok(body.metadata.requestId);
  });
}

Deno.test("a token living a week (Supabase Auth's longest), issued a few seconds ahead of this clock, passes", async () => {
  const token = await signWithLocalKey({ ...standardClaims(), iat: now() + 10, exp: now() + 10 + 604_800 });
  assert.equal((await call('/me', token)).status, 200);
});

Deno.test('an admin claim for a user the database does not know is 401 (deleted since the token was issued)', async () => {
  const { status, body } = await call('/admin', await userToken(userId, { admin: true }));
  assert.equal(status, 401);
  assert.equal(body.error.code, 'UNAUTHORIZED');
});

Deno.test('an admin route refuses a non-admin user with 403', async () => {
  const { status, body } = await call('/admin', await userToken(userId));
  assert.equal(status, 403);
  assert.equal(body.error.code, 'FORBIDDEN');
});

Deno.test('an admin route accepts app_metadata.role = admin, but not a role forged in user_metadata', async () => {
  const adminId = await newAdmin();
  assert.equal((await call('/admin', await userToken(adminId, { admin: true }))).status, 200);
  const forged = await userToken(adminId, { claims: { user_metadata: { role: 'admin' } } });
  assert.equal((await call('/admin', forged)).status, 403);
});
