// The job worker: claims due jobs with a lease, runs their handler, and completes or fails
// them. Each step is one SQL call; a worker that dies mid-job simply stops renewing its lease
// and another resumes from the last checkpoint.
import { db, fromDbError } from '../_shared/db.ts';
import { AppError } from '../_shared/errors.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { ProviderUnavailable } from '../_shared/ai.ts';
import { jobTypes } from './types/index.ts';
import type { JobRow } from './types/types.ts';

export interface WorkerOptions {
  workerId: string;
  /** Stop claiming new jobs after this long. */
  budgetMs: number;
  leaseSeconds?: number;
}

/** Stops a handler: the job was cancelled or its lease passed to another worker. */
class Stop extends Error {}

const stopCodes = new Set(['JOB_CANCELLED', 'LEASE_LOST', 'JOB_NOT_FOUND']);

async function runJob(job: JobRow, workerId: string, leaseSeconds: number): Promise<void> {
  const sql = db();
  const type = jobTypes[job.type];
  const fields = { jobId: job.id, type: job.type, attempt: job.attempts };
  try {
    if (!type) throw new AppError('validation', 'UNKNOWN_JOB_TYPE', 'This job type is no longer supported.');
    const input = type.schema.parse(job.input);
    const { result, usage } = await type.run({
      job,
      input,
      resumeState: job.resume_state,
      checkpoint: async (c) => {
        try {
          await sql`select billing.checkpoint_job(${job.id}, ${workerId}, ${c.progress}, ${
            JSON.stringify(c.state ?? null)
          }::text::jsonb,
            ${c.label ?? null}, ${c.chunk ?? null}, ${leaseSeconds})`;
        } catch (err) {
          const e = fromDbError(err);
          if (stopCodes.has(e.code)) throw new Stop(e.code);
          throw err;
        }
      },
    });
    await sql`select billing.complete_job(${job.id}, ${workerId}, ${JSON.stringify(result)}::text::jsonb,
      ${usage ? JSON.stringify(usage) : null}::text::jsonb)`;
    log.info('job completed', fields);
  } catch (err) {
    const code = err instanceof Stop ? err.message : fromDbError(err).code;
    if (stopCodes.has(code)) {
      log.info('job stopped', { ...fields, reason: code });
      return;
    }
    const retryable = err instanceof ProviderUnavailable || (err instanceof AppError && err.retryable) ||
      !(err instanceof AppError);
    const safe = err instanceof AppError && err.status < 500
      ? { code: err.code, message: err.message }
      : { code: 'JOB_ERROR', message: 'The job failed. It is retried automatically while attempts remain.' };
    log.warn('job attempt failed', { ...fields, retryable, ...errorSummary(err) });
    await sql`select billing.fail_job(${job.id}, ${workerId}, ${JSON.stringify(safe)}::text::jsonb, ${retryable})`
      .catch((e) => log.error('could not record a job failure', { ...fields, ...errorSummary(e) }));
  }
}

/** Drains due jobs until none is due or the budget is spent; returns how many it ran. */
export async function runWorker(opts: WorkerOptions): Promise<number> {
  const leaseSeconds = opts.leaseSeconds ?? 30;
  const deadline = Date.now() + opts.budgetMs;
  let ran = 0;
  while (Date.now() < deadline) {
    const [job] = await db()<JobRow[]>`select * from billing.claim_jobs(${opts.workerId}, 1, ${leaseSeconds})`;
    if (!job) break;
    await runJob(job, opts.workerId, leaseSeconds);
    ran++;
  }
  return ran;
}
