// What live mode refuses: settings that are harmless while testing and unsafe with real money.
// Readiness (/health/readyz, `live_config`) and ./scripts/env-check report them, naming the
// variable and why, never its value.
import { z } from 'zod';
import { UnsafeConfigError } from './env.ts';

/** Every setting the check reads (all optional here: a missing required one is another check's). */
const LiveConfigSchema = z.object({
  STRIPE_MODE: z.string().optional(),
  AI_PROVIDER: z.string().optional(),
  CORS_ALLOWED_ORIGINS: z.string().optional(),
  BILLING_PAGE_URL: z.string().optional(),
  CHECKOUT_SUCCESS_URL: z.string().optional(),
  CHECKOUT_CANCEL_URL: z.string().optional(),
  CHECKOUT_REDIRECT_ORIGINS: z.string().optional(),
  PROVIDER_ONBOARDING_RETURN_URL: z.string().optional(),
  PROVIDER_ONBOARDING_REFRESH_URL: z.string().optional(),
  STRIPE_API_BASE: z.string().optional(),
  FAILPOINTS: z.string().optional(),
});

/** A setting live mode refuses: the variable, and why (never its value). */
export interface UnsafeSetting {
  variable: string;
  problem: string;
}

/** URLs the service hands to browsers and Stripe: a student must be able to open them. */
const givenOut = [
  'BILLING_PAGE_URL',
  'CHECKOUT_SUCCESS_URL',
  'CHECKOUT_CANCEL_URL',
  'PROVIDER_ONBOARDING_RETURN_URL',
  'PROVIDER_ONBOARDING_REFRESH_URL',
] as const;

const loopback = /^(localhost|127(\.\d{1,3}){3}|\[::1\]|0\.0\.0\.0)$/i;
const list = (s: string | undefined) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean);

/** Why `url` cannot be given out in live mode, or null when it can. */
function publicUrlProblem(url: string): string | null {
  if (!URL.canParse(url)) return 'is not a URL';
  const { protocol, hostname } = new URL(url);
  if (loopback.test(hostname)) return 'points at a loopback address: nobody else can open it';
  if (protocol !== 'https:') return 'is not https';
  return null;
}

/**
 * With STRIPE_MODE=live, each setting that would take real money unsafely; [] otherwise.
 * @example liveModeProblems({ STRIPE_MODE: 'live', AI_PROVIDER: 'local' })[0].variable // 'AI_PROVIDER'
 */
export function liveModeProblems(source: Record<string, string | undefined> = Deno.env.toObject()): UnsafeSetting[] {
  const env = LiveConfigSchema.parse(source);
  if (env.STRIPE_MODE !== 'live') return [];
  const problems: UnsafeSetting[] = [];
  const add = (variable: string, problem: string) => problems.push({ variable, problem });
  if ((env.AI_PROVIDER || 'local') === 'local') {
    add('AI_PROVIDER', 'is local (the default): jobs would answer with a stand-in and still charge for it');
  }
  if (list(env.CORS_ALLOWED_ORIGINS).length === 0) {
    add('CORS_ALLOWED_ORIGINS', 'is empty: browsers cannot call the API');
  }
  if (!env.BILLING_PAGE_URL) add('BILLING_PAGE_URL', 'is unset: invitation and pay links have no page');
  for (const name of givenOut) {
    const why = env[name] ? publicUrlProblem(env[name]) : null;
    if (why) add(name, why);
  }
  if (list(env.CHECKOUT_REDIRECT_ORIGINS).some((o) => publicUrlProblem(o))) {
    add('CHECKOUT_REDIRECT_ORIGINS', 'lists an origin that is not https or is loopback');
  }
  if (env.STRIPE_API_BASE) add('STRIPE_API_BASE', 'is set: the Stripe SDK would talk to something other than Stripe');
  if (env.FAILPOINTS) add('FAILPOINTS', 'is set: injected failures are for the reliability tests only');
  return problems;
}

/** Throws an UnsafeConfigError naming every unsafe live setting; for readiness. */
export function assertLiveConfig(source?: Record<string, string | undefined>): void {
  const problems = liveModeProblems(source);
  if (problems.length) {
    throw new UnsafeConfigError(problems.map((p) => p.variable), problems.map((p) => `${p.variable} ${p.problem}`));
  }
}
