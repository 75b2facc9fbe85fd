// The batch routes, as the pinned `openai` and Anthropic SDKs call them (docs/ai-gateway.md §
// Batches): OpenAI's /files (purpose batch) and /batches, Anthropic's /messages/batches. Every
// line is checked and counted at the gateway (batch-lines.ts), the provider gets only the checked
// copy, and the money is one SQL call each way (batches.ts).
import { z } from 'zod';
import { aiGatewayEnv, fetchUpstream, upstreamsSpeaking } from '../_shared/adapters/ai-upstreams.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { baseEnv } from '../_shared/env.ts';
import { AppError, internalError } from '../_shared/errors.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { readBody, readJson } from '../_shared/http/validate.ts';
import { sqlRefusal } from '../_shared/adapters/sql-errors.ts';
import { isUuid } from '../_shared/values/query.ts';
import { batchLimits, batchLines } from './batch-lines.ts';
import {
  type Batch,
  batchNotFound,
  beginBatch,
  fileNotFound,
  myBatch,
  providerError,
  submitBatch,
  syncBatch,
} from './batches.ts';
import { sha256 } from './call.ts';
import { chat } from './protocols/chat.ts';
import { messages } from './protocols/messages.ts';

const iso = (n: number | null) => n === null ? null : new Date(n * 1000).toISOString();
const invalid = (message: string, field: string) => new AppError('validation', 'VALIDATION_FAILED', message, { field });

// ---------------------------------------------------------------- OpenAI: /files and /batches

type BatchFile = {
  id: string;
  provider_file_id: string;
  upstream: string;
  filename: string;
  bytes: number;
  created_at: number;
};
const fileObject = (f: BatchFile) => ({
  id: f.id,
  object: 'file',
  bytes: f.bytes,
  created_at: f.created_at,
  filename: f.filename,
  purpose: 'batch',
  status: 'processed',
});

/** POST /ai/v1/files: a batch file, every line checked and counted; the provider gets the checked copy. */
export async function uploadFile(c: AppContext): Promise<Response> {
  const userId = currentUser(c).id;
  // Before any work: a student who may not (banned, disputed, too many files waiting) costs nothing.
  const [{ refusal }] =
    await sql`select billing.ai_batch_file_refusal(${userId}, ${batchLimits.waitingFiles}) as refusal`;
  if (refusal) throw sqlRefusal(refusal.token, JSON.stringify(refusal.detail ?? {})) ?? internalError();
  const raw = await readBody(c, batchLimits.bytes + 64 * 1024);
  const form = await new Response(raw, { headers: { 'content-type': c.req.header('content-type') ?? '' } }).formData()
    .catch(() => null);
  const file = form?.get('file');
  if (!form || form.get('purpose') !== 'batch') {
    throw invalid('purpose must be batch (the files taken here are batch input).', 'purpose');
  }
  if (!(file instanceof File) || file.size > batchLimits.bytes) {
    throw invalid(`file must be a JSONL file of at most ${batchLimits.bytes} bytes.`, 'file');
  }
  const env = aiGatewayEnv();
  const rows = (await file.text()).split('\n').filter((l) => l.trim()).map((l, i) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(l);
    } catch {
      throw invalid(`line ${i + 1}: not JSON.`, 'file');
    }
    if (line?.method !== 'POST' || line.url !== '/v1/chat/completions') {
      throw invalid(`line ${i + 1}: method must be POST and url /v1/chat/completions.`, 'url');
    }
    return { custom_id: line.custom_id, body: line.body };
  });
  const { lines, model, writesCache } = await batchLines(chat, rows, env);
  // The allowlist and the card's upstream now (begin checks them again, with the money).
  const [{ upstream, card }] = await sql`select billing.ai_model_upstream(${userId}, ${model}, 'chat',
    array(select jsonb_array_elements_text(${jsonb(upstreamsSpeaking('chat'))}))) as upstream,
    billing.card_model(${model}) as card`;
  const copy = lines.map((l) =>
    JSON.stringify({
      custom_id: l.custom_id,
      method: 'POST',
      url: '/v1/chat/completions',
      body: { ...l.body, model: card },
    })
  ).join('\n') + '\n';
  // Recorded first (its place within the student's limit claimed), then sent: the provider stores
  // nothing past the limit; a copy it did not take drops the record.
  const [{ r }] = await sql`select billing.record_ai_batch_file(${userId}, ${upstream}, 'chat', ${card},
    ${jsonb(lines.map(({ body: _, ...counted }) => counted))}, ${writesCache},
    ${file.name.slice(0, 255) || 'batch.jsonl'}, ${file.size}, ${batchLimits.waitingFiles}) as r`;
  if (r.state !== 'recorded') throw sqlRefusal(r.token, JSON.stringify(r.detail ?? {})) ?? internalError();
  const upload = new FormData();
  upload.set('purpose', 'batch');
  upload.set('file', new Blob([copy], { type: 'application/jsonl' }), 'batch.jsonl');
  const sent = await fetchUpstream(upstream, '/files', { method: 'POST', body: upload })
    .then(async (res) => res.ok ? (await res.json() as { id?: unknown }).id : res.body?.cancel())
    .catch(() => null);
  const [{ f }] = await sql`select billing.sent_ai_batch_file(${r.file.id}, ${
    typeof sent === 'string' ? sent : null
  }) as f`;
  if (!f) throw providerError('take the file');
  return c.json(fileObject(f));
}

async function myFile(c: AppContext): Promise<BatchFile> {
  const id = c.req.param('id') ?? '';
  if (!isUuid(id)) throw fileNotFound();
  const [{ r }] = await sql`select billing.get_ai_batch_file(${currentUser(c).id}, ${id}) as r`;
  if (!r) throw fileNotFound();
  return r;
}

export const getFile = async (c: AppContext) => c.json(fileObject(await myFile(c)));

/** A batch's output or error file, once the batch is settled; an input file, as the provider has it. */
export async function fileContent(c: AppContext): Promise<Response> {
  const out = (c.req.param('id') ?? '').match(/^batch_(output|errors)_(.{36})$/);
  let upstream: string, provider: unknown;
  if (out) {
    const b = await myBatch(currentUser(c).id, out[2]);
    if (!b || b.status !== 'ended') throw fileNotFound();
    upstream = b.upstream;
    provider = out[1] === 'output' ? b.results?.output_file_id : b.results?.error_file_id;
  } else {
    const f = await myFile(c);
    [upstream, provider] = [f.upstream, f.provider_file_id];
  }
  if (typeof provider !== 'string') throw fileNotFound();
  const res = await fetchUpstream(upstream, `/files/${encodeURIComponent(provider)}/content`);
  if (!res.ok) {
    await res.body?.cancel();
    throw providerError('answer with the file', res.status);
  }
  return new Response(res.body, { headers: { 'content-type': 'application/octet-stream' } });
}

/** A batch as OpenAI writes one, with what it holds and was charged in credits. */
function openaiBatch(b: Batch) {
  const said = b.provider_status ?? '';
  const status = b.status === 'submitting'
    ? 'validating'
    : b.status === 'failed'
    ? 'failed'
    : b.status === 'in_progress'
    ? (b.cancel_requested ? 'cancelling' : 'in_progress')
    : ['completed', 'expired', 'cancelled', 'failed'].includes(said)
    ? said
    : said === 'lost'
    ? 'failed'
    : 'completed';
  const at = (s: string) => status === s ? b.ended_at : null;
  return {
    id: b.id,
    object: 'batch',
    endpoint: '/v1/chat/completions',
    errors: null,
    input_file_id: b.file_id,
    completion_window: '24h',
    status,
    output_file_id: b.status === 'ended' && b.results?.output_file_id ? `batch_output_${b.id}` : null,
    error_file_id: b.status === 'ended' && b.results?.error_file_id ? `batch_errors_${b.id}` : null,
    created_at: b.created_at,
    in_progress_at: b.status === 'submitting' ? null : b.created_at,
    expires_at: b.created_at + 86_400,
    finalizing_at: null,
    completed_at: at('completed'),
    failed_at: at('failed'),
    expired_at: at('expired'),
    cancelling_at: null,
    cancelled_at: at('cancelled'),
    request_counts: {
      total: b.line_count,
      completed: b.counts.succeeded,
      failed: b.counts.errored + b.counts.expired + b.counts.cancelled,
    },
    metadata: b.metadata,
    credits: { held: b.held, charged: b.charged },
  };
}

const CreateBatchSchema = z.object({
  input_file_id: z.string().max(64),
  endpoint: z.literal('/v1/chat/completions', 'endpoint must be /v1/chat/completions'),
  completion_window: z.literal('24h', 'completion_window must be 24h'),
  metadata: z.record(z.string().max(64), z.string().max(512)).refine(
    (m) => Object.keys(m).length <= 16,
    'at most 16 keys',
  )
    .nullish(),
});

/** POST /ai/v1/batches: the file's batch held whole at the batch price, then sent (one batch per file). */
export async function createBatch(c: AppContext): Promise<Response> {
  const body = await readJson(c, CreateBatchSchema);
  if (!isUuid(body.input_file_id)) throw fileNotFound();
  const begun = await beginBatch({
    userId: currentUser(c).id,
    kind: 'openai',
    endpoint: 'chat',
    model: null,
    lines: null,
    writesCache: false,
    fileId: body.input_file_id,
    key: `file:${body.input_file_id}`,
    requestHash: sha256(JSON.stringify(body)),
    upstreams: upstreamsSpeaking('chat'),
    maxOpen: batchLimits.open,
    metadata: body.metadata ?? null,
  });
  if (begun.state === 'replay') return c.json(openaiBatch(begun.batch));
  const [{ provider }] = await sql`select billing.get_ai_batch_file(${currentUser(c).id}, ${body.input_file_id})
    ->> 'provider_file_id' as provider`;
  const sent = await submitBatch(begun.batch, () =>
    fetchUpstream(begun.batch.upstream, '/batches', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input_file_id: provider, endpoint: '/v1/chat/completions', completion_window: '24h' }),
    }));
  return c.json(openaiBatch(sent));
}

/** GET /ai/v1/batches/:id and POST …/cancel (`cancel`): the batch, synced with its provider. */
export const readBatch = (kind: Batch['kind'], cancel: boolean) => async (c: AppContext) => {
  const b = await myBatch(currentUser(c).id, c.req.param('id') ?? '', cancel);
  if (!b || b.kind !== kind) throw batchNotFound();
  const synced = await syncBatch(b);
  return c.json(kind === 'openai' ? openaiBatch(synced) : anthropicBatch(synced));
};

// ---------------------------------------------------------------- Anthropic: /messages/batches

function anthropicBatch(b: Batch) {
  const ended = b.status === 'ended' || b.status === 'failed';
  return {
    id: b.id,
    type: 'message_batch',
    processing_status: ended ? 'ended' : b.cancel_requested ? 'canceling' : 'in_progress',
    request_counts: {
      processing: ended ? 0 : b.line_count,
      succeeded: b.counts.succeeded,
      errored: b.status === 'failed' ? b.line_count : b.counts.errored,
      canceled: b.counts.cancelled,
      expired: b.counts.expired,
    },
    ended_at: iso(b.ended_at),
    created_at: iso(b.created_at),
    expires_at: iso(b.created_at + 86_400),
    archived_at: null,
    cancel_initiated_at: null,
    results_url: b.status === 'ended'
      ? `${baseEnv().SUPABASE_URL}/functions/v1/ai/v1/messages/batches/${b.id}/results`
      : null,
    credits: { held: b.held, charged: b.charged },
  };
}

const CreateMessageBatchSchema = z.object({
  requests: z.array(z.object({ custom_id: z.unknown(), params: z.unknown() })).min(1).max(batchLimits.lines),
});

/** POST /ai/v1/messages/batches: every request checked and counted, held whole at the batch price, then sent. */
export async function createMessageBatch(c: AppContext): Promise<Response> {
  const body = await readJson(c, CreateMessageBatchSchema, batchLimits.bytes);
  const { lines, model, writesCache } = await batchLines(
    messages,
    body.requests.map((r) => ({ custom_id: r.custom_id, body: r.params })),
    aiGatewayEnv(),
  );
  const begun = await beginBatch({
    userId: currentUser(c).id,
    kind: 'anthropic',
    endpoint: 'messages',
    model,
    lines,
    writesCache,
    fileId: null,
    key: c.req.header('idempotency-key') ? idempotencyKey(c) : `auto:${crypto.randomUUID()}`,
    requestHash: sha256(JSON.stringify(lines)),
    upstreams: upstreamsSpeaking('messages'),
    maxOpen: batchLimits.open,
    metadata: null,
  });
  if (begun.state === 'replay') return c.json(anthropicBatch(begun.batch));
  const sent = await submitBatch(begun.batch, () =>
    fetchUpstream(begun.batch.upstream, '/messages/batches', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        requests: lines.map((l) => ({ custom_id: l.custom_id, params: { ...l.body, model: begun.batch.model } })),
      }),
    }));
  return c.json(anthropicBatch(sent));
}

/** GET /ai/v1/messages/batches/:id/results: the provider's results, once the batch is settled. */
export async function messageBatchResults(c: AppContext): Promise<Response> {
  const b = await myBatch(currentUser(c).id, c.req.param('id') ?? '');
  if (!b || b.kind !== 'anthropic') throw batchNotFound();
  if (b.status !== 'ended' || typeof b.results?.results_url !== 'string') {
    throw new AppError('conflict', 'AI_BATCH_NOT_ENDED', 'The batch has not ended: its results are not ready.');
  }
  const res = await fetchUpstream(b.upstream, b.results.results_url);
  if (!res.ok) {
    await res.body?.cancel();
    throw providerError('answer with the results', res.status);
  }
  return new Response(res.body, { headers: { 'content-type': 'application/binary' } });
}
