// Request shapes and env of the checkout routes; a session's body is in _shared/contract/checkout.ts.
import { z } from 'zod';
import { CommaListSchema } from '../_shared/env.ts';
import { pgInt, pgText } from '../_shared/values/pg-values.ts';
import { UuidSchema } from '../_shared/values/query.ts';
import { PlanIdSchema } from '../_shared/values/text.ts';

export const CheckoutEnvSchema = z.object({
  FEATURE_B2C_CREDITS: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  CHECKOUT_REDIRECT_ORIGINS: CommaListSchema.default([]),
  CHECKOUT_SUCCESS_URL: z.url(),
  CHECKOUT_CANCEL_URL: z.url(),
});
export type CheckoutEnv = z.infer<typeof CheckoutEnvSchema>;

export const RefundSchema = z.strictObject({
  purchase_id: UuidSchema,
  amount_cents: pgInt(1, 100_000_000).optional(),
});
export type RefundRequest = z.infer<typeof RefundSchema>;

/** What GET /checkout/sessions/:id looks up: our purchase id or Stripe's Checkout Session id. */
export const PurchaseRefSchema = z.union([UuidSchema, pgText(253).regex(/^cs_[A-Za-z0-9_]{1,250}$/)]);

/** POST /checkout/subscriptions: a plan's Checkout (redirects on the allowlist, as for packages). */
export const SubscribeSchema = z.strictObject({
  plan_id: PlanIdSchema,
  success_url: pgText(2000).pipe(z.url()).optional(),
  cancel_url: pgText(2000).pipe(z.url()).optional(),
});
export type Subscribe = z.infer<typeof SubscribeSchema>;
export const ChangePlanSchema = z.strictObject({ plan_id: PlanIdSchema });
export const CancelPlanSchema = z.strictObject({});
export const PortalSchema = z.strictObject({ return_url: pgText(2000).pipe(z.url()).optional() });
