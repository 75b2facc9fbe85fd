// Request shapes of the jobs routes.
import { z } from 'zod';

export const CreateJobSchema = z.strictObject({
  type: z.string().min(1).max(64),
  input: z.record(z.string(), z.unknown()),
  client_temp_id: z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/).optional(),
});
export type CreateJob = z.infer<typeof CreateJobSchema>;

export const ListJobsSchema = z.strictObject({
  status: z.enum(['queued', 'processing', 'completed', 'failed', 'cancelled']).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().regex(/^[0-9]+:[0-9a-f-]{36}$/, 'must be a cursor from a previous page').optional(),
});

export const WorkerEnvSchema = z.object({
  JOBS_LEASE_SECONDS: z.coerce.number().int().positive().default(30),
  JOBS_TICK_BUDGET_MS: z.coerce.number().int().positive().default(20_000),
});
