// Creates the local Supabase Auth stand-in's ES256 signing key once: a private JWK (for
// scripts/token) and the public JWKS the gateway serves at /auth/v1/.well-known/jwks.json.
// Usage: deno run -A scripts/local/auth-keys.ts <dir>
import { exportJWK, generateKeyPair } from 'jose';

const dir = Deno.args[0];
if (!dir) throw new Error('usage: auth-keys.ts <dir>');

const privatePath = `${dir}/private.jwk.json`;
const exists = await Deno.stat(privatePath).then(() => true, () => false);
if (!exists) {
  await Deno.mkdir(dir, { recursive: true });
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = crypto.randomUUID();
  const priv = { ...(await exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' };
  const pub = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  await Deno.writeTextFile(privatePath, JSON.stringify(priv), { mode: 0o600 });
  await Deno.writeTextFile(`${dir}/jwks.json`, JSON.stringify({ keys: [pub] }));
}
