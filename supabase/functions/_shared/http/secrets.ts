// Shared-secret checks for service-to-service calls: constant-time comparison, and the cron
// secret that scheduled calls (worker tick, outbox dispatch, deep health) present.
import type { AppContext } from '../app-env.ts';
import { AppError } from '../errors.ts';

/** Compares two strings in time that depends only on their lengths. */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** Whether the request carries `Authorization: Bearer <CRON_SECRET>`. */
export function hasCronSecret(c: AppContext): boolean {
  const secret = Deno.env.get('CRON_SECRET');
  const given = c.req.header('authorization')?.replace(/^Bearer /, '') ?? '';
  return !!secret && secret.length >= 16 && constantTimeEqual(given, secret);
}

/** Refuses a scheduled-call route without the cron secret. */
export function requireCronSecret(c: AppContext): void {
  if (!hasCronSecret(c)) throw new AppError('auth', 'UNAUTHORIZED', 'This route needs the cron secret.');
}
