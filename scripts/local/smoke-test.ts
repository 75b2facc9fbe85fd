// A smoke test of deployed functions that buys nothing: liveness and readiness, that a call
// without a token is refused and one with a user's token answered, and that Checkout opens a
// test-mode session (its URL is printed; the unpaid session expires on its own). Prints one
// line per check and exits 1 if any fails. Never prints the token.
import { parseArgs } from 'node:util';

const { values } = parseArgs({ args: Deno.args, options: { 'functions-url': { type: 'string' } } });
const base = (values['functions-url'] ?? '').replace(/\/$/, '');
const token = Deno.env.get('SMOKE_TOKEN') ?? '';
if (!URL.canParse(base) || !token) {
  console.error('needs --functions-url https://<ref>.supabase.co/functions/v1 and SMOKE_TOKEN (a user access token)');
  Deno.exit(2);
}

let failed = 0;
const report = (ok: boolean, what: string, detail = '') => {
  if (!ok) failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'}  ${what}${detail ? `: ${detail}` : ''}`);
};
async function call(path: string, init: { auth?: boolean; body?: unknown } = {}) {
  const res = await fetch(`${base}${path}`, {
    method: init.body === undefined ? 'GET' : 'POST',
    headers: {
      ...(init.auth ? { authorization: `Bearer ${token}` } : {}),
      ...(init.body === undefined
        ? {}
        : { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() }),
    },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  }).catch((err) => err as Error);
  if (res instanceof Error) return { status: 0, body: {} as Record<string, never>, error: res.message };
  const body = await res.json().catch(() => ({}));
  return { status: res.status, body, error: '' };
}
const said = (r: { status: number; body: { error?: { code?: string } }; error: string }) =>
  r.error || `${r.status} ${r.body.error?.code ?? ''}`.trim();

const live = await call('/health/healthz');
report(live.status === 200, 'liveness    GET /health/healthz', live.status === 200 ? '' : said(live));
const ready = await call('/health/readyz');
const checks = Object.entries((ready.body.data ?? ready.body.error?.details ?? {}).checks ?? {}) as [
  string,
  { status: string; variables?: string[] },
][];
const failing = checks.filter(([, c]) => c.status === 'failing')
  .map(([name, c]) => `${name}${c.variables ? ` (${c.variables.join(', ')})` : ''}`);
report(
  ready.status === 200,
  'readiness   GET /health/readyz',
  ready.status === 200 ? '' : failing.join('; ') || said(ready),
);
const anonymous = await call('/credits/balance');
report(anonymous.status === 401, 'auth        GET /credits/balance without a token is refused', said(anonymous));
const signedIn = await call('/credits/balance', { auth: true });
report(
  signedIn.status === 200,
  'auth        GET /credits/balance with the token',
  signedIn.status === 200 ? '' : said(signedIn),
);
const packages = await call('/checkout/packages', { auth: true });
const cheapest = (packages.body.data?.items ?? [])
  .sort((a: { price_cents: number }, b: { price_cents: number }) => a.price_cents - b.price_cents)[0];
report(Boolean(cheapest), 'checkout    GET /checkout/packages', cheapest ? cheapest.id : said(packages));
if (cheapest) {
  const session = await call('/checkout/sessions', { auth: true, body: { package_id: cheapest.id } });
  const { session_id: id = '', url = '' } = session.body.data ?? {};
  report(
    session.status === 201 && id.startsWith('cs_test_') && URL.canParse(url),
    'checkout    POST /checkout/sessions opens a test-mode Checkout (nothing is paid)',
    session.status === 201 ? (id.startsWith('cs_test_') ? url : `${id.slice(0, 8)}…: not test mode`) : said(session),
  );
}
console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
Deno.exit(failed ? 1 : 0);
