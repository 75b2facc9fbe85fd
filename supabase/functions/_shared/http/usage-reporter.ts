// Who may report usage: the AI gateway meters its own calls; everything else comes from a
// trusted server, never from the user who pays. A server sends the service role key or a
// per-application server key (`slk_…`, created by an admin, stored as its SHA-256) and names
// the user in the body. A user's own token is refused with a 403 that says so.
import { createHash } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { sql } from '../adapters/db.ts';
import { serverKeyRefused } from '../adapters/sql-errors.ts';
import { AppError } from '../errors.ts';
import { serviceKeys } from '../keys.ts';
import { constantTimeEqual } from './secrets.ts';

/** A server key's secret: `slk_` and 48 hex characters. */
export const serverKeyPattern = /^slk_[0-9a-f]{48}$/;

/**
 * SHA-256 (hex) of a server key's secret: what the database keeps.
 * @example serverKeyHash('slk_' + '0'.repeat(48)).length // 64
 */
export const serverKeyHash = (secret: string): string => createHash('sha256').update(secret).digest('hex');

/**
 * Requires the service role or a live server key. Checked against the database on every call,
 * before the body is read; the route's statement checks it again, held against a revocation
 * (billing.run_usage_batch with `serverKeyHash`), so a report that waits past this check is not
 * recorded once a DELETE of its key has answered. One round trip (sql.oneTrip): its one value is
 * a hash, and the lookup cannot fail on it.
 */
export const requireUsageReporter: MiddlewareHandler<AppEnv> = (c, next) => usageReporter(c, next, false);

/**
 * As requireUsageReporter, but a server key is checked by the route's money statement only
 * (billing.run_usage_report takes its hash first, before anything else): one round trip fewer
 * for every usage report a server key sends. Only for a route whose work is `idempotent(…,
 * inSql(…))`, the one path that passes the hash on.
 */
export const requireUsageReporterInSql: MiddlewareHandler<AppEnv> = (c, next) => usageReporter(c, next, true);

async function usageReporter(c: Parameters<MiddlewareHandler<AppEnv>>[0], next: () => Promise<void>, inSql: boolean) {
  const given = c.req.header('authorization')?.replace(/^Bearer /, '') ?? '';
  if (serviceKeys().map((key) => constantTimeEqual(given, key)).includes(true)) return next();
  if (serverKeyPattern.test(given)) {
    const hash = serverKeyHash(given);
    c.set('serverKeyHash', hash);
    if (inSql) return next();
    const [{ id }] = await sql.oneTrip`select billing.server_key_id(${hash}) as id`;
    if (id) return next();
    throw new AppError('auth', 'UNAUTHORIZED', serverKeyRefused);
  }
  if (c.get('user')) {
    throw new AppError(
      'forbidden',
      'USAGE_REPORTED_BY_SERVER',
      'Usage is metered by the AI gateway or reported by a trusted server with a server key, never with a user token.',
    );
  }
  throw new AppError(
    'auth',
    'UNAUTHORIZED',
    'This route is for the AI gateway and trusted servers: send a server key.',
  );
}
