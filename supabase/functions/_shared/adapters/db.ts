// The database pool, per isolate, and `call`, which runs one statement and maps its failure
// (sql-errors.ts). Values written into a statement's text go through sql-literal.ts.
import postgres from 'postgres';
import { z } from 'zod';
import { baseEnv, parseEnv } from '../env.ts';
import { errorSummary, log } from '../log.ts';
import { connectionFailed, fromDbError } from './sql-errors.ts';

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
