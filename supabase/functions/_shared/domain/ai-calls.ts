// Reading the AI gateway's call log (docs/ai-gateway.md, "The call log"): pages newest first
// and one call with the content kept of it (only ever kept with its owner's consent). A
// student's routes pass their own id, so they read only their calls; the operator's pass none.
import { sql } from '../adapters/db.ts';
import { AppError } from '../errors.ts';
import { csvField } from './ledger.ts';
import { pageOf } from '../values/page.ts';
import { isUuid } from '../values/query.ts';

/** The histogram bounds (ms) of time to first token and duration: the AI panel's and Prometheus'. */
export const aiLatencyBounds = [100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/** Which calls: one student's or organisation's, a model, an outcome, created in [from, to), before `cursor`. */
export interface CallFilter {
  user?: string;
  org?: string;
  model?: string;
  outcome?: string;
  from?: string;
  to?: string;
  cursor?: string;
  limit: number;
}

/** Up to `limit` calls of the filter, newest first, each with its position (seq). */
const calls = (f: Omit<CallFilter, 'limit'>, limit: number) =>
  sql<{ seq: string; call: Record<string, unknown> }[]>`
    select seq::text, call from billing.list_ai_calls(${f.user ?? null}, ${f.org ?? null}, ${f.model ?? null},
      ${f.outcome ?? null}, ${f.from ?? null}::timestamptz, ${f.to ?? null}::timestamptz, ${f.cursor ?? null}::bigint,
      ${limit})`;

/**
 * A page of the call log, newest first.
 * @example await pageOfCalls({ user: me, limit: 20 })
 */
export async function pageOfCalls(f: CallFilter) {
  const rows = await calls(f, f.limit + 1);
  return pageOf(rows, f.limit, (r) => r.seq, (r) => r.call);
}

const notFound = () => new AppError('not_found', 'AI_CALL_NOT_FOUND', 'No such call.');

/**
 * One call with its kept content (`content: null` when none was kept); `user` null for an
 * operator. A call that is not the user's is AI_CALL_NOT_FOUND, as one that does not exist.
 * @example await callWithContent(me, c.req.param('id'))
 */
export async function callWithContent(user: string | null, id: string | undefined) {
  if (!id || !isUuid(id)) throw notFound();
  const [{ call }] = await sql`select billing.get_ai_call(${user}, ${id}) as call`;
  if (!call) throw notFound();
  return call as Record<string, unknown>;
}

/** Deletes what was kept of one of the user's calls; AI_CALL_NOT_FOUND when it is not theirs. */
export async function deleteContent(user: string, id: string | undefined): Promise<void> {
  if (!id || !isUuid(id)) throw notFound();
  const [{ mine }] = await sql`select billing.delete_ai_call_content(${user}, ${id}) as mine`;
  if (!mine) throw notFound();
}

const csvColumns = [
  'id',
  'created_at',
  'user_id',
  'org_id',
  'model',
  'upstream',
  'endpoint',
  'stream',
  'outcome',
  'code',
  'upstream_status',
  'attempts',
  'first_token_ms',
  'duration_ms',
  'tail_ms',
  'input_tokens',
  'cached_input_tokens',
  'cache_write_tokens',
  'cache_write_1h_tokens',
  'output_tokens',
  'reasoning_tokens',
  'usage_source',
  'charged',
  'finish_reason',
  'client_left',
  'transfer_id',
] as const;

/** The upstreams a call failed at before the one that answered, as one field: `openai:PROVIDER_ERROR_500 …`. */
function attemptsText(attempts: unknown): string | null {
  if (!Array.isArray(attempts)) return null;
  return attempts.map((a: { upstream?: unknown; failure?: unknown }) => `${a.upstream}:${a.failure}`).join(' ');
}

function csvLine(call: Record<string, unknown>): string {
  const usage = (call.usage ?? {}) as Record<string, unknown>;
  return csvColumns.map((k) => {
    if (k === 'attempts') return csvField(attemptsText(call.attempts));
    const v = k in call ? call[k] : usage[k];
    return csvField(v === null || v === undefined ? null : String(v));
  }).join(',') + '\r\n';
}

/** The filtered log as CSV (every page of it), fetched 1,000 calls at a time as the client reads. */
export function callsCsv(f: Omit<CallFilter, 'limit'>): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let cursor = f.cursor;
  let started = false;
  return new ReadableStream({
    async pull(controller) {
      if (!started) {
        started = true;
        controller.enqueue(enc.encode(csvColumns.join(',') + '\r\n'));
      }
      const rows = await calls({ ...f, cursor }, 1000);
      if (rows.length > 0) controller.enqueue(enc.encode(rows.map((r) => csvLine(r.call)).join('')));
      if (rows.length < 1000) controller.close();
      else cursor = rows[rows.length - 1].seq;
    },
  });
}
