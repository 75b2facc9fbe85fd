// Three promises: organisation actions need
// the caller's standing (billing.require_org_role → billing.assert_user_standing), the rate
// limiter counts a request only when every layer lets it through (ratelimit.ts countScript), and
// model lists (billing.model_list_of as a named type; model_allowed, allowed_models).
import assert from 'node:assert/strict';
import { ask } from '../support/ai.ts';
import {
  adminToken,
  api,
  clearOfWindowEdge,
  counting,
  key,
  newUser,
  spawnGateway,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { redeem } from '../support/codes.ts';
import { billing } from '../support/invoices.ts';
import { accountOf, join, person, school, walletOf } from '../support/orgs.ts';

// ============================================================ standing on organisation actions

/** Bans `userId` for a day (the dashboard's "ban user"): the token they hold lives on. */
const ban = (userId: string, until = "now() + interval '1 day'") =>
  testDb.unsafe(`update auth.users set banned_until = ${until} where id = $1`, [userId]);

Deno.test("a sponsor code a now-banned owner issued does not hand the school's credits to its accomplice", async () => {
  const owner = await person('owner');
  const pupil = await person('pupil'); // the owner's accomplice, a member
  const org = await school(owner, [pupil], 'allowance', '100');
  const issued = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '100', user_id: pupil.id },
  });
  assert.equal(issued.status, 201, issued.text);
  const { code } = dataOf(issued) as { code: string };
  await ban(owner.id);
  // The code speaks for its issuer only while they may act in the organisation (as for a removed
  // admin's codes, 75-codes.sql): a banned issuer acts in none (require_org_role).
  const r = await redeem(pupil.token, code);
  assert.equal(r.status, 409, `the accomplice took the banned owner's code: ${r.status} ${r.text}`);
  assert.equal(codeOf(r), 'CODE_NOT_REDEEMABLE');
  assert.equal((await accountOf(org, null)).balance, '0'); // still in escrow, not the pupil's
});

Deno.test('an admin invitation a now-banned owner sent does not make its accomplice an admin of the school', async () => {
  const owner = await person('owner');
  const accomplice = await person('accomplice');
  const org = await school(owner, [], 'pool', '100');
  const inv = await api(`/orgs/${org}/invitations`, {
    token: owner.token,
    body: { email: accomplice.email, role: 'admin' },
  });
  assert.equal(inv.status, 201, inv.text);
  await ban(owner.id);
  // "accepting also needs the inviter to be an owner or admin still" (docs/api.md): a banned one
  // acts in no organisation, so their invitation speaks for nobody.
  const r = await api('/orgs/invitations/accept', {
    token: accomplice.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  assert.equal(r.status, 409, `the banned owner's invitation made an admin: ${r.status} ${r.text}`);
  assert.equal(codeOf(r), 'INVITATION_CLOSED');
  const [m] = await testDb`select count(*)::int as n from billing.org_members
    where org_id = ${org} and user_id = ${accomplice.id} and active`;
  assert.equal(m.n, 0);
});

Deno.test('a banned user cannot join a pool school with the token they still hold', async () => {
  const owner = await person('owner');
  const pupil = await person('pupil');
  const org = await school(owner, [], 'pool', '100');
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: pupil.email } });
  assert.equal(inv.status, 201, inv.text);
  await ban(pupil.id);
  const r = await api('/orgs/invitations/accept', {
    token: pupil.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  // Every organisation route checks the caller's standing (docs/api.md): joining a pool changes
  // who may spend the school's credits.
  assert.equal(r.status, 401, `a banned user joined the school: ${r.status} ${r.text}`);
  assert.equal(codeOf(r), 'UNAUTHORIZED');
});

Deno.test("a banned admin's token is refused by every organisation action; the owner's and members' are not", async () => {
  const owner = await person('owner');
  const admin = await person('admin');
  const pupil = await person('pupil');
  const other = await person('other');
  const org = await school(owner, [pupil], 'allowance', '100');
  await join(owner.token, org, admin, 'admin');
  const code = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '10', user_id: pupil.id },
  });
  assert.equal(code.status, 201, code.text);
  const codeId = (dataOf(code) as { id: string }).id;
  // The admin's token is verified and remembered before the ban.
  assert.equal((await api(`/orgs/${org}/members`, { token: admin.token })).status, 200);
  await ban(admin.id);
  const tries: [string, string, Record<string, unknown> | undefined][] = [
    ['GET', `/orgs/${org}/members`, undefined],
    ['GET', `/orgs/${org}/invitations`, undefined],
    ['GET', `/orgs/${org}/sponsor-codes`, undefined],
    ['GET', `/orgs/${org}/ledger`, undefined],
    ['GET', `/orgs/${org}/invoices`, undefined],
    ['GET', `/orgs/${org}`, undefined],
    ['POST', `/orgs/${org}/invitations`, { email: other.email, role: 'admin' }],
    ['POST', `/orgs/${org}/allowances`, { user_id: pupil.id, amount: '10' }],
    ['POST', `/orgs/${org}/sponsor-codes`, { credits: '10', user_id: pupil.id }],
    ['DELETE', `/orgs/${org}/sponsor-codes/${codeId}`, undefined],
    ['DELETE', `/orgs/${org}/members/${pupil.id}`, undefined],
    ['PATCH', `/orgs/${org}`, { funding: 'pool' }],
    ['PUT', `/orgs/${org}/members/${pupil.id}/cap`, { period: 'month', amount: '1' }],
    ['POST', `/orgs/${org}/invoices`, { package_id: 'mini', ...billing }],
    ['POST', '/checkout/sessions', { package_id: 'starter', org_id: org }],
  ];
  for (const [method, path, body] of tries) {
    const r = await api(path, { method, token: admin.token, headers: key(), body });
    assert.equal(r.status, 401, `${method} ${path}: ${r.status} ${r.text}`);
    assert.equal(codeOf(r), 'UNAUTHORIZED', `${method} ${path}`);
  }
  // Nothing moved: the wallet lost only the owner's code, the pupil is still a member.
  assert.equal((await accountOf(org, null)).balance, '90');
  assert.equal((await accountOf(org, pupil.id))?.balance ?? '0', '0');
  // The owner and the member in good standing are not refused.
  assert.equal((await walletOf(owner.token, org)).balance, '90');
  const mine = await api(`/orgs/${org}`, { token: pupil.token });
  assert.equal(mine.status, 200, mine.text);
  // A ban that has passed refuses nothing.
  await ban(admin.id, "now() - interval '1 second'");
  const back = await api(`/orgs/${org}/allowances`, {
    token: admin.token,
    headers: key(),
    body: { user_id: pupil.id, amount: '10' },
  });
  assert.equal(back.status, 201, back.text);
  assert.equal((await accountOf(org, pupil.id)).balance, '10');
});

// ============================================================ the rate limiter's one script

/** A loopback address of its own (Linux routes all of 127/8 to lo): fresh per-address windows. */
const freshAddress = () =>
  `127.${1 + Math.floor(Math.random() * 254)}.${Math.floor(Math.random() * 256)}.${
    2 + Math.floor(Math.random() * 250)
  }`;

type Answer = { status: number; headers: Headers; body: Record<string, unknown> };
async function send(url: string, init: RequestInit & { client?: Deno.HttpClient }): Promise<Answer> {
  const res = await fetch(url, init);
  return { status: res.status, headers: res.headers, body: await res.json() };
}
const layerOf = (r: Answer) => (r.body.error as { details?: { layer?: string } } | undefined)?.details?.layer;

/** `n` gateway instances with the same overrides, sharing the stack's Redis and database. */
async function gateways<T>(n: number, overrides: Record<string, string>, fn: (urls: string[]) => Promise<T>) {
  const gws = Array.from({ length: n }, () => spawnGateway({ ...counting, ...overrides }));
  try {
    await Promise.all(gws.map((g) => g.ready()));
    return await fn(gws.map((g) => g.url));
  } finally {
    await Promise.all(gws.map((g) => g.kill()));
  }
}

Deno.test('AI calls in parallel at three instances: exactly the per-student limit is served, refused ones reach nothing', async () => {
  const limit = 4;
  const students = await Promise.all([1, 2].map(() => student('100')));
  const clients = students.map(() => Deno.createHttpClient({ localAddress: freshAddress() }));
  try {
    await gateways(3, { RATE_LIMIT_AI_CHAT_PER_MIN: String(limit), RATE_LIMIT_IP_PER_MIN: '1000' }, async (urls) => {
      await clearOfWindowEdge();
      const all = await Promise.all(
        students.map((s, i) =>
          Promise.all(Array.from({ length: 12 }, (_, j) =>
            send(`${urls[j % 3]}/ai/v1/chat/completions`, {
              client: clients[i],
              method: 'POST',
              headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
              body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 5 }),
            })))
        ),
      );
      for (const [i, rs] of all.entries()) {
        const served = rs.filter((r) => r.status === 200);
        const refused = rs.filter((r) => r.status === 429);
        assert.equal(served.length, limit, `student ${i}: ${rs.map((r) => r.status)}`);
        assert.equal(refused.length, 12 - limit);
        // Served: each remaining count once, the last ones warned (soft ratio 0.8 of 4: the 4th).
        assert.deepEqual(served.map((r) => r.headers.get('x-ratelimit-remaining')).sort(), ['0', '1', '2', '3']);
        assert.deepEqual(
          served.filter((r) => r.headers.get('x-ratelimit-warning') !== null).map((r) =>
            r.headers.get('x-ratelimit-remaining')
          ),
          ['0'],
        );
        for (const r of refused) {
          assert.equal(layerOf(r), 'route_ai_chat');
          assert.equal(r.headers.get('x-ratelimit-limit'), String(limit));
          assert.equal(r.headers.get('x-ratelimit-remaining'), '0');
          const retry = Number(r.headers.get('x-ratelimit-reset'));
          assert.ok(retry >= 0 && retry <= 60, `X-RateLimit-Reset ${retry}`);
          assert.equal(r.headers.get('x-ratelimit-warning'), null);
        }
        // Nothing downstream saw a refused call: no call record, no hold, no charge past the served.
        const [c] = await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${students[i].id}`;
        assert.equal(c.n, limit);
        const [h] = await testDb`select count(*)::int as n from billing.holds h
          join billing.accounts a on a.id = h.account_id where a.user_id = ${students[i].id}`;
        assert.equal(h.n, limit);
      }
    });
  } finally {
    for (const c of clients) c.close();
  }
});

Deno.test('the global window shared by many students at three instances serves exactly its limit, whoever is refused', async () => {
  // A fresh limit value is a fresh window (the limit is in the key): no earlier run's count.
  const global = 20 + Math.floor(Math.random() * 40);
  const perUser = 2;
  const users = Math.ceil(global / perUser) + 3;
  const tokens = await Promise.all(Array.from({ length: users }, async () => await userToken(await newUser())));
  const client = Deno.createHttpClient({ localAddress: freshAddress() });
  try {
    await gateways(3, {
      RATE_LIMIT_GLOBAL_PER_MIN: String(global),
      RATE_LIMIT_DEFAULT_PER_MIN: String(perUser),
      RATE_LIMIT_IP_PER_MIN: '100000',
    }, async (urls) => {
      await clearOfWindowEdge();
      // The first student hammers past their own limit first: refused, it must spend nobody's budget.
      const first = await Promise.all(
        Array.from(
          { length: 30 },
          (_, j) =>
            send(`${urls[j % 3]}/credits/balance`, { client, headers: { authorization: `Bearer ${tokens[0]}` } }),
        ),
      );
      assert.equal(first.filter((r) => r.status === 200).length, perUser);
      assert.ok(first.filter((r) => r.status === 429).every((r) => layerOf(r) === 'route_default'));
      const rest = await Promise.all(
        tokens.slice(1).map((t, u) =>
          Promise.all(
            Array.from({ length: 4 }, (_, j) =>
              send(`${urls[(u + j) % 3]}/credits/balance`, { client, headers: { authorization: `Bearer ${t}` } })),
          )
        ),
      );
      const served = rest.map((rs) => rs.filter((r) => r.status === 200).length);
      assert.ok(served.every((n) => n <= perUser), `a student past their own limit: ${served}`);
      assert.equal(perUser + served.reduce((a, b) => a + b, 0), global, `served ${served} under global ${global}`);
      for (const rs of rest) {
        const ok = rs.filter((r) => r.status === 200).length;
        for (const r of rs.filter((r) => r.status === 429)) {
          // Refused by their own layer only once they had their own two; else by the global one.
          if (ok < perUser) assert.equal(layerOf(r), 'global');
          else assert.ok(['global', 'route_default'].includes(layerOf(r) ?? ''), layerOf(r));
        }
      }
    });
  } finally {
    client.close();
  }
});

// ============================================================ model lists

/** PUT /admin/model-access: a plan's list (or the default, plan null); [] removes it. */
async function setList(plan: string | null, models: string[]) {
  const r = await api('/admin/model-access', {
    method: 'PUT',
    token: await adminToken(),
    body: { plan_id: plan, models },
  });
  assert.equal(r.status, 200, r.text);
}

/** One request per AI route and a job, for `model` (a body each route takes). */
function everyRoute(token: string, model: string) {
  const bodies: [string, Record<string, unknown>][] = [
    ['/ai/v1/chat/completions', { model, messages: ask('hi'), max_tokens: 5 }],
    ['/ai/v1/responses', { model, input: 'hi', max_output_tokens: 16 }],
    ['/ai/v1/messages', { model, messages: ask('hi'), max_tokens: 5 }],
    ['/ai/v1/embeddings', { model, input: 'hi' }],
    ['/jobs', { type: 'ai_completion', input: { model, prompt: 'one two three', max_tokens: 5 } }],
  ];
  return Promise.all(
    bodies.map(async ([path, body]) => ({ path, r: await api(path, { token, headers: key(), body }) })),
  );
}

const modelsOf = async (token: string) => {
  const r = await api('/ai/v1/models', { token });
  assert.equal(r.status, 200, r.text);
  return (r.body.data as { id: string; plan_id: string | null }[]).map((m) => `${m.id}@${m.plan_id}`).sort();
};

Deno.test('under the default list, every AI route and jobs refuse a model outside it, and /models lists only it', async () => {
  const s = await student('1000');
  try {
    await setList(null, ['gpt-4o-mini']);
    assert.deepEqual(await modelsOf(s.token), ['gpt-4o-mini@null']);
    for (const model of ['gpt-4o', 'claude-haiku-4-5', 'text-embedding-3-small']) {
      for (const { path, r } of await everyRoute(s.token, model)) {
        assert.equal(r.status, 403, `${model} on ${path}: ${r.status} ${r.text}`);
        assert.equal(codeOf(r), 'MODEL_NOT_ALLOWED', `${model} on ${path}`);
      }
    }
    // Each refusal is recorded as one (status refused), nothing begun, held or queued.
    const refused = await testDb`select failure, count(*)::int as n from billing.ai_calls
      where user_id = ${s.id} and status = 'refused' group by failure`;
    assert.deepEqual(refused.map((x) => ({ ...x })), [{ failure: 'MODEL_NOT_ALLOWED', n: 12 }]);
    const [n] = await testDb`select (select count(*)::int from billing.ai_calls where user_id = ${s.id}
        and status <> 'refused') as calls,
      (select count(*)::int from billing.jobs where user_id = ${s.id}) as jobs,
      (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
        where a.user_id = ${s.id}) as holds`;
    assert.deepEqual(n, { calls: 0, jobs: 0, holds: 0 });
    const ok = await api('/ai/v1/chat/completions', {
      token: s.token,
      body: { model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 5 },
    });
    assert.equal(ok.status, 200, ok.text);
  } finally {
    await setList(null, []);
  }
});

Deno.test("a plan's list replaces the default list, and an upgrade to a plan without one falls back to the default at once", async () => {
  const { subscribeTo, change } = await import('../support/plans.ts');
  const s = await student('1000');
  try {
    await setList(null, ['gpt-4o-mini']);
    await setList('basic_monthly', ['gpt-4o', 'text-embedding-3-small']);
    await subscribeTo(s.token, 'basic_monthly');
    assert.deepEqual(await modelsOf(s.token), ['gpt-4o@basic_monthly', 'text-embedding-3-small@basic_monthly']);
    for (const { path, r } of await everyRoute(s.token, 'gpt-4o-mini')) {
      assert.equal(r.status, 403, `gpt-4o-mini on ${path} under basic's list: ${r.status} ${r.text}`);
      assert.equal(codeOf(r), 'MODEL_NOT_ALLOWED', path);
    }
    const allowed = await api('/ai/v1/chat/completions', {
      token: s.token,
      body: { model: 'gpt-4o', messages: ask('hi'), max_tokens: 5 },
    });
    assert.equal(allowed.status, 200, allowed.text);
    // Upgrade to pro (no list of its own): the default list decides from then on.
    assert.equal((await change(s.token, 'pro_monthly')).status, 202);
    const [sub] = await testDb`select p.family from billing.subscriptions x join billing.plans p on p.id = x.plan_id
      where x.user_id = ${s.id} and x.status in ('active', 'trialing', 'past_due')
      order by x.current_period_end desc nulls last limit 1`;
    assert.equal(sub.family, 'pro_monthly');
    assert.deepEqual(await modelsOf(s.token), ['gpt-4o-mini@pro_monthly']);
    for (const model of ['gpt-4o', 'text-embedding-3-small']) {
      for (const { path, r } of await everyRoute(s.token, model)) {
        assert.equal(r.status, 403, `${model} on ${path} after the upgrade: ${r.status} ${r.text}`);
        assert.equal(codeOf(r), 'MODEL_NOT_ALLOWED', `${model} on ${path}`);
      }
    }
  } finally {
    await setList('basic_monthly', []);
    await setList(null, []);
  }
});
