// Request shapes of the credits routes' admin and service side; the public ones are in the
// contract (_shared/contract/credits.ts).
import { z } from 'zod';
import {
  AsOfSchema,
  CorrelationIdSchema,
  ModelSchema,
  TokensSchema,
  UsageKindsSchema,
} from '../_shared/contract/credits.ts';
import { AppliesToSchema, CreditAmountSchema } from '../_shared/values/money.ts';
import { pgInt, pgText } from '../_shared/values/pg-values.ts';
import { IdCursorSchema, InstantSchema, pageLimit, UuidSchema } from '../_shared/values/query.ts';
import { printableText } from '../_shared/values/text.ts';

export const ReleaseRequestSchema = z.strictObject({});

const CentsSchema = pgText(40).regex(/^(0|[1-9][0-9]{0,15})(\.[0-9]{1,18})?$/, 'must be a non-negative decimal string');

/** The lot an admin grant creates; omitted fields take the category's defaults (expiry policy). */
export const GrantLotSchema = z.strictObject({
  category: z.enum(['paid', 'promotional']).optional(),
  priority: pgInt(0, 1000).optional(),
  expires_at: InstantSchema.nullable().optional(),
  cost_cents: CentsSchema.optional(),
  applies_to: AppliesToSchema.optional(),
}).refine((l) => l.category === 'paid' || l.cost_cents === undefined || /^0(\.0+)?$/.test(l.cost_cents), {
  message: 'only paid credits have a cost',
  path: ['cost_cents'],
});

export const GrantRequestSchema = z.strictObject({
  user_id: UuidSchema,
  amount: CreditAmountSchema,
  reason: pgText(500).min(3),
  kind: z.enum(['adjustment', 'promo_grant']).default('adjustment'),
  lot: GrantLotSchema.optional(),
});
export type GrantRequest = z.infer<typeof GrantRequestSchema>;

export const LedgerQuerySchema = z.strictObject({
  limit: pageLimit(200, 50),
  cursor: IdCursorSchema.optional(),
  from: InstantSchema.optional(),
  to: InstantSchema.optional(),
  format: z.enum(['json', 'csv']).default('json'),
});
export type LedgerQuery = z.infer<typeof LedgerQuerySchema>;

export const LotsQuerySchema = z.strictObject({
  limit: pageLimit(200, 50),
  cursor: IdCursorSchema.optional(),
  at: AsOfSchema.optional(),
});

export const UsageEventSchema = z.strictObject({
  event_id: printableText(200),
  user_id: UuidSchema,
  model: ModelSchema,
  input_tokens: TokensSchema,
  output_tokens: TokensSchema,
  ...UsageKindsSchema.shape,
  occurred_at: InstantSchema,
  correlation_id: CorrelationIdSchema.optional(),
});
export const UsageBatchSchema = z.strictObject({ events: z.array(UsageEventSchema).min(1).max(1000) });
