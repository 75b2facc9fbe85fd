// The AI provider adapter: OpenAI-compatible chat completions over HTTP (AI_API_BASE,
// AI_API_KEY), or, with AI_PROVIDER=local, a deterministic stand-in so tests and the demo run
// offline. The stand-in is NOT a model: it echoes the prompt's words in reverse order.
import { z } from 'zod';
import { parseEnv } from '../env.ts';

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
  /** Disjoint kinds: input excludes cached input, output excludes reasoning (docs/pricing.md). */
  usage: { input_tokens: number; output_tokens: number; cached_input_tokens?: number; reasoning_tokens?: number };
}
export interface CompletionRequest {
  model: string;
  prompt: string;
  maxTokens: number;
  /** Called as output arrives (0–1), so the job can checkpoint; may throw to stop. */
  onProgress: (fraction: number) => Promise<void>;
}

/** A retryable provider failure (timeouts, 5xx, 429); anything else is not retried. */
export class ProviderUnavailable extends Error {}

/** One POST of a Chat Completions request to an OpenAI-compatible API, never retried. */
const postChat = (base: string, key: string, body: Record<string, unknown>, signal: AbortSignal) =>
  fetch(`${base.replace(/\/$/, '')}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });

async function openAiCompatible(
  req: CompletionRequest,
  base: string,
  key: string,
  timeoutMs: number,
): Promise<Completion> {
  let res: Response;
  try {
    res = await postChat(base, key, {
      model: req.model,
      max_tokens: req.maxTokens,
      messages: [{ role: 'user', content: req.prompt }],
    }, AbortSignal.timeout(timeoutMs));
  } catch {
    throw new ProviderUnavailable('the AI provider did not answer');
  }
  if (res.status >= 500 || res.status === 429) throw new ProviderUnavailable(`the AI provider answered ${res.status}`);
  if (!res.ok) throw new Error(`the AI provider refused the request (${res.status})`);
  // No progress call after the answer: it is billed to us now, and a cancel seen there would drop
  // what the job must charge (billing.complete_job charges a job cancelled while it ran).
  const body = await res.json();
  return {
    text: String(body.choices?.[0]?.message?.content ?? ''),
    usage: disjointUsage(body.usage),
  };
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

export function complete(req: CompletionRequest): Promise<Completion> {
  env ??= parseEnv(AiEnvSchema);
  if (env.AI_PROVIDER === 'local') return localDeterministic(req, env.AI_LOCAL_CHUNK_DELAY_MS);
  if (!env.AI_API_BASE || !env.AI_API_KEY) {
    throw new Error('AI_API_BASE and AI_API_KEY are required with AI_PROVIDER=openai');
  }
  return openAiCompatible(req, env.AI_API_BASE, env.AI_API_KEY, env.AI_TIMEOUT_MS);
}
