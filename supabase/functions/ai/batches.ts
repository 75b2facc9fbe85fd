// Batches (docs/ai-gateway.md § Batches): the money is SQL's (supabase/schemas/62-ai-offline-batches.sql:
// begun as one hold at the batch price, ended once at the sum of its lines); here, the provider's
// side. A batch is sent once the hold is taken, and synced (polled, and settled when the provider
// ended it) by whoever reads it first: a student's poll or the minute tick. Settling twice answers
// the first settling, so pollers racing, a repeated poll or a restart never charge twice.
import { fetchUpstream } from '../_shared/adapters/ai-upstreams.ts';
import { finishing, jsonb, sql } from '../_shared/adapters/db.ts';
import { refusalOf, sqlRefusal } from '../_shared/adapters/sql-errors.ts';
import { AppError, internalError } from '../_shared/errors.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { isUuid } from '../_shared/values/query.ts';
import type { BatchLine } from './batch-lines.ts';
import { settlingFirst, type Usage } from './metering.ts';
import { chat } from './protocols/chat.ts';
import { messages } from './protocols/messages.ts';

/** A batch as SQL answers it (billing.ai_batch_json). */
export interface Batch {
  id: string;
  kind: 'openai' | 'anthropic';
  status: 'submitting' | 'in_progress' | 'ended' | 'failed';
  provider_status: string | null;
  provider_batch_id: string | null;
  cancel_requested: boolean;
  line_count: number;
  results: { output_file_id?: string | null; error_file_id?: string | null; results_url?: string | null } | null;
  metadata: Record<string, string> | null;
  file_id: string | null;
  call_id: string;
  created_at: number;
  ended_at: number | null;
  model: string;
  upstream: string;
  held: string;
  charged: string;
  counts: { succeeded: number; errored: number; expired: number; cancelled: number };
}

/** A line as the provider ended it, for billing.finish_ai_batch. */
type Ended = { custom_id: string; outcome: 'succeeded' | 'errored' | 'expired' | 'cancelled'; usage: Usage | null };

// The refusals SQL raises for the same cases (sql-errors.ts): one message each, wherever found.
export const batchNotFound = () => refusalOf('AI_BATCH_NOT_FOUND', {}) ?? internalError();
export const fileNotFound = () => refusalOf('AI_FILE_NOT_FOUND', {}) ?? internalError();
/** The provider did not take or give what was asked (`what`); nothing was charged for it. */
export const providerError = (what: string, status = 0) =>
  new AppError('unavailable', 'PROVIDER_ERROR', `The provider did not ${what}; nothing was charged.`, {
    status: 502,
    ...(status ? { details: { upstream_status: status } } : {}),
  });

/** Holds a batch and records its lines (a refusal thrown: 402 with the figures when it does not fit). */
export async function beginBatch(args: {
  userId: string;
  kind: Batch['kind'];
  endpoint: 'chat' | 'messages';
  model: string | null;
  lines: BatchLine[] | null;
  writesCache: boolean;
  fileId: string | null;
  key: string;
  requestHash: string;
  upstreams: string[];
  maxOpen: number;
  metadata: Record<string, string> | null;
}): Promise<{ state: 'held' | 'replay'; batch: Batch }> {
  const counts = args.lines?.map(({ body: _, ...counted }) => counted) ?? null;
  const r = await settlingFirst(
    args.userId,
    async (settle) =>
      (await sql`select billing.begin_ai_batch(${args.userId}, ${args.kind}, ${args.endpoint}, ${args.model},
    ${counts === null ? null : jsonb(counts)}, ${args.writesCache}, ${args.fileId}, ${args.key}, ${args.requestHash},
    array(select jsonb_array_elements_text(${jsonb(args.upstreams)})), ${args.maxOpen},
    ${args.metadata === null ? null : jsonb(args.metadata)}) as r from billing.settle_spender(${settle})`)[0].r,
  );
  if (r.state === 'held' || r.state === 'replay') return r;
  throw sqlRefusal(r.token, JSON.stringify(r.detail ?? {})) ?? internalError();
}

/** Sends a held batch to its provider (`send` answers its batch id) and records the answer; nothing is charged if it fails. */
export async function submitBatch(batch: Batch, send: () => Promise<Response>): Promise<Batch> {
  let res: Response | null = null;
  try {
    res = await send();
  } catch (err) {
    log.warn('ai batch could not be sent', { batchId: batch.id, ...errorSummary(err) });
  }
  const id = res?.ok ? ((await res.json().catch(() => ({}))) as { id?: unknown }).id : null;
  if (res && !res.ok) await res.body?.cancel();
  const [{ r }] = await sql`select billing.submitted_ai_batch(${batch.id}, ${typeof id === 'string' ? id : null}) as r`;
  if (typeof id !== 'string') throw providerError('take the batch', res?.status ?? 0);
  return r;
}

/** A student's own batch (null: none); `cancel` marks it to be cancelled. */
export async function myBatch(userId: string, id: string, cancel = false): Promise<Batch | null> {
  if (!isUuid(id)) return null;
  const [{ r }] = await sql`select billing.get_ai_batch(${userId}, ${id}, ${cancel}) as r`;
  return r;
}

const json = async (res: Response) => {
  if (!res.ok) {
    await res.body?.cancel();
    throw new Error(`provider answered ${res.status}`);
  }
  return res.json();
};
const jsonLines = (text: string) => text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));

/** OpenAI's output and error files, as ended lines. */
async function openaiEnded(b: Batch, remote: Record<string, unknown>): Promise<Ended[]> {
  const ended: Ended[] = [];
  for (const file of [remote.output_file_id, remote.error_file_id]) {
    if (typeof file !== 'string') continue;
    const res = await fetchUpstream(b.upstream, `/files/${encodeURIComponent(file)}/content`);
    if (!res.ok) throw new Error(`provider answered ${res.status}`);
    for (const line of jsonLines(await res.text())) {
      const status = line.response?.status_code;
      const code = line.error?.code;
      ended.push({
        custom_id: String(line.custom_id),
        outcome: status >= 200 && status < 300
          ? 'succeeded'
          : code === 'batch_expired'
          ? 'expired'
          : code === 'batch_cancelled'
          ? 'cancelled'
          : 'errored',
        usage: status >= 200 && status < 300 && line.response.body?.usage
          ? chat.fromUsage(line.response.body.usage)
          : null,
      });
    }
  }
  return ended;
}

/** Anthropic's results, as ended lines. */
async function anthropicEnded(b: Batch, remote: Record<string, unknown>): Promise<Ended[]> {
  const res = await fetchUpstream(b.upstream, String(remote.results_url));
  if (!res.ok) throw new Error(`provider answered ${res.status}`);
  const outcomes: Record<string, Ended['outcome']> = {
    succeeded: 'succeeded',
    errored: 'errored',
    expired: 'expired',
    canceled: 'cancelled',
  };
  return jsonLines(await res.text()).map((line) => ({
    custom_id: String(line.custom_id),
    outcome: outcomes[line.result?.type] ?? 'errored',
    usage: line.result?.type === 'succeeded' && line.result.message?.usage
      ? messages.fromUsage(line.result.message.usage)
      : null,
  }));
}

/** A batch its provider does not know is taken as lost only past the provider's 24-hour window and an hour. */
const lostAfterSeconds = 25 * 3600;

const providerPath = (b: Batch) =>
  b.kind === 'openai' ? `/batches/${b.provider_batch_id}` : `/messages/batches/${b.provider_batch_id}`;
const ended = (b: Batch, remote: Record<string, unknown>) =>
  b.kind === 'openai'
    ? ['completed', 'expired', 'cancelled', 'failed'].includes(String(remote.status))
    : remote.processing_status === 'ended';

/**
 * Brings a running batch up to date: asks the provider to cancel it if its owner asked, and
 * once the provider ended it, settles every line once (billing.finish_ai_batch). A provider
 * that cannot be read leaves the batch as it was, for the next poll.
 */
export async function syncBatch(b: Batch): Promise<Batch> {
  if (b.status !== 'in_progress') return b;
  try {
    if (b.cancel_requested) {
      await fetchUpstream(b.upstream, `${providerPath(b)}/cancel`, { method: 'POST' }).then((r) => r.body?.cancel());
    }
    const res = await fetchUpstream(b.upstream, providerPath(b));
    if (res.status === 404) {
      await res.body?.cancel();
      // The provider has no such batch. Within its window that is the operator's to look at (a
      // key of another account?): left as it is. Past it, the provider lost it: nothing ran that
      // it bills, nothing is charged.
      if (Date.now() / 1000 - b.created_at < lostAfterSeconds) {
        log.error('ai batch not found at its provider', { batchId: b.id, upstream: b.upstream });
        return b;
      }
      const [{ r }] = await finishing((settle) =>
        sql`select billing.finish_ai_batch(${b.id}, '[]'::jsonb, 'lost', '{}'::jsonb) as r
        from billing.settle_holder(${settle})`
      );
      return r;
    }
    const remote = await json(res) as Record<string, unknown>;
    if (!ended(b, remote)) return b;
    const lines = b.kind === 'openai' ? await openaiEnded(b, remote) : await anthropicEnded(b, remote);
    const results = b.kind === 'openai'
      ? { output_file_id: remote.output_file_id ?? null, error_file_id: remote.error_file_id ?? null }
      : { results_url: remote.results_url ?? null };
    const status = String(b.kind === 'openai' ? remote.status : remote.processing_status);
    const [{ r }] = await finishing((settle) =>
      sql`select billing.finish_ai_batch(${b.id}, ${jsonb(lines)}, ${status}, ${jsonb(results)}) as r
      from billing.settle_holder(${settle})`
    );
    return r;
  } catch (err) {
    log.warn('ai batch could not be synced', { batchId: b.id, ...errorSummary(err) });
    return b;
  }
}

/** The minute tick: every running batch synced, one at a time, within `budgetMs`. */
export async function syncOpenBatches(budgetMs: number): Promise<number> {
  const started = performance.now();
  const open = await sql`select r from billing.open_ai_batches(100) as r`;
  let synced = 0;
  for (const { r } of open) {
    if (performance.now() - started > budgetMs) break;
    if ((await syncBatch(r)).status === 'ended') synced++;
  }
  return synced;
}
