// One metered AI call, whatever the API (protocol.ts): hold, call the model's upstream once,
// capture what it reported. The flow and its failure rules are docs/ai-gateway.md's; in short:
// nothing reaches the provider without a hold; a provider failure before it reported usage
// charges nothing; a client that leaves does not stop the provider's answer: it is read to its
// end (in the background) for the provider's own usage, which is what the provider bills; an
// answer cut by the call's deadline is charged what was read, counted by the tokenizer (the
// ledger says which). Every call leaves one record (billing.ai_calls), written by the statements
// that hold, settle or refuse it: its timings, the provider's status and end, and, only when its
// owner consented, its content, redacted (docs/ai-gateway.md, "The call log").
import { createHash } from 'node:crypto';
import type { AppContext } from '../_shared/app-env.ts';
import { aiGatewayEnv, postUpstream, upstreamsSpeaking } from '../_shared/adapters/ai-upstreams.ts';
import { outliveResponse } from '../_shared/background.ts';
import { countTokens, tokenBoundOf } from '../_shared/domain/token-bounds.ts';
import { AppError } from '../_shared/errors.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { redactContent } from '../_shared/redact-content.ts';
import type { Steps } from '../_shared/server-timing.ts';
import type { GatewayEnv } from '../_shared/adapters/ai-upstreams.ts';
import {
  beginCall,
  type CallRecord,
  type CallReport,
  failCall,
  finishCall,
  refuseCall,
  storedAnswer,
  type Usage,
} from './metering.ts';
import { promptTokens, type Protocol, type Sse, sseEvents, usageWithCost } from './protocol.ts';
import { dataFromCopy, eventsCopy, eventsFromCopy, jsonCopy, jsonFromCopy } from './replay-copy.ts';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** Why the provider's answer is not one: a stable code for the ledger and an error for the caller. */
function providerFailure(status: number | 'timeout' | 'unreachable'): { code: string; error: AppError } {
  if (status === 'timeout') {
    return {
      code: 'PROVIDER_TIMEOUT',
      error: new AppError('unavailable', 'PROVIDER_TIMEOUT', 'The model did not answer in time; nothing was charged.', {
        status: 504,
      }),
    };
  }
  if (
    typeof status === 'number' && status >= 400 && status < 500 && status !== 401 && status !== 403 && status !== 429
  ) {
    return {
      code: `PROVIDER_REFUSED_${status}`,
      error: new AppError(
        'validation',
        'PROVIDER_REFUSED',
        `The model refused the request (${status}); nothing was charged.`,
      ),
    };
  }
  return {
    code: status === 'unreachable' ? 'PROVIDER_UNREACHABLE' : `PROVIDER_ERROR_${status}`,
    error: new AppError('unavailable', 'PROVIDER_ERROR', 'The model is unavailable right now; nothing was charged.', {
      status: 502,
      retryable: true,
    }),
  };
}

type Call<R> = {
  id: string;
  userId: string;
  held: string;
  prompt: number;
  /** The caller sent an Idempotency-Key: the answer is kept 24 h for a replay. */
  keep: boolean;
  /** Its owner consented: the redacted prompt and answer go on its record. */
  keepContent: boolean;
  req: R;
  p: Protocol<R>;
  /** performance.now() when the call arrived; what the record's timings count from. */
  started: number;
  /** The request's timed steps (Server-Timing): a whole answer sends them all; a stream, those before its first byte. */
  steps: Steps;
  upstreamStatus: number | null;
  firstTokenMs: number | null;
};

const since = (t: number) => Math.round(performance.now() - t);

/**
 * Content kept with consent: the request (as JSON) or the answer text, normalised and redacted
 * as the provider reads it (redact-content.ts), at most 64 KiB (UTF-8) of each.
 */
const keptBytes = 65_536;
const utf8 = new TextEncoder();
function kept(content: unknown): string {
  const whole = typeof content === 'string' ? content : JSON.stringify(content);
  // No more characters than bytes are kept, so the redaction reads at most what could be kept
  // and 512 more: whatever its budget cuts in two (an email, a card number) lies past the cut below.
  const redacted = redactContent(content, keptBytes + 512);
  const clean = typeof redacted === 'string' ? redacted : JSON.stringify(redacted);
  const bytes = utf8.encode(clean);
  if (bytes.length <= keptBytes && whole.length <= keptBytes) return clean;
  // A character cut in two decodes as U+FFFD; the mark says the text goes on.
  return `${new TextDecoder().decode(bytes.subarray(0, keptBytes - 16))} …[cut]`;
}

/** What the call's record keeps beside its money, written by the statement that settles it. */
function report<R>(call: Call<R>, end: { finishReason?: string | null; clientLeft?: boolean; answer?: () => string }) {
  const r: CallReport = {
    upstream_status: call.upstreamStatus,
    first_token_ms: call.firstTokenMs,
    duration_ms: since(call.started),
    finish_reason: end.finishReason ?? null,
    client_left: end.clientLeft ?? false,
  };
  if (call.keepContent) r.content = { prompt: kept(call.req), answer: kept(end.answer?.() ?? '') };
  return r;
}

/** Usage the gateway counted itself: the prompt's bound as uncached input, what was read as output. */
const countedUsage = async <R>(call: Call<R>, answer: string): Promise<Usage> => ({
  input_tokens: call.prompt,
  cached_input_tokens: 0,
  output_tokens: (await countTokens([answer], tokenBoundOf(call.p.model(call.req)), Infinity)) ?? 0,
  reasoning_tokens: 0,
});

/** Holds, calls the model's upstream once in the protocol's API, and charges what it reported. */
export async function meteredCall<R>(c: AppContext, p: Protocol<R>, req: R): Promise<Response> {
  const started = performance.now();
  const env = aiGatewayEnv();
  const { begun, prompt, maxOutput, callerKey, expanded } = await begin(c, p, req, env, started);
  if (begun.state === 'replay') return replay(p, begun.call, expanded);
  req = expanded;

  failpoint('ai.after_hold'); // the reliability tests die here, and before the capture: nothing is charged
  const call: Call<R> = {
    id: begun.call_id,
    userId: currentUser(c).id,
    held: begun.held,
    prompt,
    keep: callerKey !== null,
    keepContent: begun.keep_content,
    req,
    p,
    started,
    steps: c.get('steps'),
    upstreamStatus: null,
    firstTokenMs: null,
  };
  const upstream = new AbortController();
  const deadline = setTimeout(() => upstream.abort('deadline'), env.AI_CALL_MAX_SECONDS * 1000);
  // A provider sends a whole (non-streamed) answer's headers only once it is written: that wait is
  // bounded by the call's deadline, not by the first-byte timeout a stream gets.
  const streamed = p.streamed(req);
  const firstByte = streamed ? setTimeout(() => upstream.abort('timeout'), env.AI_TIMEOUT_MS) : undefined;
  let res: Response;
  try {
    res = await call.steps.time(
      'upstream',
      () => postUpstream(begun.upstream, p.endpoint, p.providerBody(req, maxOutput), upstream.signal),
    );
  } catch {
    clearTimeout(deadline);
    throw await failed(call, upstream.signal.aborted ? 'timeout' : 'unreachable');
  } finally {
    clearTimeout(firstByte);
  }
  call.upstreamStatus = res.status;
  if (!res.ok) {
    clearTimeout(deadline);
    await res.body?.cancel().catch(() => {});
    throw await failed(call, res.status);
  }
  if (!streamed) {
    try {
      return await answerWhole(call, res);
    } finally {
      clearTimeout(deadline);
    }
  }
  return relay(call, res, upstream, deadline, env.AI_TIMEOUT_MS, c.req.raw.signal);
}

/**
 * Everything before the provider: the answer's limit, the prompt's count (bounded by the limit)
 * and the hold. A refusal is recorded (one statement, no hold: begin's own, or refuseCall for
 * what is refused before it), then thrown.
 */
async function begin<R>(c: AppContext, p: Protocol<R>, req: R, env: GatewayEnv, started: number) {
  let prompt: number | null;
  let maxOutput: number;
  let callerKey: string | null;
  try {
    // References opened first: the prompt counted and held is what the provider bills.
    const expand = p.expand;
    if (expand) req = await c.get('steps').time('expand', () => expand(req, currentUser(c).id));
    const limit = p.outputLimit(req);
    if (limit?.asked && limit.asked > env.AI_MAX_OUTPUT_TOKENS) {
      throw new AppError(
        'validation',
        'VALIDATION_FAILED',
        `${limit.field} may be at most ${env.AI_MAX_OUTPUT_TOKENS}.`,
        {
          field: limit.field,
        },
      );
    }
    maxOutput = limit ? limit.asked ?? env.AI_MAX_OUTPUT_TOKENS : 0;
    prompt = await c.get('steps').time('count', () => promptTokens(p, req, env.AI_MAX_PROMPT_TOKENS));
    if (prompt === null) {
      throw new AppError(
        'validation',
        'PROMPT_TOO_LONG',
        `The prompt is more than ${env.AI_MAX_PROMPT_TOKENS} tokens.`,
      );
    }
    // A caller's key keeps the answer for a replay (24 h); without one every call is its own.
    callerKey = c.req.header('idempotency-key') ? idempotencyKey(c) : null;
  } catch (err) {
    if (err instanceof AppError && err.status < 500) {
      await refuseCall(currentUser(c).id, p.model(req), p.endpoint, p.streamed(req), err.code, since(started))
        .catch((e) => log.error('ai refusal could not be recorded', errorSummary(e)));
    }
    throw err;
  }
  const args = {
    userId: currentUser(c).id,
    model: p.model(req),
    promptTokens: prompt,
    maxOutputTokens: maxOutput,
    key: callerKey ?? `auto:${crypto.randomUUID()}`,
    requestHash: sha256(`${p.endpoint} ${JSON.stringify(req)}`),
    ttlSeconds: env.AI_CALL_MAX_SECONDS + 60,
    endpoint: p.endpoint,
    upstreams: upstreamsSpeaking(p.endpoint),
    writesCache: p.writesCache(req),
    writesCache1h: p.writesCache1h?.(req) ?? false,
    stream: p.streamed(req),
  };
  const begun = await c.get('steps').time('begin', () => beginCall(args, since(started)));
  return { begun, prompt, maxOutput, callerKey, expanded: req };
}

/** Fails the call (nothing charged) and gives the caller's error. */
async function failed<R>(call: Call<R>, status: number | 'timeout' | 'unreachable'): Promise<AppError> {
  const { code, error } = providerFailure(status);
  await failCall(call.id, code, report(call, {}));
  return error;
}

const callHeaders = (record: CallRecord) => ({ 'x-credits-charged': record.charged, 'x-ai-call-id': record.call_id });

/** A whole answer with its usage carrying the cost in credits (usage.cost). */
const withCost = <R>(p: Protocol<R>, body: Record<string, unknown>, usage: Usage, charged: string) => ({
  ...body,
  usage: usageWithCost(p, body.usage, usage, charged),
});

/**
 * A non-streamed answer: read whole, charged, returned with its cost. A body that stalls is ended
 * by the call's deadline (meteredCall aborts the upstream request, which fails the read), so no
 * timer of its own: one per call, never cleared, would live for the deadline's 300 s.
 */
async function answerWhole<R>(call: Call<R>, res: Response): Promise<Response> {
  let body: Record<string, unknown>;
  try {
    body = await call.steps.time('upstream_body', () => res.json());
  } catch {
    throw await failed(call, 'timeout');
  }
  call.firstTokenMs = since(call.started);
  const reported = body.usage ? call.p.fromUsage(body.usage) : null;
  const usage = reported ?? await countedUsage(call, call.p.answerText(body));
  const answer = call.p.sealAnswer ? await call.p.sealAnswer(body, call.userId) : body;
  const record = await call.steps.time('finish', () =>
    finishCall(
      call.id,
      usage,
      reported ? 'provider' : 'tokenizer',
      call.keep ? { json: jsonCopy(answer, call.req) } : null,
      false,
      report(call, { finishReason: call.p.finishReason(body), answer: () => call.p.answerText(body) }),
    ));
  return Response.json(withCost(call.p, answer, usage, record.charged), { headers: callHeaders(record) });
}

const encoder = new TextEncoder();
const sseHeaders = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };

/**
 * The same Idempotency-Key again: the first answer, charged once, never a second provider call.
 * Its copy gone (past its 24 hours, or deleted with the call's content), the key answers 409.
 */
function replay<R>(p: Protocol<R>, record: CallRecord, req: R): Response {
  const answer = storedAnswer(record);
  if (!answer) {
    throw new AppError(
      'conflict',
      'IDEMPOTENCY_ANSWER_GONE',
      "This key's answer is no longer kept (24 hours, or its content was deleted); send the request under a new key.",
    );
  }
  const headers = { 'Idempotent-Replayed': 'true', ...callHeaders(record) };
  const usage = record.usage!;
  if ('json' in answer) {
    return Response.json(withCost(p, jsonFromCopy(answer.json, req), usage, record.charged), { headers });
  }
  const text = eventsFromCopy(answer.events, req).join('') +
    p.closing(req, answer.held === null ? null : dataFromCopy(answer.held, req), usage, record.charged);
  return new Response(text, { headers: { ...sseHeaders, ...headers } });
}

/**
 * A streamed answer, relayed event by event. The event carrying the provider's final usage is
 * kept back until the call is charged, then sent with its cost. If the client leaves, the
 * provider's answer is still read to its end (bounded by the call's deadline) for the usage it
 * reports: stopping it would leave the gateway to guess what the provider bills. The reading and
 * settling outlive the response (EdgeRuntime.waitUntil on hosted).
 */
function relay<R>(
  call: Call<R>,
  res: Response,
  upstream: AbortController,
  deadline: ReturnType<typeof setTimeout>,
  idleMs: number,
  clientSignal: AbortSignal,
): Response {
  const p = call.p;
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let out: ReadableStreamDefaultController<Uint8Array> | undefined;
  let clientGone = false;
  /** The client left: nothing more is sent; the provider's answer is read on for its usage. */
  const leave = () => {
    clientGone = true;
  };
  /** Passes `text` (whole SSE events) on to the client, unless it left. */
  const send = (text: string) => {
    if (clientGone || !out || !text) return;
    try {
      out.enqueue(encoder.encode(text));
    } catch {
      clientGone = true;
    }
  };

  async function pump(): Promise<void> {
    const events = p.reader(call.req, call.userId);
    const buffer = { text: '' };
    const sent: Sse[] = [];
    /** The answer's text as streamed so far (what the tokenizer counts, and what consent keeps). */
    const answerRead = () => sent.map((e) => p.eventText(e.data)).join('');
    let ended = false, broken = false, errorAfterUsage = false;
    // One watchdog for the whole stream (not a timer per read): the provider going silent for
    // longer than idleMs stops the upstream request.
    let lastRead = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastRead > idleMs) upstream.abort('timeout');
    }, Math.min(idleMs, 1000));
    try {
      read: for (;;) {
        const next = await reader.read();
        lastRead = Date.now();
        if (next.done) break;
        call.firstTokenMs ??= since(call.started);
        buffer.text += decoder.decode(next.value, { stream: true }).replaceAll('\r\n', '\n');
        let relayed = ''; // what this read passes on, sent at once
        for (const provided of sseEvents(buffer)) {
          const event = events.rewrite ? await events.rewrite(provided) : provided;
          const action = events.see(event);
          if (action === 'send') {
            sent.push(event);
            relayed += event.raw;
          } else if (action === 'end' || action === 'error') {
            // An error after the final usage: the provider bills the call; it is charged and marked failed.
            errorAfterUsage = action === 'error' && events.usage() !== null;
            broken = action === 'error' && !errorAfterUsage;
            ended = action === 'end';
            send(relayed);
            break read;
          }
        }
        send(relayed);
      }
      ended ||= events.usage() !== null;
      broken ||= !ended && !errorAfterUsage && upstream.signal.reason !== 'deadline';
    } catch {
      // The deadline passed, the provider went silent or broke off.
      broken = upstream.signal.reason !== 'deadline' && events.usage() === null;
    } finally {
      clearTimeout(deadline);
      clearInterval(watchdog);
      reader.cancel().catch(() => {});
    }

    let closing: string;
    try {
      if (broken) {
        const { code, error } = providerFailure(upstream.signal.reason === 'timeout' ? 'timeout' : 502);
        await failCall(call.id, code, report(call, { clientLeft: clientGone, answer: answerRead }));
        closing = p.failure(error);
      } else {
        const reported = events.usage();
        const usage = reported ?? await countedUsage(call, answerRead());
        failpoint('ai.before_capture');
        const held = events.held();
        const record = await finishCall(
          call.id,
          usage,
          reported ? 'provider' : 'tokenizer',
          call.keep ? eventsCopy(sent, held, call.req) : null,
          errorAfterUsage,
          report(call, { finishReason: events.finishReason(), clientLeft: clientGone, answer: answerRead }),
        );
        await events.keepItems?.().catch((e) => log.error('ai answer items could not be kept', errorSummary(e)));
        closing = p.closing(call.req, held, usage, record.charged);
      }
    } catch (err) {
      // The hold expires and the sweep fails the call: nothing is charged twice or lost.
      log.error('ai call could not be settled', { callId: call.id, ...errorSummary(err) });
      closing = p.failure(new AppError('server', 'INTERNAL_ERROR', 'The call could not be settled.'));
    }
    send(closing);
    if (!clientGone) out?.close();
  }

  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      out = controller;
      const settled = pump().catch((err) => log.error('ai relay failed', errorSummary(err)));
      outliveResponse(settled);
    },
    cancel: leave,
  });
  // The client's connection closing is the other sign it left (a write into it may not fail at once).
  clientSignal.addEventListener('abort', leave, { once: true });
  return new Response(body, { headers: { ...sseHeaders, 'x-ai-call-id': call.id, 'x-credits-held': call.held } });
}
