// What one of the gateway's APIs is, to the one metering path (call.ts): how a request's prompt
// is read (for the hold), what the provider is sent, how a response's usage is read, and how an
// answer carries its cost. Everything else (the hold, the provider call, the abort and failure
// rules, the capture, replays) is the same for every API.
import { z } from 'zod';
import { jsonObject } from '../_shared/values/pg-values.ts';
import { ModelSchema } from '../_shared/values/text.ts';
import type { Endpoint } from '../_shared/adapters/ai-upstreams.ts';
import { AppError } from '../_shared/errors.ts';
import { countTokens, type TokenBound, tokenBoundOf } from '../_shared/domain/token-bounds.ts';
import type { Usage } from './metering.ts';

/** One server-sent event as the provider wrote it: its `event:` name (if any), data and raw text. */
export interface Sse {
  name: string | null;
  data: string;
  raw: string;
}

/**
 * Reads one streamed answer, event by event. `see` says what to do with an event: send it on now,
 * keep it back (it carries the usage: sent with its cost once the call is charged), or stop
 * reading (the provider's end, or its error).
 */
export interface StreamReader {
  see(event: Sse): 'send' | 'keep' | 'end' | 'error';
  /** The usage the provider reported as final, or null while it has not. */
  usage(): Usage | null;
  /** The event kept back (its data), sent with the cost once charged and by a replay. */
  held(): string | null;
  /** Why the provider ended the answer (its own word: stop, length, end_turn …), once it said. */
  finishReason(): string | null;
  /** An event as the caller gets it, before it is seen (the Responses API: its items' ids sealed). */
  rewrite?(event: Sse): Promise<Sse>;
  /** Keeps what the rewritten events refer to, once call `callId` is charged (the Responses API's items). */
  keepItems?(callId: string): Promise<void>;
}

export interface Protocol<R> {
  endpoint: Endpoint;
  schema: z.ZodType<R>;
  model(req: R): string;
  streamed(req: R): boolean;
  /** The answer's limit the caller asked for (null: none) and its field; null for an API without answers (embeddings). */
  outputLimit(req: R): { asked: number | null; field: string } | null;
  /** Every text the provider reads as input. */
  promptTexts(req: R): Iterable<string>;
  /** The tokens the provider adds around the texts (its framing), at most. */
  framing(req: R, bound: TokenBound): number;
  /** Whether the request asks the provider to write its prompt cache (billed above the input price). */
  writesCache(req: R): boolean;
  /** Whether it asks for an hour-long cache write (billed at its own price); absent: never. */
  writesCache1h?(req: R): boolean;
  /** Opens what the request refers to (the Responses API's item references) before its prompt is counted. */
  expand?(req: R, userId: string): Promise<R>;
  /** Whether an answer cut short would be useless (a forced tool call, a JSON schema): never held for less. */
  wholeAnswerOnly(req: R): boolean;
  /** The tokens of the answer's maximum set aside for thinking (Anthropic's budget_tokens, which must stay below it). */
  thinkingBudget?(req: R): number;
  /** The request the provider gets. */
  providerBody(req: R, maxOutput: number): Record<string, unknown>;
  /** The provider's usage object as the rate card's disjoint kinds. */
  fromUsage(usage: unknown): Usage;
  /** Disjoint kinds as this API writes usage (for an answer whose provider sent none). */
  toUsage(usage: Usage): Record<string, unknown>;
  /** Why the provider ended a whole answer (its own word), if it said. */
  finishReason(body: Record<string, unknown>): string | null;
  /** The answer text of a whole answer, or of one streamed event: what the tokenizer counts. */
  answerText(body: Record<string, unknown>): string;
  eventText(data: string): string;
  /** A whole answer as the caller gets it (the Responses API: its items' ids sealed). */
  sealAnswer?(body: Record<string, unknown>, userId: string): Promise<Record<string, unknown>>;
  reader(req: R, userId: string): StreamReader;
  /** The usage object with its cost where this API's own clients keep it too (besides `cost`), if anywhere else. */
  costKeptBy?(usage: Record<string, unknown>, charged: string): Record<string, unknown>;
  /** What is sent after the stream once the call is charged: the kept event with its cost, and the end. */
  closing(req: R, held: string | null, usage: Usage, cost: AnswerCost): string;
  /** An error event in this API's stream format. */
  failure(error: AppError): string;
}

/**
 * What an answer's usage carries beside the provider's counts: its cost in credits and, on a
 * stream's final usage event, the gateway's time from the provider's last byte to the settling
 * (the call record's tail_ms; a replay sends the same).
 */
export type AnswerCost = { charged: string; tailMs: number | null };

/** The usage object an answer carries: the provider's own (or the API's shape of the counted one), with its cost in credits. */
export const usageWithCost = <R>(p: Protocol<R>, reported: unknown, usage: Usage, { charged, tailMs }: AnswerCost) => {
  const costed = {
    ...((reported as Record<string, unknown> | undefined) ?? p.toUsage(usage)),
    cost: charged,
    ...(tailMs === null ? {} : { gateway_tail_ms: tailMs }),
  };
  return p.costKeptBy ? p.costKeptBy(costed, charged) : costed;
};

/** A provider's word for why an answer ended, as the call log keeps it (a short token, or null). */
export const reasonWord = (v: unknown): string | null =>
  typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v) ? v : null;

/** One SSE event's text, with an `event:` line when named. */
export const sseEvent = (name: string | null, data: unknown) =>
  `${name ? `event: ${name}\n` : ''}data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;

/**
 * The tokens a provider adds around `n` messages (or items): OpenAI's chat framing, 4 a message
 * and 3 to prime the answer, for its own models; another family's framing is its own, so a
 * bytes-bounded model is held for more: 16 a message plus 16 and, with tools, the few hundred
 * tokens of a tool-use system prompt (Anthropic's is 264–346).
 */
export const messageFraming = (n: number, tools: boolean, bound: TokenBound) =>
  bound === 'o200k' ? 3 + 4 * n : 16 + 16 * n + (tools ? 1024 : 0);

/** A JSON object's field, if the text is one (never throws). */
export function parsed(data: string): Record<string, unknown> {
  try {
    const v = JSON.parse(data);
    return v && typeof v === 'object' ? v : {};
  } catch {
    return {};
  }
}

/**
 * OpenRouter's `models`: the models to try in order when the one asked for fails before its
 * answer began (docs/ai-gateway.md § Fallback models). Those other than `model` are its fallbacks.
 */
export const FallbackModelsSchema = z.array(ModelSchema).min(1).max(4);

/**
 * The request without `models` (the provider never sees it) and its fallback models: the names
 * other than `model`, in order, each once; more than 3 is VALIDATION_FAILED.
 */
export function fallbackModels<R>(p: Protocol<R>, req: R): { req: R; fallbacks: string[] } {
  const { models, ...rest } = req as R & { models?: string[] };
  const fallbacks = [...new Set(models ?? [])].filter((m) => m !== p.model(req));
  if (fallbacks.length > 3) {
    throw new AppError('validation', 'VALIDATION_FAILED', 'models may name at most 3 models besides model.', {
      field: 'models',
    });
  }
  return { req: rest as R, fallbacks };
}

/** A tool's definition, a tool call or a response format: JSON walked without recursion, bounded. */
export const JsonBlockSchema = jsonObject({ depth: 10, entries: 500, key: 256, text: 100_000 });

/** A stream cut at the call's deadline before the provider's end: what was streamed was charged. */
export const answerCut = () =>
  new AppError(
    'unavailable',
    'ANSWER_CUT',
    "The answer was cut at the call's deadline; what was streamed was charged.",
    {
      status: 504,
    },
  );

/**
 * The most input tokens the provider can bill for the request's prompt, or null when it passes
 * `limit` (counting stops there: a huge prompt costs no more work than one at the limit).
 */
export async function promptTokens<R>(p: Protocol<R>, req: R, limit: number): Promise<number | null> {
  const bound = tokenBoundOf(p.model(req));
  const base = p.framing(req, bound);
  if (base > limit) return null; // token-id inputs count as framing alone
  const text = await countTokens(p.promptTexts(req), bound, limit - base);
  return text === null ? null : base + text;
}

/**
 * SSE text read so far: `scanned` chars of it hold no event's end (an event sent in many reads is
 * scanned once, not again at each read); `cr`, a read ended between a `\r` and its `\n`.
 */
export interface SseBuffer {
  text: string;
  scanned?: number;
  cr?: boolean;
}

/** Adds a read's bytes to `buffer` as text, `\r\n` read as `\n` even when a read ends between the two. */
export function addRead(buffer: SseBuffer, decoder: TextDecoder, bytes: Uint8Array) {
  let text = (buffer.cr ? '\r' : '') + decoder.decode(bytes, { stream: true });
  buffer.cr = text.endsWith('\r');
  if (buffer.cr) text = text.slice(0, -1);
  buffer.text += text.replaceAll('\r\n', '\n');
}

/** Splits SSE text into whole events (the rest waits for more). */
export function* sseEvents(buffer: SseBuffer): Generator<Sse> {
  for (;;) {
    const i = buffer.text.indexOf('\n\n', buffer.scanned ?? 0);
    if (i < 0) {
      buffer.scanned = Math.max(buffer.text.length - 1, 0); // its last char may start an end
      return;
    }
    const raw = buffer.text.slice(0, i + 2);
    buffer.text = buffer.text.slice(i + 2);
    buffer.scanned = 0;
    let name: string | null = null, data = '';
    if (raw.startsWith('data: ') && raw.indexOf('\n') === raw.length - 2) data = raw.slice(6, -2);
    else {
      for (const line of raw.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data += (data ? '\n' : '') + line.slice(5).trimStart();
      }
    }
    if (data) yield { name, data, raw };
  }
}

/**
 * Whether a request forces a tool call (`required`, a named function or tool, Anthropic's `any`)
 * or JSON (a schema, or JSON mode): an answer cut at a shorter maximum could not be parsed.
 * @example wholeAnswerOnly: (req) => forcesWholeAnswer(req.tool_choice, req.response_format)
 */
export function forcesWholeAnswer(toolChoice: unknown, format: unknown): boolean {
  const type = (x: unknown) => typeof x === 'object' && x !== null ? (x as { type?: unknown }).type : undefined;
  return toolChoice === 'required' || ['function', 'tool', 'any'].includes(String(type(toolChoice))) ||
    ['json_schema', 'json_object'].includes(String(type(format)));
}
