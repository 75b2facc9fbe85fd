// The AI provider adapter for jobs and deep health: one completion of a prompt, asked of the
// model's own upstream (its rate card names it), then of its fallbacks, through the gateway's
// routing (ai-upstreams.ts): in Chat Completions where the upstream speaks it, else in
// Anthropic's Messages. With
// AI_PROVIDER=local, a deterministic stand-in so tests and the demo run offline; it is NOT a
// model: it echoes the prompt's words in reverse order.
import { z } from 'zod';
import { parseEnv } from '../env.ts';
import { AppError } from '../errors.ts';
import { type Failure, isAnswer, postUpstream, upstreamsFor, upstreamsSpeaking, worthAnother } from './ai-upstreams.ts';

export const AiEnvSchema = z.object({
  AI_PROVIDER: z.enum(['openai', 'local']).default('local'),
  AI_API_BASE: z.url().optional(),
  AI_API_KEY: z.string().optional(),
  AI_TIMEOUT_MS: z.coerce.number().int().positive().default(20_000),
  /** Local stand-in only: pause per output chunk, so progress and cancellation are observable. */
  AI_LOCAL_CHUNK_DELAY_MS: z.coerce.number().int().min(0).default(0),
});

export interface Completion {
  text: string;
  /** The upstream that answered: the model's own, or a fallback after it failed (none locally). */
  upstream?: string;
  /** Disjoint kinds: input excludes cached input, output excludes reasoning (docs/pricing.md). */
  usage: { input_tokens: number; output_tokens: number; cached_input_tokens?: number; reasoning_tokens?: number };
}
export interface CompletionRequest {
  model: string;
  /** The model's upstream, from its rate card (billing.ai_model_upstream). */
  upstream: string;
  prompt: string;
  maxTokens: number;
  /** Called as output arrives (0–1), so the job can checkpoint; may throw to stop. */
  onProgress: (fraction: number) => Promise<void>;
}

/** A retryable provider failure (timeouts, 5xx, 429); anything else is not retried. */
export class ProviderUnavailable extends Error {}

/** An answer's text and usage, read from the API it was asked in. */
function answerOf(endpoint: 'chat' | 'messages', body: Record<string, unknown>): Completion {
  if (endpoint === 'chat') {
    const choices = body.choices as { message?: { content?: unknown } }[] | undefined;
    return {
      text: String(choices?.[0]?.message?.content ?? ''),
      usage: disjointUsage(body.usage as Parameters<typeof disjointUsage>[0]),
    };
  }
  const u = (body.usage ?? {}) as Record<string, unknown>;
  const parts = Array.isArray(body.content) ? body.content as { type?: unknown; text?: unknown }[] : [];
  return {
    text: parts.filter((p) => p.type === 'text').map((p) => String(p.text ?? '')).join(''),
    // No cache_control is sent, so nothing is written to the cache; a write reported anyway is
    // charged as input (the job's hold prices input at its dearest besides cache writes).
    usage: {
      input_tokens: count(u.input_tokens) + count(u.cache_creation_input_tokens),
      cached_input_tokens: count(u.cache_read_input_tokens),
      output_tokens: count(u.output_tokens),
      reasoning_tokens: 0,
    },
  };
}

/**
 * The model's upstream, then its fallbacks (upstreamsFor), each asked once: a try that could not
 * connect, stayed silent past `timeoutMs`, answered 429 or 5xx, or sent a body that is no answer
 * is the next one's to answer; a refusal (another 4xx) fails the job at once. Never the same
 * upstream twice: a retried call could be billed twice (a failed try's bill is the operator's).
 */
async function upstreamCompletion(req: CompletionRequest, timeoutMs: number): Promise<Completion> {
  const endpoint = upstreamsSpeaking('chat').includes(req.upstream) ? 'chat' : 'messages';
  const tried: string[] = [];
  for (const upstream of upstreamsFor(req.model, req.upstream, endpoint)) {
    const failure = await tryUpstream(req, upstream, endpoint, timeoutMs);
    if (!('failure' in failure)) return failure;
    if (!worthAnother(failure.failure)) {
      // The request itself was refused: asked again, it would be again (the job fails at once).
      throw new AppError(
        'validation',
        'PROVIDER_REFUSED',
        `The model refused the request (${failure.failure}); nothing was charged.`,
      );
    }
    tried.push(`${upstream}: ${failure.failure}`);
  }
  throw new ProviderUnavailable(`the AI provider did not answer (${tried.join(', ')})`);
}

/** One upstream's whole answer, or how it failed. */
async function tryUpstream(
  req: CompletionRequest,
  upstream: string,
  endpoint: 'chat' | 'messages',
  timeoutMs: number,
): Promise<Completion | { failure: Failure }> {
  const signal = AbortSignal.timeout(timeoutMs);
  let res: Response;
  try {
    res = await postUpstream(upstream, endpoint, {
      model: req.model,
      max_tokens: req.maxTokens,
      messages: [{ role: 'user', content: req.prompt }],
    }, signal);
  } catch {
    return { failure: signal.aborted ? 'timeout' : 'unreachable' };
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    return { failure: res.status };
  }
  // No progress call after the answer: it is billed to us now, and a cancel seen there would drop
  // what the job must charge (billing.complete_job charges a job cancelled while it ran).
  const body: unknown = await res.json().catch(() => null);
  if (!isAnswer(body)) return { failure: signal.aborted ? 'timeout' : 'broken' };
  return { ...answerOf(endpoint, body), upstream };
}

/** A count the provider reported, as a whole number from 0 to 2^53 − 1 (anything else counts as 0; a count past that is priced at it, never a 500). */
export const count = (x: unknown) =>
  typeof x === 'number' && Number.isFinite(x) ? Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, Math.trunc(x))) : 0;

/**
 * OpenAI-style usage, where prompt_tokens includes the cached ones and completion_tokens the
 * reasoning ones, as the disjoint kinds the rate card prices.
 * @example disjointUsage({ prompt_tokens: 10, prompt_tokens_details: { cached_tokens: 4 }, completion_tokens: 3 })
 *   // { input_tokens: 6, cached_input_tokens: 4, output_tokens: 3, reasoning_tokens: 0 }
 */
export function disjointUsage(
  u: {
    prompt_tokens?: unknown;
    completion_tokens?: unknown;
    prompt_tokens_details?: { cached_tokens?: unknown };
    completion_tokens_details?: { reasoning_tokens?: unknown };
  } | undefined,
): Required<Completion['usage']> {
  const prompt = count(u?.prompt_tokens), completion = count(u?.completion_tokens);
  const cached = Math.min(prompt, count(u?.prompt_tokens_details?.cached_tokens));
  const reasoning = Math.min(completion, count(u?.completion_tokens_details?.reasoning_tokens));
  return {
    input_tokens: prompt - cached,
    cached_input_tokens: cached,
    output_tokens: completion - reasoning,
    reasoning_tokens: reasoning,
  };
}

async function localDeterministic(req: CompletionRequest, chunkDelayMs: number): Promise<Completion> {
  const words = req.prompt.trim().split(/\s+/).filter(Boolean);
  const out = [...words].reverse().slice(0, req.maxTokens);
  const chunks = 5;
  for (let i = 1; i <= chunks; i++) {
    if (chunkDelayMs) await new Promise((r) => setTimeout(r, chunkDelayMs));
    await req.onProgress(i / chunks);
  }
  return { text: out.join(' '), usage: { input_tokens: words.length, output_tokens: out.length } };
}

let env: z.infer<typeof AiEnvSchema> | undefined;

/**
 * The upstreams a job's completion may be sent to (those speaking Chat Completions or Messages),
 * or null with AI_PROVIDER=local, where no upstream is called.
 */
export function completionUpstreams(): string[] | null {
  env ??= parseEnv(AiEnvSchema);
  return env.AI_PROVIDER === 'local'
    ? null
    : [...new Set([...upstreamsSpeaking('chat'), ...upstreamsSpeaking('messages')])];
}

export function complete(req: CompletionRequest): Promise<Completion> {
  env ??= parseEnv(AiEnvSchema);
  if (env.AI_PROVIDER === 'local') return localDeterministic(req, env.AI_LOCAL_CHUNK_DELAY_MS);
  return upstreamCompletion(req, env.AI_TIMEOUT_MS);
}
