// The student's billing page (the frontend): invitation links are built on it. Required where
// links are made; in live mode readiness also refuses a loopback or non-https one (live-config.ts).
import { z } from 'zod';
import { lazyEnv } from './env.ts';

/**
 * BILLING_PAGE_URL, parsed on first use: unset, a route that builds a link answers 503 CONFIG_MISSING.
 * @example `${billingPage().BILLING_PAGE_URL}#invitation=${token}`
 */
export const billingPage = lazyEnv(z.object({
  BILLING_PAGE_URL: z.url(),
}));
