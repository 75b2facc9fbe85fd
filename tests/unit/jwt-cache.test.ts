// The verified-token cache (VerifiedTokens in _shared/http/auth.ts): a token is verified once and
// remembered until it expires or the bound passes, least recently used out first; failures
// are never remembered; a different token, a tampered one included, is verified from scratch.
import assert from 'node:assert/strict';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { AuthUser } from '../../supabase/functions/_shared/app-env.ts';
import { keySet, VerifiedTokens, verifyUserToken } from '../../supabase/functions/_shared/http/auth.ts';
import { AppError } from '../../supabase/functions/_shared/errors.ts';

const user = (id: string): AuthUser => ({ id, isAdmin: false });

/** A stand-in verifier that counts its calls and accepts tokens named `good:<id>`. */
function counting(expiresAt = Number.MAX_SAFE_INTEGER) {
  const calls: string[] = [];
  const verify = (token: string) => {
    calls.push(token);
    if (!token.startsWith('good:')) return Promise.reject(new AppError('auth', 'UNAUTHORIZED', 'bad'));
    return Promise.resolve({ user: user(token.slice(5)), expiresAt });
  };
  return { calls, verify };
}

Deno.test('a token is verified once, then answered from memory', async () => {
  const cache = new VerifiedTokens();
  const v = counting();
  assert.equal((await cache.verify('good:a', v.verify)).id, 'a');
  assert.equal((await cache.verify('good:a', v.verify)).id, 'a');
  assert.deepEqual(v.calls, ['good:a']);
});

Deno.test('a different token is verified from scratch, and a refused one is never remembered', async () => {
  const cache = new VerifiedTokens();
  const v = counting();
  await cache.verify('good:a', v.verify);
  for (let i = 0; i < 2; i++) await assert.rejects(cache.verify('goodXa', v.verify), AppError);
  assert.deepEqual(v.calls, ['good:a', 'goodXa', 'goodXa']);
  assert.equal(cache.size, 1);
});

Deno.test("an entry ends at the token's expiry, and the token is then verified again", async () => {
  let now = 1_000_000;
  const cache = new VerifiedTokens(10, 60_000, () => now);
  const v = counting(now + 5_000);
  await cache.verify('good:a', v.verify);
  now += 4_999;
  await cache.verify('good:a', v.verify);
  assert.equal(v.calls.length, 1, 'still valid 1 ms before exp');
  now += 1;
  await cache.verify('good:a', v.verify);
  assert.equal(v.calls.length, 2, 'at exp the token is checked again (and jose refuses an expired one)');
});

Deno.test('an entry ends after the bound even when the token lives longer', async () => {
  let now = 0;
  const cache = new VerifiedTokens(10, 60_000, () => now);
  const v = counting(10 * 3_600_000);
  await cache.verify('good:a', v.verify);
  now = 59_999;
  await cache.verify('good:a', v.verify);
  now = 60_000;
  await cache.verify('good:a', v.verify);
  assert.equal(v.calls.length, 2);
});

Deno.test('the cache is bounded: the least recently used token goes first', async () => {
  const cache = new VerifiedTokens(3);
  const v = counting();
  for (const t of ['good:1', 'good:2', 'good:3']) await cache.verify(t, v.verify);
  await cache.verify('good:1', v.verify); // 1 is now the most recently used
  await cache.verify('good:4', v.verify); // evicts 2
  assert.equal(cache.size, 3);
  v.calls.length = 0;
  await cache.verify('good:1', v.verify);
  await cache.verify('good:3', v.verify);
  assert.deepEqual(v.calls, [], '1 and 3 stayed');
  await cache.verify('good:2', v.verify);
  assert.deepEqual(v.calls, ['good:2'], '2 was evicted');
});

// ---------------------------------------------------------------- through jose, end to end

const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
const kid = `test-${crypto.randomUUID()}`;
// keySet() reads SUPABASE_JWKS once; the variable is removed again so no other test sees it.
Deno.env.set('SUPABASE_JWKS', JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256' }] }));
keySet();
Deno.env.delete('SUPABASE_JWKS');

const sign = (sub: string, exp: number, key: CryptoKey = privateKey) =>
  new SignJWT({ role: 'authenticated', aud: 'authenticated', iss: `${Deno.env.get('SUPABASE_URL')}/auth/v1` })
    .setProtectedHeader({ alg: 'ES256', kid }).setSubject(sub).setIssuedAt().setExpirationTime(exp).sign(key);

Deno.test('verifyUserToken: a remembered token is still refused once it expires', async () => {
  const sub = crypto.randomUUID();
  const exp = Math.floor(Date.now() / 1000) + 2;
  const token = await sign(sub, exp);
  assert.equal((await verifyUserToken(token)).id, sub);
  assert.equal((await verifyUserToken(token)).id, sub, 'answered from memory');
  await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 50));
  await assert.rejects(verifyUserToken(token), (err: AppError) => {
    assert.equal(err.code, 'UNAUTHORIZED');
    assert.match(err.message, /expired/);
    return true;
  });
});

Deno.test('verifyUserToken: a tampered copy of a remembered token is refused', async () => {
  const sub = crypto.randomUUID();
  const token = await sign(sub, Math.floor(Date.now() / 1000) + 600);
  await verifyUserToken(token);
  const [head, , sig] = token.split('.');
  const claims = btoa(JSON.stringify({ sub: crypto.randomUUID(), role: 'authenticated', aud: 'authenticated' }))
    .replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  await assert.rejects(verifyUserToken(`${head}.${claims}.${sig}`), AppError);
  const { privateKey: otherKey } = await generateKeyPair('ES256');
  await assert.rejects(verifyUserToken(await sign(sub, Math.floor(Date.now() / 1000) + 600, otherKey)), AppError);
  assert.equal((await verifyUserToken(token)).id, sub, 'the genuine token still passes');
});
