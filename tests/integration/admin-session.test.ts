// The dashboard's session over real HTTP: sign-in is a server-side exchange (a pasted token, or
// email and password through Supabase Auth) that sets an HttpOnly; Secure; SameSite=Strict
// cookie scoped to the admin function for no longer than the token lives; the cookie then goes
// through requireAdmin like a bearer token (a revoked admin is refused at once); it is never
// honoured from another origin; sign-out clears it; every admin answer forbids framing.
import assert from 'node:assert/strict';
import { adminToken, env, newAdmin, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';

const admin = `${env('SUPABASE_URL')}/functions/v1/admin`;
const ownOrigin = new URL(env('SUPABASE_URL')).origin;

/** Posts the sign-in form as a browser on the dashboard's page would. */
function signInForm(fields: Record<string, string>, base = admin, origin = ownOrigin) {
  return fetch(`${base}/session`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin, 'sec-fetch-site': 'same-origin' },
    body: new URLSearchParams(fields),
    redirect: 'manual',
  });
}

const sessionCookieOf = (res: Response) => res.headers.getSetCookie().find((c) => c.startsWith('sl_admin_session='));
const cookieHeader = (setCookie: string) => setCookie.split(';')[0];

Deno.test('sign-in sets an HttpOnly; Secure; SameSite=Strict cookie on the admin path, no longer than the token', async () => {
  const id = await newAdmin();
  const token = await userToken(id, { admin: true, ttlSeconds: 600 });
  const res = await signInForm({ access_token: token });
  assert.equal(res.status, 303);
  assert.equal(res.headers.get('location'), './dashboard');
  const set = sessionCookieOf(res);
  assert.ok(set, 'a session cookie');
  const attrs = set.split(/;\s*/).slice(1).map((a) => a.toLowerCase());
  for (const a of ['httponly', 'secure', 'samesite=strict', 'path=/functions/v1/admin']) {
    assert.ok(attrs.includes(a), `${a} in ${attrs.join('; ')}`);
  }
  const maxAge = Number(attrs.find((a) => a.startsWith('max-age='))?.slice(8));
  assert.ok(maxAge > 0 && maxAge <= 600, `Max-Age ${maxAge} within the token's 600 s`);
  assert.ok(!(await res.text()).includes(token), 'the token is never in a body');

  const json = await fetch(`${admin}/session`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ access_token: token }),
  });
  const body = await json.text();
  assert.equal(json.status, 200, body);
  assert.equal(JSON.parse(body).data.user_id, id);
  assert.ok(!body.includes(token), 'the token is never in a body');
});

Deno.test('the session cookie goes through requireAdmin: admin routes answer, a revoked admin is refused at once', async () => {
  const id = await newAdmin();
  const signedIn = await signInForm({ access_token: await userToken(id, { admin: true }) });
  const cookie = cookieHeader(sessionCookieOf(signedIn) ?? '');
  await signedIn.body?.cancel();
  const ops = await fetch(`${admin}/ops`, { headers: { cookie, 'sec-fetch-site': 'same-origin' } });
  assert.equal(ops.status, 200, await ops.text());
  const page = await fetch(`${admin}/dashboard`, { headers: { cookie, 'sec-fetch-site': 'same-origin' } });
  assert.equal(page.status, 200);
  assert.match(await page.text(), /ScholarLink · Operations/);

  // The token still says admin; the database no longer does.
  await testDb`update auth.users set raw_app_meta_data = '{}'::jsonb where id = ${id}`;
  const revoked = await fetch(`${admin}/ops`, { headers: { cookie } });
  assert.equal(revoked.status, 403, await revoked.text());
  const back = await fetch(`${admin}/dashboard`, { headers: { cookie } });
  assert.equal(back.status, 403);
  assert.match(await back.text(), /<form id="paste"/, 'the sign-in page, with a way back');
  assert.ok(sessionCookieOf(back)?.includes('Max-Age=0'), 'the refused cookie is cleared');
});

Deno.test('a non-admin or a bad token gets the sign-in page again with the reason, and no session', async () => {
  for (
    const [what, token, status, reason] of [
      ['a student', await userToken(await newUser()), 403, /administrators/],
      ['an expired admin token', await userToken(await newAdmin(), { admin: true, ttlSeconds: -60 }), 401, /expired/],
      ['garbage', 'not-a-jwt', 401, /malformed/],
    ] as const
  ) {
    const res = await signInForm({ access_token: token });
    assert.equal(res.status, status, what);
    const html = await res.text();
    assert.match(html, reason, what);
    assert.match(html, /<form id="paste" method="post" action="\.\/session">/, `${what}: the form to try again`);
    assert.ok(!sessionCookieOf(res) || sessionCookieOf(res)?.includes('Max-Age=0'), `${what}: no session`);
  }
});

Deno.test('the cookie is never honoured from another origin, and sign-in/out refuse cross-origin posts', async () => {
  const signedIn = await signInForm({ access_token: await adminToken() });
  const cookie = cookieHeader(sessionCookieOf(signedIn) ?? '');
  await signedIn.body?.cancel();
  // SameSite=Strict still sends the cookie from a same-site page on another port.
  for (const site of ['same-site', 'cross-site']) {
    const res = await fetch(`${admin}/ops`, { headers: { cookie, 'sec-fetch-site': site } });
    assert.equal(res.status, 401, `Sec-Fetch-Site: ${site}`);
    await res.body?.cancel();
  }
  const foreign = await fetch(`${admin}/ops`, { headers: { cookie, origin: 'http://127.0.0.1:54330' } });
  assert.equal(foreign.status, 401, 'another origin');
  await foreign.body?.cancel();
  for (const method of ['POST', 'DELETE']) {
    const res = await fetch(`${admin}/session`, {
      method,
      headers: { cookie, origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' },
      body: method === 'POST' ? new URLSearchParams({ access_token: await adminToken() }) : undefined,
    });
    assert.equal(res.status, 403, method);
    assert.equal((await res.json()).error.code, 'CROSS_ORIGIN_REQUEST');
    assert.equal(sessionCookieOf(res), undefined, `${method}: no cookie set or cleared`);
  }
});

Deno.test('sign-out clears the session cookie', async () => {
  const signedIn = await signInForm({ access_token: await adminToken() });
  const cookie = cookieHeader(sessionCookieOf(signedIn) ?? '');
  await signedIn.body?.cancel();
  const res = await fetch(`${admin}/session`, { method: 'DELETE', headers: { cookie, origin: ownOrigin } });
  assert.equal(res.status, 200);
  await res.body?.cancel();
  const cleared = sessionCookieOf(res) ?? '';
  assert.match(cleared, /^sl_admin_session=;/);
  assert.match(cleared, /Max-Age=0/);
  assert.match(cleared, /Path=\/functions\/v1\/admin/);
});

Deno.test('every admin answer forbids framing and sniffing; the pages have a strict nonce CSP', async () => {
  const token = await adminToken();
  const csps: string[] = [];
  for (
    const [path, auth] of [['/dashboard', false], ['/dashboard', true], ['/ops', true], ['/ops', false]] as const
  ) {
    const res = await fetch(`${admin}${path}`, { headers: auth ? { authorization: `Bearer ${token}` } : {} });
    await res.body?.cancel();
    assert.equal(res.headers.get('x-frame-options'), 'DENY', path);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff', path);
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer', path);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /frame-ancestors 'none'/, path);
    assert.match(csp, /base-uri 'none'/, path);
    assert.doesNotMatch(csp, /\*|unsafe-inline|unsafe-eval|https:|http:/, `${path}: no wildcard host or inline`);
    if (path === '/dashboard') {
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /style-src 'nonce-[A-Za-z0-9+/=]{22,}'/);
      if (auth) assert.match(csp, /script-src 'nonce-[A-Za-z0-9+/=]{22,}'; .*connect-src 'self'/);
      else assert.match(csp, /script-src 'none'/, 'the sign-in page runs no script at all');
      csps.push(csp);
    }
  }
  assert.notEqual(csps[0].match(/nonce-([^']+)/)?.[1], csps[1].match(/nonce-([^']+)/)?.[1], 'a nonce per response');
});

Deno.test('email and password sign in server-side through Supabase Auth; a wrong password is 401 with no session', async () => {
  const id = await newAdmin();
  const seen: { apikey: string | null; body: unknown }[] = [];
  const jwks = await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/jwks.json`);
  let issuer = '';
  // Supabase Auth as the function sees it: the key set and the password grant.
  const auth = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req): Promise<Response> => {
    const url = new URL(req.url);
    if (url.pathname === '/auth/v1/.well-known/jwks.json') return new Response(jwks);
    if (url.pathname === '/auth/v1/token' && url.searchParams.get('grant_type') === 'password') {
      const body = await req.json();
      seen.push({ apikey: req.headers.get('apikey'), body });
      if (body.email !== 'ops@example.org' || body.password !== 'correct horse') {
        return Response.json({ error: 'invalid_grant', error_description: 'Invalid login credentials' }, {
          status: 400,
        });
      }
      return Response.json({
        access_token: await userToken(id, { admin: true, claims: { iss: issuer } }),
        token_type: 'bearer',
        expires_in: 3600,
        refresh_token: 'r',
      });
    }
    return new Response('not found', { status: 404 });
  });
  try {
    const project = `http://127.0.0.1:${auth.addr.port}`;
    issuer = `${project}/auth/v1`;
    await withGateway(
      { SUPABASE_URL: project, SUPABASE_ANON_KEY: 'anon-key-for-this-test-0123456789' },
      async (url) => {
        const origin = new URL(url).origin;
        const page = await fetch(`${url}/admin/dashboard`);
        assert.match(await page.text(), /<form id="password" method="post" action="\.\/session">/);

        const wrong = await signInForm({ email: 'ops@example.org', password: 'wrong' }, `${url}/admin`, origin);
        assert.equal(wrong.status, 401);
        assert.match(await wrong.text(), /Wrong email or password/);
        assert.ok(!sessionCookieOf(wrong) || sessionCookieOf(wrong)?.includes('Max-Age=0'));

        const right = await signInForm({ email: 'ops@example.org', password: 'correct horse' }, `${url}/admin`, origin);
        assert.equal(right.status, 303);
        await right.body?.cancel();
        const cookie = cookieHeader(sessionCookieOf(right) ?? '');
        const ops = await fetch(`${url}/admin/ops`, { headers: { cookie } });
        assert.equal(ops.status, 200, await ops.text());
      },
    );
  } finally {
    await auth.shutdown();
  }
  assert.equal(seen.length, 2);
  assert.equal(seen[0].apikey, 'anon-key-for-this-test-0123456789', 'the grant carries the project key, server-side');
});
