// POST /ai/v1/chat/completions: hold, call the provider once, capture what it reported.
// The flow and its failure rules are docs/ai-gateway.md's; in short: nothing reaches the
// provider without a hold; a provider failure before it reported usage charges nothing; a
// client that leaves does not stop the provider's answer: it is read to its end (in the
// background) for the provider's own usage, which is what the provider bills; an answer cut by
// the call's deadline is charged what was read, counted by the tokenizer (the ledger says which).
import { createHash } from 'node:crypto';
import type { AppContext } from '../_shared/app-env.ts';
import { aiGatewayEnv, disjointUsage, providerChat } from '../_shared/adapters/ai.ts';
import { outliveResponse } from '../_shared/background.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { AppError } from '../_shared/errors.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { beginCall, type CallRecord, failCall, finishCall, type Usage } from './metering.ts';
import { countTokens } from '../_shared/domain/token-bounds.ts';
import { promptTokens, providerBody } from './request.ts';
import type { ChatRequest } from './schemas.ts';

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

/** Usage the gateway counted itself: the prompt's bound as uncached input, what was read as output (o200k). */
const countedUsage = async (prompt: number, streamed: string): Promise<Usage> => ({
  input_tokens: prompt,
  cached_input_tokens: 0,
  output_tokens: (await countTokens([streamed], 'o200k', Infinity)) ?? 0,
  reasoning_tokens: 0,
});

/** Usage as OpenAI writes it, for an answer whose provider sent none. */
const openAiUsage = (u: Usage) => ({
  prompt_tokens: u.input_tokens + u.cached_input_tokens,
  completion_tokens: u.output_tokens + u.reasoning_tokens,
  total_tokens: u.input_tokens + u.cached_input_tokens + u.output_tokens + u.reasoning_tokens,
});

/** The text a response or chunk carries (content, refusals, tool call arguments): what the tokenizer counts. */
function answerText(choices: unknown): string {
  if (!Array.isArray(choices)) return '';
  let text = '';
  for (const ch of choices) {
    const part = ch?.delta ?? ch?.message ?? {};
    for (const v of [part.content, part.refusal, part.reasoning_content]) if (typeof v === 'string') text += v;
    // Every kind of tool call, whole (names, arguments, inputs): over-counting is the safe side.
    if (Array.isArray(part.tool_calls)) text += JSON.stringify(part.tool_calls);
  }
  return text;
}

export async function chatCompletion(c: AppContext, req: ChatRequest): Promise<Response> {
  const env = aiGatewayEnv();
  const asked = req.max_completion_tokens ?? req.max_tokens ?? null;
  if (asked !== null && asked > env.AI_MAX_OUTPUT_TOKENS) {
    throw new AppError(
      'validation',
      'VALIDATION_FAILED',
      `max_completion_tokens may be at most ${env.AI_MAX_OUTPUT_TOKENS}.`,
      {
        field: req.max_completion_tokens ? 'max_completion_tokens' : 'max_tokens',
      },
    );
  }
  const maxOutput = asked ?? env.AI_MAX_OUTPUT_TOKENS;
  const prompt = await promptTokens(req, req.model, env.AI_MAX_PROMPT_TOKENS);
  if (prompt === null) {
    throw new AppError(
      'validation',
      'PROMPT_TOO_LONG',
      `The prompt is more than ${env.AI_MAX_PROMPT_TOKENS} tokens.`,
      { field: 'messages' },
    );
  }
  // A caller's key keeps the answer for a replay (24 h); without one every call is its own.
  const callerKey = c.req.header('idempotency-key') ? idempotencyKey(c) : null;
  const begun = await beginCall({
    userId: currentUser(c).id,
    model: req.model,
    promptTokens: prompt,
    maxOutputTokens: maxOutput,
    key: callerKey ?? `auto:${crypto.randomUUID()}`,
    requestHash: sha256(JSON.stringify(req)),
    ttlSeconds: env.AI_CALL_MAX_SECONDS + 60,
  });
  if (begun.state === 'replay') return replay(begun.call, req);

  failpoint('ai.after_hold'); // the reliability tests die here, and before the capture: nothing is charged
  const call = { id: begun.call_id, held: begun.held, prompt, keep: callerKey !== null, req };
  const upstream = new AbortController();
  const deadline = setTimeout(() => upstream.abort('deadline'), env.AI_CALL_MAX_SECONDS * 1000);
  // A provider sends a whole (non-streamed) answer's headers only once it is written: that wait is
  // bounded by the call's deadline, not by the first-byte timeout a stream gets.
  const firstByte = req.stream ? setTimeout(() => upstream.abort('timeout'), env.AI_TIMEOUT_MS) : undefined;
  let res: Response;
  try {
    res = await providerChat(providerBody(req, maxOutput), upstream.signal);
  } catch {
    clearTimeout(deadline);
    throw await failed(call.id, upstream.signal.aborted ? 'timeout' : 'unreachable');
  } finally {
    clearTimeout(firstByte);
  }
  if (!res.ok) {
    clearTimeout(deadline);
    await res.body?.cancel().catch(() => {});
    throw await failed(call.id, res.status);
  }
  if (!req.stream) {
    try {
      return await answerWhole(call, res, env.AI_CALL_MAX_SECONDS * 1000);
    } finally {
      clearTimeout(deadline);
    }
  }
  return relay(call, res, upstream, deadline, env.AI_TIMEOUT_MS, c.req.raw.signal);
}

/** Fails the call (nothing charged) and gives the caller's error. */
async function failed(callId: string, status: number | 'timeout' | 'unreachable'): Promise<AppError> {
  const { code, error } = providerFailure(status);
  await failCall(callId, code);
  return error;
}

type Call = { id: string; held: string; prompt: number; keep: boolean; req: ChatRequest };

const withCost = (usage: unknown, charged: string) => ({ ...(usage as Record<string, unknown>), cost: charged });

/** A non-streamed answer: read whole, charged, returned with its cost in credits (usage.cost). */
async function answerWhole(call: Call, res: Response, timeoutMs: number): Promise<Response> {
  let body: Record<string, unknown>;
  try {
    body = await Promise.race([
      res.json(),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timeout')), timeoutMs)),
    ]);
  } catch {
    throw await failed(call.id, 'timeout');
  }
  const reported = body.usage ? disjointUsage(body.usage as Parameters<typeof disjointUsage>[0]) : null;
  const usage = reported ?? await countedUsage(call.prompt, answerText(body.choices));
  const record = await finishCall(
    call.id,
    usage,
    reported ? 'provider' : 'tokenizer',
    call.keep ? { json: body } : null,
  );
  return answerJson(body, reported ? body.usage : openAiUsage(usage), record);
}

function answerJson(body: Record<string, unknown>, usage: unknown, record: CallRecord): Response {
  return Response.json({ ...body, usage: withCost(usage, record.charged) }, {
    headers: { 'x-credits-charged': record.charged, 'x-ai-call-id': record.call_id },
  });
}

const encoder = new TextEncoder();
const sse = (data: string) => encoder.encode(`data: ${data}\n\n`);
const sseHeaders = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };

/** The same Idempotency-Key again: the first answer, charged once, never a second provider call. */
function replay(record: CallRecord, req: ChatRequest): Response {
  const answer = record.answer;
  const headers = {
    'Idempotent-Replayed': 'true',
    'x-credits-charged': record.charged,
    'x-ai-call-id': record.call_id,
  };
  if (answer && 'json' in answer) {
    const body = answer.json as Record<string, unknown>;
    return new Response(
      JSON.stringify({ ...body, usage: withCost(body.usage ?? openAiUsage(record.usage!), record.charged) }),
      {
        headers: { 'content-type': 'application/json', ...headers },
      },
    );
  }
  const events = answer && 'events' in answer ? answer.events : [];
  return new Response(
    new ReadableStream({
      start(out) {
        for (const e of events) out.enqueue(sse(e));
        if (req.stream_options?.include_usage && record.usage) {
          out.enqueue(
            sse(
              JSON.stringify({
                object: 'chat.completion.chunk',
                choices: [],
                usage: withCost(openAiUsage(record.usage), record.charged),
              }),
            ),
          );
        }
        out.enqueue(sse('[DONE]'));
        out.close();
      },
    }),
    { headers: { ...sseHeaders, ...headers } },
  );
}

/**
 * A streamed answer, relayed chunk by chunk. The provider's usage chunk (always asked for) is
 * held back until the call is charged, then sent with its cost if the caller asked for usage.
 * If the client leaves, the provider's answer is still read to its end (bounded by the call's
 * deadline) for the usage it reports: stopping it would leave the gateway to guess what the
 * provider bills. The reading and settling outlive the response (EdgeRuntime.waitUntil on hosted).
 */
function relay(
  call: Call,
  res: Response,
  upstream: AbortController,
  deadline: ReturnType<typeof setTimeout>,
  idleMs: number,
  clientSignal: AbortSignal,
): Response {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let out: ReadableStreamDefaultController<Uint8Array> | undefined;
  let clientGone = false;
  /** The client left: nothing more is sent; the provider's answer is read on for its usage. */
  const leave = () => {
    clientGone = true;
  };
  /** Passes `text` (whole SSE events) on to the client, unless it left. */
  const sendRaw = (text: string) => {
    if (clientGone || !out || !text) return;
    try {
      out.enqueue(encoder.encode(text));
    } catch {
      clientGone = true;
    }
  };
  const send = (data: string) => sendRaw(`data: ${data}\n\n`);

  async function pump(): Promise<void> {
    let buffer = '';
    let usageChunk: Record<string, unknown> | null = null;
    let ended = false, broken = false, errorAfterUsage = false;
    const sent: string[] = [];
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
        buffer += decoder.decode(next.value, { stream: true }).replaceAll('\r\n', '\n');
        let relayed = ''; // what this read passes on, sent at once
        for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
          const event = buffer.slice(0, i);
          buffer = buffer.slice(i + 2);
          const data = event.startsWith('data: ') && !event.includes('\n')
            ? event.slice(6)
            : event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          if (!data) continue;
          if (data === '[DONE]') {
            ended = true;
            sendRaw(relayed);
            break read;
          }
          // Most chunks are answer text: passed on unparsed (their text is counted only if needed).
          if (!data.includes('"usage"') && !data.includes('"error"')) {
            sent.push(data);
            relayed += `data: ${data}\n\n`;
            continue;
          }
          const chunk = JSON.parse(data);
          if (chunk.error) {
            // An error after the usage chunk: the provider bills the call; it is charged and marked failed.
            errorAfterUsage = usageChunk !== null;
            broken = !errorAfterUsage;
            sendRaw(relayed);
            break read;
          }
          // Usage totals are cumulative where a provider repeats them: the last one counts, never a sum.
          if (chunk.usage) usageChunk = chunk;
          if (Array.isArray(chunk.choices) && chunk.choices.length === 0) continue;
          sent.push(data);
          relayed += `data: ${data}\n\n`;
        }
        sendRaw(relayed);
      }
      ended ||= usageChunk !== null;
      broken ||= !ended && upstream.signal.reason !== 'deadline';
    } catch {
      // The deadline passed, the provider went silent or broke off.
      broken = upstream.signal.reason !== 'deadline' && usageChunk === null;
    } finally {
      clearTimeout(deadline);
      clearInterval(watchdog);
      reader.cancel().catch(() => {});
    }

    let closing: string | null = '[DONE]';
    try {
      if (broken) {
        const { code, error } = providerFailure(upstream.signal.reason === 'timeout' ? 'timeout' : 502);
        await failCall(call.id, code);
        closing = JSON.stringify({ error: error.toJSON() });
      } else {
        const reported = usageChunk ? disjointUsage(usageChunk.usage as Parameters<typeof disjointUsage>[0]) : null;
        const usage = reported ??
          await countedUsage(call.prompt, sent.map((d) => answerText(JSON.parse(d).choices)).join(''));
        failpoint('ai.before_capture');
        const record = await finishCall(
          call.id,
          usage,
          reported ? 'provider' : 'tokenizer',
          call.keep ? { events: sent } : null,
          errorAfterUsage,
        );
        if (call.req.stream_options?.include_usage) {
          send(
            JSON.stringify({
              ...(usageChunk ?? { object: 'chat.completion.chunk', choices: [] }),
              usage: withCost(usageChunk?.usage ?? openAiUsage(usage), record.charged),
            }),
          );
        }
      }
    } catch (err) {
      // The hold expires and the sweep fails the call: nothing is charged twice or lost.
      log.error('ai call could not be settled', { callId: call.id, ...errorSummary(err) });
      closing = JSON.stringify({
        error: { type: 'server', code: 'INTERNAL_ERROR', message: 'The call could not be settled.' },
      });
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
