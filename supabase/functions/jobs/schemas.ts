// Request shapes and env of the jobs routes; POST /jobs's body is in _shared/contract/jobs.ts.
import { z } from 'zod';
import { maxBigint, pgText } from '../_shared/values/pg-values.ts';
import { cursorOf } from '../_shared/values/page.ts';
import { pageLimit, UuidSchema } from '../_shared/values/query.ts';

/** A job's position in the list `<created_at in µs since the epoch>:<job id>`, parsed and checked. */
const JobPositionSchema = pgText(56)
  .regex(/^[0-9]{1,19}:[^:]+$/)
  .transform((s) => {
    const [micros, id] = s.split(':');
    return { micros, id };
  })
  .refine((c) => BigInt(c.micros) <= maxBigint && UuidSchema.safeParse(c.id).success);

/** The opaque cursor of the jobs list. */
export const JobCursorSchema = cursorOf(JobPositionSchema);

export const ListJobsSchema = z.strictObject({
  status: z.enum(['queued', 'processing', 'completed', 'failed', 'cancelled']).optional(),
  limit: pageLimit(100, 20),
  cursor: JobCursorSchema.optional(),
});

export const WorkerEnvSchema = z.object({
  JOBS_LEASE_SECONDS: z.coerce.number().int().positive().default(30),
  // A tick answers within budget + 1 s: keep it well below the schedule's pg_net timeout (≤ 10 s).
  JOBS_TICK_BUDGET_MS: z.coerce.number().int().positive().max(8_000).default(3_000),
});
