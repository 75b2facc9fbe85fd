// The database pool and the one place SQL error tokens become HTTP errors.
import postgres from 'postgres';
import { AppError, type ErrorType } from './errors.ts';
import { baseEnv } from './env.ts';
import { errorSummary, log } from './log.ts';

let pool: postgres.Sql | undefined;

/**
 * The shared postgres.js pool. `prepare: false` keeps it working through Supavisor's
 * transaction mode; numeric stays a string (exact decimals, never floats).
 * @example const [row] = await db()`select billing.get_balance(${userId}) as b`
 */
export function db(): postgres.Sql {
  if (!pool) {
    const env = baseEnv();
    pool = postgres(env.SUPABASE_DB_URL, {
      prepare: false,
      max: env.DB_POOL_MAX,
      idle_timeout: 30,
      connect_timeout: 5,
      onnotice: () => {},
      connection: { application_name: 'scholarlink-functions' },
    });
  }
  return pool;
}

/** SQL error tokens (raised as `message` with errcode P0001) and how each reaches the caller. */
const sqlErrors: Record<string, { type: ErrorType; message: string; status?: number }> = {};

/** Registers the tokens a domain's SQL functions raise. Each token is listed once, in docs/api.md. */
export function registerSqlErrors(map: typeof sqlErrors): void {
  Object.assign(sqlErrors, map);
}

const transientCodes = new Set(['40001', '40P01', '57P01', '57P02', '57P03', '08000', '08003', '08006', '53300']);

/** Turns a database failure into an AppError: known tokens keep their code, the rest are 5xx. */
export function fromDbError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const e = err as { code?: string; message?: string; detail?: string; errno?: string };
  const known = e.code === 'P0001' && e.message ? sqlErrors[e.message] : undefined;
  if (known) {
    let details: Record<string, unknown> | undefined;
    try {
      details = e.detail ? JSON.parse(e.detail) : undefined;
    } catch { /* a plain-text detail is not shown */ }
    return new AppError(known.type, e.message as string, known.message, { details, status: known.status });
  }
  const connectionLost = typeof e.code === 'string' &&
    (transientCodes.has(e.code) ||
      ['ECONNREFUSED', 'ECONNRESET', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED']
        .includes(e.code));
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
  try {
    return await fn(db());
  } catch (err) {
    throw fromDbError(err);
  }
}
