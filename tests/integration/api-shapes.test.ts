// One shape for every answer, over every GET route the functions declare (read from their
// sources, so a new route must be added here): a list answers `{items, next_cursor}` with an
// opaque cursor that pages and refuses what it did not give out; nothing else answers a bare
// array; a wrong method is 405 with `Allow`; validation errors are sentences with a `field`;
// a member's ledger and a usage answer say what their organisation paid.
import assert from 'node:assert/strict';
import { adminToken, api, functionsUrl, fund, newUser, reportUsage, userToken } from '../support/helpers.ts';
import { key, person, school, usage } from '../support/orgs.ts';
import { openInvoice } from '../support/invoices.ts';
import { newProvider } from '../support/providers.ts';
import { startCheckout } from '../support/purchases.ts';
import { encodeCursor } from '../../supabase/functions/_shared/values/page.ts';

const root = new URL('../../', import.meta.url);

/** Every `app.get('<path>'` of every function, as `/<function><path>`. */
async function declaredGetRoutes(): Promise<string[]> {
  const out: string[] = [];
  for await (const fn of Deno.readDir(new URL('supabase/functions/', root))) {
    if (!fn.isDirectory || fn.name.startsWith('_')) continue;
    const source = await Deno.readTextFile(new URL(`supabase/functions/${fn.name}/index.ts`, root));
    for (const m of source.matchAll(/app\.get\(\s*'([^']*)'/g)) out.push(`/${fn.name}${m[1] === '/' ? '' : m[1]}`);
  }
  return out.sort();
}

type Kind = 'paged' | 'whole' | 'object' | 'text';
interface Case {
  kind: Kind;
  /** The concrete path (and query) asked. */
  path: string;
  token: string;
}

/** A fixture that gives every GET route something to answer. */
async function fixture() {
  const [owner, ada] = await Promise.all([person('shape-owner'), person('shape-ada')]);
  const org = await school(owner, [ada]);
  await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '50' }, headers: key() });
  assert.equal((await usage(ada.token)).status, 201);
  // Two invoices, so the invoices list has pages.
  for (let i = 0; i < 2; i++) await openInvoice(owner.token, org);
  // A second and third invitation, so the invitations list has pages.
  for (const label of ['shape-bea', 'shape-cy']) {
    const r = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: `${label}@school.test` } });
    assert.equal(r.status, 201, r.text);
  }
  const student = await newUser();
  await fund(student, '100');
  await fund(student, '5'); // two lots
  const token = await userToken(student);
  for (let i = 0; i < 2; i++) {
    const r = await reportUsage('/credits/usage', {
      token,
      body: { model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 100 },
      headers: key(),
    });
    assert.equal(r.status, 201, r.text);
  }
  for (let i = 0; i < 2; i++) {
    const r = await api('/jobs', { token, body: { type: 'ledger_export', input: {} }, headers: key() });
    assert.equal(r.status, 202, r.text);
  }
  const jobId = ((await api('/jobs?limit=1', { token })).body.data as { items: { job_id: string }[] }).items[0].job_id;
  const purchase = await startCheckout(token, 'mini');
  const provider = await newProvider();
  const admin = await adminToken();
  // Two promo codes, so the admin's code list has pages whichever tests ran before.
  for (let i = 0; i < 2; i++) {
    const r = await api('/admin/codes', { token: admin, body: { credits: '1', budget: '10' }, headers: key() });
    assert.equal(r.status, 201, r.text);
  }
  // Two correction runs, so the admin's run list has pages.
  let runId = '';
  for (let i = 0; i < 2; i++) {
    const run = await api('/admin/corrections', {
      token: admin,
      headers: key(),
      body: { model: 'gpt-4o-mini', from: '2026-01-01T00:00:00Z', to: '2026-01-02T00:00:00Z', reason: 'shapes' },
    });
    assert.equal(run.status, 201, run.text);
    runId = (run.body.data as { id: string }).id;
  }
  return { owner, ada, org, token, jobId, purchase, provider, admin, runId };
}

Deno.test('every GET route answers one shape: lists are {items, next_cursor}, nothing is a bare array', async () => {
  const f = await fixture();
  const today = new Date().toISOString().slice(0, 10);
  // Two calls on the record (refusals: an unknown model), so the call log has a second page.
  for (let i = 0; i < 2; i++) {
    await api('/ai/v1/chat/completions', {
      token: f.token,
      body: { model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] },
    });
  }
  const calls = await api('/ai/v1/calls?limit=1', { token: f.token });
  const callId = (calls.body.data as { items: { id: string }[] }).items[0].id;
  const cases: Record<string, Case> = {
    '/admin/ai/calls': { kind: 'paged', path: '/admin/ai/calls?limit=1', token: f.admin },
    '/admin/ai/calls/:id': { kind: 'object', path: `/admin/ai/calls/${callId}`, token: f.admin },
    '/admin/ai/stats': { kind: 'object', path: '/admin/ai/stats', token: f.admin },
    '/admin/ai/summary': { kind: 'object', path: '/admin/ai/summary', token: f.admin },
    '/admin/codes': { kind: 'paged', path: '/admin/codes?limit=1', token: f.admin },
    '/admin/corrections': { kind: 'paged', path: '/admin/corrections?limit=1', token: f.admin },
    '/admin/corrections/:id': { kind: 'object', path: `/admin/corrections/${f.runId}`, token: f.admin },
    '/admin/dashboard': { kind: 'text', path: '/admin/dashboard', token: f.admin },
    '/admin/margins': { kind: 'object', path: '/admin/margins', token: f.admin },
    '/admin/metrics': { kind: 'object', path: '/admin/metrics', token: f.admin },
    '/admin/model-access': { kind: 'whole', path: '/admin/model-access', token: f.admin },
    '/admin/ops': { kind: 'object', path: '/admin/ops', token: f.admin },
    '/admin/provider-prices': { kind: 'object', path: '/admin/provider-prices', token: f.admin },
    '/admin/reports/daily': { kind: 'object', path: `/admin/reports/daily?date=${today}`, token: f.admin },
    '/admin/server-keys': { kind: 'whole', path: '/admin/server-keys', token: f.admin },
    // OpenAI's own list shape ({ object: 'list', data: [...] }), for its SDKs: not our envelope.
    '/ai/v1/models': { kind: 'text', path: '/ai/v1/models', token: f.token },
    // OpenAI's and Anthropic's batch and file objects, files and results, for their SDKs (their
    // shapes, docs/ai-gateway.md § Batches): none of the caller's here, so each is a 404.
    '/ai/v1/batches/:id': { kind: 'text', path: `/ai/v1/batches/${crypto.randomUUID()}`, token: f.token },
    '/ai/v1/files/:id': { kind: 'text', path: `/ai/v1/files/${crypto.randomUUID()}`, token: f.token },
    '/ai/v1/files/:id/content': { kind: 'text', path: `/ai/v1/files/${crypto.randomUUID()}/content`, token: f.token },
    '/ai/v1/messages/batches/:id': {
      kind: 'text',
      path: `/ai/v1/messages/batches/${crypto.randomUUID()}`,
      token: f.token,
    },
    '/ai/v1/messages/batches/:id/results': {
      kind: 'text',
      path: `/ai/v1/messages/batches/${crypto.randomUUID()}/results`,
      token: f.token,
    },
    '/ai/v1/calls': { kind: 'paged', path: '/ai/v1/calls?limit=1', token: f.token },
    '/ai/v1/calls/:id': { kind: 'object', path: `/ai/v1/calls/${callId}`, token: f.token },
    '/ai/v1/content-consent': { kind: 'object', path: '/ai/v1/content-consent', token: f.token },
    '/checkout/packages': { kind: 'whole', path: '/checkout/packages', token: f.token },
    '/checkout/plans': { kind: 'whole', path: '/checkout/plans', token: f.token },
    '/checkout/subscription': { kind: 'object', path: '/checkout/subscription', token: f.token },
    '/checkout/sessions/:id': { kind: 'object', path: `/checkout/sessions/${f.purchase.purchase_id}`, token: f.token },
    '/credits/alerts': { kind: 'object', path: '/credits/alerts', token: f.token },
    '/credits/auto-recharge': { kind: 'object', path: '/credits/auto-recharge', token: f.token },
    '/credits/balance': { kind: 'object', path: '/credits/balance', token: f.token },
    '/credits/caps': { kind: 'whole', path: '/credits/caps', token: f.token },
    '/credits/expiries': { kind: 'whole', path: '/credits/expiries', token: f.token },
    '/credits/ledger': { kind: 'paged', path: '/credits/ledger?limit=1', token: f.token },
    '/credits/lots': { kind: 'paged', path: '/credits/lots?limit=1', token: f.token },
    '/credits/usage/summary': { kind: 'object', path: '/credits/usage/summary', token: f.token },
    '/health/alerts': { kind: 'whole', path: '/health/alerts', token: f.admin },
    '/health/healthz': { kind: 'object', path: '/health/healthz', token: '' },
    '/health/metrics': { kind: 'text', path: '/health/metrics', token: f.admin },
    '/health/readyz': { kind: 'object', path: '/health/readyz', token: '' },
    '/health/slo': { kind: 'object', path: '/health/slo', token: f.admin },
    '/jobs': { kind: 'paged', path: '/jobs?limit=1', token: f.token },
    '/jobs/:id': { kind: 'object', path: `/jobs/${f.jobId}`, token: f.token },
    '/jobs/:id/result': { kind: 'text', path: `/jobs/${f.jobId}/result`, token: f.token },
    '/orgs': { kind: 'whole', path: '/orgs', token: f.owner.token },
    '/orgs/:id': { kind: 'object', path: `/orgs/${f.org}`, token: f.owner.token },
    '/orgs/:id/balance': {
      kind: 'object',
      path: `/orgs/${f.org}/balance?at=${new Date().toISOString()}`,
      token: f.owner.token,
    },
    '/orgs/:id/invitations': { kind: 'paged', path: `/orgs/${f.org}/invitations?limit=1`, token: f.owner.token },
    '/orgs/:id/invoices': { kind: 'paged', path: `/orgs/${f.org}/invoices?limit=1`, token: f.owner.token },
    '/orgs/:id/ledger': { kind: 'paged', path: `/orgs/${f.org}/ledger?limit=1`, token: f.owner.token },
    // The wallet's one lot: a list with no next page here (paged as /credits/lots is).
    '/orgs/:id/lots': {
      kind: 'whole',
      path: `/orgs/${f.org}/lots?at=${new Date().toISOString()}`,
      token: f.owner.token,
    },
    '/orgs/:id/members': { kind: 'whole', path: `/orgs/${f.org}/members`, token: f.owner.token },
    '/orgs/:id/members/:user_id/usage/summary': {
      kind: 'object',
      path: `/orgs/${f.org}/members/${f.owner.id}/usage/summary`,
      token: f.owner.token,
    },
    '/orgs/:id/sponsor-codes': { kind: 'whole', path: `/orgs/${f.org}/sponsor-codes`, token: f.owner.token },
    '/orgs/:id/usage': { kind: 'whole', path: `/orgs/${f.org}/usage`, token: f.owner.token },
    '/providers/:id': { kind: 'object', path: `/providers/${f.provider.id}`, token: f.provider.token },
    '/providers/:id/payments': { kind: 'whole', path: `/providers/${f.provider.id}/payments`, token: f.provider.token },
    '/providers/:id/payouts': { kind: 'whole', path: `/providers/${f.provider.id}/payouts`, token: f.provider.token },
    '/providers/reconciliation': { kind: 'text', path: `/providers/reconciliation?date=${today}`, token: f.admin },
  };
  assert.deepEqual(Object.keys(cases).sort(), await declaredGetRoutes(), 'every GET route is walked here');

  for (const [route, c] of Object.entries(cases)) {
    const r = await api(c.path, c.token ? { token: c.token } : {});
    if (c.kind === 'text') continue; // HTML, Prometheus text, CSV, or a 404/409 before there is anything
    assert.equal(r.status, 200, `${route}: ${r.text}`);
    const data = (r.body as { data: unknown }).data;
    assert.ok(!Array.isArray(data), `${route} answers a bare array`);
    if (c.kind === 'object') continue;
    const page = data as { items: unknown[]; next_cursor: string | null };
    assert.deepEqual(Object.keys(page).sort(), ['items', 'next_cursor'], `${route}: the list envelope`);
    assert.ok(Array.isArray(page.items), `${route}: items is an array`);
    if (c.kind === 'whole') {
      assert.equal(page.next_cursor, null, `${route}: a list never paged has no next page`);
      continue;
    }
    // Paged: one item, an opaque cursor (not an id of ours), and the next page is another item.
    assert.equal(page.items.length, 1, `${route}: limit=1`);
    assert.equal(typeof page.next_cursor, 'string', `${route}: more than one item, so a cursor`);
    assert.match(page.next_cursor ?? '', /^[A-Za-z0-9_-]+$/, `${route}: base64url`);
    assert.ok(!JSON.stringify(page.items[0]).includes(`"${page.next_cursor}"`), `${route}: the cursor is no id`);
    const next = await api(`${c.path}&cursor=${page.next_cursor}`, { token: c.token });
    assert.equal(next.status, 200, `${route} page 2: ${next.text}`);
    const second = (next.body as { data: typeof page }).data;
    assert.notDeepEqual(second.items[0], page.items[0], `${route}: the cursor moves on`);
    // A cursor we did not give out is a 400 naming `cursor`, never a 5xx.
    for (const bad of ['not-a-cursor!', encodeCursor('not a position'), encodeCursor('9'.repeat(30)), '_w']) {
      const refused = await api(`${c.path}&cursor=${encodeURIComponent(bad)}`, { token: c.token });
      assert.equal(refused.status, 400, `${route} cursor=${bad}: ${refused.text}`);
      const error = (refused.body as { error: { code: string; field: string; message: string } }).error;
      assert.deepEqual([error.code, error.field], ['VALIDATION_FAILED', 'cursor'], `${route} cursor=${bad}`);
      assert.match(error.message, /^cursor must be the next_cursor of a previous page/);
    }
  }
});

Deno.test('a wrong method is 405 with Allow naming the methods the path answers; an unknown path stays 404', async () => {
  const token = await userToken(await newUser());
  const cases: [string, string, string][] = [
    ['DELETE', '/credits/balance', 'GET, HEAD, OPTIONS'],
    ['POST', '/credits/caps', 'GET, HEAD, PUT, OPTIONS'],
    ['GET', '/credits/usage', 'POST, OPTIONS'],
    ['PUT', `/orgs/${crypto.randomUUID()}`, 'GET, HEAD, PATCH, OPTIONS'],
    ['GET', '/stripe-webhook', 'POST, OPTIONS'],
    ['PATCH', '/jobs', 'GET, HEAD, POST, OPTIONS'],
  ];
  for (const [method, path, allow] of cases) {
    const res = await fetch(`${functionsUrl}${path}`, { method, headers: { authorization: `Bearer ${token}` } });
    const body = await res.json();
    assert.equal(res.status, 405, `${method} ${path}: ${JSON.stringify(body)}`);
    assert.equal(res.headers.get('allow'), allow, `${method} ${path}`);
    assert.equal(body.error.code, 'METHOD_NOT_ALLOWED');
    assert.equal(body.error.message, `${method} is not allowed here: use ${allow}.`);
    assert.ok(body.metadata.requestId, 'with a request id');
  }
  const unknown = await fetch(`${functionsUrl}/credits/nope`, { headers: { authorization: `Bearer ${token}` } });
  assert.deepEqual([unknown.status, (await unknown.json()).error.code], [404, 'NOT_FOUND']);
});

Deno.test('an unknown function is FUNCTION_NOT_FOUND with a request id, in the body and X-Request-ID', async () => {
  const res = await fetch(`${functionsUrl}/no-such-function/x`);
  const body = await res.json();
  assert.equal(res.status, 404);
  assert.equal(body.error.code, 'FUNCTION_NOT_FOUND');
  assert.match(body.metadata.requestId, /^[0-9a-f-]{36}$/);
  assert.equal(res.headers.get('x-request-id'), body.metadata.requestId);
});

Deno.test('validation errors are sentences a person can act on, with the field named', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const cases: [string, unknown, string, string, string][] = [
    [
      '/credits/holds',
      { amount: '5', ttl_seconds: 999999999 },
      'INVALID_TTL',
      'ttl_seconds',
      'ttl_seconds must be at most 86400.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: 20_000_000, output_tokens: 0 },
      'INVALID_TOKENS',
      'input_tokens',
      'input_tokens must be at most 10000000.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: 1 },
      'INVALID_TOKENS',
      'output_tokens',
      'output_tokens is required.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: '10', output_tokens: 0 },
      'INVALID_TOKENS',
      'input_tokens',
      'input_tokens must be an integer.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: 1.5, output_tokens: 0 },
      'INVALID_TOKENS',
      'input_tokens',
      'input_tokens must be an integer.',
    ],
    ['/credits/holds', { amount: true }, 'INVALID_AMOUNT', 'amount', 'amount must be a string or a number.'],
    [
      '/credits/holds',
      { amount: '5', colour: 'red' },
      'VALIDATION_FAILED',
      'colour',
      'colour is not a field this route accepts: remove it.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, metadata: { note: 'x'.repeat(501) } },
      'VALIDATION_FAILED',
      'metadata.note',
      'metadata.note must be at most 500 characters.',
    ],
    [
      '/credits/usage',
      { model: 'gpt-4o', input_tokens: 1, output_tokens: 1, metadata: { failed: true } },
      'VALIDATION_FAILED',
      'metadata.failed',
      'metadata.failed is a key only the ledger writes.',
    ],
  ];
  for (const [path, body, code, field, message] of cases) {
    // Usage is reported by the product's server for the user (a user token is refused there).
    const send = path === '/credits/usage' ? reportUsage : api;
    const r = await send(path, { token, body, headers: key() });
    const error = (r.body as { error: { code: string; field: string; message: string } }).error;
    assert.deepEqual([r.status, error.code, error.field, error.message], [400, code, field, message], path);
    assert.doesNotMatch(error.message, /Invalid input|Too big|expected/, "none of zod's own words");
  }
  const q = await api('/admin/metrics?from=2026-13-01', { token: await adminToken() });
  const e = (q.body as { error: { field: string; message: string } }).error;
  assert.deepEqual([q.status, e.field, e.message], [400, 'from', 'from must be a date (YYYY-MM-DD).']);
  // A metadata value of exactly 500 characters, the documented limit, is accepted.
  await fund(id, '10');
  const ok = await reportUsage('/credits/usage', {
    token,
    body: { model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 1, metadata: { note: 'x'.repeat(500) } },
    headers: key(),
  });
  assert.equal(ok.status, 201, ok.text);
});

Deno.test("a member's ledger shows what the school paid for them; a usage answer says who paid", async () => {
  const [owner, ada] = await Promise.all([person('paid-owner'), person('paid-ada')]);
  const org = await school(owner, [ada]);
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '50' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  const spent = await usage(ada.token);
  assert.equal(spent.status, 201, spent.text);
  const charge = (spent.body as { data: { charged: string; paid_by: unknown } }).data;
  assert.deepEqual(charge.paid_by, { org_id: org }, 'the allowance paid');

  const ledger = (await api('/credits/ledger', { token: ada.token })).body as {
    data: { items: { kind: string; amount: string; balance_after: string | null; paid_by: unknown }[] };
  };
  assert.deepEqual(ledger.data.items.map((e) => [e.kind, e.amount, e.balance_after, e.paid_by]), [
    ['usage', `-${charge.charged}`, null, { org_id: org }],
  ], "spending from an allowance is in the member's ledger, without the school's balance");
  const csv = await api('/credits/ledger?format=csv', { token: ada.token });
  assert.ok(csv.text.includes(`,${org}\r\n`), csv.text);

  // Her own credits, once the allowance is gone: paid_by self.
  const solo = await newUser();
  await fund(solo, '10');
  const own = await usage(await userToken(solo));
  assert.equal((own.body as { data: { paid_by: unknown } }).data.paid_by, 'self');
});

Deno.test('GET /orgs/:id/usage defaults to the last 30 days, takes dates as /admin/metrics does, and names members', async () => {
  const [owner, ada] = await Promise.all([person('report-owner'), person('report-ada')]);
  const org = await school(owner, [ada]);
  await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '50' }, headers: key() });
  assert.equal((await usage(ada.token)).status, 201);
  const today = new Date().toISOString().slice(0, 10);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  for (const query of ['', `?from=${today}`, `?from=${today}&to=${tomorrow}&period=month`]) {
    const r = await api(`/orgs/${org}/usage${query}`, { token: owner.token });
    assert.equal(r.status, 200, r.text);
    const rows = (r.body as { data: { items: { member_id: string; member_email: string }[] } }).data.items;
    assert.deepEqual(rows.map((x) => [x.member_id, x.member_email]), [[ada.id, ada.email]], query);
  }
  const before = await api(`/orgs/${org}/usage?to=${today}`, { token: owner.token });
  assert.deepEqual((before.body as { data: { items: unknown[] } }).data.items, [], 'to is exclusive: today is not in');
  const wrong = await api(`/orgs/${org}/usage?from=${tomorrow}&to=${today}`, { token: owner.token });
  assert.equal(wrong.status, 400);
  assert.equal((wrong.body as { error: { field: string } }).error.field, 'from');
  const csv = await api(`/orgs/${org}/usage?format=csv`, { token: owner.token });
  assert.match(
    csv.text,
    new RegExp(`^period_start,member_id,member_email,model,credits,charges\n.*,${ada.id},${ada.email},gpt-4o-mini,`),
  );
});

Deno.test('accepting an invitation twice answers the same; answering it otherwise afterwards is 409', async () => {
  const [owner, ada] = await Promise.all([person('twice-owner'), person('twice-ada')]);
  const org = await school(owner, [], 'allowance', null);
  const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: ada.email } });
  const { token } = (invited.body as { data: { token: string } }).data;
  const preview = await api('/orgs/invitations/preview', { body: { token } });
  assert.equal(preview.status, 200, preview.text);
  assert.deepEqual((preview.body as { data: { org_name: string; status: string } }).data.org_name, 'Lakeside School');
  const first = await api('/orgs/invitations/accept', { token: ada.token, body: { token } });
  const again = await api('/orgs/invitations/accept', { token: ada.token, body: { token } });
  assert.deepEqual([first.status, again.status], [200, 200]);
  assert.deepEqual((again.body as { data: unknown }).data, { org_id: org, status: 'accepted' });
  const decline = await api('/orgs/invitations/decline', { token: ada.token, body: { token } });
  assert.equal(decline.status, 409);
  assert.deepEqual((decline.body as { error: { code: string; details: unknown } }).error, {
    ...(decline.body as { error: object }).error,
    code: 'INVITATION_CLOSED',
    details: { status: 'accepted' },
  });
  const unknown = await api('/orgs/invitations/preview', { body: { token: 'A'.repeat(43) } });
  assert.equal(unknown.status, 404);
});
