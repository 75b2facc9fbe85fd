// The Stripe client, configured from env. With STRIPE_API_BASE set (locally: the emulator)
// the official SDK talks to that address; unset, to Stripe. Keys must match STRIPE_MODE.
import Stripe from 'stripe';
import { z } from 'zod';
import { CommaListSchema, parseEnv } from '../env.ts';
import { AppError } from '../errors.ts';

export const StripeEnvSchema = z
  .object({
    STRIPE_MODE: z.enum(['test', 'live']),
    STRIPE_SECRET_KEY: z.string().regex(
      /^(sk|rk)_(test|live)_[A-Za-z0-9]+$/,
      'must be a Stripe secret or restricted key',
    ),
    STRIPE_WEBHOOK_SECRET: CommaListSchema.refine(
      (l) => l.length > 0 && l.every((s) => s.startsWith('whsec_')),
      'must be whsec_ secrets',
    ),
    // Connect events (payouts, account.updated) come signed with their endpoint's own secret.
    STRIPE_CONNECT_WEBHOOK_SECRET: CommaListSchema.refine(
      (l) => l.every((s) => s.startsWith('whsec_')),
      'must be whsec_ secrets',
    ).default([]),
    STRIPE_API_BASE: z.url().optional(),
    STRIPE_TIMEOUT_MS: z.coerce.number().int().positive().default(10_000),
    // Stripe Tax on Checkout, subscriptions and invoices (docs/plans-and-codes.md): on only once
    // the account has registrations set up in Stripe's dashboard, else Stripe refuses the calls.
    STRIPE_AUTOMATIC_TAX: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  })
  .refine((e) => e.STRIPE_SECRET_KEY.split('_')[1] === e.STRIPE_MODE, {
    message: "the key's mode does not match STRIPE_MODE",
    path: ['STRIPE_SECRET_KEY'],
  });
export type StripeEnv = z.infer<typeof StripeEnvSchema>;

let cached: { env: StripeEnv; client: Stripe } | undefined;

/**
 * The official SDK for `key`, talking to `apiBase` when given (locally: the emulator), else to Stripe.
 * @example const client = stripeClient('sk_test_…', Deno.env.get('STRIPE_API_BASE'))
 */
export function stripeClient(key: string, apiBase?: string, timeoutMs = 10_000): Stripe {
  const base = apiBase ? new URL(apiBase) : undefined;
  return new Stripe(key, {
    httpClient: Stripe.createFetchHttpClient(),
    timeout: timeoutMs,
    maxNetworkRetries: 1,
    ...(base
      ? { host: base.hostname, port: Number(base.port), protocol: base.protocol.replace(':', '') as 'http' | 'https' }
      : {}),
  });
}

/**
 * The configured client and its env, created on first use.
 * @example const session = await stripeCall(() => stripe().client.checkout.sessions.retrieve(id))
 */
export function stripe(): { env: StripeEnv; client: Stripe } {
  if (!cached) {
    const env = parseEnv(StripeEnvSchema);
    cached = { env, client: stripeClient(env.STRIPE_SECRET_KEY, env.STRIPE_API_BASE, env.STRIPE_TIMEOUT_MS) };
  }
  return cached;
}

type TaxParams = Pick<
  Stripe.Checkout.SessionCreateParams,
  'automatic_tax' | 'billing_address_collection' | 'customer_update'
>;

/**
 * Stripe Tax for a Checkout Session when STRIPE_AUTOMATIC_TAX is on, else nothing. Checkout
 * collects the billing address tax needs (always: it is the evidence of where the buyer is); a
 * customer passed in gets that address saved, as Stripe requires. A subscription started by the
 * session keeps automatic tax for its invoices.
 * @example stripe().client.checkout.sessions.create({ mode: 'payment', …, ...automaticTax() })
 */
export function automaticTax(customer?: string): TaxParams {
  if (!stripe().env.STRIPE_AUTOMATIC_TAX) return {};
  return {
    automatic_tax: { enabled: true },
    billing_address_collection: 'required',
    ...(customer ? { customer_update: { address: 'auto' } } : {}),
  };
}

/** What Stripe allows a Checkout Session to live: 30 minutes to 24 hours from its creation. */
const stripeSessionSeconds = { min: 30 * 60, max: 24 * 3600 };

/**
 * `expires_at` for the Checkout Session of a row made at `createdAt`: `ttlSeconds` after the row,
 * not the clock, so every request that sends the row's idempotency key (a double click, a retry)
 * sends the same parameters: Stripe refuses a key sent again with others (400
 * idempotency_error). Kept a minute inside Stripe's window from now: a request so late that the
 * row's time falls outside it sends its own.
 * @example sessionExpiresAt(row.created_at, 35 * 60) // row.created_at + 35 min, in Unix seconds
 */
export function sessionExpiresAt(createdAt: Date, ttlSeconds: number, now = Date.now()): number {
  const nowSeconds = Math.ceil(now / 1000);
  const fromRow = Math.floor(createdAt.getTime() / 1000) + ttlSeconds;
  return Math.min(
    Math.max(fromRow, nowSeconds + stripeSessionSeconds.min + 60),
    nowSeconds + stripeSessionSeconds.max - 60,
  );
}

/** The id of a Stripe reference, whether Stripe sent the id or (expanded) the object. */
export const idOf = (v: string | { id: string } | null | undefined): string | null =>
  typeof v === 'string' ? v : v?.id ?? null;

/** Runs a Stripe call; connection failures and Stripe's 5xx become a retryable 502/504, a card error 402 CARD_DECLINED. */
export async function stripeCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof Stripe.errors.StripeError) {
      const timeout = err.type === 'StripeConnectionError' && /timed? ?out/i.test(err.message);
      if (err.type === 'StripeConnectionError' || err.type === 'StripeAPIError' || (err.statusCode ?? 0) >= 500) {
        throw new AppError(
          'unavailable',
          'STRIPE_UNAVAILABLE',
          'The payment provider is not answering. Please retry.',
          {
            status: timeout ? 504 : 502,
            retryable: true,
          },
        );
      }
      // The customer's own card refused the charge (declined, needs authentication): theirs to fix.
      if (err.type === 'StripeCardError') {
        throw new AppError('payment_required', 'CARD_DECLINED', 'Your card was declined. Update it and retry.', {
          status: 402,
          retryable: false,
          details: { stripe_code: err.code ?? null, decline_code: err.decline_code ?? null },
        });
      }
      throw new AppError('server', 'STRIPE_ERROR', 'The payment provider refused the request.', {
        status: 502,
        retryable: false,
        details: { stripe_code: err.code ?? null },
      });
    }
    throw err;
  }
}
