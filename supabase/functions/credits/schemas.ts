// Request shapes of the credits routes (their responses are in _shared/contract.ts).
import { z } from 'zod';
import { CreditAmountSchema } from '../_shared/money.ts';
import { EntryIdSchema, InstantSchema, pageLimit } from '../_shared/query.ts';

const printable = /^[\x20-\x7e]+$/;
export const CorrelationIdSchema = z.string().min(1).max(128).regex(printable, 'must be printable ASCII');
export const MetadataSchema = z
  .record(z.string().max(64), z.union([z.string().max(500), z.number(), z.boolean(), z.null()]))
  .refine((m) => Object.keys(m).length <= 20, 'at most 20 keys');

const tokens = z.number().int().min(0).max(10_000_000);

export const UsageRequestSchema = z.strictObject({
  model: z.string().min(1).max(64).regex(/^[A-Za-z0-9._:-]+$/, 'must be a model name'),
  input_tokens: tokens,
  output_tokens: tokens,
  correlation_id: CorrelationIdSchema.optional(),
  metadata: MetadataSchema.optional(),
});
export type UsageRequest = z.infer<typeof UsageRequestSchema>;

export const HoldRequestSchema = z.strictObject({
  amount: CreditAmountSchema,
  ttl_seconds: z.number().int().min(1).max(86_400).optional(),
  correlation_id: CorrelationIdSchema.optional(),
});
export type HoldRequest = z.infer<typeof HoldRequestSchema>;

export const CaptureRequestSchema = z.strictObject({ amount: CreditAmountSchema.optional() });
export const ReleaseRequestSchema = z.strictObject({});

const CentsSchema = z.string().regex(/^(0|[1-9][0-9]{0,15})(\.[0-9]{1,18})?$/, 'must be a non-negative decimal string');

/** The lot an admin grant creates; omitted fields take the category's defaults (expiry policy). */
export const GrantLotSchema = z.strictObject({
  category: z.enum(['paid', 'promotional']).optional(),
  priority: z.number().int().min(0).max(1000).optional(),
  expires_at: InstantSchema.nullable().optional(),
  cost_cents: CentsSchema.optional(),
}).refine((l) => l.category === 'paid' || l.cost_cents === undefined || /^0(\.0+)?$/.test(l.cost_cents), {
  message: 'only paid credits have a cost',
  path: ['cost_cents'],
});

export const GrantRequestSchema = z.strictObject({
  user_id: z.uuid(),
  amount: CreditAmountSchema,
  reason: z.string().min(3).max(500),
  kind: z.enum(['adjustment', 'promo_grant']).default('adjustment'),
  lot: GrantLotSchema.optional(),
});
export type GrantRequest = z.infer<typeof GrantRequestSchema>;

export const LedgerQuerySchema = z.strictObject({
  limit: pageLimit(200, 50),
  cursor: EntryIdSchema.optional(),
  from: InstantSchema.optional(),
  to: InstantSchema.optional(),
  format: z.enum(['json', 'csv']).default('json'),
});
export type LedgerQuery = z.infer<typeof LedgerQuerySchema>;

/** A spend cap for a period (in a time zone), overall or for one model; amount null removes it. */
export const CapRequestSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month']),
  time_zone: z.string().min(1).max(64).default('UTC'),
  model: z.string().min(1).max(64).regex(/^[A-Za-z0-9._:-]+$/, 'must be a model name').nullable().default(null),
  amount: CreditAmountSchema.nullable(),
});
export type CapRequest = z.infer<typeof CapRequestSchema>;

export const LowBalanceAlertSchema = z.strictObject({ threshold: CreditAmountSchema.nullable() });
export const CapAlertsSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month']),
  model: CapRequestSchema.shape.model,
  percents: z.array(z.number().int().min(1).max(100)).max(10),
});

/** Auto-recharge settings; to turn it on, a package and a threshold (defaults: 5 a month, $100). */
export const AutoRechargeSchema = z.strictObject({
  enabled: z.boolean(),
  package_id: z.string().min(1).max(64).regex(/^[a-z0-9_-]+$/, 'must be a package id').optional(),
  threshold: CreditAmountSchema.optional(),
  monthly_max_count: z.number().int().min(1).max(31).optional(),
  monthly_max_cents: z.number().int().min(1).max(10_000_000).optional(),
});

export const LotsQuerySchema = z.strictObject({
  limit: pageLimit(200, 50),
  cursor: EntryIdSchema.optional(),
});

export const UsageEventSchema = z.strictObject({
  event_id: z.string().min(1).max(200).regex(printable, 'must be printable ASCII'),
  user_id: z.uuid(),
  model: z.string().min(1).max(64).regex(/^[A-Za-z0-9._:-]+$/, 'must be a model name'),
  input_tokens: tokens,
  output_tokens: tokens,
  occurred_at: InstantSchema,
  correlation_id: CorrelationIdSchema.optional(),
});
export const UsageBatchSchema = z.strictObject({ events: z.array(UsageEventSchema).min(1).max(1000) });
