// Anthropic's Messages API (POST /ai/v1/messages): what a request may ask, how its prompt and
// usage are read. Text, tool use and thinking only; refused with a 400: images and documents
// (billed by what the gateway cannot count) and server tools (web search, code execution: billed
// per use). A request with cache_control asks the provider to write its cache, which the hold then
// covers at the card's cache-write price, its hour-long one for `ttl: "1h"` (a card without that
// price refuses it, UNPRICED_USAGE); the provider's usage splits the writes by lifetime and each
// is priced at its own. The provider is sent the standard tier only and the gateway's own
// anthropic-version.
import { z } from 'zod';
import { pgInt, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema, tokenText } from '../../_shared/values/text.ts';
import type { Usage } from '../metering.ts';
import { count } from '../../_shared/adapters/ai.ts';
import type { AppError } from '../../_shared/errors.ts';
import {
  answerCut,
  FallbackModelsSchema,
  forcesWholeAnswer,
  JsonBlockSchema,
  messageFraming,
  parsed,
  type Protocol,
  reasonWord,
  sseEvent,
  usageWithCost,
} from '../protocol.ts';

const CacheControlSchema = z.object({
  type: z.literal('ephemeral'),
  ttl: z.enum(['5m', '1h'], 'a cache write lasts 5m or 1h').optional(),
}).nullish();
const TextBlockSchema = z.object({
  type: z.literal('text'),
  text: pgText(1_000_000),
  cache_control: CacheControlSchema,
});
const BlockSchema = z.discriminatedUnion('type', [
  TextBlockSchema,
  z.object({
    type: z.literal('tool_use'),
    id: tokenText(128),
    name: pgText(128),
    input: JsonBlockSchema,
    cache_control: CacheControlSchema,
  }),
  z.object({
    type: z.literal('tool_result'),
    tool_use_id: tokenText(128),
    content: z.union([pgText(1_000_000), z.array(TextBlockSchema).max(100)]).optional(),
    is_error: z.boolean().optional(),
    cache_control: CacheControlSchema,
  }),
  z.object({ type: z.literal('thinking'), thinking: pgText(1_000_000), signature: pgText(100_000) }),
  z.object({ type: z.literal('redacted_thinking'), data: pgText(1_000_000) }),
], { error: 'content blocks may be text, tool_use, tool_result, thinking or redacted_thinking' });
type Block = z.infer<typeof BlockSchema>;

export const MessagesRequestSchema = z.object({
  model: ModelSchema,
  models: FallbackModelsSchema.optional(),
  max_tokens: pgInt(1, 1_000_000).nullish(),
  messages: z.array(z.object({
    role: z.enum(['user', 'assistant']),
    content: z.union([pgText(1_000_000), z.array(BlockSchema).max(1000)]),
  })).min(1).max(1000),
  system: z.union([pgText(1_000_000), z.array(TextBlockSchema).max(100)]).nullish(),
  // Client tools only (no type, or custom): server tools bill per use, outside the rate card.
  tools: z.array(z.object({
    type: z.literal('custom', 'only client tools are served (no server tools)').optional(),
    name: pgText(128),
    description: pgText(100_000).optional(),
    input_schema: JsonBlockSchema,
    cache_control: CacheControlSchema,
  })).max(128).nullish(),
  tool_choice: z.object({
    type: z.enum(['auto', 'any', 'tool', 'none']),
    name: pgText(128).regex(/^[A-Za-z0-9_.:-]+$/, 'must be a tool name').optional(),
    disable_parallel_tool_use: z.boolean().optional(),
  }).nullish(),
  // Structured outputs (the AI SDK's Output.object for models that have them): a JSON schema
  // answer, never cut; the effort the model spends thinking.
  output_config: z.object({
    effort: z.enum(['low', 'medium', 'high', 'xhigh', 'max']).nullish(),
    format: z.object({ type: z.literal('json_schema'), schema: JsonBlockSchema }).nullish(),
  }).nullish(),
  thinking: z.union([
    z.object({ type: z.literal('enabled'), budget_tokens: pgInt(1, 1_000_000) }),
    z.object({ type: z.literal('disabled') }),
  ]).nullish(),
  stream: z.boolean().default(false),
  temperature: z.number().min(0).max(1).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  top_k: pgInt(0, 1_000_000).nullish(),
  stop_sequences: z.array(pgText(256)).max(8).nullish(),
  metadata: z.object({ user_id: tokenText(256).nullish() }).nullish(),
});
export type MessagesRequest = z.infer<typeof MessagesRequestSchema>;

function blockText(b: Block): string {
  switch (b.type) {
    case 'text':
      return b.text;
    case 'tool_use':
      return JSON.stringify({ name: b.name, input: b.input });
    case 'tool_result':
      return typeof b.content === 'string' ? b.content : (b.content ?? []).map((t) => t.text).join('');
    case 'thinking':
      return b.thinking + b.signature;
    case 'redacted_thinking':
      return b.data;
  }
}
const systemText = (s: MessagesRequest['system']) => typeof s === 'string' ? s : (s ?? []).map((t) => t.text).join('');

/** Anthropic's usage: every input kind apart (input excludes cache reads and writes); output includes thinking. Cache writes split by lifetime as `cache_creation` reports them (all 5-minute without it). */
const fromUsage = (raw: unknown): Usage => {
  const u = (raw ?? {}) as Record<string, unknown>;
  const written = count(u.cache_creation_input_tokens);
  const hour = Math.min(
    written,
    count((u.cache_creation as Record<string, unknown> | null)?.ephemeral_1h_input_tokens),
  );
  return {
    input_tokens: count(u.input_tokens),
    cached_input_tokens: count(u.cache_read_input_tokens),
    cache_write_tokens: written - hour,
    cache_write_1h_tokens: hour,
    output_tokens: count(u.output_tokens),
    reasoning_tokens: 0,
  };
};

/** Whether any cache_control of the request asks for an hour. */
const asksHour = (req: MessagesRequest): boolean => {
  const blocks = [
    ...(typeof req.system === 'string' ? [] : req.system ?? []),
    ...req.messages.flatMap((m) => typeof m.content === 'string' ? [] : m.content)
      .flatMap((b) => b.type === 'tool_result' && Array.isArray(b.content) ? [b, ...b.content] : [b]),
    ...(req.tools ?? []),
  ];
  return blocks.some((b) => 'cache_control' in b && b.cache_control?.ttl === '1h');
};

/** POST /ai/v1/messages: Anthropic's Messages API. */
export const messages: Protocol<MessagesRequest> = {
  endpoint: 'messages',
  schema: MessagesRequestSchema,
  model: (req) => req.model,
  streamed: (req) => req.stream,
  outputLimit: (req) => ({ asked: req.max_tokens ?? null, field: 'max_tokens' }),
  *promptTexts(req) {
    if (req.system) yield systemText(req.system);
    for (const m of req.messages) {
      if (typeof m.content === 'string') yield m.content;
      else for (const b of m.content) yield blockText(b);
    }
    for (const extra of [req.tools, req.tool_choice, req.output_config?.format]) if (extra) yield JSON.stringify(extra);
  },
  // The system prompt is one message.
  framing: (req, bound) => messageFraming(req.messages.length + (req.system ? 1 : 0), Boolean(req.tools), bound),
  writesCache: (req) => JSON.stringify([req.system, req.messages, req.tools]).includes('"cache_control":{'),
  writesCache1h: asksHour,
  wholeAnswerOnly: (req) => forcesWholeAnswer(req.tool_choice, req.output_config?.format),
  thinkingBudget: (req) => req.thinking?.type === 'enabled' ? req.thinking.budget_tokens : 0,
  providerBody: (req, maxOutput) => ({ ...req, max_tokens: maxOutput, service_tier: 'standard_only' }),
  fromUsage,
  toUsage: (u) => ({
    input_tokens: u.input_tokens,
    cache_read_input_tokens: u.cached_input_tokens,
    cache_creation_input_tokens: (u.cache_write_tokens ?? 0) + (u.cache_write_1h_tokens ?? 0),
    cache_creation: {
      ephemeral_5m_input_tokens: u.cache_write_tokens ?? 0,
      ephemeral_1h_input_tokens: u.cache_write_1h_tokens ?? 0,
    },
    output_tokens: u.output_tokens + u.reasoning_tokens,
  }),
  // The Anthropic SDK's MessageStream builds finalMessage() from message_start and copies from
  // message_delta's usage only the fields it knows, output_tokens_details whole: the cost rides
  // there too (streamed and whole alike), or a streamed final message would carry none.
  costKeptBy: (usage, charged) => ({
    ...usage,
    output_tokens_details: { ...(usage.output_tokens_details as Record<string, unknown> | null ?? {}), cost: charged },
  }),
  finishReason: (body) => reasonWord(body.stop_reason),
  answerText: (body) => Array.isArray(body.content) ? JSON.stringify(body.content) : '',
  eventText(data) {
    const delta = parsed(data).delta as Record<string, unknown> | undefined;
    for (const v of [delta?.text, delta?.partial_json, delta?.thinking]) if (typeof v === 'string') return v;
    return '';
  },
  reader() {
    let start: Record<string, unknown> = {};
    let delta: Record<string, unknown> | null = null;
    return {
      see({ name, data }) {
        if (name === 'content_block_delta') return 'send';
        const event = parsed(data);
        switch (name ?? event.type) {
          case 'message_start':
            start = ((event.message as Record<string, unknown> | undefined)?.usage ?? {}) as Record<string, unknown>;
            return 'send';
          case 'message_delta':
            // Cumulative: the last one counts, never a sum. Kept back, sent with its cost.
            delta = event;
            return 'keep';
          case 'message_stop':
            return 'end';
          case 'error':
            return 'error';
          default:
            return 'send';
        }
      },
      // Reported once a message_delta came with usage: its counts, the input kinds from message_start where it has none.
      usage: () => delta?.usage ? fromUsage({ ...start, ...(delta.usage as Record<string, unknown>) }) : null,
      held: () => delta ? JSON.stringify(delta) : null,
      finishReason: () => reasonWord((delta?.delta as Record<string, unknown> | undefined)?.stop_reason),
    };
  },
  closing(_req, held, usage, cost) {
    if (!held) return messages.failure(answerCut());
    const event = JSON.parse(held);
    return sseEvent('message_delta', { ...event, usage: usageWithCost(messages, event.usage, usage, cost) }) +
      sseEvent('message_stop', { type: 'message_stop' });
  },
  failure: (error) => sseEvent('error', anthropicError(error)),
};

/** Anthropic's error type for each status its SDKs tell apart. */
const anthropicTypes: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  504: 'timeout_error',
};

/**
 * An error in Anthropic's shape (`{type: "error", error: {type, message}}`), so code written for
 * Anthropic's errors reads it: this project's `code`, `details` (and `field`, `retryable`) inside
 * `error`, and the sentence at the top too, which the Anthropic SDK makes its `err.message`.
 */
export function anthropicError(error: AppError, requestId?: string) {
  const type = anthropicTypes[error.status] ?? (error.status >= 500 ? 'api_error' : 'invalid_request_error');
  const { type: _ours, ...rest } = error.toJSON();
  return {
    type: 'error',
    error: { type, ...rest },
    message: error.message,
    ...(requestId ? { request_id: requestId } : {}),
  };
}
