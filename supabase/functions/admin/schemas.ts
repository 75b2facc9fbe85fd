// Query shapes of the admin routes.
import { z } from 'zod';
import { AsOfSchema, ModelSchema } from '../_shared/contract/credits.ts';
import { pgInt, pgText } from '../_shared/values/pg-values.ts';
import { PackageIdSchema, PlanIdSchema, printedText } from '../_shared/values/text.ts';
import { AppliesToSchema, CreditAmountSchema } from '../_shared/values/money.ts';
import {
  CalendarDateSchema,
  DayOrInstantSchema,
  IdCursorSchema,
  InstantSchema,
  lastDays,
  pageLimit,
  UuidCursorSchema,
  UuidSchema,
} from '../_shared/values/query.ts';

const day = CalendarDateSchema;
const format = z.enum(['json', 'csv']).default('json');

export const DailyReportSchema = z.strictObject({ date: day, format });

export const MetricsSchema = z
  .strictObject({
    from: day.optional(),
    to: day.optional(),
    granularity: z.enum(['day', 'week', 'month']).default('day'),
    format,
  })
  .transform(lastDays(30))
  .refine((q) => q.from < q.to, { message: 'from must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 400 * 86_400_000, {
    message: 'at most 400 days at a time',
    path: ['to'],
  });

/** GET /admin/margins: revenue, provider cost and margin over UTC days [from, to) (default the last 30), by model, org or student. */
export const MarginsSchema = z
  .strictObject({
    from: day.optional(),
    to: day.optional(),
    by: z.enum(['model', 'org', 'student']).default('model'),
  })
  .transform(lastDays(30))
  .refine((q) => q.from < q.to, { message: 'from must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 366 * 86_400_000, {
    message: 'at most 366 days at a time',
    path: ['to'],
  });

/** POST /admin/session: a pasted access token, or email and password for Supabase Auth. */
export const SessionRequestSchema = z
  .strictObject({
    access_token: pgText(16_384).trim().min(1).optional(),
    email: pgText(254).email().optional(),
    password: pgText(1_024).min(1).optional(),
  })
  .refine((b) => (b.access_token ? !b.email && !b.password : Boolean(b.email && b.password)), {
    message: 'send access_token, or email and password',
    path: ['access_token'],
  });
export type SessionRequest = z.infer<typeof SessionRequestSchema>;

// Corrections (docs/pricing.md § Corrections): the admin's reason, and a bulk correction's filter.
const reason = pgText(500).trim().min(1, 'a reason is required');

/** POST /admin/charges/:id/void */
export const VoidRequestSchema = z.strictObject({ reason });
export type VoidRequest = z.infer<typeof VoidRequestSchema>;

const filter = {
  model: ModelSchema,
  from: InstantSchema,
  to: InstantSchema,
  failed_only: z.boolean().default(false),
};
const fromBeforeTo = (f: { from: string; to: string }) => Date.parse(f.from) < Date.parse(f.to);

/** POST /admin/corrections/preview: which charges a run would void. */
export const CorrectionPreviewSchema = z
  .strictObject(filter)
  .refine(fromBeforeTo, { message: 'from must be before to', path: ['from'] });
export type CorrectionPreview = z.infer<typeof CorrectionPreviewSchema>;

/** POST /admin/corrections: a run over the filter, with the reason every void records. */
export const CorrectionRunSchema = z
  .strictObject({ ...filter, reason })
  .refine(fromBeforeTo, { message: 'from must be before to', path: ['from'] });
export type CorrectionRun = z.infer<typeof CorrectionRunSchema>;

/** POST /admin/corrections/:id/continue: the next batch now (at most `batch` charges). */
export const ContinueRunSchema = z.strictObject({ batch: pgInt(1, 5000).default(500) });

// Rate cards (docs/pricing.md). A price in USD: a decimal string (or a JSON integer) from 0 to
// 1,000,000 with at most 18 fractional digits; null or absent for an optional kind means its
// default (cached input at the input price, reasoning at the output price, images and audio
// refused).
const usd = z
  .union([pgText(40), pgInt(0, 1_000_000)])
  .transform(String)
  .pipe(
    z.string()
      .regex(/^(0|[1-9][0-9]{0,6})(\.[0-9]{1,18})?$/, 'must be a decimal string with at most 18 fractional digits')
      .refine((s) => Number(s) <= 1_000_000, 'must be at most 1,000,000'),
  );
const markup = z
  .union([pgText(20), pgInt(1, 999_999)])
  .transform(String)
  .pipe(
    z.string()
      .regex(/^(0|[1-9][0-9]{0,5})(\.[0-9]{1,4})?$/, 'must be a decimal string with at most 4 fractional digits')
      .refine((s) => /[1-9]/.test(s), 'must be greater than zero'),
  );

/** POST /admin/rate-cards/drafts. */
export const RateCardDraftSchema = z.strictObject({
  model: ModelSchema,
  usd_per_million_input: usd,
  usd_per_million_output: usd,
  markup,
  usd_per_million_cached_input: usd.nullable().optional(),
  usd_per_million_reasoning: usd.nullable().optional(),
  usd_per_million_cache_write: usd.nullable().optional(),
  usd_per_million_cache_write_1h: usd.nullable().optional(),
  usd_per_image: usd.nullable().optional(),
  usd_per_audio_second: usd.nullable().optional(),
  /** Where the gateway sends the model's calls: an upstream the ai function is configured with (docs/ai-gateway.md § Upstreams). */
  upstream: pgText(32).regex(/^[a-z][a-z0-9-]{0,31}$/, 'must be an upstream name (a-z, 0-9, -)').default('openai'),
  /** What the model answers: text (chat) or vectors (embedding); which APIs serve it (docs/ai-gateway.md § Model kinds). */
  kind: z.enum(['chat', 'embedding']).default('chat'),
  reason,
});
export type RateCardDraft = z.infer<typeof RateCardDraftSchema>;

/** GET /admin/rate-cards/drafts/:id/simulation: past usage in [from, to), the last 30 days by default, at most 366. */
export const SimulationQuerySchema = z
  .strictObject({ from: DayOrInstantSchema.optional(), to: DayOrInstantSchema.optional() })
  .transform((q) => {
    const to = q.to ?? new Date().toISOString();
    return { from: q.from ?? new Date(Date.parse(to) - 30 * 86_400_000).toISOString(), to };
  })
  .refine((q) => Date.parse(q.from) < Date.parse(q.to), { message: 'must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 366 * 86_400_000, {
    message: 'must be at most 366 days before to',
    path: ['from'],
  });

/** POST /admin/rate-cards/drafts/:id/publish: from now (default) or a later instant. */
export const PublishRateCardSchema = z.strictObject({ effective_from: InstantSchema.optional(), reason });

/** POST /admin/rate-cards/drafts/:id/discard. */
export const DiscardRateCardSchema = z.strictObject({ reason });

/** GET /admin/corrections: the runs, newest first, a page at a time. */
export const CorrectionsQuerySchema = z.strictObject({
  cursor: UuidCursorSchema.optional(),
  limit: pageLimit(100, 20),
});

// The AI gateway's allowlists and server keys (ai-access.ts).
export const ModelAccessSchema = z.strictObject({
  plan_id: PlanIdSchema.nullable(),
  models: z.array(ModelSchema).max(200),
});
export const ServerKeySchema = z.strictObject({
  name: pgText(100).min(1).regex(/^[A-Za-z0-9 ._-]+$/, 'letters, digits, spaces, dots, dashes and underscores'),
});

// Packages and plans (catalog.ts, docs/pricing.md § Packages and plans). Prices in whole cents of
// their currency (Stripe's unit_amount); credits as decimal strings. Names are printed by Stripe
// on its Checkout page and receipts.
const priceCents = pgInt(1, 99_999_999);
const currency = pgText(3).regex(/^[a-z]{3}$/, 'must be a lower-case ISO currency code, e.g. usd');
const catalogName = printedText(80);
const sortOrder = pgInt(0, 10_000);
const rollover = z.enum(['none', 'up_to_credits', 'up_to_share']);
/** A package's id: what students buy with, kept forever (retire it, never reuse it). */
export const CatalogPackageIdSchema = PackageIdSchema;
/** A plan's id: at most 48 characters, so its versions' ids (`<id>.v<n>`) fit. */
export const CatalogPlanIdSchema = PlanIdSchema.pipe(z.string().max(48));

const packageFields = {
  name: catalogName,
  price_cents: priceCents,
  currency: currency.optional(),
  credits: CreditAmountSchema,
  bonus_credits: z.union([CreditAmountSchema, z.literal('0'), z.literal(0).transform(() => '0')]).optional(),
};

/** POST /admin/packages: a new package, version 1. */
export const CreatePackageSchema = z.strictObject({
  id: CatalogPackageIdSchema,
  ...packageFields,
  sort_order: sortOrder.optional(),
  reason,
});
export type CreatePackage = z.infer<typeof CreatePackageSchema>;

/** POST /admin/packages/:id/versions: what changes (the rest as on sale now). */
export const ChangePackageSchema = z
  .strictObject({ ...z.strictObject(packageFields).partial().shape, sort_order: sortOrder.optional(), reason })
  .refine((b) => Object.keys(b).some((k) => k !== 'reason' && k !== 'sort_order'), {
    message: 'send at least one of name, price_cents, currency, credits, bonus_credits',
    path: ['price_cents'],
  });
export type ChangePackage = z.infer<typeof ChangePackageSchema>;

const planFields = {
  name: catalogName,
  price_cents: priceCents,
  currency: currency.optional(),
  interval: z.enum(['month', 'year']),
  credits: CreditAmountSchema,
  rollover: rollover.optional(),
  rollover_limit: CreditAmountSchema.nullable().optional(),
  applies_to: AppliesToSchema.optional(), // the models each period's credits may pay for
};

/** The rollover rule's limit goes with its rule: none takes none, the others need one (a share at most 1). */
const rolloverLimitFits = (b: { rollover?: string; rollover_limit?: string | null }) =>
  b.rollover === undefined ||
  ((b.rollover === 'none') === (b.rollover_limit == null) &&
    (b.rollover !== 'up_to_share' || Number(b.rollover_limit) <= 1));
const rolloverMessage = {
  message: 'rollover none takes no rollover_limit; up_to_credits needs a limit in credits, up_to_share a share up to 1',
  path: ['rollover_limit'],
};

/** POST /admin/plans: a new plan, version 1. */
export const CreatePlanSchema = z
  .strictObject({ id: CatalogPlanIdSchema, ...planFields, sort_order: sortOrder.optional(), reason })
  .refine(rolloverLimitFits, rolloverMessage);
export type CreatePlan = z.infer<typeof CreatePlanSchema>;

/** POST /admin/plans/:id/versions: what changes (the rest as on sale now). */
export const ChangePlanSchema = z
  .strictObject({ ...z.strictObject(planFields).partial().shape, sort_order: sortOrder.optional(), reason })
  .refine((b) => Object.keys(b).some((k) => k !== 'reason' && k !== 'sort_order'), {
    message:
      'send at least one of name, price_cents, currency, interval, credits, rollover, rollover_limit, applies_to',
    path: ['price_cents'],
  })
  .refine(rolloverLimitFits, rolloverMessage)
  .refine((b) => b.rollover !== undefined || b.rollover_limit === undefined, {
    message: 'send rollover with rollover_limit',
    path: ['rollover'],
  });
export type ChangePlan = z.infer<typeof ChangePlanSchema>;

/** POST /admin/packages/:id/retire, POST /admin/plans/:id/retire. */
export const RetireSchema = z.strictObject({ reason });

/** GET /admin/journal: UTC days [from, to) (default the last 30), one currency or all, JSON or a CSV flavour. */
export const JournalQuerySchema = z
  .strictObject({
    from: day.optional(),
    to: day.optional(),
    currency: pgText(3).regex(/^[a-z]{3}$/, 'must be an ISO 4217 code in lower case (usd)').optional(),
    format,
    flavour: z.enum(['plain', 'xero', 'qbo']).optional(),
  })
  .transform(lastDays(30))
  .refine((q) => q.from < q.to, { message: 'from must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 366 * 86_400_000, {
    message: 'at most 366 days at a time',
    path: ['to'],
  })
  .refine((q) => q.flavour === undefined || q.format === 'csv', {
    message: 'a flavour is for format=csv',
    path: ['flavour'],
  });
export type JournalQuery = z.infer<typeof JournalQuerySchema>;

/** The accounts the journal posts to (billing.journal_accounts). */
export const JournalAccountKeySchema = z.enum([
  'cash_stripe',
  'stripe_fees',
  'credit_sales_clearing',
  'deferred_revenue',
  'revenue_usage',
  'revenue_breakage',
  'tax_payable',
  'provider_payables',
  'platform_fees',
  'refunds',
  'disputes',
]);

/** PUT /admin/journal/accounts: some accounts' code, name or Xero tax rate (an omitted field stays). */
export const JournalAccountsSchema = z.strictObject({
  accounts: z.array(z.strictObject({
    key: JournalAccountKeySchema,
    code: pgText(10).regex(/^[A-Za-z0-9._-]{1,10}$/, 'must be 1 to 10 letters, digits, dots, hyphens or underscores')
      .optional(),
    name: printedText(100).optional(),
    tax_rate: printedText(50).optional(),
  })).min(1).max(JournalAccountKeySchema.options.length)
    .refine((a) => new Set(a.map((x) => x.key)).size === a.length, 'must name each account at most once'),
});

/** GET /admin/users/:user_id/balance and /lots: as they stood at `at`. */
export const UserBalanceAsOfSchema = z.strictObject({ at: AsOfSchema });
export const UserLotsAsOfSchema = z.strictObject({
  at: AsOfSchema,
  cursor: IdCursorSchema.optional(),
  limit: pageLimit(200, 50),
});

/** GET /admin/ai/calls: the call log, filtered, newest first; `format=csv` streams every page. */
export const AiCallsQuerySchema = z.strictObject({
  user_id: UuidSchema.optional(),
  org_id: UuidSchema.optional(),
  model: ModelSchema.optional(),
  outcome: z.enum(['held', 'charged', 'failed', 'refused']).optional(),
  from: InstantSchema.optional(),
  to: InstantSchema.optional(),
  cursor: IdCursorSchema.optional(),
  limit: pageLimit(500, 50),
  format,
});

/** GET /admin/ai/summary: per UTC day and model; the days [from, to], at most 366. */
export const AiSummarySchema = z
  .strictObject({ from: day.optional(), to: day.optional() })
  .transform(lastDays(30))
  .refine((q) => q.from <= q.to, { message: 'from must not be after to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) < 366 * 86_400_000, {
    message: 'at most 366 days at a time',
    path: ['to'],
  });
