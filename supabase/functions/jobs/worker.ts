// The job worker: claims due jobs with a lease, runs one slice of each (a whole ai_completion,
// one page of a ledger_export), and completes, yields or fails them. Each step is one SQL call;
// a worker that dies mid-slice simply stops renewing its lease and another resumes from the last
// checkpoint. A tick stays within the edge's limits: it stops claiming when its budget is spent,
// gives each job at most one slice, and answers at most a second later, leaving a slice still
// in flight to EdgeRuntime.waitUntil where the runtime has it.
import { canOutliveResponse, outliveResponse, settleWithin } from '../_shared/background.ts';
import { finishing, jsonb, sql } from '../_shared/adapters/db.ts';
import { fromDbError } from '../_shared/adapters/sql-errors.ts';
import { AppError } from '../_shared/errors.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { ProviderUnavailable } from '../_shared/adapters/ai.ts';
import { jobTypes } from './types/index.ts';
import type { JobRow } from './types/types.ts';

export interface WorkerOptions {
  workerId: string;
  /** Stop claiming jobs after this long (a tick's wall-clock budget). */
  budgetMs: number;
  leaseSeconds?: number;
}

/** How long past its budget a worker waits for the slice in flight before answering without it. */
export const sliceGraceMs = 1_000;

/** Stops a handler: the job was cancelled or its lease passed to another worker. */
class Stop extends Error {}

const stopCodes = new Set(['JOB_CANCELLED', 'LEASE_LOST', 'JOB_NOT_FOUND']);

/** Runs one slice of a claimed job and records how it ended: completed, yielded, failed or stopped. */
async function runSlice(job: JobRow, workerId: string, leaseSeconds: number): Promise<void> {
  const type = jobTypes[job.type];
  const fields = { jobId: job.id, type: job.type, attempt: job.attempts };
  try {
    if (!type) throw new AppError('validation', 'UNKNOWN_JOB_TYPE', 'This job type is no longer supported.');
    const input = type.schema.parse(job.input);
    const outcome = await type.run({
      job,
      input,
      resumeState: job.resume_state,
      checkpoint: async (c) => {
        try {
          await sql`select billing.checkpoint_job(${job.id}, ${workerId}, ${c.progress}, ${jsonb(c.state ?? null)},
            ${c.label ?? null}, ${c.chunk ?? null}, ${leaseSeconds})`;
        } catch (err) {
          const e = fromDbError(err);
          if (stopCodes.has(e.code)) throw new Stop(e.code);
          throw err;
        }
      },
    });
    if ('more' in outcome) {
      await sql`select billing.yield_job(${job.id}, ${workerId})`;
      log.info('job slice done', fields);
      return;
    }
    // The provider billed the work: a transient failure of the capture is tried again, not turned
    // into a retry of the whole job (the provider asked, and billed, twice). A try that committed
    // before its connection broke is answered LEASE_LOST by the next: stopped, charged once.
    const [done] = await finishing((settle) =>
      sql<{ status: string }[]>`select (billing.complete_job(${job.id}, ${workerId}, ${jsonb(outcome.result)},
        ${outcome.usage ? jsonb(outcome.usage) : null}, ${outcome.log ? jsonb(outcome.log) : null})).status
      from billing.settle_holder(${settle})`
    );
    log.info(done.status === 'cancelled' ? 'job cancelled while it ran: its work charged' : 'job completed', fields);
  } catch (err) {
    const code = err instanceof Stop ? err.message : fromDbError(err).code;
    if (stopCodes.has(code)) {
      log.info('job stopped', { ...fields, reason: code });
      // Cancelled while this worker ran it: its hold waited for this report (nothing to charge).
      if (code === 'JOB_CANCELLED') {
        await sql`select billing.fail_job(${job.id}, ${workerId}, null, false)`
          .catch((e) => log.info('job hold left to its lease', { ...fields, ...errorSummary(e) }));
      }
      return;
    }
    const retryable = err instanceof ProviderUnavailable || (err instanceof AppError && err.retryable) ||
      !(err instanceof AppError);
    const safe = err instanceof AppError && err.status < 500
      ? { code: err.code, message: err.message }
      : { code: 'JOB_ERROR', message: 'The job failed. It is retried automatically while attempts remain.' };
    log.warn('job attempt failed', { ...fields, retryable, ...errorSummary(err) });
    await sql`select billing.fail_job(${job.id}, ${workerId}, ${jsonb(safe)}, ${retryable})`
      .catch((e) => log.error('could not record a job failure', { ...fields, ...errorSummary(e) }));
  }
}

/**
 * Gives each due job one slice until none is due or the budget is spent; returns how many slices
 * it started. It answers by `budgetMs + sliceGraceMs` at the latest: a slice still running then
 * goes on after the answer (its lease guards it; should the isolate end, another tick resumes it).
 * @example const ran = await runWorker({ workerId: `tick-${crypto.randomUUID()}`, budgetMs: 3_000 })
 */
export async function runWorker(opts: WorkerOptions): Promise<number> {
  const leaseSeconds = opts.leaseSeconds ?? 30;
  const started = performance.now();
  const served: string[] = []; // this tick's jobs: one slice each, the next slice is the next tick's
  const drain = async () => {
    while (performance.now() - started < opts.budgetMs) {
      const [job] = await sql<JobRow[]>`
        select * from billing.claim_jobs(${opts.workerId}, 1, ${leaseSeconds}, ${`{${served.join(',')}}`}::uuid[])`;
      if (!job) break;
      served.push(job.id);
      await runSlice(job, opts.workerId, leaseSeconds);
    }
  };
  const work = drain();
  const settled = await settleWithin(work, opts.budgetMs + sliceGraceMs - (performance.now() - started));
  if (!settled.done) {
    log.info('worker answered with a slice in flight', { workerId: opts.workerId, waitUntil: canOutliveResponse() });
    outliveResponse(work.catch((err) => log.error('worker failed after answering', errorSummary(err))));
  }
  return served.length;
}
