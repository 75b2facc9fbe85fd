// Text and numbers Postgres refuses, and numbers a loose parser misreads, sent to every route
// through every body field, object key, query parameter, path id and Idempotency-Key, over
// real HTTP (a student who owns an organisation and a provider, an admin where the route needs
// one, the service role, a signed notify caller): no answer is a 5xx, a refused request stores
// nothing, text Postgres cannot store exactly (NUL, an unpaired surrogate) and integers that
// are not plain digits (1e2, 0x10, 2^63) are always refused, and none of the request's values
// reach the Postgres log (a failed statement is logged with its text: the one-round-trip
// statements carry the request's values in theirs). Fixed edge values first, then fast-check's.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { api, env, fund, newAdmin, reportUsage, testDb, until, userToken, withGateway } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';
import { emulator } from '../support/purchases.ts';

/** JSON text sent as written (`-0`, `1e2`, 2^63, deep nesting), where JSON.stringify would rewrite it. */
class Raw {
  constructor(readonly text: string) {}
}
const raw = (text: string) => new Raw(text);
const toJson = (v: unknown): string =>
  v instanceof Raw
    ? v.text
    : Array.isArray(v)
    ? `[${v.map(toJson).join(',')}]`
    : v !== null && typeof v === 'object'
    ? `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${toJson(x)}`).join(',')}}`
    : JSON.stringify(v);

/** Text Postgres cannot store exactly: every route must refuse it wherever it is sent. */
const unstorable = (s: string) => s.includes('\0') || !s.isWellFormed();
const bodyEdges: unknown[] = [
  '\0',
  'a\0b',
  '\ud800',
  'a\udbffb',
  '\udc00',
  'x\udfff',
  '\udc00\ud800',
  '\uffff',
  'a\ufffe',
  '\u{10ffff}',
  'a'.repeat(255),
  'a'.repeat(256),
  'é'.repeat(300),
  '',
  ' ',
  '9223372036854775808',
  '-0',
  '1e2',
  '0x10',
  raw('9223372036854775808'),
  raw('-9223372036854775809'),
  raw('-0'),
  raw('1e2'),
  raw('0.5'),
  raw('1e400'),
  -1,
  0,
  1,
  2 ** 31,
  2 ** 53,
  null,
  true,
  {},
  [],
  { '\0': 1 },
  { 'k\ud800': 'v' },
  ['\0'],
  Array(5000).fill(7),
  raw('['.repeat(3000) + ']'.repeat(3000)),
  raw('{"a":'.repeat(1000) + '1' + '}'.repeat(1000)),
];
// Query and path values go as URL text: UTF-8 percent-encoded, lone surrogates as their 3 bytes.
const urlEdges = [
  '%00',
  'a%00b',
  '%ED%A0%80',
  '%ED%B0%80',
  '%EF%BF%BF',
  '%C0%80',
  '%FF',
  '9223372036854775808',
  '99999999999999999999',
  '-1',
  '-0',
  '1e2',
  '0x10',
  '%2B1',
  '%201',
  '1%20',
  '1.5',
  '0',
  '00',
  '',
  'a'.repeat(300),
  '2026-02-30',
  '2026-11-01T00:00:00%2B15:00',
];
/** Percent-encodes `s` as WTF-8 (an unpaired surrogate as its 3 bytes), which encodeURIComponent refuses. */
function wtf8(s: string): string {
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0) as number;
    const bytes = cp >= 0xd800 && cp <= 0xdfff
      ? [0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)]
      : [...new TextEncoder().encode(ch)];
    out += bytes.map((b) =>
      /[A-Za-z0-9_.~-]/.test(String.fromCharCode(b))
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, '0')}`
    ).join('');
  }
  return out;
}

// --- who calls, and what they own ------------------------------------------------------------
const marker = `edge${crypto.randomUUID().slice(0, 8)}`;
const markerEmail = `${marker}@example.com`;
const student = await person(marker);
const member = await person(`${marker}-m`);
const adminId = await newAdmin();
const admin = await userToken(adminId, { admin: true });
await fund(student.id, '1000');
const org = await school(student, [member], 'allowance', '100');
const serviceKey = env('SUPABASE_SERVICE_ROLE_KEY');
const notifySecret = env('NOTIFY_WEBHOOK_SECRET').split(',')[0];
const users = [student.id, member.id, adminId];

type Answer = { status: number; text: string; headers: Headers };
let sent = 0;
async function call(base: string, method: string, path: string, opts: {
  who?: 'student' | 'admin' | 'service' | 'notify' | 'none';
  body?: string;
  key?: string;
} = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (opts.who === 'student') headers.authorization = `Bearer ${student.token}`;
  if (opts.who === 'admin') headers.authorization = `Bearer ${admin}`;
  if (opts.who === 'service') headers.authorization = `Bearer ${serviceKey}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.key !== undefined) headers['idempotency-key'] = opts.key;
  if (opts.who === 'notify' && opts.body !== undefined) headers['x-signature'] = await notifySignature(opts.body);
  const res = await fetch(`${base}${path}`, { method, headers, body: opts.body });
  sent++;
  return { status: res.status, text: await res.text(), headers: res.headers };
}
async function notifySignature(body: string) {
  const t = Math.floor(Date.now() / 1000);
  const enc = new TextEncoder();
  const k = await crypto.subtle.importKey('raw', enc.encode(notifySecret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', k, enc.encode(`${t}.${body}`)));
  return `t=${t},v1=${Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}
const created = async (what: string, r: Promise<Answer>) => {
  const a = await r;
  assert.ok(a.status === 200 || a.status === 201 || a.status === 202, `${what}: ${a.status} ${a.text}`);
  return JSON.parse(a.text).data;
};

// --- the routes, each with a valid request to vary -----------------------------------------------
interface Route {
  who: 'student' | 'admin' | 'service' | 'notify' | 'none';
  method: string;
  /** `{name}` marks a path id. */
  path: string;
  query?: Record<string, string>;
  body?: Record<string, unknown>;
  key?: true;
}
const future = '2099-01-01T00:00:00Z';
const gw = { url: '' };
const base = `${env('SUPABASE_URL')}/functions/v1`;
const holdFor = async (n: number) =>
  (await created(
    `hold ${n}`,
    call(base, 'POST', '/credits/holds', {
      who: 'student',
      body: JSON.stringify({ amount: '1', ttl_seconds: 86_400 }),
      key: `${marker}-hold${n}`,
    }),
  )).hold_id;
const [hold, hold2] = [await holdFor(1), await holdFor(2)];
const job = (await created(
  'a job',
  call(base, 'POST', '/jobs', {
    who: 'student',
    body: JSON.stringify({ type: 'ledger_export', input: {} }),
    key: `${marker}-job`,
  }),
)).job_id;
const purchase = (await created(
  'a purchase',
  call(base, 'POST', '/checkout/sessions', {
    who: 'student',
    body: JSON.stringify({ package_id: 'mini' }),
    key: `${marker}-purchase`,
  }),
)).purchase_id;
const provider = await created(
  'a provider',
  call(base, 'POST', '/providers', {
    who: 'student',
    body: JSON.stringify({ name: 'Edge Fund', email: 'fund@example.org', country: 'US' }),
    key: `${marker}-provider`,
  }),
);
await emulator(`/_emulator/accounts/${provider.stripe_account_id}/onboard`, { outcome: 'complete' });
const payment = (await created(
  'a payment',
  call(base, 'POST', `/providers/${provider.provider_id}/payments`, {
    who: 'student',
    body: JSON.stringify({ amount_cents: 5000, currency: 'usd', description: 'Tuition' }),
    key: `${marker}-payment`,
  }),
)).payment_id;
const charge = (await created(
  'a charge',
  call(base, 'POST', '/credits/usage', {
    who: 'service', // usage is reported by the product's server, naming the user
    body: JSON.stringify({ user_id: student.id, model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 1 }),
    key: `${marker}-charge`,
  }),
)).transfer_id;
const correctionBody = {
  model: 'gpt-4o-mini',
  from: '2026-01-01T00:00:00Z',
  to: '2026-01-02T00:00:00Z',
  failed_only: false,
};
const run = (await created(
  'a correction run',
  call(base, 'POST', '/admin/corrections', {
    who: 'admin',
    body: JSON.stringify({ ...correctionBody, reason: 'edge' }),
    key: `${marker}-run`,
  }),
)).id;
const ids: Record<string, string> = {
  charge,
  run,
  org,
  member: member.id,
  student: student.id,
  hold,
  hold2,
  job,
  purchase,
  provider: provider.provider_id,
  payment,
  nobody: crypto.randomUUID(),
};

const usageBody = { model: 'gpt-4o-mini', input_tokens: 1, output_tokens: 1 };
const capBody = { period: 'day', time_zone: 'UTC', model: null, amount: '1000' };
const routes: Route[] = [
  { who: 'student', method: 'GET', path: '/credits/lots', query: { limit: '5', cursor: '1' } },
  {
    who: 'student',
    method: 'GET',
    path: '/credits/ledger',
    query: { limit: '5', cursor: '1', from: '2026-01-01T00:00:00Z', to: future, format: 'json' },
  },
  {
    who: 'service',
    method: 'POST',
    path: '/credits/usage',
    key: true,
    body: {
      ...usageBody,
      user_id: student.id,
      correlation_id: 'c',
      metadata: { email: markerEmail, n: 1, ok: true, none: null },
    },
  },
  {
    who: 'service',
    method: 'POST',
    path: '/credits/usage/batch',
    body: {
      events: [{
        ...usageBody,
        event_id: `${marker}-e`,
        user_id: student.id,
        occurred_at: future,
        correlation_id: 'c',
      }],
    },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/credits/holds',
    key: true,
    body: { amount: '0.01', ttl_seconds: 86_400, correlation_id: 'c' },
  },
  { who: 'student', method: 'POST', path: '/credits/holds/{hold}/capture', key: true, body: { amount: '0.001' } },
  { who: 'admin', method: 'POST', path: '/admin/charges/{charge}/void', body: { reason: 'edge' } },
  { who: 'admin', method: 'POST', path: '/admin/corrections/preview', body: correctionBody },
  { who: 'admin', method: 'POST', path: '/admin/corrections', key: true, body: { ...correctionBody, reason: 'edge' } },
  { who: 'admin', method: 'GET', path: '/admin/corrections/{run}' },
  { who: 'admin', method: 'POST', path: '/admin/corrections/{run}/continue', body: { batch: 10 } },
  { who: 'student', method: 'POST', path: '/credits/holds/{hold2}/release', key: true, body: {} },
  { who: 'student', method: 'PUT', path: '/credits/caps', body: capBody },
  { who: 'admin', method: 'PUT', path: '/credits/caps/users/{student}', body: capBody },
  { who: 'student', method: 'PUT', path: '/credits/alerts/low-balance', body: { threshold: '1' } },
  { who: 'student', method: 'PUT', path: '/credits/alerts/caps', body: { period: 'day', model: null, percents: [50] } },
  {
    who: 'student',
    method: 'PUT',
    path: '/credits/auto-recharge',
    body: { enabled: false, package_id: 'mini', threshold: '1', monthly_max_count: 1, monthly_max_cents: 100 },
  },
  {
    who: 'admin',
    method: 'POST',
    path: '/credits/grants',
    key: true,
    body: {
      user_id: student.id,
      amount: '1',
      reason: 'edge values',
      kind: 'adjustment',
      lot: { category: 'paid', priority: 1, expires_at: future, cost_cents: '1' },
    },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/checkout/sessions',
    key: true,
    body: {
      package_id: 'mini',
      success_url: 'http://127.0.0.1:3000/ok',
      cancel_url: 'http://127.0.0.1:3000/no',
      client_temp_id: 't',
      save_card: false,
      org_id: org,
    },
  },
  { who: 'student', method: 'GET', path: '/checkout/sessions/{purchase}' },
  {
    who: 'admin',
    method: 'POST',
    path: '/checkout/refunds',
    key: true,
    body: { purchase_id: purchase, amount_cents: 1 },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/jobs',
    key: true,
    body: {
      type: 'ai_completion',
      input: { model: 'gpt-4o-mini', prompt: 'hi', max_tokens: 5 },
      client_temp_id: 't',
    },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/jobs',
    key: true,
    body: { type: 'ledger_export', input: { from: '2026-01-01T00:00:00Z', to: future, page_size: 10 } },
  },
  { who: 'student', method: 'GET', path: '/jobs', query: { status: 'queued', limit: '5', cursor: `1:${job}` } },
  { who: 'student', method: 'GET', path: '/jobs/{job}' },
  { who: 'student', method: 'GET', path: '/jobs/{job}/result' },
  {
    who: 'student',
    method: 'POST',
    path: '/orgs',
    body: { name: 'Edge School', funding: 'allowance', org_pays_first: true },
  },
  { who: 'student', method: 'GET', path: '/orgs/{org}' },
  {
    who: 'student',
    method: 'PATCH',
    path: '/orgs/{org}',
    body: { name: 'Edge School', funding: 'allowance', org_pays_first: true, term_ends_at: future },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/orgs/{org}/invitations',
    body: { email: `invitee-${crypto.randomUUID()}@school.test`, role: 'member', ttl_seconds: 3600 },
  },
  {
    who: 'student',
    method: 'GET',
    path: '/orgs/{org}/invitations',
    query: { cursor: crypto.randomUUID(), limit: '5' },
  },
  { who: 'student', method: 'DELETE', path: '/orgs/{org}/invitations/{nobody}' },
  { who: 'student', method: 'POST', path: '/orgs/{org}/owner', body: { user_id: crypto.randomUUID() } },
  { who: 'student', method: 'POST', path: '/orgs/invitations/accept', body: { token: 'a'.repeat(43) } },
  { who: 'student', method: 'POST', path: '/orgs/invitations/decline', body: { token: 'a'.repeat(43) } },
  { who: 'student', method: 'GET', path: '/orgs/{org}/members' },
  { who: 'student', method: 'DELETE', path: '/orgs/{org}/members/{member}' },
  { who: 'student', method: 'PUT', path: '/orgs/{org}/members/{member}/cap', body: { period: 'day', amount: '5' } },
  {
    who: 'student',
    method: 'POST',
    path: '/orgs/{org}/allowances',
    key: true,
    body: { amount: '0.01', user_id: member.id },
  },
  {
    who: 'student',
    method: 'GET',
    path: '/orgs/{org}/usage',
    query: { from: '2026-01-01T00:00:00Z', to: future, period: 'day', format: 'json' },
  },
  { who: 'student', method: 'GET', path: '/orgs/{org}/ledger', query: { cursor: '1', limit: '5' } },
  {
    who: 'admin',
    method: 'POST',
    path: '/orgs/{org}/grants',
    key: true,
    body: { amount: '1', kind: 'adjustment', reason: 'edge' },
  },
  {
    who: 'student',
    method: 'POST',
    path: '/providers',
    key: true,
    body: { name: 'Edge Fund', email: 'fund@example.org', country: 'US', owner_user_id: student.id },
  },
  { who: 'admin', method: 'GET', path: '/providers/reconciliation', query: { date: '2026-11-01' } },
  { who: 'admin', method: 'POST', path: '/providers/reconciliation/run', body: { date: '2026-11-01' } },
  { who: 'student', method: 'GET', path: '/providers/{provider}' },
  { who: 'student', method: 'POST', path: '/providers/{provider}/onboarding-link' },
  {
    who: 'student',
    method: 'POST',
    path: '/providers/{provider}/payments',
    key: true,
    body: { amount_cents: 5000, currency: 'usd', description: 'Tuition', payer_reference: 'r' },
  },
  { who: 'student', method: 'GET', path: '/providers/{provider}/payments', query: { limit: '5', before: future } },
  { who: 'student', method: 'GET', path: '/providers/{provider}/payouts', query: { limit: '5', before: future } },
  {
    who: 'admin',
    method: 'POST',
    path: '/providers/{provider}/payments/{payment}/refunds',
    key: true,
    body: { amount_cents: 100 },
  },
  { who: 'admin', method: 'GET', path: '/admin/reports/daily', query: { date: '2026-11-01', format: 'json' } },
  {
    who: 'admin',
    method: 'GET',
    path: '/admin/metrics',
    query: { from: '2026-10-01', to: '2026-11-01', granularity: 'day', format: 'json' },
  },
  { who: 'none', method: 'POST', path: '/admin/session', body: { email: markerEmail, password: 'not the password' } },
  { who: 'none', method: 'POST', path: '/admin/session', body: { access_token: 'not.a.token' } },
  {
    who: 'notify',
    method: 'POST',
    path: '/notify/send',
    body: { template: 'low_balance', to: markerEmail, data: { balance: '12', n: 1 }, idempotency_key: marker },
  },
];

// --- what a request may vary -------------------------------------------------------------------
type Mutation =
  | { kind: 'body'; path: (string | number)[] }
  | { kind: 'new key'; path: (string | number)[] }
  | { kind: 'query'; name: string }
  | { kind: 'param'; name: string }
  | { kind: 'header' };
function bodyMutations(v: unknown, path: (string | number)[] = []): Mutation[] {
  const here: Mutation[] = path.length ? [{ kind: 'body', path }] : [];
  if (Array.isArray(v)) return [...here, ...v.flatMap((x, i) => bodyMutations(x, [...path, i]))];
  if (v !== null && typeof v === 'object') {
    return [
      ...here,
      { kind: 'new key', path },
      ...Object.entries(v).flatMap(([k, x]) => bodyMutations(x, [...path, k])),
    ];
  }
  return here;
}
const mutationsOf = (r: Route): Mutation[] => [
  ...(r.body ? bodyMutations(r.body) : []),
  ...Object.keys(r.query ?? {}).map((name) => ({ kind: 'query' as const, name })),
  ...[...r.path.matchAll(/\{(\w+)\}/g)].map((m) => ({ kind: 'param' as const, name: m[1] })),
  ...(r.key ? [{ kind: 'header' as const }] : []),
];

function setAt(body: unknown, path: (string | number)[], value: unknown, asKey: boolean): unknown {
  const copy = structuredClone(body) as Record<string | number, unknown>;
  let at = copy;
  for (const p of asKey ? path : path.slice(0, -1)) at = at[p] as Record<string | number, unknown>;
  if (asKey) at[String(value)] = 1;
  else at[path[path.length - 1]] = value;
  return copy;
}

/** Whether a fixed edge value must be refused wherever the route reads it. */
function mustRefuse(m: Mutation, value: unknown): boolean {
  if (m.kind === 'body' || m.kind === 'new key') return containsUnstorable(value);
  // Every URL edge is invalid for every query parameter and path id, but the largest bigint.
  if (m.kind === 'query' || m.kind === 'param') return value !== '9223372036854775807';
  return false;
}
const containsUnstorable = (v: unknown): boolean =>
  typeof v === 'string'
    ? unstorable(v)
    : Array.isArray(v)
    ? v.some(containsUnstorable)
    : v !== null && typeof v === 'object' && !(v instanceof Raw)
    ? Object.entries(v).some(([k, x]) => unstorable(k) || containsUnstorable(x))
    : false;

function requestOf(r: Route, m: Mutation, value: unknown) {
  let path = r.path.replace(
    /\{(\w+)\}/g,
    (_, name) => (m.kind === 'param' && m.name === name ? String(value) : ids[name]),
  );
  const query = Object.entries(r.query ?? {}).map(([k, v]) =>
    `${k}=${m.kind === 'query' && m.name === k ? String(value) : encodeURIComponent(v)}`
  );
  if (query.length) path += `?${query.join('&')}`;
  const body = r.body === undefined
    ? undefined
    : m.kind === 'body' || m.kind === 'new key'
    ? toJson(setAt(r.body, m.path, value, m.kind === 'new key'))
    : toJson(r.body);
  const key = r.key ? (m.kind === 'header' ? String(value) : `${marker}-${sent}`) : undefined;
  return { path, body, key };
}

// --- what a request may leave behind -----------------------------------------------------------
/** Rows the test's people, organisations and providers have, and what requests can change in them. */
async function fingerprint(): Promise<string> {
  const [{ fp }] = await testDb<{ fp: string }[]>`
    with u as (select unnest(${users}::uuid[]) as id),
      o as (select id from billing.orgs where created_by in (select id from u)),
      a as (select id from billing.accounts where user_id in (select id from u) or org_id in (select id from o))
    select concat_ws('|',
      (select count(*) from billing.transfers where from_account_id in (select id from a) or to_account_id in (select id from a)),
      (select count(*) from billing.holds where account_id in (select id from a)),
      (select count(*) from billing.lots where account_id in (select id from a)),
      (select count(*) from billing.jobs where user_id in (select id from u)),
      (select count(*) from billing.org_invitations where org_id in (select id from o)),
      (select count(*) from billing.providers where owner_user_id in (select id from u)),
      (select count(*) from billing.provider_payments where created_by in (select id from u)),
      (select count(*) from billing.purchases where user_id in (select id from u)),
      (select count(*) from billing.auto_recharge_audit where user_id in (select id from u)),
      (select count(*) from billing.idempotency_keys where user_id in (select id from u) and response_status < 300),
      (select count(*) from billing.notification_outbox where dedupe_key like ${`notify:${marker}%`}),
      md5((select string_agg(concat_ws(',', name, funding, org_pays_first, term_ends_at), ';' order by id)
           from billing.orgs where id in (select id from o))),
      md5((select string_agg(concat_ws(',', user_id, role, active), ';' order by org_id, user_id)
           from billing.org_members where org_id in (select id from o))),
      md5((select string_agg(concat_ws(',', id, balance, low_balance_threshold), ';' order by id)
           from billing.accounts where id in (select id from a))),
      md5((select string_agg(concat_ws(',', account_id, period, time_zone, model, amount, alert_percents), ';'
                             order by account_id, period, model)
           from billing.spend_caps where account_id in (select id from a))),
      md5((select string_agg(s::text, ';') from billing.auto_recharge s where user_id in (select id from u)))
    ) as fp`;
  return fp;
}
/** The fingerprint once the money a success moves in the background (a metered job's) has moved. */
async function settled(): Promise<string> {
  await until('the metered jobs to finish', async () => {
    const [{ n }] = await testDb`select count(*)::int as n from billing.jobs
      where user_id = any(${users}::uuid[]) and type = 'ai_completion' and status in ('queued', 'processing')`;
    return n === 0;
  }, 30_000);
  return await fingerprint();
}

const serverLog = `${(await testDb`show data_directory`)[0].data_directory}/server.log`;
const logStart = (await Deno.stat(serverLog)).size;
const statuses = new Map<number, number>();
let state = await settled();
let previous = '';

async function attempt(r: Route, m: Mutation, value: unknown, refuse = mustRefuse(m, value)) {
  const { path, body, key } = requestOf(r, m, value);
  const what = `${r.method} ${r.path} ${JSON.stringify(m)} = ${
    value instanceof Raw ? value.text.slice(0, 40) : JSON.stringify(value)?.slice(0, 40)
  }`;
  const a = await call(gw.url, r.method, path, { who: r.who, body, key });
  statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
  assert.ok(a.status >= 200 && a.status < 500, `${what}: ${a.status} ${a.text.slice(0, 300)}`);
  if (refuse) assert.ok(a.status >= 400, `${what} was accepted: ${a.status} ${a.text.slice(0, 300)}`);
  if (a.status >= 400) {
    const now = await fingerprint();
    const changed = now.split('|').map((p, i) => p === state.split('|')[i] ? '' : `${i}`).filter(Boolean);
    const before = previous;
    previous = `${what} → ${a.status}`;
    if (now !== state) {
      state = now; // one failure, not every request after it (fast-check shrinks by replaying)
      assert.fail(`${what} answered ${a.status} but stored something (parts ${changed}; before it: ${before})`);
    }
    return;
  }
  previous = `${what} → ${a.status}`;
  state = await settled();
}

const cases = routes.flatMap((r) =>
  mutationsOf(r).flatMap((m) => {
    const values = m.kind === 'query' || m.kind === 'param'
      ? [...urlEdges, '9223372036854775807']
      : m.kind === 'header'
      ? ['k'.repeat(256), ' ', '', 'a b']
      : m.kind === 'new key'
      ? bodyEdges.filter((v) => typeof v === 'string')
      : bodyEdges;
    return values.map((value) => ({ r, m, value }));
  })
);

Deno.test('every route answers every edge value without a 5xx, refuses what Postgres cannot store, and stores nothing when it refuses', async () => {
  await withGateway({ RATE_LIMIT_ENABLED: 'false' }, async (url) => {
    gw.url = url;
    for (const { r, m, value } of cases) await attempt(r, m, value);
    // Then fast-check's: strings of the awkward characters, integers, and fractions.
    const routeAndMutation = fc.constantFrom(...routes.flatMap((r) => mutationsOf(r).map((m) => ({ r, m }))));
    const text = fc.string({
      unit: fc.constantFrom('\0', '\ud800', '\udc00', '\uffff', 'a', '1', 'é', '\u{1F600}', "'", '\\', '"', ' '),
      maxLength: 300,
    });
    const jsonValue = fc.oneof(text, fc.integer(), fc.double(), fc.bigInt().map((n) => raw(String(n))));
    await fc.assert(
      fc.asyncProperty(routeAndMutation, jsonValue, async ({ r, m }, v) => {
        const asText = String(v instanceof Raw ? v.text : v);
        const value = m.kind === 'query' || m.kind === 'param'
          ? wtf8(asText)
          : m.kind === 'header'
          ? asText.replace(/[^\x21-\x7e]/g, 'k').slice(0, 255) || 'k'
          : m.kind === 'new key'
          ? asText
          : v;
        await attempt(r, m, value, m.kind !== 'header' && containsUnstorable(m.kind === 'body' ? v : asText));
      }),
      { numRuns: 400, endOnFailure: true }, // no shrinking: each run changes the stack's state
    );
  });
  console.log(`${sent} requests; answers by status: ${JSON.stringify(Object.fromEntries(statuses))}`);
});

Deno.test("no statement failed but a SQL function's refusal, and none of the requests' values reached the Postgres log", async () => {
  const file = await Deno.open(serverLog);
  await file.seek(logStart, Deno.SeekMode.Start);
  const log = new TextDecoder().decode(await new Response(file.readable).arrayBuffer());
  const errors = log.split('\n').filter((l) => / ERROR: /.test(l));
  console.log(`${errors.length} refusals raised in SQL during the run`);
  // A refusal is a token (billing.raise_error); anything else is a statement our input broke.
  assert.deepEqual(errors.filter((l) => !/ ERROR: {2}[A-Z_]+$/.test(l)), []);
  assert.doesNotMatch(log, /STATEMENT: .*E'/, 'no one-round-trip statement (its values written in) failed');
  assert.ok(!log.includes(marker), 'no Idempotency-Key, metadata or other value of the requests is in the log');
});

Deno.test('text Postgres stores as sent (noncharacters, astral characters, the longest allowed) is answered exactly', async () => {
  // Someone of their own: the runs above leave the student with random caps and balances.
  const p = await person(`${marker}-text`);
  await fund(p.id, '10');
  // An organisation's name is printed by Stripe: astral and accented letters, no noncharacters
  // (those are refused there as invisible; the metadata below keeps them).
  const name = '\u{1F600}\u{10348}é ' + 'x'.repeat(196);
  assert.equal([...name].length, 200, 'characters are code points');
  const org = await api('/orgs', { token: p.token, body: { name } });
  assert.equal(org.status, 201, org.text);
  const read = await api(`/orgs/${(org.body.data as { id: string }).id}`, { token: p.token });
  assert.equal((read.body.data as { name: string }).name, name);
  assert.equal((await api('/orgs', { token: p.token, body: { name: name + 'x' } })).status, 400);

  // The one-round-trip path: the metadata goes into the statement as a jsonb literal.
  const note = '\uffff \u{1F600} it\'s a \\ "quote"';
  const charged = await reportUsage('/credits/usage', {
    token: p.token,
    body: { ...usageBody, metadata: { note, '\uffff': 1 } },
    headers: { 'idempotency-key': `${marker}-text` },
  });
  assert.equal(charged.status, 201, charged.text);
  const [{ metadata }] = await testDb`select metadata from billing.transfers
    where id = ${(charged.body.data as { transfer_id: string }).transfer_id}`;
  assert.equal(metadata.note, note);
  assert.equal(metadata['\uffff'], 1);
});

// Personal data and injection payloads, through every text a route takes (body fields, query
// values, path ids, Idempotency-Keys), and the routes that take ids or names SQL looks up
// (packages, codes, invoices): accepted or refused, none of it may reach the Postgres log, read
// where Postgres writes it (its data directory's server.log, the pg_ctl -l file; scripts/test
// scans the same file with every leak pattern).
const piiValues = [
  'jane.doe@example.com',
  '078-05-1120',
  'x078-05-1120y',
  "1' OR '1'='1",
  "mini' AND 1=CAST((SELECT version()) AS int)--",
  '1;SELECT pg_sleep(3)--',
  "' UNION SELECT usename, passwd FROM pg_shadow--",
  '"><script>alert(1)</script>',
];
Deno.test("PII-shaped values and sqlmap payloads sent through every route's text never reach the Postgres log", async () => {
  const { leakPatterns } = await import('../../supabase/functions/_shared/redact.ts');
  const start = (await Deno.stat(serverLog)).size;
  // The organisation may ask for invoices, so an unknown package reaches SQL's lookup.
  await testDb`update billing.orgs set invoicing_approved_at = now() where id = ${org}`;
  const address = { line1: '1 Lake Road', city: 'Springfield', postal_code: '12345', country: 'US' };
  const more: Route[] = [
    {
      who: 'student',
      method: 'POST',
      path: '/orgs/{org}/invoices',
      key: true,
      body: { package_id: 'mini', po_number: 'PO-1', billing_address: address },
    },
    {
      who: 'student',
      method: 'POST',
      path: '/orgs/{org}/sponsor-codes',
      key: true,
      body: { credits: '1', email: member.email, note: 'n' },
    },
    {
      who: 'student',
      method: 'POST',
      path: '/credits/codes/redeem',
      key: true,
      body: { code: 'ABCDE-FGHJK-MNPQR-STVWX' },
    },
    { who: 'student', method: 'POST', path: '/checkout/sessions', key: true, body: { package_id: 'mini', gift: true } },
    {
      who: 'admin',
      method: 'POST',
      path: '/admin/codes',
      key: true,
      body: { credits: '1', max_redemptions: 1, note: 'n' },
    },
  ];
  let n = 0;
  await withGateway({ RATE_LIMIT_ENABLED: 'false' }, async (url) => {
    for (const r of [...routes, ...more]) {
      for (const m of mutationsOf(r).filter((m) => m.kind !== 'new key')) {
        for (const v of piiValues) {
          const value = m.kind === 'query' || m.kind === 'param'
            ? encodeURIComponent(v)
            : m.kind === 'header'
            ? v.replace(/[^\x21-\x7e]/g, '_')
            : v;
          const { path, body, key } = requestOf(r, m, value);
          const a = await call(url, r.method, path, { who: r.who, body, key });
          n++;
          assert.ok(
            a.status < 500,
            `${r.method} ${r.path} ${JSON.stringify(m)} = ${v}: ${a.status} ${a.text.slice(0, 300)}`,
          );
        }
      }
    }
  });
  const file = await Deno.open(serverLog);
  await file.seek(start, Deno.SeekMode.Start);
  const log = new TextDecoder().decode(await new Response(file.readable).arrayBuffer());
  const leaked = log.split('\n').flatMap((line) =>
    leakPatterns.filter(([, p]) => p.test(line)).map(([name]) => `${name}: ${line.slice(0, 200)}`)
  );
  assert.deepEqual(leaked, [], `${n} requests: nothing personal in the Postgres log`);
  for (const v of ['078-05-1120', 'pg_sleep', 'pg_shadow', 'version()', "'1'='1", '<script>']) {
    assert.ok(!log.includes(v), `${JSON.stringify(v)} is not in the Postgres log`);
  }
});
