// Async jobs: 202 + polling. Create (reserving a metered job's estimate), poll with a growing
// Retry-After, list, cancel, fetch the result; and the worker tick that drains due jobs.
import type { Job, JobAccepted, JobList, JobStatus } from '../_shared/contract/index.ts';
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { pageOf } from '../_shared/values/page.ts';
import { parseEnv, reportAtStart } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { idempotent } from '../_shared/http/idempotency.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { requireCronSecret } from '../_shared/http/secrets.ts';
import { stripe } from '../_shared/adapters/stripe.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import { CreateJobSchema } from '../_shared/contract/jobs.ts';
import { ListJobsSchema, WorkerEnvSchema } from './schemas.ts';
import { jobTypes } from './types/index.ts';
import { runRecharges } from './recharges.ts';
import { runWorker } from './worker.ts';
import { deleteExpiredReferenceItems } from '../_shared/domain/ai-reference-items.ts';

const env = parseEnv(WorkerEnvSchema);
reportAtStart(stripe); // the tick charges saved cards (auto-recharge): a missing or wrong-mode key is logged at start
const app = createApp('jobs');

type JobRow = {
  id: string;
  type: string;
  status: JobStatus;
  progress: number;
  checkpoints: unknown[];
  result: unknown;
  error: unknown;
  client_temp_id: string | null;
  created_at: Date;
  started_at: Date | null;
  completed_at: Date | null;
  expires_at: Date;
};

const finished = (status: string) => ['completed', 'failed', 'cancelled'].includes(status);
const pollUrl = (id: string) => `/functions/v1/jobs/${id}`;

const jobJson = (j: JobRow): Job => ({
  job_id: j.id,
  type: j.type,
  status: j.status,
  progress: j.progress,
  checkpoints: j.checkpoints,
  ...(j.result !== null && j.type !== 'ledger_export' ? { result: j.result } : {}),
  ...(j.result !== null && j.type === 'ledger_export'
    ? { result: { ...(j.result as object), url: `${pollUrl(j.id)}/result` } }
    : {}),
  ...(j.error !== null ? { error: j.error } : {}),
  client_temp_id: j.client_temp_id,
  created_at: j.created_at.toISOString(),
  started_at: j.started_at?.toISOString() ?? null,
  completed_at: j.completed_at?.toISOString() ?? null,
  expires_at: j.expires_at.toISOString(),
});

/** Poll interval that grows with the job's age, so clients back off: 2 s, 4 s, then 8 s. */
const retryAfter = (created: Date) => {
  const age = (Date.now() - created.getTime()) / 1000;
  return age < 10 ? 2 : age < 30 ? 4 : 8;
};

/** Starts draining right away where the runtime allows work after the response. */
function kickWorker() {
  const work = runWorker({
    workerId: `inline-${crypto.randomUUID()}`,
    budgetMs: 5_000,
    leaseSeconds: env.JOBS_LEASE_SECONDS,
  })
    .catch((err) => log.error('inline worker failed', errorSummary(err)));
  const edge = (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } }).EdgeRuntime;
  edge?.waitUntil(work);
}

async function findJob(userId: string, id: string): Promise<JobRow> {
  if (!isUuid(id)) throw new AppError('not_found', 'JOB_NOT_FOUND', 'No such job.');
  const [j] = await sql<JobRow[]>`select * from billing.get_job(${userId}, ${id})`;
  if (!j) throw new AppError('not_found', 'JOB_NOT_FOUND', 'No such job.');
  return j;
}

app.post('/', requireUser, async (c) => {
  const body = await readJson(c, CreateJobSchema);
  const type = jobTypes[body.type];
  if (!type) {
    throw new AppError(
      'validation',
      'UNKNOWN_JOB_TYPE',
      `Unknown job type. Known: ${Object.keys(jobTypes).join(', ')}.`,
      {
        field: 'type',
      },
    );
  }
  const parsed = type.schema.safeParse(body.input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = ['input', ...issue.path].join('.');
    throw new AppError('validation', 'VALIDATION_FAILED', `${field}: ${issue.message}`, { field });
  }
  const user = currentUser(c);
  const estimate = type.estimate ? await type.estimate(parsed.data, user.id) : null;
  const res = await idempotent(c, 'jobs.create', body, async (key) => {
    const [j] = await sql<JobRow[]>`
      select * from billing.enqueue_job(${user.id}, ${body.type}, ${jsonb(parsed.data)}, ${key},
        ${body.client_temp_id ?? null}, ${estimate})`;
    const data: JobAccepted = {
      job_id: j.id,
      status: j.status,
      poll_url: pollUrl(j.id),
      client_temp_id: j.client_temp_id,
    };
    return { status: 202, data };
  });
  if (res.status === 202) {
    const { data } = await res.clone().json();
    res.headers.set('Location', data.poll_url);
    if (!res.headers.get('idempotent-replayed')) kickWorker();
  }
  return res;
});

app.get('/', requireUser, async (c) => {
  const q = readQuery(c, ListJobsSchema);
  const micros = q.cursor?.micros ?? null;
  const lastId = q.cursor?.id ?? null;
  const rows = await sql<JobRow[]>`
    select * from billing.list_jobs(${currentUser(c).id}, ${q.status ?? null}, ${micros}, ${lastId}, ${q.limit + 1})`;
  return ok<JobList>(c, pageOf(rows, q.limit, (j) => `${Math.floor(j.created_at.getTime() * 1000)}:${j.id}`, jobJson));
});

app.get('/:id', requireUser, async (c) => {
  const j = await findJob(currentUser(c).id, c.req.param('id'));
  return ok(c, jobJson(j), 200, finished(j.status) ? {} : { 'Retry-After': String(retryAfter(j.created_at)) });
});

app.delete('/:id', requireUser, async (c) => {
  const j = await findJob(currentUser(c).id, c.req.param('id'));
  const [cancelled] = await sql<JobRow[]>`select * from billing.cancel_job(${currentUser(c).id}, ${j.id})`;
  return ok(c, jobJson(cancelled));
});

app.get('/:id/result', requireUser, async (c) => {
  const j = await findJob(currentUser(c).id, c.req.param('id'));
  if (j.status !== 'completed') {
    throw new AppError(
      'conflict',
      'JOB_NOT_COMPLETED',
      `The job is ${j.status}; its result is available once completed.`,
    );
  }
  if (j.type !== 'ledger_export') return ok(c, j.result);
  // Streamed from the saved pages, 50 at a time, never the whole export in memory.
  let seq = 0;
  const enc = new TextEncoder();
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunks = await sql<{ seq: number; content: string }[]>`
        select seq, content from billing.list_job_result_chunks(${j.id}, ${seq}, 50)`;
      for (const ch of chunks) controller.enqueue(enc.encode(ch.content));
      if (chunks.length < 50) controller.close();
      else seq = chunks[chunks.length - 1].seq;
    },
  });
  return c.body(stream, 200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': 'attachment; filename="ledger.csv"',
  });
});

app.post('/worker/tick', async (c) => {
  requireCronSecret(c);
  // The AI references' retention is the functions' setting (AI_REFERENCE_RETENTION_DAYS): the
  // tick deletes what it no longer covers, beside the recharges, before the worker's budget starts.
  const [recharges, referenceItems] = await Promise.all([
    runRecharges(),
    deleteExpiredReferenceItems().catch((err) => {
      log.error('expired AI reference items could not be deleted', errorSummary(err));
      return null;
    }),
  ]);
  const ran = await runWorker({
    workerId: `tick-${crypto.randomUUID()}`,
    budgetMs: env.JOBS_TICK_BUDGET_MS,
    leaseSeconds: env.JOBS_LEASE_SECONDS,
  });
  return ok(c, { ran, recharges, reference_items_deleted: referenceItems });
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
