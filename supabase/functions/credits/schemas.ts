// Request shapes of the credits routes (their responses are in _shared/contract.ts).
import { z } from 'zod';
import { CreditAmountSchema } from '../_shared/money.ts';
import { jsonObject, pgInt, pgText } from '../_shared/pg-values.ts';
import { IdCursorSchema, InstantSchema, pageLimit, UuidSchema } from '../_shared/query.ts';

const printable = /^[\x20-\x7e]+$/;
export const CorrelationIdSchema = pgText(128).min(1).regex(printable, 'must be printable ASCII');
/** Free-form facts about a charge, kept with its transfer: plain values only (no nesting). */
export const MetadataSchema = jsonObject({ depth: 1, entries: 20, key: 64, text: 500 });
const ModelSchema = pgText(64).min(1).regex(/^[A-Za-z0-9._:-]+$/, 'must be a model name');
const PackageIdSchema = pgText(64).min(1).regex(/^[a-z0-9_-]+$/, 'must be a package id');

const tokens = pgInt(0, 10_000_000);

export const UsageRequestSchema = z.strictObject({
  model: ModelSchema,
  input_tokens: tokens,
  output_tokens: tokens,
  correlation_id: CorrelationIdSchema.optional(),
  metadata: MetadataSchema.optional(),
});
export type UsageRequest = z.infer<typeof UsageRequestSchema>;

export const HoldRequestSchema = z.strictObject({
  amount: CreditAmountSchema,
  ttl_seconds: pgInt(1, 86_400).optional(),
  correlation_id: CorrelationIdSchema.optional(),
});
export type HoldRequest = z.infer<typeof HoldRequestSchema>;

export const CaptureRequestSchema = z.strictObject({ amount: CreditAmountSchema.optional() });
export const ReleaseRequestSchema = z.strictObject({});

const CentsSchema = pgText(40).regex(/^(0|[1-9][0-9]{0,15})(\.[0-9]{1,18})?$/, 'must be a non-negative decimal string');

/** The lot an admin grant creates; omitted fields take the category's defaults (expiry policy). */
export const GrantLotSchema = z.strictObject({
  category: z.enum(['paid', 'promotional']).optional(),
  priority: pgInt(0, 1000).optional(),
  expires_at: InstantSchema.nullable().optional(),
  cost_cents: CentsSchema.optional(),
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

/** A spend cap for a period (in a time zone), overall or for one model; amount null removes it. */
export const CapRequestSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month']),
  time_zone: pgText(64).min(1).default('UTC'),
  model: ModelSchema.nullable().default(null),
  amount: CreditAmountSchema.nullable(),
});
export type CapRequest = z.infer<typeof CapRequestSchema>;

export const LowBalanceAlertSchema = z.strictObject({ threshold: CreditAmountSchema.nullable() });
export const CapAlertsSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month']),
  model: CapRequestSchema.shape.model,
  percents: z.array(pgInt(1, 100)).max(10),
});

/** Auto-recharge settings; to turn it on, a package and a threshold (defaults: 5 a month, $100). */
export const AutoRechargeSchema = z.strictObject({
  enabled: z.boolean(),
  package_id: PackageIdSchema.optional(),
  threshold: CreditAmountSchema.optional(),
  monthly_max_count: pgInt(1, 31).optional(),
  monthly_max_cents: pgInt(1, 10_000_000).optional(),
});

export const LotsQuerySchema = z.strictObject({
  limit: pageLimit(200, 50),
  cursor: IdCursorSchema.optional(),
});

export const UsageEventSchema = z.strictObject({
  event_id: pgText(200).min(1).regex(printable, 'must be printable ASCII'),
  user_id: UuidSchema,
  model: ModelSchema,
  input_tokens: tokens,
  output_tokens: tokens,
  occurred_at: InstantSchema,
  correlation_id: CorrelationIdSchema.optional(),
});
export const UsageBatchSchema = z.strictObject({ events: z.array(UsageEventSchema).min(1).max(1000) });
