// One metered AI call, whatever the API (protocol.ts): hold, call the model's upstreams in order
// until one answers (a failure before the answer's first byte moves on to the next; none after),
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
import {
  aiGatewayEnv,
  type Failure,
  isAnswer,
  upstreamsFor,
  upstreamsSpeaking,
  worthAnother,
} from '../_shared/adapters/ai-upstreams.ts';
import { outliveResponse } from '../_shared/background.ts';
import { countTokens, tokenBoundOf } from '../_shared/domain/token-bounds.ts';
import { AppError, internalError } from '../_shared/errors.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { redactContent } from '../_shared/redact-content.ts';
import type { Steps } from '../_shared/server-timing.ts';
import type { GatewayEnv } from '../_shared/adapters/ai-upstreams.ts';
import {
  type Attempt,
  beginCall,
  type CallRecord,
  type CallReport,
  failCall,
  finishCall,
  refuseCall,
  storedAnswer,
  type Usage,
} from './metering.ts';
import {
  addRead,
  type AnswerCost,
  fallbackModels,
  promptTokens,
  type Protocol,
  type Sse,
  type SseBuffer,
  sseEvents,
  usageWithCost,
} from './protocol.ts';
import { attempt, providerFailure } from './upstream-try.ts';
import { dataFromCopy, eventsCopy, eventsFromCopy, jsonCopy, jsonFromCopy } from './replay-copy.ts';

type Json = Record<string, unknown>;

/** A request's hash (the key's claim compares them), hex. */
export const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

export type Call<R> = {
  id: string;
  userId: string;
  /** The card's model, what every upstream is asked for (an alias named in the request is its card's). */
  model: string;
  held: string;
  /** The answer's maximum the hold pays for: what the provider is asked for (x-ai-max-output-tokens). */
  maxOutput: number;
  /** From the request's arrival to the provider call, ms (x-gateway-overhead-ms), once called. */
  overheadMs: number;
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
  /** performance.now() when the provider's answer was read to its end (the gateway's tail counts from it). */
  lastByteAt: number | null;
  /** The upstream that answers (or was tried last). */
  upstream: string;
  /** The upstreams that failed before it, in order (the call record's attempts). */
  attempts: Attempt[];
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
    tail_ms: call.lastByteAt === null ? null : since(call.lastByteAt),
    finish_reason: end.finishReason ?? null,
    client_left: end.clientLeft ?? false,
    upstream: call.upstream,
    model: call.model,
    attempts: call.attempts,
  };
  if (call.keepContent) r.content = { prompt: kept(call.req), answer: kept(end.answer?.() ?? '') };
  return r;
}

/** Usage the gateway counted itself: the prompt's bound as uncached input, what was read as output. */
const countedUsage = async <R>(call: Call<R>, answer: string): Promise<Usage> => ({
  input_tokens: call.prompt,
  cached_input_tokens: 0,
  output_tokens: (await countTokens([answer], tokenBoundOf(call.model), Infinity)) ?? 0,
  reasoning_tokens: 0,
});

/** Holds, calls the model's upstreams in the protocol's API until one answers, and charges what it reported. */
export async function meteredCall<R>(c: AppContext, p: Protocol<R>, req: R): Promise<Response> {
  const started = performance.now();
  const env = aiGatewayEnv();
  const { begun, prompt, callerKey, expanded } = await begin(c, p, req, env, started);
  if (begun.state === 'replay') return replay(p, begun.call, expanded);
  req = expanded;

  failpoint('ai.after_hold'); // the reliability tests die here, and before the capture: nothing is charged
  const call: Call<R> = {
    id: begun.call_id,
    userId: currentUser(c).id,
    model: begun.model,
    held: begun.held,
    maxOutput: begun.max_output_tokens,
    overheadMs: 0,
    prompt,
    keep: callerKey !== null,
    keepContent: begun.keep_content,
    req,
    p,
    started,
    steps: c.get('steps'),
    upstreamStatus: null,
    firstTokenMs: null,
    lastByteAt: null,
    upstream: begun.upstream,
    attempts: [],
  };
  // One deadline for the whole call, whichever upstream it is with (`current`).
  let current = new AbortController();
  const deadline = setTimeout(() => current.abort('deadline'), env.AI_CALL_MAX_SECONDS * 1000);
  const streamed = p.streamed(req);
  // The model's upstreams, then each fallback model's (docs/ai-gateway.md § Fallback models).
  const candidates = [{ model: begun.model, upstream: begun.upstream }, ...begun.fallbacks]
    .flatMap((m) => upstreamsFor(m.model, m.upstream, p.endpoint).map((name) => ({ model: m.model, name })));
  call.overheadMs = performance.now() - call.steps.arrived;
  for (const [i, { model, name }] of candidates.entries()) {
    current = new AbortController();
    call.model = model;
    call.upstream = name;
    const tried = performance.now();
    // A stream with another upstream behind it is answered only once its first bytes came.
    const got = await attempt(call, name, current, streamed, i < candidates.length - 1, env.AI_TIMEOUT_MS);
    if ('res' in got) {
      if (!streamed) {
        try {
          return await answerWhole(call, got.res, current, got.body);
        } finally {
          clearTimeout(deadline);
        }
      }
      const reader = got.reader ?? (got.res.body as ReadableStream<Uint8Array>).getReader();
      return relay(call, reader, got.first, current, deadline, env.AI_TIMEOUT_MS, c.req.raw.signal);
    }
    // A student who left is not sent on: the next upstream's answer would be billed for nobody.
    const gone = c.req.raw.signal.aborted;
    const last = i === candidates.length - 1 || !worthAnother(got.failure) || current.signal.reason === 'deadline' ||
      gone;
    if (last) {
      clearTimeout(deadline);
      throw await failed(call, got.failure, gone);
    }
    call.attempts.push({
      upstream: name,
      model,
      failure: providerFailure(got.failure).code,
      status: typeof got.failure === 'number' ? got.failure : null,
      ms: since(tried),
    });
    log.warn('ai upstream failed; trying the next', { callId: call.id, upstream: name, failure: String(got.failure) });
  }
  throw internalError(); // never: the last candidate answers or throws above
}

/**
 * Everything before the provider: the answer's limit, the prompt's count (bounded by the limit)
 * and the hold. A refusal is recorded (one statement, no hold: begin's own, or refuseCall for
 * what is refused before it), then thrown.
 */
async function begin<R>(c: AppContext, p: Protocol<R>, req: R, env: GatewayEnv, started: number) {
  let prompt: number | null;
  let maxOutput: number;
  let minOutput: number | null;
  let callerKey: string | null;
  let fallbacks: string[];
  try {
    ({ req, fallbacks } = fallbackModels(p, req));
    // References opened first: the prompt counted and held is what the provider bills.
    const expand = p.expand;
    if (expand) req = await c.get('steps').time('expand', () => expand(req, currentUser(c).id));
    const limit = p.outputLimit(req);
    // The last credits buy a shorter answer (docs/ai-gateway.md § The last credits), unless a cut
    // answer would be useless or the caller asks for the whole one.
    const whole = c.req.header('x-ai-clamp') === 'off';
    const cuttable = !!limit && !p.wholeAnswerOnly(req) && !whole;
    // The least answer worth holding for: beyond what the request sets aside for thinking (a
    // maximum within it, the provider refuses).
    const least = env.AI_MIN_OUTPUT_TOKENS + (p.thinkingBudget?.(req) ?? 0);
    // A maximum past the operator's is the operator's (an SDK's default for a model, such as
    // 64,000 for Claude, is not the app's choice); refused only when the caller asked for the
    // whole answer, or what it sets aside for thinking leaves no answer within it.
    if (limit?.asked && limit.asked > env.AI_MAX_OUTPUT_TOKENS && (whole || least > env.AI_MAX_OUTPUT_TOKENS)) {
      throw new AppError(
        'validation',
        'VALIDATION_FAILED',
        `${limit.field} may be at most ${env.AI_MAX_OUTPUT_TOKENS}.`,
        {
          field: limit.field,
        },
      );
    }
    maxOutput = limit ? Math.min(limit.asked ?? env.AI_MAX_OUTPUT_TOKENS, env.AI_MAX_OUTPUT_TOKENS) : 0;
    minOutput = cuttable ? Math.min(least, maxOutput) : null;
    // Counted as each model the call may go to reads it (another family's tokens are its own).
    prompt = await c.get('steps').time('count', async () => {
      let most: number | null = 0;
      for (const model of [p.model(req), ...fallbacks]) {
        const n = await promptTokens(p, model === p.model(req) ? req : { ...req, model }, env.AI_MAX_PROMPT_TOKENS);
        most = n === null || most === null ? null : Math.max(most, n);
      }
      return most;
    });
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
    minOutputTokens: minOutput,
    key: callerKey ?? `auto:${crypto.randomUUID()}`,
    requestHash: sha256(`${p.endpoint} ${JSON.stringify(req)}${fallbacks.length ? ` ${fallbacks.join(',')}` : ''}`),
    ttlSeconds: env.AI_CALL_MAX_SECONDS + 60,
    endpoint: p.endpoint,
    upstreams: upstreamsSpeaking(p.endpoint),
    fallbackModels: fallbacks,
    writesCache: p.writesCache(req),
    writesCache1h: p.writesCache1h?.(req) ?? false,
    stream: p.streamed(req),
  };
  const begun = await c.get('steps').time('begin', () => beginCall(args, since(started)));
  return { begun, prompt, callerKey, expanded: req };
}

/** Fails the call (nothing charged) and gives the caller's error. */
async function failed<R>(call: Call<R>, failure: Failure, clientLeft = false): Promise<AppError> {
  const { code, error } = providerFailure(failure);
  await failCall(call.id, code, report(call, { clientLeft }));
  return error;
}

/** What a stream's final usage event carries of its record: the cost, the gateway's tail (a replay's too). */
const costOf = (record: CallRecord): AnswerCost => ({ charged: record.charged, tailMs: record.tail_ms });

/** Who answered: `<upstream>/<model>` (an upstream's name has no slash; a model's may). */
const answeredBy = (upstream: string, model: string) => ({ 'x-ai-answered-by': `${upstream}/${model}` });

const callHeaders = (record: CallRecord, maxOutput: number) => ({
  'x-credits-charged': record.charged,
  'x-ai-call-id': record.call_id,
  'x-ai-max-output-tokens': String(maxOutput),
  ...answeredBy(record.upstream, record.model),
});
/** The gateway's own time before the provider was called (as LiteLLM's overhead header): always sent. */
const overheadHeader = (ms: number) => ({ 'x-gateway-overhead-ms': ms.toFixed(1) });

/** A whole answer with its usage carrying the cost in credits (usage.cost). */
const withCost = <R>(p: Protocol<R>, body: Record<string, unknown>, usage: Usage, cost: AnswerCost) => ({
  ...body,
  usage: usageWithCost(p, body.usage, usage, cost),
});

/**
 * A non-streamed answer: read whole (unless `read` already, by a try with another upstream behind
 * it), charged, returned with its cost. A body that stalls is ended by the call's deadline
 * (meteredCall aborts the upstream request, which fails the read), so no timer of its own: one per
 * call, never cleared, would live for the deadline's 300 s. One that breaks is the provider's error.
 */
async function answerWhole<R>(call: Call<R>, res: Response, ctl: AbortController, read?: Json): Promise<Response> {
  let body: unknown;
  try {
    body = read !== undefined ? read : await call.steps.time('upstream_body', () => res.json());
  } catch {
    throw await failed(call, ctl.signal.aborted ? 'timeout' : 'broken');
  }
  // JSON that is no answer (null, the provider's error without usage) is its failure: nothing charged.
  if (!isAnswer(body)) throw await failed(call, 'broken');
  call.firstTokenMs = since(call.started);
  call.lastByteAt = performance.now();
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
  return Response.json(withCost(call.p, answer, usage, { charged: record.charged, tailMs: null }), {
    headers: { ...callHeaders(record, call.maxOutput), ...overheadHeader(call.overheadMs) },
  });
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
  const headers = { 'Idempotent-Replayed': 'true', ...callHeaders(record, record.max_output_tokens) };
  const usage = record.usage!;
  if ('json' in answer) {
    return Response.json(
      withCost(p, jsonFromCopy(answer.json, req), usage, { charged: record.charged, tailMs: null }),
      {
        headers,
      },
    );
  }
  const text = eventsFromCopy(answer.events, req).join('') +
    p.closing(req, answer.held === null ? null : dataFromCopy(answer.held, req), usage, costOf(record));
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
  reader: ReadableStreamDefaultReader<Uint8Array>,
  first: Uint8Array | undefined,
  upstream: AbortController,
  deadline: ReturnType<typeof setTimeout>,
  idleMs: number,
  clientSignal: AbortSignal,
): Response {
  const p = call.p;
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
    const buffer: SseBuffer = { text: '' };
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
        // The first bytes, when read already (meteredCall's peek), come first.
        const next = first ? { done: false as const, value: first } : await reader.read();
        first = undefined;
        lastRead = Date.now();
        if (next.done) break;
        call.firstTokenMs ??= since(call.started);
        addRead(buffer, decoder, next.value);
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
      call.lastByteAt = performance.now();
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
        await events.keepItems?.(call.id).catch((e) => log.error('ai answer items could not be kept', errorSummary(e)));
        closing = p.closing(call.req, held, usage, costOf(record));
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
  // The client's connection closing is the other sign it left (a write into it may not fail at
  // once); it may have closed already, while the first bytes were awaited.
  if (clientSignal.aborted) leave();
  else clientSignal.addEventListener('abort', leave, { once: true });
  return new Response(body, {
    headers: {
      ...sseHeaders,
      'x-ai-call-id': call.id,
      'x-credits-held': call.held,
      'x-ai-max-output-tokens': String(call.maxOutput),
      ...answeredBy(call.upstream, call.model),
      ...overheadHeader(call.overheadMs),
    },
  });
}
