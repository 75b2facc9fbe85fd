// Hosted projects on the new API keys: service routes accept any `sb_secret_…` key from
// SUPABASE_SECRET_KEYS beside the legacy service_role key, and user tokens verify against the
// inline SUPABASE_JWKS without fetching anything (here the JWKS URL points nowhere).
import assert from 'node:assert/strict';
import { env, newUser, supabaseUrl, userToken, withGateway } from '../support/helpers.ts';

const nowhere = 'http://127.0.0.1:9'; // nothing listens: a JWKS fetch would fail
const secretKey = `sb_secret_${crypto.randomUUID().replaceAll('-', '')}`;
const jwks = await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/jwks.json`);

const overrides = {
  SUPABASE_URL: nowhere,
  SUPABASE_JWKS: jwks,
  SUPABASE_SECRET_KEYS: JSON.stringify({ default: secretKey }),
};

async function status(url: string, path: string, headers: Record<string, string>, body?: unknown) {
  const res = await fetch(`${url}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  await res.body?.cancel();
  return res.status;
}

Deno.test('service routes accept a new secret key and the legacy service_role key, nothing else', async () => {
  await withGateway(overrides, async (url) => {
    const batch = (key: string) =>
      status(url, '/credits/usage/batch', { authorization: `Bearer ${key}` }, { events: [] });
    assert.notEqual(await batch(secretKey), 401, 'sb_secret_ key');
    assert.notEqual(await batch(env('SUPABASE_SERVICE_ROLE_KEY')), 401, 'legacy key');
    assert.equal(await batch(`${secretKey}x`), 401);
    assert.equal(await batch('sb_secret_'), 401);
  });
});

Deno.test('user tokens verify against the inline SUPABASE_JWKS, with no JWKS fetch', async () => {
  await withGateway(overrides, async (url) => {
    const token = await userToken(await newUser(), { claims: { iss: `${nowhere}/auth/v1` } });
    assert.equal(await status(url, '/credits/balance', { authorization: `Bearer ${token}` }), 200);
    const otherIssuer = await userToken(await newUser());
    assert.equal(await status(url, '/credits/balance', { authorization: `Bearer ${otherIssuer}` }), 401);
  });
});

Deno.test('a key rotated in after start (not in the inline SUPABASE_JWKS) is fetched from the JWKS URL', async () => {
  const { publicKey } = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ]);
  const stale = {
    keys: [{ ...(await crypto.subtle.exportKey('jwk', publicKey)), kid: 'retired', alg: 'ES256', use: 'sig' }],
  };
  await withGateway({ SUPABASE_URL: supabaseUrl, SUPABASE_JWKS: JSON.stringify(stale) }, async (url) => {
    const token = await userToken(await newUser());
    assert.equal(await status(url, '/credits/balance', { authorization: `Bearer ${token}` }), 200);
  });
});
