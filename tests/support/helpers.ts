// Shared by the Deno tests: the local stack's addresses, a test database handle, and a
// signer that makes Supabase-shaped user tokens with the local auth key.
import assert from 'node:assert/strict';
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

/** A fresh user with `app_metadata.role = admin` in auth.users (as Supabase stores it). */
export async function newAdmin(): Promise<string> {
  const id = crypto.randomUUID();
  await testDb`insert into auth.users (id, raw_app_meta_data) values (${id}, '{"role": "admin"}'::jsonb)`;
  return id;
}

/** A fresh student and their token, funded with `credits` through the admin grants route when given. */
export async function student(credits?: string | null) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

/** A fresh Idempotency-Key header. */
export const key = () => ({ 'idempotency-key': crypto.randomUUID() });

/** A token for a fresh admin: the claim and the database agree. */
export async function adminToken(): Promise<string> {
  return userToken(await newAdmin(), { admin: true });
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

/** The user a test token names (its `sub`). */
export function tokenUser(token: string): string {
  const payload = token.split('.')[1] ?? '';
  return JSON.parse(atob(payload.replaceAll('-', '+').replaceAll('_', '/'))).sub;
}

/**
 * Reports usage as the product's server does (POST /credits/usage takes no user token): `api`
 * with the service role key, the user `init.token` names put in the body as user_id.
 * @example await reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body: { model, … } })
 */
export function reportUsage(
  path: string,
  init: { method?: string; token?: string; body?: unknown; headers?: Record<string, string> } = {},
): ReturnType<typeof api> {
  const { token, body, ...rest } = init;
  const named = token && body && typeof body === 'object' && !Array.isArray(body)
    ? { user_id: tokenUser(token), ...body }
    : body;
  return api(path, { ...rest, token: env('SUPABASE_SERVICE_ROLE_KEY'), body: named });
}

/** Funds a user through the admin grants route (a real HTTP call with a real admin token). */
export async function fund(userId: string, amount: string): Promise<void> {
  const admin = await adminToken();
  const res = await api('/credits/grants', {
    token: admin,
    body: { user_id: userId, amount, reason: 'test funding', kind: 'promo_grant' },
    headers: { 'idempotency-key': crypto.randomUUID() },
  });
  if (res.status !== 201) throw new Error(`funding failed: ${res.status} ${res.text}`);
}

/** Spends `credits` through /credits/usage, reported by the server for the token's user (gpt-4o input: 50 tokens = 1 credit). */
export async function spend(token: string, credits: number) {
  const r = await reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });
  if (r.status !== 201) throw new Error(`spending ${credits} failed: ${r.status} ${r.text}`);
  return r;
}

/**
 * The ledger's invariants, checked over the whole database: every entry is its transfer's side
 * on that account, every tracked side has one, every transfer names accounts that exist, every
 * tracked balance is Σ of its entries and its last
 * balance_after, held is Σ of active holds, no balance is negative without a reversal, the lots
 * agree with the ledger, and a moved lot keeps its source's provenance.
 */
export async function assertLedgerInvariants(): Promise<void> {
  // Grouped once over all entries (not per account), so it stays fast on a large ledger.
  const [r] = await testDb`
    with sums as (select account_id, sum(amount) as total, count(*) as n from billing.entries group by account_id),
         last as (select distinct on (account_id) account_id, balance_after from billing.entries
                  where balance_after is not null order by account_id, id desc),
         holds as (select account_id, sum(amount) as held from billing.holds where status = 'active' group by account_id),
         -- Debt comes from a reversal or from what a provider billed past a hold (the one debt:
         -- the excess charge records what its hold had reserved).
         reversed as (select distinct from_account_id as account_id from billing.transfers
                      where kind in ('refund_reversal', 'dispute_reversal')
                         or (kind = 'usage' and metadata ? 'reserved')),
         -- A transfer is its double entry: −amount on from, +amount on to.
         sides as (select t.id as transfer_id, x.account_id, x.amount from billing.transfers t
                   cross join lateral (values (t.from_account_id, -t.amount), (t.to_account_id, t.amount)) x(account_id, amount))
    select
      (select count(*) from billing.entries e
         left join sides s on s.transfer_id = e.transfer_id and s.account_id = e.account_id
         where s.amount is distinct from e.amount)::int as entry_off_transfer,
      (select count(*) from sides s join billing.accounts a on a.id = s.account_id and a.code is null
         where not exists (select 1 from billing.entries e where e.transfer_id = s.transfer_id and e.account_id = s.account_id))::int
        as side_without_entry,
      (select count(*) from sides s where not exists (select 1 from billing.accounts a where a.id = s.account_id))::int
        as unknown_account,
      (select count(*) from billing.accounts a left join sums s on s.account_id = a.id
         where a.code is null and a.balance <> coalesce(s.total, 0))::int as balance_mismatch,
      (select count(*) from billing.accounts a join last l on l.account_id = a.id
         where a.balance <> l.balance_after)::int as last_entry_mismatch,
      (select count(*) from billing.accounts a left join holds h on h.account_id = a.id
         where a.code is null and a.held <> coalesce(h.held, 0))::int as held_mismatch,
      (select count(*) from billing.accounts a left join reversed v on v.account_id = a.id
         where a.balance < 0 and v.account_id is null)::int as unexplained_debt,
      -- What holds and gateway calls name, without foreign keys (10-ledger.sql, holds).
      ((select count(*) from billing.holds h
          where not exists (select 1 from billing.accounts a where a.id = h.account_id)
             or (h.capture_transfer_id is not null
                 and not exists (select 1 from billing.transfers t where t.id = h.capture_transfer_id)))
       + (select count(*) from billing.ai_calls c
          where (c.hold_id is not null and not exists (select 1 from billing.holds h where h.id = c.hold_id))
             or (c.transfer_id is not null and not exists (select 1 from billing.transfers t where t.id = c.transfer_id))))::int
        as dangling_reference`;
  const problems = Object.entries({
    "an entry is not its transfer's side": r.entry_off_transfer > 0,
    'a tracked side of a transfer has no entry': r.side_without_entry > 0,
    'a transfer names an account that does not exist': r.unknown_account > 0,
    'a balance ≠ Σ of its entries': r.balance_mismatch > 0,
    'a balance ≠ its last balance_after': r.last_entry_mismatch > 0,
    'held ≠ Σ active holds': r.held_mismatch > 0,
    'a negative balance without a reversal or an overrun': r.unexplained_debt > 0,
    'a hold or a gateway call names a row that does not exist': r.dangling_reference > 0,
  }).filter(([, bad]) => bad).map(([what]) => what);
  // Lots: each lot's remaining = granted − settled − drawn, Σ remaining = the balance (0 in
  // debt), no transfer drew more than its amount, deferred revenue the same both ways.
  // next_expiry is a lower bound of every open lot's expiry ('expiry').
  const [{ lots }] = await testDb`select billing.check_lots() as lots`;
  for (const list of ['lots', 'accounts', 'sub_accounts', 'transfers', 'expiry'] as const) {
    if (lots[list].length) {
      problems.push(`lots disagree with the ledger (${list}: ${lots[list].slice(0, 5).join(', ')})`);
    }
  }
  for (const [currency, d] of Object.entries(lots.deferred_revenue_cents as Record<string, Record<string, unknown>>)) {
    if (d.from_lots !== d.from_flows) problems.push(`deferred revenue (${currency}) differs: ${JSON.stringify(d)}`);
  }
  const moved = await movedLotsOffProvenance();
  if (moved.length) problems.push(`moved lots lost their provenance (${moved.slice(0, 5).join(', ')})`);
  if (problems.length) throw new Error(`ledger invariants broken: ${problems.join('; ')} (${JSON.stringify(r)})`);
}

/**
 * Platform accounts keep no entries (their balances are derived from the transfers): Σ
 * platform_balances + Σ tracked balances is 0, and the ledger's invariants hold.
 */
export async function assertPlatformBalances(): Promise<void> {
  const [r] = await testDb`select trim_scale((select coalesce(sum(balance), 0) from billing.platform_balances)
    + (select coalesce(sum(balance), 0) from billing.accounts where code is null))::text as total`;
  assert.equal(r.total, '0', 'platform_balances + tracked balances');
  await assertLedgerInvariants();
}

/** The lowercase hex SHA-256 of `text` (as a `sha256:` Idempotency-Key carries it). */
export const sha256hex = async (text: string) =>
  Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))))
    .map((b) => b.toString(16).padStart(2, '0')).join('');

/** A job's status, attempts and error, as the database has them. */
export const jobOf = async (id: string) =>
  (await testDb`select status, attempts, error from billing.jobs where id = ${id}`)[0];

/**
 * Starts an ai_completion job for `token` through the gateway at `base` (one whose local model may
 * be slowed: AI_LOCAL_CHUNK_DELAY_MS); its id.
 * @example const id = await startAiJob(url, s.token)
 */
export async function startAiJob(
  base: string,
  token: string,
  prompt = 'one two three four five six seven eight',
  maxTokens = 100,
) {
  const res = await fetch(`${base}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
    body: JSON.stringify({ type: 'ai_completion', input: { model: 'gpt-4o', prompt, max_tokens: maxTokens } }),
  });
  if (res.status !== 202) throw new Error(`the job was not created: ${res.status} ${await res.text()}`);
  return (await res.json()).data.job_id as string;
}

/** Job `id` once it has finished (completed, failed or cancelled): its status, attempts and error. */
export const finishedJob = (id: string) =>
  until('the job to finish', async () => {
    const j = await jobOf(id);
    return ['completed', 'failed', 'cancelled'].includes(j.status) && j;
  });

/**
 * Time passes for one lot: it is due, and so is every lot moved from the same grant with the
 * same expiry (a moved copy keeps its source's). The ledger is immutable, lots and accounts are not.
 */
export async function backdateLot(lot: string): Promise<void> {
  await testDb.begin(async (tx) => {
    const family = (await tx`with recursive up as (select id, moved_from from billing.lots where id = ${lot}
                   union all select s.id, s.moved_from from billing.lots s join up on s.id = up.moved_from),
                 family as (select id from up where moved_from is null
                   union all select c.id from billing.lots c join family f on c.moved_from = f.id)
               select id::text from family`).map((r) => r.id as string);
    // The accounts first, as the ledger locks them: a lot locked first deadlocks with a call.
    await tx`select 1 from billing.accounts a where a.id in (select l.account_id from billing.lots l
               where l.id = any(${family}::bigint[])) order by a.id for update`;
    await tx`with l as (update billing.lots set expires_at = now() - interval '1 second'
                     where id = any(${family}::bigint[])
                       and expires_at is not distinct from (select x.expires_at from billing.lots x where x.id = ${lot})
                     returning account_id, expires_at)
               update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
  });
}

/**
 * Lots made by a move (moved_from) that differ from their source in purchase, category,
 * priority, currency, expiry or cost per credit, over the whole database or one organisation's accounts.
 * A moved lot's cost is the source's cost × amount ÷ source amount, rounded to the column's 18
 * decimals, so the cross products may differ by at most half a unit there × the source amount.
 */
export async function movedLotsOffProvenance(org: string | null = null): Promise<string[]> {
  const rows = await testDb`
    select l.id::text from billing.lots l join billing.lots s on s.id = l.moved_from
    where (${org}::uuid is null or l.account_id in (select a.id from billing.accounts a where a.org_id = ${org}))
      and (l.purchase_id is distinct from s.purchase_id or l.category <> s.category or l.priority <> s.priority
           or l.currency <> s.currency
           -- A plan's rollover carries credits into the next period: a new expiry is its point.
           or (l.expires_at is distinct from s.expires_at
               and not exists (select 1 from billing.transfers t where t.id = l.grant_transfer_id and t.kind = 'plan_rollover'))
           or abs(l.cost_cents * s.amount - s.cost_cents * l.amount) > s.amount * 0.5e-18)`;
  return rows.map((r) => r.id);
}

/** A gateway process of its own, with extra env: for start-up checks, flags and crash tests. */
export function spawnGateway(overrides: Record<string, string>) {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/local/gateway.ts'],
    env: { ...overrides, GATEWAY_PORT: String(port) },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const url = `http://127.0.0.1:${port}/functions/v1`;
  return {
    url,
    async ready() {
      for (let i = 0; i < 150; i++) {
        const up = await fetch(`${url}/health/healthz`).then(
          (r) => r.body?.cancel().then(() => true) ?? true,
          () => false,
        );
        if (up) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error('the throw-away gateway did not start');
    },
    async kill() {
      try {
        child.kill('SIGKILL');
      } catch { /* it already exited */ }
      await child.status;
    },
  };
}

/**
 * Runs `fn` against a second, throw-away gateway whose functions see `overrides` on top of
 * the local env: for start-up checks and feature flags, which are read once per process.
 */
export async function withGateway(
  overrides: Record<string, string>,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const gw = spawnGateway(overrides);
  try {
    await gw.ready();
    await fn(gw.url);
  } finally {
    await gw.kill();
  }
}

/**
 * Overrides for a gateway whose test counts requests against a rate-limit window: Redis gets
 * more than the 300 ms the gateway allows it by default, because on a loaded CI machine a slow
 * answer fails open (right in production) and would read as a missing 429.
 */
export const counting: Record<string, string> = { REDIS_TIMEOUT_MS: '5000' };

/** Waits, if needed, until 20 s of the current minute are left: a fixed window resets at its edge. */
export async function clearOfWindowEdge(): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000);
  if (left < 20_000) await new Promise((r) => setTimeout(r, left + 50));
}

/** Sends whatever is due in the outbox (earlier tests leave some), so a test then dispatches its own. */
export async function drainOutbox(base = functionsUrl): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await fetch(`${base}/notify/dispatch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
    });
    const { data } = await r.json();
    if (data.sent + data.failed + data.retrying === 0) return;
  }
}

/** The tick's alerts and auto-recharge for every account postings queued (billing.run_account_watch). */
export async function watchTick(): Promise<void> {
  await testDb`select billing.run_account_watch(100000)`;
}

/** Runs the jobs worker tick as pg_cron would (the test run has no ticker). */
export async function tick(base = functionsUrl): Promise<void> {
  const res = await fetch(`${base}/jobs/worker/tick`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`the worker tick answered ${res.status}: ${text}`);
}

/**
 * Waits until job `id` is processing on the gateway at `base`, ticking that gateway's worker when it
 * is still queued (not awaited: a tick runs the job through): the inline worker its creation started
 * may be busy with another test's job. A test using it turns the op sanitizers off, since a tick may
 * be in flight when its gateway is killed.
 */
export async function untilJobRunning(base: string, id: string, timeoutMs = 60_000): Promise<void> {
  let next = Date.now() + 2_000;
  await until('the job running', async () => {
    const [j] = await testDb`select status from billing.jobs where id = ${id}`;
    if (j?.status === 'queued' && Date.now() > next) {
      next = Date.now() + 5_000;
      tick(base).catch(() => {});
    }
    return j?.status === 'processing';
  }, timeoutMs);
}

/** Waits, when needed, until pg_cron's minute boundary (where the sweeps and the jobs tick run on
 * their own) is at least 5 s behind and `aheadMs` ahead: what a test set up for one run is then
 * met by that one only. */
export async function awayFromCron(aheadMs = 20_000): Promise<void> {
  const into = Date.now() % 60_000;
  const wait = into < 5_000 ? 5_000 - into : into > 60_000 - aheadMs ? 65_000 - into : 0;
  if (wait) await new Promise((r) => setTimeout(r, wait));
}

/** Polls `fn` every 100 ms until it returns something truthy, or fails after `timeoutMs`. */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A client call's data, or its error thrown: for tests that only want the answer (the client
 * itself never throws; tests/unit/client.test.ts holds its `{ data, error }` shape).
 * @example const org = await must(admin.createOrg({ name: 'Lakeside' }))
 */
export async function must<R extends { data: unknown; error: Error | null }>(
  result: Promise<R>,
): Promise<Extract<R, { error: null }>['data']> {
  const { data, error } = await result;
  if (error) throw error;
  return data;
}

/** The Postgres server log and its size now, to read what a test added to it. */
export async function pgLogFrom(): Promise<{ file: string; at: number }> {
  // Where the local cluster writes its server log (scripts/lib.sh, pg_start).
  const file = `${(await testDb`show data_directory`)[0].data_directory}/server.log`;
  return { file, at: (await Deno.stat(file)).size };
}
/** What the Postgres server log gained since `mark`. */
export async function pgLogSince(mark: { file: string; at: number }): Promise<string> {
  const bytes = await Deno.readFile(mark.file);
  return new TextDecoder().decode(bytes.subarray(mark.at));
}

/**
 * Time passes for holds (a test's clock; the ledger is immutable, holds are not): the holds `where`
 * picks reach their TTL at `at` (a second ago by default), and their accounts' next_hold_expiry
 * says so, as placing them at that TTL would have.
 */
export function holdsLapse(where: postgres.PendingQuery<postgres.Row[]>, at = testDb`now() - interval '1 second'`) {
  return testDb`
    with h as (update billing.holds h set expires_at = ${at} where ${where} returning h.account_id, h.expires_at)
    update billing.accounts a set next_hold_expiry = least(a.next_hold_expiry, x.at)
    from (select h.account_id, min(h.expires_at) as at from h group by h.account_id) x where a.id = x.account_id`;
}

/**
 * What pg_cron does each minute, every account's at once: the holds past their TTL end
 * (billing.release_expired_holds), then refunds take back what they claimed of ended holds
 * (billing.take_back_due_claims). The jobs' 500 a minute would leave this test's for the next
 * minute behind a backlog other tests left (as after the stack was stopped a while).
 */
export async function sweepExpiredHolds() {
  await testDb`select billing.release_expired_holds(100000)`;
  await testDb`select billing.take_back_due_claims(100000)`;
}
