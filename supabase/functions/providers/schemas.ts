// Request shapes and env of the provider routes.
import { z } from 'zod';
import { pgInt, pgText } from '../_shared/values/pg-values.ts';
import { CalendarDateSchema, InstantCursorSchema, pageLimit, UuidSchema } from '../_shared/values/query.ts';

export const ProvidersEnvSchema = z.object({
  FEATURE_B2B_PROVIDER_PAYMENTS: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  PLATFORM_FEE_BPS: z.coerce.number().int().min(0).max(10_000).default(300),
  PROVIDER_ONBOARDING_RETURN_URL: z.url(),
  PROVIDER_ONBOARDING_REFRESH_URL: z.url(),
  CHECKOUT_SUCCESS_URL: z.url(),
  CHECKOUT_CANCEL_URL: z.url(),
});
export type ProvidersEnv = z.infer<typeof ProvidersEnvSchema>;

const text = (max: number) => pgText(max).trim().min(1).regex(/^[^\p{Cc}]*$/u, 'must not contain control characters');

export const CreateProviderSchema = z.strictObject({
  name: text(200),
  email: pgText(254).email(),
  country: pgText(2).regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 country code, e.g. US'),
  /** Admins may create a provider for another user; everyone else owns what they create. */
  owner_user_id: UuidSchema.optional(),
});

// Stripe's limits for a card payment: at least 50 (USD, EUR) or 30 (GBP) of the minor unit, at
// most 99,999,999. 50 everywhere keeps one rule.
export const CreatePaymentSchema = z.strictObject({
  amount_cents: pgInt(50, 99_999_999),
  currency: z.enum(['usd', 'eur', 'gbp']),
  description: text(500),
  payer_reference: text(200).optional(),
});
export type CreatePayment = z.infer<typeof CreatePaymentSchema>;

export const RefundPaymentSchema = z.strictObject({
  amount_cents: pgInt(1, 99_999_999).optional(),
});

export const ListSchema = z.strictObject({
  limit: pageLimit(100, 20),
  cursor: InstantCursorSchema.optional(),
});

export const DateSchema = CalendarDateSchema;
export const ReconciliationQuerySchema = z.strictObject({ date: DateSchema });
export const ReconciliationRunSchema = z.strictObject({ date: DateSchema.optional() });
