// OpenAI's Batch API over batches.ts: files (upload, read, content) and batches (create, read,
// cancel). An input file is JSONL of {custom_id, method: "POST", url, body}, every url the batch's
// endpoint (/v1/chat/completions, /v1/responses or /v1/embeddings) and every body one model. When
// a batch ends, its output file holds the 2xx answers and its error file the others, then the
// lines it never ran (expired, cancelled); a file that would be empty is not made (its id null).
import type OpenAI from 'openai';
import { type Batch, cancelBatch, count, customIdRefusal, jsonl, newId, now, openBatch, readBatch } from './batches.ts';
import { chat, directives as chatDirectives } from './chat.ts';
import { isObject, type Json, jsonBody, openaiUnauthorized } from './common.ts';
import { directives as embeddingsDirectives, embeddings } from './embeddings.ts';
import { directives as responsesDirectives, responses } from './responses.ts';

type Handler = (req: Request, key: string, id: string) => Promise<Response> | Response;
type Stamp =
  | 'in_progress_at'
  | 'expires_at'
  | 'finalizing_at'
  | 'completed_at'
  | 'failed_at'
  | 'expired_at'
  | 'cancelling_at'
  | 'cancelled_at';
/** OpenAI's Batch as the API sends it: absent stamps and files as null. */
type WireBatch = Omit<OpenAI.Batches.Batch, Stamp | 'output_file_id' | 'error_file_id' | 'errors'> & {
  errors: null;
  output_file_id: string | null;
  error_file_id: string | null;
} & Record<Stamp, number | null>;

const endpoints = {
  '/v1/chat/completions': { handler: chat, directives: chatDirectives },
  '/v1/responses': { handler: responses, directives: responsesDirectives },
  '/v1/embeddings': { handler: embeddings, directives: embeddingsDirectives },
};
type EndpointPath = keyof typeof endpoints;
const isEndpoint = (x: unknown): x is EndpointPath => typeof x === 'string' && Object.hasOwn(endpoints, x);

/** Uploaded and made files; `batch` on an output or error file, whose fetches count there. */
const files = new Map<string, { object: OpenAI.Files.FileObject; bytes: Uint8Array<ArrayBuffer>; batch?: Batch }>();
/** An OpenAI batch: the batch, what it was created with, and its files once made. */
type Filed = {
  batch: Batch;
  endpoint: EndpointPath;
  inputFileId: string;
  metadata: unknown;
  made: boolean;
  outputFileId: string | null;
  errorFileId: string | null;
};
const filed = new Map<string, Filed>();

const invalid = (message: string, param: string | null = null, status = 400) =>
  Response.json({ error: { message, type: 'invalid_request_error', param, code: null } }, { status });
const notFound = (what: string, id: string) => invalid(`No such ${what}: '${id}'`, 'id', 404);

function store(
  bytes: Uint8Array<ArrayBuffer>,
  filename: string,
  purpose: 'batch' | 'batch_output',
  batch?: Batch,
): string {
  const id = newId('file-');
  const object: OpenAI.Files.FileObject = {
    id,
    object: 'file',
    bytes: bytes.length,
    created_at: now(),
    filename,
    purpose,
    status: 'processed',
  };
  files.set(id, { object, bytes, batch });
  return id;
}

/** The lines of an input file for `endpoint`, or why it is refused. */
function linesOf(bytes: Uint8Array, endpoint: EndpointPath): { customId: string; body: Json }[] | string {
  const rows: Json[] = [];
  for (const [i, row] of new TextDecoder().decode(bytes).split('\n').entries()) {
    if (!row.trim()) continue;
    let line: unknown;
    try {
      line = JSON.parse(row);
    } catch {
      return `line ${i + 1} is not JSON`;
    }
    if (!isObject(line) || !isObject(line.body)) return `line ${i + 1}: {custom_id, method, url, body} expected`;
    if (line.method !== 'POST') return `line ${i + 1}: method must be POST`;
    if (line.url !== endpoint) return `line ${i + 1}: url ${line.url} is not the batch's endpoint ${endpoint}`;
    rows.push(line);
  }
  if (!rows.length) return 'the input file has no requests';
  const refusal = customIdRefusal(rows);
  if (refusal) return refusal;
  const models = new Set(rows.map((r) => String((r.body as Json).model)));
  if (models.size > 1) return `the requests name ${models.size} models (${[...models].join(', ')}); a batch takes one`;
  return rows.map((r) => ({ customId: String(r.custom_id), body: r.body as Json }));
}

/** Makes the output and error files of an ended batch, once. */
function makeFiles(f: Filed) {
  const b = f.batch;
  if (!b.ended || f.made) return;
  f.made = true;
  const output: unknown[] = [];
  const errors: unknown[] = [];
  for (const l of b.lines) {
    const row = { id: newId('batch_req_'), custom_id: l.customId };
    if (l.result) {
      const response = { status_code: l.result.status, request_id: newId('req_'), body: l.result.body };
      (l.state === 'succeeded' ? output : errors).push({ ...row, response, error: null });
    } else {
      const code = l.state === 'expired' ? 'batch_expired' : 'batch_cancelled';
      const message = l.state === 'expired'
        ? 'This request could not be executed before the completion window expired.'
        : 'This request was not executed because the batch was cancelled.';
      errors.push({ ...row, response: null, error: { code, message } });
    }
  }
  const make = (rows: unknown[], kind: string) =>
    rows.length ? store(new TextEncoder().encode(jsonl(rows)), `${b.id}_${kind}.jsonl`, 'batch_output', b) : null;
  f.outputFileId = make(output, 'output');
  f.errorFileId = make(errors, 'error');
}

function wire(f: Filed): WireBatch {
  const b = f.batch;
  const endedAs = (how: string) => b.ended?.how === how ? b.ended.at : null;
  return {
    id: b.id,
    object: 'batch',
    endpoint: f.endpoint,
    errors: null,
    input_file_id: f.inputFileId,
    completion_window: '24h',
    status: b.ended?.how ?? (b.cancellingAt === null ? 'in_progress' : 'cancelling'),
    output_file_id: f.outputFileId,
    error_file_id: f.errorFileId,
    created_at: b.createdAt,
    in_progress_at: b.createdAt,
    expires_at: b.expiresAt,
    finalizing_at: endedAs('completed'),
    completed_at: endedAs('completed'),
    failed_at: null,
    expired_at: endedAs('expired'),
    cancelling_at: b.cancellingAt,
    cancelled_at: endedAs('cancelled'),
    request_counts: { total: b.lines.length, completed: count(b, 'succeeded'), failed: count(b, 'errored') },
    metadata: isObject(f.metadata) ? f.metadata as Record<string, string> : null,
  };
}

/** A batch read (or cancelled) now, as OpenAI answers it. */
async function answer(id: string, key: string, move: typeof readBatch) {
  const f = filed.get(id);
  if (!f) return notFound('batch', id);
  await move(f.batch, key);
  makeFiles(f);
  return Response.json(wire(f));
}

/** Each route behind OpenAI's Bearer key. */
const authed = (h: Handler): Handler => (req, key, id) => openaiUnauthorized(req, key) ?? h(req, key, id);

export const openaiBatches = {
  uploadFile: authed(async (req) => {
    const form = await req.formData().catch(() => null);
    const file = form?.get('file');
    if (form?.get('purpose') !== 'batch') return invalid("purpose: only 'batch' files are taken here", 'purpose');
    if (!(file instanceof File)) return invalid('file: a file is required', 'file');
    const id = store(new Uint8Array(await file.arrayBuffer()), file.name, 'batch');
    return Response.json(files.get(id)?.object);
  }),
  getFile: authed((_req, _key, id) => {
    const f = files.get(id);
    return f ? Response.json(f.object) : notFound('file', id);
  }),
  fileContent: authed((_req, _key, id) => {
    const f = files.get(id);
    if (!f) return notFound('file', id);
    if (f.batch) f.batch.fetches++;
    return new Response(f.bytes, { headers: { 'content-type': 'application/octet-stream' } });
  }),
  createBatch: authed(async (req, key) => {
    const body = await jsonBody(req);
    const inputFileId = String(body.input_file_id);
    const input = files.get(inputFileId);
    if (input?.object.purpose !== 'batch') return invalid(`No such file: '${inputFileId}'`, 'input_file_id');
    if (!isEndpoint(body.endpoint)) {
      return invalid(`endpoint must be one of ${Object.keys(endpoints).join(', ')}`, 'endpoint');
    }
    if (body.completion_window !== '24h') return invalid("completion_window must be '24h'", 'completion_window');
    const lines = linesOf(input.bytes, body.endpoint);
    if (typeof lines === 'string') return invalid(lines, 'input_file_id');
    const batch = openBatch(newId('batch_'), endpoints[body.endpoint], lines);
    const metadata = body.metadata ?? null;
    const f = {
      batch,
      endpoint: body.endpoint,
      inputFileId,
      metadata,
      made: false,
      outputFileId: null,
      errorFileId: null,
    };
    filed.set(batch.id, f);
    return answer(batch.id, key, readBatch);
  }),
  getBatch: authed((_req, key, id) => answer(id, key, readBatch)),
  cancelBatch: authed((_req, key, id) => answer(id, key, cancelBatch)),
};
