// How every function runs SQL: `sql`, a tagged template that runs one statement on the pool
// and maps its failure (sql-errors.ts) in one place. `sql.oneTrip` sends the same statement in
// one round trip, its values written into the text by sql-literal.ts.
import postgres from 'postgres';
import { z } from 'zod';
import { baseEnv, parseEnv } from '../env.ts';
import { AppError } from '../errors.ts';
import { errorSummary, log } from '../log.ts';
import { connectionFailed, fromDbError, rolledBackConflict } from './sql-errors.ts';
import { inline, type InlineValue, JsonbValue, oneTrip } from './sql-literal.ts';

export { jsonb } from './sql-literal.ts';

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

/** Retires `given` if it is still the pool: the next db() starts a fresh one; it finishes what is in flight. */
function retirePool(given: postgres.Sql) {
  if (pool !== given) return;
  pool = undefined;
  given.end({ timeout: 10 }).catch(() => {});
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
 * lock), no LISTEN, temp tables `on commit drop`. Routes run SQL through `sql`; the pool itself
 * is for what must see the driver's own failure (health's liveness probe).
 * @example await db()`select 1`
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

/** What a statement answers: its rows, typed by the caller (`sql<{ caps: SpendCap[] }[]>`…`). */
type Rows = readonly (object | undefined)[];

/** A value `sql` takes: text, a safe integer, a boolean, null, a time, an array, or JSON through `jsonb`. */
export type SqlValue = InlineValue | Date | readonly (string | number)[];

/** A function name chosen in code (never from a request), for `sql`: `billing.${sqlName(`next_${kind}_version`)}(…)`. */
class SqlName {
  constructor(readonly name: string) {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new TypeError(`sqlName: not a plain SQL name: ${name}`);
  }
}
export const sqlName = (name: string) => new SqlName(name);

/** Waits before sending a statement again that a deadlock rolled back (with jitter, so the two sides part). */
const conflictRetryMs = [10, 40, 160, 640];

/**
 * Runs `send` on the pool; a failure is mapped (fromDbError) and a failed connection retires the
 * pool. A statement Postgres rolled back to break a deadlock did nothing (each runs alone, never
 * inside a caller's transaction) and is sent again: the money functions lock a second account
 * after the first (a dispute's refit reaches the buyer's), so two students' requests can meet.
 */
async function run<T>(send: (pool: postgres.Sql) => Promise<T>): Promise<T> {
  let given: postgres.Sql | undefined;
  for (let attempt = 0;; attempt++) {
    try {
      given = db();
      return await send(given);
    } catch (err) {
      if (rolledBackConflict(err) && attempt < conflictRetryMs.length) {
        await new Promise((r) => setTimeout(r, conflictRetryMs[attempt] * (0.5 + Math.random())));
        continue;
      }
      if (given && connectionFailed(err)) retirePool(given);
      throw fromDbError(err);
    }
  }
}

/**
 * Runs one statement and answers its rows; a failure is an AppError (a SQL token by the table of
 * sql-errors.ts, a lost connection 503, anything else 500). Values go as parameters; JSON goes
 * through `jsonb` (given to a jsonb parameter as a string, the driver would encode it once more);
 * numeric stays a string (exact decimals, never floats).
 * @example const [{ caps }] = await sql`select billing.get_spend_caps(${userId}) as caps`
 */
export function sql<T extends Rows = postgres.Row[]>(
  strings: TemplateStringsArray,
  ...values: (SqlValue | SqlName)[]
): Promise<T> {
  const params: unknown[] = [];
  const text = strings.reduce((text, s, i) => {
    const v = values[i - 1];
    if (v instanceof SqlName) return text + v.name + s;
    params.push(v instanceof JsonbValue ? v.text : v);
    return text + `$${params.length}` + (v instanceof JsonbValue ? '::text::jsonb' : '') + s;
  });
  return run(async (pool) => (await pool.unsafe(text, params as never[])) as unknown as T);
}

/**
 * `sql` in one round trip. Without prepared statements (`prepare: false`, for the pooler)
 * postgres.js sends a statement with parameters in two (Parse + Describe, then Bind + Execute);
 * here the values are written into the text as literals (sql-literal.ts) and the statement goes
 * in one flight. Postgres logs the text of a statement that fails, the values with it: only for
 * a statement that answers its refusals as rows (a money route's, 78-money-actions.sql), cannot
 * refuse (billing.get_balance of a signed-in user) or carries nothing secret or personal (an AI call's
 * finish without its content: ids, token counts, timings; it refuses when it must be settled
 * first, `finishing`). Text Postgres would refuse is a 400 before sending.
 * @example const [b] = await sql.oneTrip`select * from billing.get_balance(${userId})`
 */
sql.oneTrip = function oneTripSql<T extends Rows = postgres.Row[]>(
  strings: TemplateStringsArray,
  ...values: InlineValue[]
): Promise<T> {
  const statement = inline(strings, ...values);
  return run(async (pool) => (await oneTrip(pool, statement)) as unknown as T);
};

/** Waits between the tries of retryingTransient: about 8.5 s in all. */
const transientRetryMs = [100, 400, 1600, 6400];

/**
 * Runs `send` again when it meets a transient database failure (a deadlock, a serialization
 * failure, a connection or the pooler lost: 503 DATABASE_UNAVAILABLE), for a statement whose
 * effect must not be dropped and that answers a second try as the first (a try whose commit
 * landed before its connection broke is answered, never done twice). Anything else, or the last
 * failure, is thrown.
 * @example await retryingTransient(() => sql`select billing.fail_ai_call(…)`)
 */
export async function retryingTransient<T>(send: () => Promise<T>): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await send();
    } catch (err) {
      const transient = err instanceof AppError && err.code === 'DATABASE_UNAVAILABLE';
      if (!transient || attempt >= transientRetryMs.length) throw err;
      await new Promise((r) => setTimeout(r, transientRetryMs[attempt]));
    }
  }
}

/**
 * Sends a finish (an AI call's, a batch's end, a job's completion) as retryingTransient does.
 * Its statement never settles: when the hold's account fell due it refuses (ACCOUNT_FELL_DUE
 * naming the hold) and is sent once more with `settle`, the hold, which `send` puts in front of
 * it in the same statement (`… from billing.settle_holder(${settle})`: strict, nothing when
 * null). Settled and locked at that statement's one now(), the account cannot fall due again
 * before the finish reads it, however many holds a student times to fall due.
 * @example await finishing((settle) => sql`select billing.finish_ai_call(…) from billing.settle_holder(${settle})`)
 */
export async function finishing<T>(send: (settle: string | null) => Promise<T>): Promise<T> {
  try {
    return await retryingTransient(() => send(null));
  } catch (err) {
    const hold = err instanceof AppError && err.code === 'ACCOUNT_FELL_DUE' && err.options.details?.hold_id;
    if (typeof hold !== 'string') throw err;
    return await retryingTransient(() => send(hold));
  }
}
