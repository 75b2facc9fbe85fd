// Request shapes of the public credits routes: part of the contract (_shared/contract/index.ts),
// parsed by credits/index.ts. Admin and service shapes stay in credits/schemas.ts.
import { z } from 'zod';
import { CreditAmountSchema } from '../values/money.ts';
import { jsonObject, pgInt } from '../values/pg-values.ts';
import { CalendarDateSchema, InstantSchema, lastDays, UuidSchema } from '../values/query.ts';
import { ModelSchema, PackageIdSchema, printableText, TimeZoneSchema } from '../values/text.ts';

export { ModelSchema };

/** Printable ASCII, 1 to 128 characters, e.g. `'req-42'`. */
export const CorrelationIdSchema = printableText(128);
/**
 * Usage metadata keys only the ledger writes (billing.ledger_owned_keys() lists the same): a
 * correction or a report filters on them, so no caller may set one.
 */
export const ledgerOwnedKeys = [
  'model',
  'input_tokens',
  'output_tokens',
  'cached_input_tokens',
  'reasoning_tokens',
  'images',
  'audio_seconds',
  'failed',
  'failed_by',
  'usage_source',
  'ai_call_id',
  'job_id',
  'rate_card_version',
  'reserved',
  'priced',
  'unbilled',
  'charged_at',
  'request_hash',
  'request_id',
  'held_after',
] as const;
/** Free-form facts about a charge, kept with its transfer: plain values only (no nesting), no ledger-owned key. */
export const MetadataSchema = jsonObject({ depth: 1, entries: 20, key: 64, text: 500, reserved: ledgerOwnedKeys });

/** A token count, 0 to 10 million. */
export const TokensSchema = pgInt(0, 10_000_000);

/**
 * The kinds a provider may report beside input and output, each optional (0 when absent) and
 * disjoint from the others: `input_tokens` excludes cached input, `output_tokens` excludes
 * reasoning (docs/pricing.md). Images and audio seconds are counted per unit.
 * @example UsageKindsSchema.parse({ cached_input_tokens: 1200, images: 2 })
 */
export const UsageKindsSchema = z.strictObject({
  cached_input_tokens: TokensSchema.optional(),
  reasoning_tokens: TokensSchema.optional(),
  images: pgInt(0, 10_000).optional(),
  audio_seconds: pgInt(0, 86_400).optional(),
});

/** Usage a trusted server reports (a server key or the service role), naming the user who spent. */
export const UsageRequestSchema = z.strictObject({
  user_id: UuidSchema,
  model: ModelSchema,
  input_tokens: TokensSchema,
  output_tokens: TokensSchema,
  ...UsageKindsSchema.shape,
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

/** A spend cap for a period (in a time zone), overall or for one model; amount null removes it. */
export const CapRequestSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month']),
  time_zone: TimeZoneSchema.default('UTC'),
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

// GET /credits/usage/summary (and /orgs/:id/members/:user_id/usage/summary): UTC days [from, to),
// the last 30 days (today included) by default, at most 366 days.
export const UsageSummaryQuerySchema = z
  .strictObject({
    from: CalendarDateSchema.optional(),
    to: CalendarDateSchema.optional(),
    granularity: z.enum(['day', 'week']).default('day'),
  })
  .transform(lastDays(30))
  .refine((q) => q.from < q.to, { message: 'must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 366 * 86_400_000, {
    message: 'must be at most 366 days before to',
    path: ['from'],
  });

/**
 * An instant to read a balance or lots as they stood (`?at=`, docs/credit-lots.md § As of): RFC
 * 3339 with an offset, not in the future (what is to come is not in the ledger yet).
 * @example z.strictObject({ at: AsOfSchema.optional() })
 */
export const AsOfSchema = InstantSchema.refine((s) => Date.parse(s) <= Date.now(), 'must not be in the future');

// GET /credits/balance: now, or as it stood at `at`.
export const BalanceQuerySchema = z.strictObject({ at: AsOfSchema.optional() });
