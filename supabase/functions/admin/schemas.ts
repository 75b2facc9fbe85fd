// Query shapes of the admin routes.
import { z } from 'zod';
import { pgText } from '../_shared/values/pg-values.ts';
import { CalendarDateSchema, lastDays } from '../_shared/values/query.ts';

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
