// ./scripts/token as the docs use it: an email names one user however often it is asked for,
// and every token carries its user's email (accepting an invitation needs it).
import assert from 'node:assert/strict';
import { decodeJwt } from 'jose';

async function token(...args: string[]) {
  const out = await new Deno.Command('./scripts/token', { args, stdout: 'piped', stderr: 'piped' }).output();
  return { code: out.code, claims: out.code === 0 ? decodeJwt(new TextDecoder().decode(out.stdout).trim()) : null };
}

Deno.test('./scripts/token --email twice is one user, and --user alone carries that email', async () => {
  const email = `ada-${crypto.randomUUID().slice(0, 8)}@school.test`;
  const first = await token('--email', email);
  const again = await token('--email', email);
  assert.equal(first.code, 0);
  assert.equal(again.code, 0, 'the second call reuses the user instead of failing on the unique email');
  assert.equal(again.claims?.sub, first.claims?.sub);
  const byId = await token('--user', String(first.claims?.sub));
  assert.equal(byId.claims?.email, email);
});

Deno.test('./scripts/token gives a new user an email, and refuses an email that belongs to someone else', async () => {
  const fresh = await token();
  assert.match(String(fresh.claims?.email), /@example\.test$/);
  const email = `bo-${crypto.randomUUID().slice(0, 8)}@school.test`;
  await token('--email', email);
  const clash = await token('--user', crypto.randomUUID(), '--email', email);
  assert.equal(clash.code, 2, 'a usage error, not a stack trace');
});
