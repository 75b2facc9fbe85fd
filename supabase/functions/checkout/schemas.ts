// Request shapes and env of the checkout routes.
import { z } from 'zod';
import { CommaListSchema } from '../_shared/env.ts';
import { pgInt, pgText } from '../_shared/pg-values.ts';
import { UuidSchema } from '../_shared/query.ts';

export const CheckoutEnvSchema = z.object({
  FEATURE_B2C_CREDITS: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  CHECKOUT_REDIRECT_ORIGINS: CommaListSchema.default([]),
  CHECKOUT_SUCCESS_URL: z.url(),
  CHECKOUT_CANCEL_URL: z.url(),
});
export type CheckoutEnv = z.infer<typeof CheckoutEnvSchema>;

export const CreateSessionSchema = z.strictObject({
  package_id: pgText(64).min(1).regex(/^[a-z0-9_-]+$/, 'must be a package id'),
  success_url: pgText(2000).pipe(z.url()).optional(),
  cancel_url: pgText(2000).pipe(z.url()).optional(),
  client_temp_id: pgText(64).min(1).regex(/^[\x21-\x7e]+$/, 'must be printable ASCII').optional(),
  /** Keep the card (Stripe's setup_future_usage=off_session) so auto-recharge can charge it later. */
  save_card: z.boolean().default(false),
  /** Buy for this organisation's wallet (the caller must be its owner or an admin). */
  org_id: UuidSchema.optional(),
}).refine((b) => !(b.org_id && b.save_card), {
  path: ['save_card'],
  message: "an organisation purchase cannot keep a card (auto-recharge is a student's own)",
});
export type CreateSession = z.infer<typeof CreateSessionSchema>;

export const RefundSchema = z.strictObject({
  purchase_id: UuidSchema,
  amount_cents: pgInt(1, 100_000_000).optional(),
});
export type RefundRequest = z.infer<typeof RefundSchema>;

/** What GET /checkout/sessions/:id looks up: our purchase id or Stripe's Checkout Session id. */
export const PurchaseRefSchema = z.union([UuidSchema, pgText(253).regex(/^cs_[A-Za-z0-9_]{1,250}$/)]);
