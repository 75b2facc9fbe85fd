// Query shapes of the admin routes.
import { z } from 'zod';
import { pgInt, pgText } from '../_shared/values/pg-values.ts';
import { CalendarDateSchema, InstantSchema, lastDays } from '../_shared/values/query.ts';

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
  model: pgText(200).min(1),
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
