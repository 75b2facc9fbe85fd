// Anthropic's Message Batches over batches.ts: create, read, cancel, and the results of an ended
// batch as JSONL (one line per request, in the order sent). Every request runs through
// POST /v1/messages, so lines may name different models, and a request Messages refuses (say,
// without max_tokens) is an errored result, as Anthropic validates params only when it runs them.
import type Anthropic from '@anthropic-ai/sdk';
import { type Batch, cancelBatch, count, customIdRefusal, jsonl, newId, openBatch, readBatch } from './batches.ts';
import { isObject, type Json, jsonBody } from './common.ts';
import { anthropicError, anthropicRefusal, directives, messages } from './messages.ts';

type Handler = (req: Request, key: string, id: string) => Promise<Response> | Response;
type Result = Anthropic.Messages.Batches.MessageBatchIndividualResponse;

/** Each batch and, once first fetched, its results' bytes (so every fetch reads the same). */
const kept = new Map<string, { batch: Batch; results: string | null }>();

const rfc3339 = (unix: number) => new Date(unix * 1000).toISOString();
const invalid = (message: string) => anthropicError(400, 'invalid_request_error', message);
const notFound = (id: string) => anthropicError(404, 'not_found_error', `batch ${id} not found`);

/** A batch as Anthropic answers it; `results_url` on this stand-in's own origin, as the caller reached it. */
function wire(req: Request, b: Batch): Anthropic.Messages.Batches.MessageBatch {
  return {
    id: b.id,
    type: 'message_batch',
    processing_status: b.ended ? 'ended' : b.cancellingAt === null ? 'in_progress' : 'canceling',
    request_counts: {
      processing: count(b, 'processing'),
      succeeded: count(b, 'succeeded'),
      errored: count(b, 'errored'),
      canceled: count(b, 'canceled'),
      expired: count(b, 'expired'),
    },
    ended_at: b.ended ? rfc3339(b.ended.at) : null,
    created_at: rfc3339(b.createdAt),
    expires_at: rfc3339(b.expiresAt),
    archived_at: null,
    cancel_initiated_at: b.cancellingAt === null ? null : rfc3339(b.cancellingAt),
    results_url: b.ended ? `${new URL(req.url).origin}/v1/messages/batches/${b.id}/results` : null,
  };
}

/** An ended batch's result lines: the Message, or the error body Messages answered, or why it never ran. */
const resultsOf = (b: Batch): Result[] =>
  b.lines.map((l) => ({
    custom_id: l.customId,
    result: (l.state === 'succeeded'
      ? { type: 'succeeded', message: l.result?.body }
      : l.state === 'errored'
      ? { type: 'errored', error: l.result?.body }
      : { type: l.state }) as Result['result'],
  }));

/** A batch read (or cancelled) now, as Anthropic answers it. */
async function answer(req: Request, id: string, key: string, move: typeof readBatch) {
  const k = kept.get(id);
  if (!k) return notFound(id);
  return Response.json(wire(req, await move(k.batch, key)));
}

/** Each route behind Anthropic's key and anthropic-version header. */
const authed = (h: Handler): Handler => (req, key, id) => anthropicRefusal(req, key) ?? h(req, key, id);

export const anthropicBatches = {
  createBatch: authed(async (req, key) => {
    const requests = (await jsonBody(req)).requests;
    if (!Array.isArray(requests) || !requests.length) return invalid('requests: at least one request is required');
    const refusal = customIdRefusal(requests);
    if (refusal) return invalid(`requests: ${refusal}`);
    if (!requests.every((r) => isObject(r) && isObject(r.params))) {
      return invalid('requests: each request is {custom_id, params}');
    }
    const lines = (requests as Json[]).map((r) => ({ customId: String(r.custom_id), body: r.params as Json }));
    const batch = openBatch(newId('msgbatch_'), { handler: messages, directives }, lines);
    kept.set(batch.id, { batch, results: null });
    return answer(req, batch.id, key, readBatch);
  }),
  getBatch: authed((req, key, id) => answer(req, id, key, readBatch)),
  cancelBatch: authed((req, key, id) => answer(req, id, key, cancelBatch)),
  results: authed(async (_req, key, id) => {
    const k = kept.get(id);
    if (!k) return notFound(id);
    const b = await readBatch(k.batch, key);
    if (!b.ended) {
      return anthropicError(404, 'not_found_error', `batch ${id} has no results until it has ended (it is processing)`);
    }
    k.results ??= jsonl(resultsOf(b));
    b.fetches++;
    return new Response(k.results, { headers: { 'content-type': 'application/binary' } });
  }),
};
