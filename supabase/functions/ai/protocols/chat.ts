// OpenAI's Chat Completions (POST /ai/v1/chat/completions): what a request may ask of the gateway,
// and how its prompt and usage are read. Only the schema's fields reach the provider; anything
// else is dropped (z.object strips it), so no field a student adds (a pricier service tier, audio,
// n > 1, predicted outputs) changes what the provider bills without the hold knowing.
import { z } from 'zod';
import { disjointUsage } from '../../_shared/adapters/ai.ts';
import { pgInt, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema, tokenText } from '../../_shared/values/text.ts';
import type { Usage } from '../metering.ts';
import {
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

const TextPartSchema = z.object({ type: z.literal('text'), text: pgText(1_000_000) });
const ContentSchema = z.union([pgText(1_000_000), z.array(TextPartSchema).max(100), z.null()]);
const MessageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: ContentSchema.optional(),
  name: pgText(64).regex(/^[A-Za-z0-9_-]+$/, 'must be a name').optional(),
  tool_calls: z.array(JsonBlockSchema).max(128).optional(),
  tool_call_id: tokenText(128).optional(),
});

export const ChatRequestSchema = z.object({
  model: ModelSchema,
  models: FallbackModelsSchema.optional(),
  messages: z.array(MessageSchema).min(1).max(1000),
  stream: z.boolean().default(false),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  // The most the answer may use, reasoning included (OpenAI's max_completion_tokens; max_tokens is its older name).
  max_completion_tokens: pgInt(1, 1_000_000).nullish(),
  max_tokens: pgInt(1, 1_000_000).nullish(),
  n: z.literal(1, 'only one choice per call (n = 1)').nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  stop: z.union([pgText(64), z.array(pgText(64)).max(4)]).nullish(),
  seed: pgInt(-(2 ** 31), 2 ** 31 - 1).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  user: tokenText(256).nullish(),
  // Function tools only: other kinds (custom, built-in search) bill in ways the hold cannot see.
  tools: z.array(z.object({ type: z.literal('function'), function: JsonBlockSchema })).max(128).nullish(),
  // A function's name, never another kind of tool.
  tool_choice: z.union([
    z.enum(['none', 'auto', 'required']),
    z.object({
      type: z.literal('function', 'tool_choice may name a function only'),
      function: z.object({ name: pgText(128).regex(/^[A-Za-z0-9_.:-]+$/, 'must be a tool name') }),
    }),
  ]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: JsonBlockSchema.nullish(),
});
export type ChatRequest = z.infer<typeof ChatRequestSchema>;

/** The text a response or chunk carries (content, refusals, tool call arguments): what the tokenizer counts. */
function choicesText(choices: unknown): string {
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

/** The first choice's finish_reason (n is 1), if set. */
const firstFinish = (choices: unknown) => Array.isArray(choices) ? reasonWord(choices[0]?.finish_reason) : null;

type Content = ChatRequest['messages'][number]['content'];
const contentText = (content: Content): string =>
  typeof content === 'string' ? content : Array.isArray(content) ? content.map((p) => p.text).join('') : '';

/** Usage as OpenAI's Chat Completions writes it. */
const chatUsage = (u: Usage) => ({
  prompt_tokens: u.input_tokens + u.cached_input_tokens,
  completion_tokens: u.output_tokens + u.reasoning_tokens,
  total_tokens: u.input_tokens + u.cached_input_tokens + u.output_tokens + u.reasoning_tokens,
});

/** POST /ai/v1/chat/completions: OpenAI's Chat Completions. */
export const chat: Protocol<ChatRequest> = {
  endpoint: 'chat',
  schema: ChatRequestSchema,
  model: (req) => req.model,
  streamed: (req) => req.stream,
  outputLimit: (req) => ({
    asked: req.max_completion_tokens ?? req.max_tokens ?? null,
    field: req.max_completion_tokens ? 'max_completion_tokens' : 'max_tokens',
  }),
  *promptTexts(req) {
    for (const m of req.messages) {
      yield contentText(m.content);
      if (m.name) yield m.name;
      if (m.tool_calls) yield JSON.stringify(m.tool_calls);
      if (m.tool_call_id) yield m.tool_call_id;
    }
    for (const extra of [req.tools, req.tool_choice, req.response_format]) if (extra) yield JSON.stringify(extra);
  },
  framing: (req, bound) => messageFraming(req.messages.length, Boolean(req.tools), bound),
  writesCache: () => false,
  wholeAnswerOnly: (req) => forcesWholeAnswer(req.tool_choice, req.response_format),
  // The known fields, the answer's limit as max_completion_tokens, and, for a stream, usage always
  // asked for (the gateway bills from it; the caller sees it only if they asked).
  providerBody(req, maxOutput) {
    const { max_tokens: _old, stream_options: _asked, n: _n, ...rest } = req;
    return {
      ...rest,
      max_completion_tokens: maxOutput,
      ...(req.stream ? { stream_options: { include_usage: true } } : {}),
    };
  },
  fromUsage: (u) => disjointUsage(u as Parameters<typeof disjointUsage>[0]),
  toUsage: chatUsage,
  finishReason: (body) => firstFinish(body.choices),
  answerText: (body) => choicesText(body.choices),
  eventText: (data) => choicesText(parsed(data).choices),
  reader() {
    let usageChunk: Record<string, unknown> | null = null;
    let finish: string | null = null;
    return {
      see({ data }) {
        if (data === '[DONE]') return 'end';
        // The chunk that ends the answer names why (every other one has "finish_reason":null).
        if (data.includes('"finish_reason":"')) finish = firstFinish(parsed(data).choices) ?? finish;
        // Most chunks are answer text: passed on unparsed (their text is counted only if needed).
        if (!data.includes('"usage"') && !data.includes('"error"')) return 'send';
        const chunk = parsed(data);
        if (chunk.error) return 'error';
        // Usage totals are cumulative where a provider repeats them: the last one counts, never a sum.
        if (chunk.usage) usageChunk = chunk;
        return Array.isArray(chunk.choices) && chunk.choices.length === 0 ? 'keep' : 'send';
      },
      usage: () => usageChunk ? chat.fromUsage(usageChunk.usage) : null,
      held: () => usageChunk ? JSON.stringify(usageChunk) : null,
      finishReason: () => finish,
    };
  },
  // The usage chunk with its cost, if the caller asked for usage; then the end.
  closing(req, held, usage, cost) {
    if (!req.stream_options?.include_usage) return sseEvent(null, '[DONE]');
    const chunk = held ? JSON.parse(held) : { object: 'chat.completion.chunk', choices: [] };
    return sseEvent(null, { ...chunk, usage: usageWithCost(chat, chunk.usage, usage, cost) }) +
      sseEvent(null, '[DONE]');
  },
  failure: (error) => sseEvent(null, { error: error.toJSON() }),
};
