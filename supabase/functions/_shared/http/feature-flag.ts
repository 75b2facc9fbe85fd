// A product line behind a flag (FEATURE_B2C_CREDITS, FEATURE_B2B_PROVIDER_PAYMENTS): while it is
// off, every route of its function answers 503 FEATURE_DISABLED.
import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { AppError } from '../errors.ts';

/**
 * Refuses every request while `enabled()` is false; `what` names the feature in the message.
 * @example app.use('*', featureFlag(() => env().FEATURE_B2C_CREDITS, 'Credit purchases'))
 */
export const featureFlag = (enabled: () => boolean, what: string): MiddlewareHandler<AppEnv> =>
  async function featureFlag(_c, next) {
    if (!enabled()) {
      throw new AppError('unavailable', 'FEATURE_DISABLED', `${what} are switched off.`, { retryable: false });
    }
    await next();
  };
