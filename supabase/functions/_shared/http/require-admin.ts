// The guards of admin routes: the token's role claim, and (requireAdmin) the database's word now.
import type { MiddlewareHandler } from 'hono';
import type { AppContext, AppEnv } from '../app-env.ts';
import { sql } from '../adapters/db.ts';
import { AppError } from '../errors.ts';
import { currentUser } from './identify.ts';

/**
 * Requires a user JWT whose `app_metadata.role` is `admin`, for a route whose one SQL call
 * checks the database role itself (billing.run_grant_request with admin): no extra round trip.
 */
export const requireAdminToken: MiddlewareHandler<AppEnv> = async function requireAdminToken(c, next) {
  if (!currentUser(c).isAdmin) throw new AppError('forbidden', 'FORBIDDEN', 'This route is for administrators.');
  await next();
};

/**
 * Requires a user JWT whose `app_metadata.role` is `admin`, and that the user is still an
 * admin in the database now: a token outlives a revoked role or a deleted user by up to an
 * hour, and admin routes are rare enough to afford the one indexed lookup.
 * @example app.get('/users', requireAdmin, (c) => …)
 */
export const requireAdmin: MiddlewareHandler<AppEnv> = async function requireAdmin(c, next) {
  await requireAdminToken(c, async () => {
    await sql`select billing.assert_user_standing(${currentUser(c).id}, true)`;
  });
  await next();
};

/**
 * requireAdmin, unless `bypass` accepts the request first: a route an operator's machine also
 * calls with a bearer secret of its own (a Prometheus scrape, a scheduled check).
 * @example app.get('/metrics', requireAdminUnless(hasMetricsToken), handler)
 */
export const requireAdminUnless = (bypass: (c: AppContext) => boolean): MiddlewareHandler<AppEnv> =>
  async function requireAdminUnless(c, next) {
    if (bypass(c)) await next();
    else await requireAdmin(c, next);
  };
