// Query shapes of the admin routes.
import { z } from 'zod';

const day = z.iso.date();
const format = z.enum(['json', 'csv']).default('json');

export const DailyReportSchema = z.strictObject({ date: day, format });

export const MetricsSchema = z
  .strictObject({
    from: day.optional(),
    to: day.optional(),
    granularity: z.enum(['day', 'week', 'month']).default('day'),
    format,
  })
  .transform((q) => {
    const to = q.to ?? new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    const from = q.from ?? new Date(Date.parse(to) - 30 * 86_400_000).toISOString().slice(0, 10);
    return { ...q, from, to };
  })
  .refine((q) => q.from < q.to, { message: 'from must be before to', path: ['from'] })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= 400 * 86_400_000, {
    message: 'at most 400 days at a time',
    path: ['to'],
  });
