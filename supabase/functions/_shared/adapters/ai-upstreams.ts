// The AI gateway's upstreams: where each model's calls go (its rate card names the upstream) and
// which of the gateway's APIs each one speaks. `openai` (AI_API_BASE, AI_API_KEY) speaks Chat
// Completions, Responses and embeddings; `anthropic` (AI_ANTHROPIC_BASE, AI_ANTHROPIC_KEY)
// speaks Messages; any OpenAI-compatible host (OpenRouter, Groq, Together, a school's vLLM) is
// named in AI_UPSTREAMS and set by AI_UPSTREAM_<NAME>_BASE, _KEY and _SPEAKS. Nothing is
// translated between APIs: a model is served only where its upstream speaks the caller's API.
// A host's _FALLBACK_FOR names the models it serves when their card's upstream fails before its
// first byte (upstreamsFor: the order a call tries).
import { z } from 'zod';
import { CommaListSchema, ConfigError, parseEnv } from '../env.ts';

export type Endpoint = 'chat' | 'responses' | 'messages' | 'embeddings';
const endpoints = ['chat', 'responses', 'messages', 'embeddings'] as const;
/** Each API's path under an upstream's base URL. */
const paths: Record<Endpoint, string> = {
  chat: '/chat/completions',
  responses: '/responses',
  messages: '/messages',
  embeddings: '/embeddings',
};

/**
 * The gateway's settings. Limits are the server's: the largest answer a call may ask for (and
 * what a call that sets none gets), the largest prompt, and how long a call may run (its hold
 * lives a minute longer).
 */
export const GatewayEnvSchema = z.object({
  /** How long the provider may stay silent: before a stream's first bytes, and between its events. */
  AI_TIMEOUT_MS: z.coerce.number().int().positive().default(20_000),
  AI_API_BASE: z.url(),
  AI_API_KEY: z.string().min(1),
  AI_ANTHROPIC_BASE: z.url().default('https://api.anthropic.com/v1'),
  AI_ANTHROPIC_KEY: z.string().min(1).optional(),
  AI_UPSTREAMS: CommaListSchema.pipe(z.array(z.string().regex(/^[a-z][a-z0-9-]{0,31}$/))).default([]),
  AI_MAX_OUTPUT_TOKENS: z.coerce.number().int().positive().default(4096),
  AI_MIN_OUTPUT_TOKENS: z.coerce.number().int().positive().default(64),
  AI_MAX_PROMPT_TOKENS: z.coerce.number().int().positive().default(128_000),
  AI_CALL_MAX_SECONDS: z.coerce.number().int().min(10).max(3600).default(300),
});
export type GatewayEnv = z.infer<typeof GatewayEnvSchema>;

export interface Upstream {
  name: string;
  base: string;
  /** The request headers that carry the key (a bearer token, or Anthropic's x-api-key). */
  auth: Record<string, string>;
  speaks: ReadonlySet<Endpoint>;
  /** The models this host answers when their card's upstream fails ('*': every model); empty: none. */
  fallbackFor: ReadonlySet<string>;
}

/** An OpenAI-compatible host named in AI_UPSTREAMS, from its own three variables (CONFIG_MISSING names a bad one). */
function compatibleHost(name: string): Upstream {
  const prefix = `AI_UPSTREAM_${name.toUpperCase().replaceAll('-', '_')}_`;
  const host = parseEnv(z.object({
    [`${prefix}BASE`]: z.url(),
    [`${prefix}KEY`]: z.string().min(1),
    [`${prefix}SPEAKS`]: CommaListSchema.pipe(z.array(z.enum(endpoints))).default(['chat']),
    [`${prefix}FALLBACK_FOR`]: CommaListSchema.default([]),
  }));
  const key = host[`${prefix}KEY`] as string;
  const speaks = new Set(host[`${prefix}SPEAKS`] as Endpoint[]);
  return {
    name,
    base: host[`${prefix}BASE`] as string,
    // A host speaking Anthropic's Messages (a second Anthropic account, a proxy of it) gets the
    // key as Anthropic reads it, and the API version it requires, beside the bearer.
    auth: speaks.has('messages')
      ? { authorization: `Bearer ${key}`, 'x-api-key': key, 'anthropic-version': '2023-06-01' }
      : { authorization: `Bearer ${key}` },
    speaks,
    fallbackFor: new Set(host[`${prefix}FALLBACK_FOR`] as string[]),
  };
}

let gateway: { env: GatewayEnv; upstreams: Map<string, Upstream> } | undefined;

function load() {
  const env = parseEnv(GatewayEnvSchema);
  const upstreams = new Map<string, Upstream>([['openai', {
    name: 'openai',
    base: env.AI_API_BASE,
    auth: { authorization: `Bearer ${env.AI_API_KEY}` },
    speaks: new Set<Endpoint>(['chat', 'responses', 'embeddings']),
    fallbackFor: new Set<string>(),
  }]]);
  if (env.AI_ANTHROPIC_KEY) {
    upstreams.set('anthropic', {
      name: 'anthropic',
      base: env.AI_ANTHROPIC_BASE,
      auth: { 'x-api-key': env.AI_ANTHROPIC_KEY, 'anthropic-version': '2023-06-01' },
      speaks: new Set<Endpoint>(['messages']),
      fallbackFor: new Set<string>(),
    });
  }
  for (const name of env.AI_UPSTREAMS) upstreams.set(name, compatibleHost(name));
  return { env, upstreams };
}

/** The gateway's settings, parsed once. */
export const aiGatewayEnv = (): GatewayEnv => (gateway ??= load()).env;

/** The upstreams configured here, by name. */
export const aiUpstreams = (): Map<string, Upstream> => (gateway ??= load()).upstreams;

/** The names of the upstreams that speak `endpoint`: what begin_ai_call lets a model's card name. */
export const upstreamsSpeaking = (endpoint: Endpoint): string[] =>
  [...aiUpstreams().values()].filter((u) => u.speaks.has(endpoint)).map((u) => u.name);

/**
 * The upstreams a call of `model` on `endpoint` tries, in order: its card's (`primary`), then
 * each host of AI_UPSTREAMS, in that list's order, whose _FALLBACK_FOR names the model (or is
 * `*`) and that speaks the endpoint. A host the card names is never tried twice.
 * @example upstreamsFor('gpt-4o-mini', 'openai', 'chat') // ['openai', 'openrouter']
 */
export function upstreamsFor(model: string, primary: string, endpoint: Endpoint): string[] {
  const backups = [...aiUpstreams().values()].filter((u) =>
    u.name !== primary && u.speaks.has(endpoint) && (u.fallbackFor.has(model) || u.fallbackFor.has('*'))
  );
  return [primary, ...backups.map((u) => u.name)];
}

/**
 * POSTs one request to an upstream's API, once: no retries here (the gateway's call moves on to
 * the next of upstreamsFor only on a failure before the answer's first byte), aborted by `signal`.
 * @example const res = await postUpstream('openai', 'responses', { model, input }, controller.signal)
 */
export function postUpstream(
  name: string,
  endpoint: Endpoint,
  body: Record<string, unknown>,
  signal: AbortSignal,
  headers: Record<string, string> = {},
): Promise<Response> {
  const upstream = aiUpstreams().get(name);
  if (!upstream) throw new ConfigError(['AI_UPSTREAMS'], [`the upstream ${name} is not configured`]);
  return fetch(`${upstream.base.replace(/\/$/, '')}${paths[endpoint]}`, {
    method: 'POST',
    headers: { ...headers, ...upstream.auth, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

/**
 * Any other request to an upstream's API (a batch's files and batches), with its key, within
 * AI_TIMEOUT_MS.
 * @example const res = await fetchUpstream('openai', '/batches/batch_abc', { method: 'GET' })
 */
export function fetchUpstream(name: string, path: string, init: RequestInit = {}): Promise<Response> {
  const upstream = aiUpstreams().get(name);
  if (!upstream) throw new ConfigError(['AI_UPSTREAMS'], [`the upstream ${name} is not configured`]);
  const url = /^https?:\/\//.test(path) ? path : `${upstream.base.replace(/\/$/, '')}${path}`;
  // A URL the provider gave (Anthropic's results_url) gets its key only on its own host.
  if (new URL(url).origin !== new URL(upstream.base).origin) {
    throw new ConfigError(['AI_UPSTREAMS'], [`${name} named a URL on another host`]);
  }
  return fetch(url, {
    ...init,
    headers: { ...init.headers as Record<string, string>, ...upstream.auth },
    signal: AbortSignal.timeout(aiGatewayEnv().AI_TIMEOUT_MS),
  });
}

/** How an upstream failed: its HTTP status, silence, no connection, or an answer that broke before it began. */
export type Failure = number | 'timeout' | 'unreachable' | 'broken';

/** Failures another upstream may answer for: nothing reached the caller, and the request was not refused as such. */
export const worthAnother = (f: Failure) => typeof f !== 'number' || f === 429 || f >= 500;

/**
 * Whether a whole answer's body is an answer: a JSON object, not the provider's error (as
 * OpenRouter sends one after a 200's headers) unless it reported usage with it (then it bills it).
 */
export const isAnswer = (body: unknown): body is Record<string, unknown> =>
  typeof body === 'object' && body !== null && !Array.isArray(body) &&
  ((body as Record<string, unknown>).error == null || (body as Record<string, unknown>).usage != null);
