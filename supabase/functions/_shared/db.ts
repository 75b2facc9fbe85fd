// The database pool and the one place SQL error tokens become HTTP errors.
import postgres from 'postgres';
import { z } from 'zod';
import { AppError, type ErrorType } from './errors.ts';
import { baseEnv, ConfigError, parseEnv } from './env.ts';
import { errorSummary, log } from './log.ts';

let pool: postgres.Sql | undefined;

/**
 * postgres.js (3.4.9, under Deno's node compat) can throw from a timer when the server closes a
 * connection under a pending write (`socket.write` on a null socket): uncaught, it would take
 * the whole instance down with every request in flight. That one error is logged and dropped;
 * the pool replaces the connection. Anything else still crashes loudly.
 */
function survivePostgresSocketRace(event: ErrorEvent) {
  const err = event.error as Error | undefined;
  if (err instanceof TypeError && /reading 'write'/.test(err.message) && /postgres/.test(err.stack ?? '')) {
    event.preventDefault();
    log.warn('database connection closed under a write', errorSummary(err));
  }
}

/**
 * A pooler (Supavisor, pgbouncer) accepts logins while Postgres restarts, then fails the first
 * statement. postgres.js 3.4.9 rejects its type-fetching query there with nobody listening
 * (an unhandled rejection would end the isolate) and can leave the connection broken (a stale
 * error or a CONNECT_TIMEOUT on a later request). The rejection is logged and dropped, and a
 * pool whose connection failed is retired (call). Anything else still crashes loudly.
 */
function survivePoolerLoginFailure(event: PromiseRejectionEvent) {
  const err = event.reason as Error | undefined;
  if (err instanceof Error && err.name === 'PostgresError' && /postgres/.test(err.stack ?? '')) {
    event.preventDefault();
    log.warn('database connection failed while connecting through the pooler', errorSummary(err));
  }
}

/** Retires `sql` if it is still the pool: the next db() starts a fresh one; it finishes what is in flight. */
function retirePool(sql: postgres.Sql) {
  if (pool !== sql) return;
  pool = undefined;
  sql.end({ timeout: 10 }).catch(() => {});
}

/**
 * Where the pool connects. On hosted, SUPABASE_DB_URL is the direct connection (port 5432) and
 * every isolate of every function opens its own pool: DB_POOLER_URL, a project secret with
 * Supavisor's transaction-mode URL (port 6543), keeps them from exhausting the database's
 * connection slots. Locally it is pgbouncer in transaction mode.
 */
export const PoolEnvSchema = z.object({
  // Empty counts as unset (`supabase secrets set --env-file` sends `NAME=` as an empty string).
  DB_POOLER_URL: z.union([z.literal(''), z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL')])
    .optional(),
});

/**
 * The shared postgres.js pool, per isolate: DB_POOLER_URL when set, else SUPABASE_DB_URL.
 * Through a transaction-mode pooler each statement or transaction may run on another server
 * connection, so nothing may rely on session state: `prepare: false` (no named prepared
 * statements), SET LOCAL / set_config(…, true) only, pg_advisory_xact_lock (never the session
 * lock), no LISTEN, temp tables `on commit drop`. JSON parameters go in as text cast in SQL
 * (`${JSON.stringify(v)}::text::jsonb`): postgres.js's sql.json() generics push TypeScript past
 * its instantiation-depth limit (TS2589) once the whole program is checked; numeric stays a
 * string (exact decimals, never floats).
 * @example const [row] = await db()`select billing.get_balance(${userId}) as b`
 */
export function db(): postgres.Sql {
  if (!pool) {
    // Adding the same listener again (a replaced pool) is a no-op.
    globalThis.addEventListener('error', survivePostgresSocketRace);
    globalThis.addEventListener('unhandledrejection', survivePoolerLoginFailure);
    const env = baseEnv();
    const { DB_POOLER_URL } = parseEnv(PoolEnvSchema);
    pool = postgres(DB_POOLER_URL || env.SUPABASE_DB_URL, {
      prepare: false,
      // Per isolate: isolates × functions × DB_POOL_MAX client connections reach the pooler.
      max: env.DB_POOL_MAX,
      idle_timeout: 30,
      connect_timeout: 5,
      onnotice: () => {},
      connection: { application_name: 'scholarlink-functions' },
    });
  }
  return pool;
}

/**
 * SQL error tokens (raised as `message` with errcode P0001 and JSON `detail`) and how each
 * reaches the caller. The one place tokens become HTTP; docs/api.md lists the same table.
 */
const sqlErrors: Record<
  string,
  { type: ErrorType; message: string; code?: string; status?: number; retryable?: boolean }
> = {
  INSUFFICIENT_CREDITS: { type: 'payment_required', message: 'Not enough credits for this request.' },
  SPEND_CAP_REACHED: {
    type: 'payment_required',
    message: 'This would go over a spending cap: see details (cap, spent, resets_at).',
  },
  INVALID_CAP: { type: 'validation', message: 'The cap is not valid: see details.field and details.rule.' },
  INVALID_ALERT: { type: 'validation', message: 'The alert is not valid: see details.field and details.rule.' },
  CAP_NOT_FOUND: { type: 'not_found', message: 'There is no cap for that period and model: set the cap first.' },
  NO_SAVED_CARD: {
    type: 'conflict',
    message: 'Auto-recharge needs a saved card: buy a package with save_card: true first.',
  },
  INVALID_AUTO_RECHARGE: { type: 'validation', message: 'The auto-recharge settings are not valid: see details.rule.' },
  INVALID_AMOUNT: {
    type: 'validation',
    message: 'The amount must be a positive decimal with at most 18 decimal places.',
  },
  INVALID_TOKENS: { type: 'validation', message: 'Token counts must be non-negative integers.' },
  INVALID_TTL: { type: 'validation', message: 'ttl_seconds must be between 1 and 86400.' },
  INVALID_KIND: { type: 'validation', message: 'That kind of transfer is not allowed here.' },
  INVALID_LOT: { type: 'validation', message: 'The lot is not valid: see details.field and details.rule.' },
  UNKNOWN_MODEL: { type: 'validation', message: 'There is no rate card for that model.' },
  HOLD_NOT_FOUND: { type: 'not_found', message: 'No such hold.' },
  ORG_NOT_FOUND: { type: 'not_found', message: 'No such organisation (or you are not a member).' },
  ORG_FORBIDDEN: { type: 'forbidden', message: 'Only an owner or admin of the organisation may do this.' },
  ORG_FUNDING_MODE: { type: 'conflict', message: 'The organisation is not funded that way: see details.funding.' },
  INVALID_ORG: {
    type: 'validation',
    message: 'The organisation settings are not valid: see details.field and details.rule.',
  },
  MEMBER_NOT_FOUND: { type: 'not_found', message: 'No such active member of the organisation.' },
  INVITATION_NOT_FOUND: { type: 'not_found', message: 'No such invitation (for your email address, when answering).' },
  INVITATION_CLOSED: {
    type: 'conflict',
    message: 'The invitation was already answered or has expired: see details.status.',
  },
  INVITATION_PENDING: { type: 'conflict', message: 'That address already has a pending invitation.' },
  // A day's limit: not worth an automatic retry (a client's backoff would only meet it again).
  INVITATION_LIMIT: {
    type: 'rate_limit',
    message: 'Too many invitations in the last 24 hours: see details (scope, limit, retry_at).',
    retryable: false,
  },
  HOLD_NOT_USER_MANAGED: {
    type: 'forbidden',
    message: 'This hold belongs to a job or a dispute: it is captured or released by them, not through this route.',
  },
  HOLD_EXPIRED: { type: 'conflict', message: 'The hold has expired; its credits were released.' },
  HOLD_RELEASED: { type: 'conflict', message: 'The hold was released.' },
  // Capturing again with another amount, or releasing a captured hold: details.captured says how much.
  HOLD_ALREADY_CAPTURED: { type: 'conflict', message: 'The hold was already captured (details.captured).' },
  CAPTURE_EXCEEDS_HOLD: { type: 'validation', message: 'The capture amount is larger than the hold.' },
  IDEMPOTENCY_KEY_REUSED: {
    type: 'conflict',
    message: 'This Idempotency-Key was already used for a different request.',
  },
  IDEMPOTENCY_KEY_REQUIRED: { type: 'validation', message: 'An idempotency key is required.' },
  LEDGER_IMMUTABLE: { type: 'server', message: 'Ledger rows cannot be changed.', status: 500 },
  PACKAGE_NOT_FOUND: { type: 'not_found', message: 'No such credit package on sale.' },
  PURCHASE_NOT_FOUND: { type: 'not_found', message: 'No such purchase.' },
  CHECKOUT_IN_PROGRESS: {
    type: 'conflict',
    message: 'A checkout for this package is being created; retry in a moment.',
    retryable: true,
  },
  BATCH_TOO_LARGE: { type: 'validation', message: 'A batch holds at most 1,000 events.' },
  JOB_NOT_FOUND: { type: 'not_found', message: 'No such job.' },
  JOB_FINISHED: { type: 'conflict', message: 'The job has already finished.' },
  JOB_CANCELLED: { type: 'conflict', message: 'The job was cancelled.' },
  LEASE_LOST: { type: 'conflict', message: 'Another worker owns this job now.' },
  INVALID_JOB_TRANSITION: { type: 'conflict', message: 'That job status change is not allowed.' },
  PAYMENT_AMOUNT_MISMATCH: { type: 'server', message: 'The amount paid does not match the purchase.', status: 500 },
  USER_NOT_FOUND: { type: 'not_found', message: 'No such user.' },
  // The token is valid but its user is gone, banned, or no longer an admin: the same codes as
  // a bad token or a non-admin token, so clients handle them one way.
  USER_NOT_ACTIVE: {
    type: 'auth',
    code: 'UNAUTHORIZED',
    message: 'The signed-in user no longer exists or is suspended. Sign in again.',
  },
  ADMIN_REQUIRED: { type: 'forbidden', code: 'FORBIDDEN', message: 'This route is for administrators.' },
  PROVIDER_NOT_FOUND: { type: 'not_found', message: 'No such provider.' },
  PROVIDER_NOT_READY: {
    type: 'conflict',
    message: 'The provider cannot take payments until Stripe onboarding is complete.',
  },
  PAYMENT_NOT_FOUND: { type: 'not_found', message: 'No such payment.' },
  MONEY_UNBALANCED: { type: 'server', message: 'A money transfer did not balance.', status: 500 },
};

/**
 * The AppError a SQL error token stands for, or undefined for a token this table does not know.
 * @example sqlRefusal('INSUFFICIENT_CREDITS', '{"required":"5"}')?.status // 402
 */
export function sqlRefusal(token: string, detail: string | null | undefined): AppError | undefined {
  const known = sqlErrors[token];
  if (!known) return undefined;
  let details: Record<string, unknown> | undefined;
  try {
    details = detail ? JSON.parse(detail) : undefined;
  } catch { /* a plain-text detail is not shown */ }
  return new AppError(known.type, known.code ?? token, known.message, {
    details,
    status: known.status,
    retryable: known.retryable,
  });
}

const transientCodes = new Set(['40001', '40P01', '57P01', '57P02', '57P03', '08000', '08003', '08006', '53300']);
// What a pooler reports for itself while Postgres restarts behind it (pgbouncer: "server login
// has been failing", "server conn crashed?"; Supavisor likewise).
transientCodes.add('08P01');
const clientCodes = [
  'ECONNREFUSED',
  'ECONNRESET',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
];

/** Whether a connection failed (not a deadlock, a serialization failure or a full server). */
function connectionFailed(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (/^(08|57P0)/.test(code) || clientCodes.includes(code));
}

/** Turns a database failure into an AppError: known tokens keep their code, the rest are 5xx. */
export function fromDbError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof ConfigError) return err.appError();
  const e = err as { code?: string; message?: string; detail?: string; errno?: string };
  const refusal = e.code === 'P0001' && e.message ? sqlRefusal(e.message, e.detail) : undefined;
  if (refusal) return refusal;
  // A valid token for a user deleted since it was issued (Supabase tokens live until they expire).
  if (e.code === '23503' && /is not present in table "users"/.test(e.detail ?? '')) {
    return new AppError('auth', 'UNAUTHORIZED', 'The signed-in user no longer exists.');
  }
  const connectionLost = typeof e.code === 'string' && (transientCodes.has(e.code) || clientCodes.includes(e.code));
  log.error('database error', { code: e.code, ...errorSummary(err) });
  if (connectionLost) {
    return new AppError('unavailable', 'DATABASE_UNAVAILABLE', 'The database is briefly unavailable. Please retry.');
  }
  return new AppError('server', 'INTERNAL_ERROR', 'Something went wrong on our side. Please try again.', {
    retryable: true,
  });
}

/**
 * Runs one database call, mapping its failure with fromDbError.
 * @example const rows = await call((sql) => sql`select * from billing_api.balance`)
 */
export async function call<T>(fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  let sql: postgres.Sql | undefined;
  try {
    sql = db();
    return await fn(sql);
  } catch (err) {
    if (sql && connectionFailed(err)) retirePool(sql);
    throw fromDbError(err);
  }
}
