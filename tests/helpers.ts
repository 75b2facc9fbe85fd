// Shared by the Deno tests: the local stack's addresses, a test database handle, and a
// signer that makes Supabase-shaped user tokens with the local auth key.
import { importJWK, type JWTPayload, SignJWT } from 'jose';
import postgres from 'postgres';

export const env = (name: string): string => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set: run the tests through ./scripts/test`);
  return v;
};

export const supabaseUrl = env('SUPABASE_URL');
export const functionsUrl = `${supabaseUrl}/functions/v1`;

/** A direct database handle for setting up and checking state (as postgres). */
export const testDb = postgres(env('SUPABASE_DB_URL'), { max: 4, onnotice: () => {}, prepare: false });

const privateJwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const signingKey = await importJWK(privateJwk, 'ES256');

export interface TokenOptions {
  admin?: boolean;
  claims?: JWTPayload;
  ttlSeconds?: number;
}

/** A user token as Supabase Auth would issue it; `claims` override any claim. */
export function userToken(userId: string, opts: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: `${supabaseUrl}/auth/v1`,
    aud: 'authenticated',
    sub: userId,
    role: 'authenticated',
    iat: now,
    exp: now + (opts.ttlSeconds ?? 3600),
    app_metadata: opts.admin ? { role: 'admin' } : {},
    ...opts.claims,
  })
    .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid, typ: 'JWT' })
    .sign(signingKey);
}

/** A fresh user id, inserted into auth.users. */
export async function newUser(): Promise<string> {
  const id = crypto.randomUUID();
  await testDb`insert into auth.users (id) values (${id})`;
  return id;
}

/** Calls a function through the gateway with a JSON body. */
export async function api(
  path: string,
  init: { method?: string; token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Headers; body: Record<string, unknown>; text: string }> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${functionsUrl}${path}`, {
    method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text);
  } catch { /* not JSON: the text is still returned */ }
  return { status: res.status, headers: res.headers, body, text };
}

/** Funds a user through the admin grants route (a real HTTP call with a real admin token). */
export async function fund(userId: string, amount: string): Promise<void> {
  const admin = await userToken(crypto.randomUUID(), { admin: true });
  const res = await api('/credits/grants', {
    token: admin,
    body: { user_id: userId, amount, reason: 'test funding', kind: 'promo_grant' },
    headers: { 'idempotency-key': crypto.randomUUID() },
  });
  if (res.status !== 201) throw new Error(`funding failed: ${res.status} ${res.text}`);
}

/**
 * The ledger's invariants, checked over the whole database: Σ entries = 0, every transfer is
 * two entries summing to zero, every user balance is Σ of its entries and its last
 * balance_after, held is Σ of active holds, and no balance is negative without a reversal.
 */
export async function assertLedgerInvariants(): Promise<void> {
  const [r] = await testDb`
    select
      (select coalesce(sum(amount), 0) from billing.entries)::text as total,
      (select count(*) from (select transfer_id from billing.entries group by transfer_id
                             having sum(amount) <> 0 or count(*) <> 2) t)::int as unbalanced_transfers,
      (select count(*) from billing.accounts a where a.user_id is not null
         and a.balance <> (select coalesce(sum(e.amount), 0) from billing.entries e where e.account_id = a.id))::int as balance_mismatch,
      (select count(*) from billing.accounts a where a.version > 0
         and a.balance <> (select e.balance_after from billing.entries e where e.account_id = a.id order by e.id desc limit 1))::int as last_entry_mismatch,
      (select count(*) from billing.accounts a where a.user_id is not null
         and a.held <> (select coalesce(sum(h.amount), 0) from billing.holds h where h.account_id = a.id and h.status = 'active'))::int as held_mismatch,
      (select count(*) from billing.accounts a where a.balance < 0 and not exists (
         select 1 from billing.transfers t where t.from_account_id = a.id and t.kind in ('refund_reversal', 'dispute_reversal')))::int as unexplained_debt`;
  const problems = Object.entries({
    'Σ entries ≠ 0': r.total !== '0.000000000000000000' && r.total !== '0',
    'a transfer is not two entries summing to zero': r.unbalanced_transfers > 0,
    'a balance ≠ Σ of its entries': r.balance_mismatch > 0,
    'a balance ≠ its last balance_after': r.last_entry_mismatch > 0,
    'held ≠ Σ active holds': r.held_mismatch > 0,
    'a negative balance without a reversal': r.unexplained_debt > 0,
  }).filter(([, bad]) => bad).map(([what]) => what);
  if (problems.length) throw new Error(`ledger invariants broken: ${problems.join('; ')} (${JSON.stringify(r)})`);
}

/**
 * Runs `fn` against a second, throw-away gateway whose functions see `overrides` on top of
 * the local env: for start-up checks and feature flags, which are read once per process.
 */
export async function withGateway(
  overrides: Record<string, string>,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/local/gateway.ts'],
    env: { ...overrides, GATEWAY_PORT: String(port) },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  try {
    const url = `http://127.0.0.1:${port}/functions/v1`;
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      up = await fetch(`${url}/health/healthz`).then((r) => r.body?.cancel().then(() => true) ?? true, () => false);
      if (!up) await new Promise((r) => setTimeout(r, 100));
    }
    if (!up) throw new Error('the throw-away gateway did not start');
    await fn(url);
  } finally {
    try {
      child.kill();
    } catch { /* it already exited */ }
    await child.status;
  }
}
