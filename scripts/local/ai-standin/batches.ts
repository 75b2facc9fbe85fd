// What both batch APIs share (batches-openai.ts, batches-anthropic.ts): a virtual clock that tests
// move, batches of lines kept in memory, and how a batch moves. A line completes `batch_at` virtual
// seconds (60 by default) after its batch was created; its result is what the interactive handler
// answers to its body, unstreamed, computed once at the first read after it completed and kept.
// Nothing runs on a timer: a batch moves when it is read, and one read at a time.
import { type Directives, isObject, type Json, jsonBody } from './common.ts';

/** A protocol a line runs through: its interactive handler, and how that handler reads a body's directives. */
export type Endpoint = {
  handler: (req: Request, key: string) => Promise<Response>;
  directives: (body: Json) => Directives;
};
export type LineState = 'processing' | 'succeeded' | 'errored' | 'canceled' | 'expired';
export type Line = {
  customId: string;
  body: Json;
  /** When it completes, on the batch clock. */
  at: number;
  state: LineState;
  /** The handler's status and JSON body, once run. */
  result?: { status: number; body: unknown };
};
export type Batch = {
  id: string;
  endpoint: Endpoint;
  createdAt: number;
  expiresAt: number;
  lines: Line[];
  cancellingAt: number | null;
  ended: { how: 'completed' | 'expired' | 'cancelled'; at: number } | null;
  /** How many times its results (Anthropic) or its output and error files (OpenAI) were fetched. */
  fetches: number;
  queue: Promise<void>;
};

/** A batch's completion window: 24 hours. */
export const WINDOW_SECONDS = 86_400;

let advanced = 0;
/** The batch clock, in unix seconds: real time plus every advance a test asked for. */
export const now = () => Math.floor(Date.now() / 1000 + advanced);

/** Every batch of either API, by id (for GET /_standin/batches/:id). */
const batches = new Map<string, Batch>();

export const newId = (prefix: string) => `${prefix}${crypto.randomUUID().replaceAll('-', '')}`;
export const count = (b: Batch, state: LineState) => b.lines.filter((l) => l.state === state).length;
export const jsonl = (rows: unknown[]) => rows.map((r) => `${JSON.stringify(r)}\n`).join('');

/** A new batch of lines, each due `batch_at` seconds (60 by default) after now. */
export function openBatch(id: string, endpoint: Endpoint, lines: { customId: string; body: Json }[]): Batch {
  const createdAt = now();
  const b: Batch = {
    id,
    endpoint,
    createdAt,
    expiresAt: createdAt + WINDOW_SECONDS,
    lines: lines.map(({ customId, body }) => {
      const after = Number(endpoint.directives(body).batch_at ?? 60);
      return { customId, body, at: createdAt + (Number.isFinite(after) ? after : 60), state: 'processing' };
    }),
    cancellingAt: null,
    ended: null,
    fetches: 0,
    queue: Promise.resolve(),
  };
  batches.set(id, b);
  return b;
}

/** A line's answer: its body through the interactive handler, in-process, unstreamed, with the key the stand-in takes. */
async function run(b: Batch, line: Line, key: string): Promise<void> {
  const req = new Request('http://ai-standin/batch-line', {
    method: 'POST',
    // Bearer and anthropic-version satisfy every handler's auth (messages.ts takes Bearer too).
    headers: { authorization: `Bearer ${key}`, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: JSON.stringify({ ...line.body, stream: false }),
  });
  try {
    const res = await b.endpoint.handler(req, key);
    line.result = { status: res.status, body: await res.json() };
  } catch (e) {
    line.result = { status: 500, body: { error: { message: `stand-in line failed: ${e}`, type: 'server_error' } } };
  }
  line.state = line.result.status >= 200 && line.result.status < 300 ? 'succeeded' : 'errored';
}

/** Brings a batch up to now: a cancel asked at an earlier read ends it; else due lines run, then it completes or expires. */
async function settle(b: Batch, key: string): Promise<void> {
  if (b.ended) return;
  const t = now();
  const processing = () => b.lines.filter((l) => l.state === 'processing');
  if (b.cancellingAt !== null) {
    for (const l of processing()) l.state = 'canceled';
    b.ended = { how: 'cancelled', at: t };
    return;
  }
  for (const l of processing()) if (l.at <= Math.min(t, b.expiresAt)) await run(b, l, key);
  if (!processing().length) {
    b.ended = { how: 'completed', at: Math.max(b.createdAt, ...b.lines.map((l) => l.at)) };
  } else if (t >= b.expiresAt) {
    for (const l of processing()) l.state = 'expired';
    b.ended = { how: 'expired', at: b.expiresAt };
  }
}

/** Runs `step` after every earlier read of the batch, so that no line runs twice. */
function serially(b: Batch, step: () => Promise<void>): Promise<Batch> {
  b.queue = b.queue.then(step).catch((e) => console.error(`batch ${b.id}:`, e));
  return b.queue.then(() => b);
}

/** The batch as it is now (its lines due by now run first). */
export const readBatch = (b: Batch, key: string) => serially(b, () => settle(b, key));

/** Asks a batch to stop: `cancelling` now, ended `cancelled` at its next read, with every line not done by now canceled. An ended batch stays as it is. */
export const cancelBatch = (b: Batch, key: string) =>
  serially(b, async () => {
    await settle(b, key);
    if (!b.ended) b.cancellingAt ??= now();
  });

/** POST /_standin/clock {advance_seconds} moves the batch clock forward; GET /_standin/clock reads it. */
export async function clock(req: Request): Promise<Response> {
  if (req.method === 'POST') {
    const seconds = (await jsonBody(req)).advance_seconds;
    if (typeof seconds !== 'number' || !(seconds >= 0) || !Number.isFinite(seconds)) {
      return Response.json({ error: { message: 'advance_seconds: a number of seconds, 0 or more' } }, { status: 400 });
    }
    advanced += seconds;
  }
  return Response.json({ now: now() });
}

/** GET /_standin/batches/:id: how often its results were fetched and its lines' states, as of its last read (this does not move it). */
export function batchHook(id: string): Response {
  const b = batches.get(id);
  if (!b) return Response.json({ error: { message: `no batch ${id}` } }, { status: 404 });
  return Response.json({
    fetches: b.fetches,
    lines: Object.fromEntries(b.lines.map((l) => [l.customId, l.state])),
  });
}

/** A refusal message for a list of {custom_id, …} items whose ids are not unique strings; null when they are. */
export function customIdRefusal(items: unknown[]): string | null {
  const seen = new Set<string>();
  for (const [i, x] of items.entries()) {
    const id = isObject(x) ? x.custom_id : undefined;
    if (typeof id !== 'string' || !id) return `item ${i}: custom_id must be a non-empty string`;
    if (seen.has(id)) return `item ${i}: custom_id ${JSON.stringify(id)} is used twice; custom_ids must be unique`;
    seen.add(id);
  }
  return null;
}
