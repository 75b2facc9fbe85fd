// The guard of a student's route: a valid user token (or the admin dashboard's session cookie).
import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { currentUser } from './identify.ts';

/**
 * Requires a valid user JWT; the user is then `currentUser(c)`.
 * @example app.get('/balance', requireUser, (c) => …)
 */
export const requireUser: MiddlewareHandler<AppEnv> = async function requireUser(c, next) {
  currentUser(c);
  await next();
};
