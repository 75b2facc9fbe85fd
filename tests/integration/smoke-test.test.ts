// ./scripts/smoke-test, the check after a deploy, against the local stack: it buys nothing
// and passes; with a token the service refuses, it fails on auth, never printing the token.
import assert from 'node:assert/strict';
import { functionsUrl, newUser, testDb, userToken } from '../support/helpers.ts';

const root = new URL('../../', import.meta.url).pathname;
const smoke = (token: string) =>
  new Deno.Command(`${root}scripts/smoke-test`, {
    args: ['--functions-url', functionsUrl],
    env: { SMOKE_TOKEN: token },
    stdout: 'piped',
    stderr: 'piped',
  }).output().then((o) => ({ code: o.code, out: new TextDecoder().decode(o.stdout) }));

Deno.test('./scripts/smoke-test proves readiness, auth and a test-mode Checkout URL, and pays for nothing', async () => {
  const user = await newUser();
  const { code, out } = await smoke(await userToken(user));
  assert.equal(code, 0, out);
  assert.match(out, /^ok +readiness/m);
  assert.match(out, /^ok +checkout +POST \/checkout\/sessions .*: http\S+cs_test_/m);
  const purchases = await testDb`select status from billing.purchases where user_id = ${user}`;
  assert.deepEqual(purchases.map((p) => p.status), ['pending'], 'one unpaid session, nothing bought');
});

Deno.test('./scripts/smoke-test fails on auth with a token the service refuses, without printing it', async () => {
  const token = await userToken(await newUser(), { claims: { aud: 'someone-else' } });
  const { code, out } = await smoke(token);
  assert.equal(code, 1, out);
  assert.match(out, /^FAIL +auth +GET \/credits\/balance with the token: 401/m);
  assert.ok(!out.includes(token));
});
