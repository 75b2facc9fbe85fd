// What every protocol of the stand-in shares: the token count, the `#standin` directives, the
// numbered-word answer, the record of tagged calls and the SSE writer.
import { decode, encode } from 'gpt-tokenizer';
import { asText, utf8Bytes } from '../../../supabase/functions/_shared/domain/token-bounds.ts';

export type Protocol = 'chat' | 'responses' | 'messages' | 'embeddings';
export type CallRecord = { status: 'running' | 'done' | 'aborted'; protocol: Protocol; usage?: unknown };

/** How each tagged call ended, for GET /_standin/calls/:tag (kept in memory). */
export const calls = new Map<string, CallRecord>();

export type Directives = Record<string, string>;

/** The text of a content: a string, or the `text` of each part joined (other parts count nothing). */
export const text = (content: unknown): string =>
  typeof content === 'string'
    ? content
    : Array.isArray(content)
    ? content.map((p) => (p && typeof p === 'object' && 'text' in p ? String(p.text) : '')).join('')
    : '';

/** Tokens as OpenAI counts them (o200k, the whole text at once); a text with a run of 2,000 non-spaces, whose encoding would take minutes, as its bytes (what no provider exceeds). */
export const textTokens = (t: string) => /\S{2000}/.test(t) ? utf8Bytes(t) : encode(t, asText).length;

/** The directives of a text: `#standin words=40 cached=8 tag=abc` → { words: '40', cached: '8', tag: 'abc' }. */
export function directivesIn(t: string): Directives {
  const found: Directives = {};
  for (const m of t.matchAll(/#standin((?:\s+[a-z][a-z0-9_]*(?:=[A-Za-z0-9_-]+)?)*)/g)) {
    for (const d of m[1].trim().split(/\s+/)) {
      const [k, v] = d.split('=');
      found[k] = v ?? 'true';
    }
  }
  return found;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The answer: `words` numbered words (12 by default), whole words while they fit in what `limit` leaves after the reasoning tokens. */
export function answer(d: Directives, limit: number) {
  const reasoning = Math.min(Number(d.reasoning ?? 0), limit);
  const words = Array.from({ length: Number(d.words ?? 12) }, (_, i) => ` word${i + 1}`);
  // What Postgres refuses in text and jsonb, as a model can be asked to write it.
  if (d.unusual) words.push(' nul\u0000', ' lone\ud800');
  const parts: string[] = [];
  let outputTokens = 0;
  for (const w of words) {
    const t = encode(w, asText).length;
    if (reasoning + outputTokens + t > limit) break;
    parts.push(w);
    outputTokens += t;
  }
  return { parts, outputTokens, reasoning, cut: parts.length < words.length };
}
export type Answer = ReturnType<typeof answer>;

/**
 * An answer of a given text (JSON: a structured answer or a tool call's arguments), counted whole;
 * a limit cuts it at the last token that fits. Streamed in pieces of 16 characters.
 */
export function textAnswer(t: string, d: Directives, limit: number): Answer {
  const reasoning = Math.min(Number(d.reasoning ?? 0), limit);
  const tokens = encode(t, asText);
  const kept = tokens.length + reasoning > limit ? decode(tokens.slice(0, limit - reasoning)) : t;
  const parts = kept.match(/[\s\S]{1,16}/g) ?? [];
  return { parts, outputTokens: Math.min(tokens.length, limit - reasoning), reasoning, cut: kept !== t };
}

const enc = new TextEncoder();

/**
 * A streamed answer: one frame after another (`delay` ms between them), then `tail` if any, then
 * the end, where the call is recorded done with `usage`. `stop_after=n` drops the connection after
 * n frames (the record stays running); a client that leaves marks it aborted.
 */
export function sse(
  frames: string[],
  o: { tag: string; protocol: Protocol; d: Directives; usage: unknown; tail?: string },
): Response {
  const delay = Number(o.d.delay ?? 0);
  const stopAfter = o.d.stop_after === undefined ? Infinity : Number(o.d.stop_after);
  calls.set(o.tag, { status: 'running', protocol: o.protocol });
  let i = 0;
  return new Response(
    new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (i >= stopAfter) return controller.error(new Error('connection dropped (stop_after)'));
        if (i < frames.length) {
          if (delay && i > 0) await sleep(delay);
          controller.enqueue(enc.encode(frames[i++]));
          return;
        }
        if (o.tail) controller.enqueue(enc.encode(o.tail));
        calls.set(o.tag, { status: 'done', protocol: o.protocol, usage: o.usage });
        controller.close();
      },
      cancel() {
        calls.set(o.tag, { status: 'aborted', protocol: o.protocol });
      },
    }),
    { headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' } },
  );
}

/** An SSE frame: `data:` only (Chat Completions), or with its `event:` name (Responses, Messages). */
export const frame = (data: unknown, event?: string) =>
  `${event ? `event: ${event}\n` : ''}data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;

/** OpenAI's error body (Chat Completions, Responses, Embeddings). */
export const openaiError = (status: number) => ({
  error: { message: `stand-in failure ${status}`, type: 'server_error', param: null, code: 'standin_failure' },
});

/** OpenAI's answer to a wrong key; null when the Bearer key is right. */
export const openaiUnauthorized = (req: Request, key: string) =>
  req.headers.get('authorization') === `Bearer ${key}`
    ? null
    : Response.json({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error' } }, {
      status: 401,
    });

export type Json = Record<string, unknown>;
/** The request body as an object ({} when it is not one). */
export async function jsonBody(req: Request): Promise<Json> {
  const b: unknown = await req.json().catch(() => null);
  return b && typeof b === 'object' && !Array.isArray(b) ? b as Json : {};
}
export const isObject = (x: unknown): x is Json => !!x && typeof x === 'object' && !Array.isArray(x);
