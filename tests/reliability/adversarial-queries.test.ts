// Hostile query-string and path values, table-driven over every GET route that takes any (and
// the routes that take an id in the path): a value the route cannot serve is a 4xx in the
// envelope, a bad query value a 400 VALIDATION_FAILED naming its parameter in `field`, and
// never a 500. A 500 means our fault: it burns the error budget and pages someone. Values
// that Postgres would refuse (a bigint past 2^63 - 1, year 0, a +23:59 offset, a NUL byte)
// must be stopped before SQL; the window's own edges must still work.
import assert from 'node:assert/strict';
import { adminToken, api, newUser, userToken } from '../support/helpers.ts';
import { newProvider } from '../support/providers.ts';
import { encodeCursor } from '../../supabase/functions/_shared/values/page.ts';

/** Values no parameter of ours accepts, each with what it tries. Sent as written (raw URL text). */
const hostile: [string, string][] = [
  ['past bigint', '9999999999999999999'],
  ['far past bigint', '99999999999999999999999999'],
  ['negative', '-1'],
  ['zero', '0'],
  ['exponent', '1e400'],
  ['hex', '0x10'],
  ['leading space', '%205'],
  ['NaN', 'NaN'],
  ['Infinity', 'Infinity'],
  ['fraction', '1.5'],
  ['empty', ''],
  ['year 0 instant', '0000-01-01T00:00:00Z'],
  ['year 0 date', '0000-01-01'],
  ['negative year', '-0001-01-01'],
  ['five-digit year', '99999-01-01'],
  ['year 10000', '10000-01-01'],
  ['before 1970', '1969-12-31T23:59:59Z'],
  ['after 9999 once in UTC', '9999-12-31T23:00:00-14:00'],
  ['JavaScript max date', '%2B275760-09-13T00:00:00Z'],
  ['no such day', '2026-02-30'],
  ['no such day, instant', '2026-02-30T00:00:00Z'],
  ['offset Postgres refuses', '2026-01-01T00:00:00%2B23:59'],
  ['offset past +14:00', '2026-01-01T00:00:00%2B15:59'],
  ['dashes', '------'],
  ['NUL byte', '%00'],
  ['invalid UTF-8', '%FF%FE'],
  ['SQL', "'%20or%201=1%20--"],
  ['4 kB', 'x'.repeat(4096)],
  ['bigint cursor with a UUID', '9999999999999999999:00000000-0000-4000-8000-000000000000'],
  ['cursor with a dashes id', '1:------------------------------------'],
  ['cursor with a short id', '1:00000000-0000'],
];

/** A query value as the server reads it (an invalid escape such as %FF stays as sent). */
const unescaped = (v: string) => {
  try {
    return decodeURIComponent(v);
  } catch {
    return v;
  }
};

/** Every GET route's query parameters, with who may call it. */
const provider = await newProvider();
const queryRoutes: { path: string; params: string[]; auth: 'user' | 'admin' }[] = [
  { path: '/credits/ledger', params: ['limit', 'cursor', 'from', 'to', 'format'], auth: 'user' },
  { path: '/jobs', params: ['status', 'limit', 'cursor'], auth: 'user' },
  { path: '/admin/reports/daily', params: ['date', 'format'], auth: 'admin' },
  { path: '/admin/metrics', params: ['from', 'to', 'granularity', 'format'], auth: 'admin' },
  { path: '/providers/reconciliation', params: ['date'], auth: 'admin' },
  { path: `/providers/${provider.id}/payments`, params: ['limit', 'cursor'], auth: 'admin' },
  { path: `/providers/${provider.id}/payouts`, params: ['limit', 'cursor'], auth: 'admin' },
];

/** A fresh caller per parameter: the per-user limit (100 a minute) stays out of the way. */
const caller = async (auth: 'user' | 'admin') =>
  auth === 'admin' ? await adminToken() : await userToken(await newUser());

/** Parameters a route requires, so each hostile value is the only thing wrong. */
const required: Record<string, string> = {
  '/admin/reports/daily': 'date=2026-11-20',
  '/providers/reconciliation': 'date=2026-11-20',
};

function assertEnvelope4xx(res: { status: number; text: string; body: Record<string, unknown> }, what: string) {
  assert.ok(res.status >= 400 && res.status < 500, `${what}: ${res.status} ${res.text.slice(0, 200)}`);
  const error = res.body.error as { code?: unknown; message?: string } | undefined;
  assert.equal(typeof error?.code, 'string', `${what}: the standard envelope`);
  assert.ok(!/stack|at file:|postgres|syntax/i.test(error?.message ?? ''), `${what}: nothing internal leaks`);
}

for (const route of queryRoutes) {
  for (const param of route.params) {
    Deno.test(`GET ${route.path.replace(provider.id, ':id')}?${param}=<hostile>: 400 naming ${param}, never 5xx`, async () => {
      const token = await caller(route.auth);
      const extra = required[route.path] && param !== 'date' ? `&${required[route.path]}` : '';
      // A cursor is opaque: each hostile value also comes wrapped as one (base64url), as a forger would send it.
      const values = param === 'cursor'
        ? [...hostile, ...hostile.map(([what, v]) => [`${what}, as a cursor`, encodeCursor(unescaped(v))])]
        : hostile;
      for (const [what, value] of values) {
        const res = await api(`${route.path}?${param}=${value}${extra}`, { token });
        assertEnvelope4xx(res, `${param} = ${what}`);
        assert.equal(res.status, 400, `${param} = ${what}: ${res.text.slice(0, 200)}`);
        const error = res.body.error as { code: string; field?: string };
        assert.equal(error.code, 'VALIDATION_FAILED', `${param} = ${what}`);
        assert.equal(error.field, param, `${param} = ${what}: the field names the parameter`);
      }
    });
  }
}

Deno.test('the edges of every bound are still served: max bigint cursor, 1970 and 9999, ±14:00', async () => {
  const token = await userToken(await newUser());
  const admin = await adminToken();
  for (
    const path of [
      `/credits/ledger?cursor=${encodeCursor('9223372036854775807')}`,
      '/credits/ledger?from=1970-01-01T00:00:00Z&to=9999-12-31T23:59:59.999999Z',
      '/credits/ledger?from=2026-01-01T00:00:00%2B14:00&to=2026-01-02T00:00:00-12:00&limit=200',
      `/jobs?cursor=${encodeCursor('9223372036854775807:00000000-0000-4000-8000-000000000000')}&limit=100`,
    ]
  ) {
    const res = await api(path, { token });
    assert.equal(res.status, 200, `${path}: ${res.text.slice(0, 200)}`);
  }
  for (
    const path of [
      '/admin/reports/daily?date=1970-01-01',
      '/admin/reports/daily?date=9999-12-31',
      '/admin/metrics?from=9999-12-01&to=9999-12-31',
      '/providers/reconciliation?date=9999-12-31', // never ran: 404, not 500
      `/providers/${provider.id}/payments?cursor=${encodeCursor('9999-12-31T23:59:59Z')}&limit=100`,
    ]
  ) {
    const res = await api(path, { token: admin });
    assert.ok(res.status === 200 || res.status === 404, `${path}: ${res.status} ${res.text.slice(0, 200)}`);
  }
});

/** Path ids: whatever the segment, the answer is 404 (no such thing for this caller), never 5xx. */
const hostileIds = ['------', '%00', '%FF%FE', '9999999999999999999', "'%20or%201=1", 'x'.repeat(300), 'cs_%00', '..'];

Deno.test('hostile ids in the path are 404 in the envelope on every id-taking route, never 5xx', async () => {
  const token = await userToken(await newUser());
  const admin = await adminToken();
  for (const id of hostileIds) {
    for (
      const [method, path, as] of [
        ['GET', `/jobs/${id}`, token],
        ['GET', `/jobs/${id}/result`, token],
        ['DELETE', `/jobs/${id}`, token],
        ['GET', `/checkout/sessions/${id}`, token],
        ['GET', `/providers/${id}`, admin],
        ['GET', `/providers/${id}/payments`, admin],
        ['POST', `/credits/holds/${id}/capture`, token],
        ['POST', `/credits/holds/${id}/release`, token],
        ['POST', `/providers/${provider.id}/payments/${id}/refunds`, admin],
      ] as const
    ) {
      const res = await api(path, {
        method,
        token: as,
        body: method === 'POST' ? {} : undefined,
        headers: { 'idempotency-key': crypto.randomUUID() },
      });
      assertEnvelope4xx(res, `${method} ${path.slice(0, 80)}`);
      assert.equal(res.status, 404, `${method} ${path.slice(0, 80)}: ${res.text.slice(0, 200)}`);
    }
  }
});

Deno.test('dates in bodies have the same window: ledger_export from/to and usage occurred_at are 400, not a failed job or a 500', async () => {
  const token = await userToken(await newUser());
  for (const from of ['0000-01-01T00:00:00Z', '2026-01-01T00:00:00+23:59', '1969-12-31T00:00:00Z']) {
    const res = await api('/jobs', {
      token,
      body: { type: 'ledger_export', input: { from } },
      headers: { 'idempotency-key': crypto.randomUUID() },
    });
    assert.equal(res.status, 400, `ledger_export from ${from}: ${res.text.slice(0, 200)}`);
    assert.equal((res.body.error as { field: string }).field, 'input.from');
  }
  const service = Deno.env.get('SUPABASE_SERVICE_ROLE_KEY') ?? '';
  const res = await api('/credits/usage/batch', {
    token: service,
    body: {
      events: [{
        event_id: `adv-${crypto.randomUUID()}`,
        user_id: await newUser(),
        model: 'gpt-4o-mini',
        input_tokens: 1,
        output_tokens: 1,
        occurred_at: '0000-01-01T00:00:00Z',
      }],
    },
  });
  assert.equal(res.status, 400, res.text.slice(0, 200));
  assert.equal((res.body.error as { field: string }).field, 'events.0.occurred_at');
});
