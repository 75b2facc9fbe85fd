// What a Chat Completions request may ask of the gateway, and what it can cost before the
// provider is called. Only the fields below reach the provider; anything else is dropped, so
// no field a student adds (a pricier service tier, audio, n > 1, predicted outputs) changes
// what the provider bills without the hold knowing.
import { z } from 'zod';
import { encode } from 'gpt-tokenizer';
import { ModelSchema } from '../_shared/contract/credits.ts';
import { jsonObject, pgInt, pgText } from '../_shared/values/pg-values.ts';

const TextPartSchema = z.object({ type: z.literal('text'), text: pgText(1_000_000) });
const ContentSchema = z.union([pgText(1_000_000), z.array(TextPartSchema).max(100), z.null()]);
/** A tool's definition, a tool call or a response format: JSON walked without recursion, bounded. */
const JsonBlockSchema = jsonObject({ depth: 10, entries: 500, key: 256, text: 100_000 });
const MessageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: ContentSchema.optional(),
  name: pgText(64).regex(/^[A-Za-z0-9_-]+$/, 'must be a name').optional(),
  tool_calls: z.array(JsonBlockSchema).max(128).optional(),
  tool_call_id: pgText(128).optional(),
});

export const ChatRequestSchema = z.object({
  model: ModelSchema,
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
  user: pgText(256).nullish(),
  // Function tools only: other kinds (custom, built-in search) bill in ways the hold cannot see.
  tools: z.array(z.object({ type: z.literal('function'), function: JsonBlockSchema })).max(128).nullish(),
  tool_choice: z.union([z.enum(['none', 'auto', 'required']), JsonBlockSchema]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: JsonBlockSchema.nullish(),
});
export type ChatRequest = z.infer<typeof ChatRequestSchema>;

const contentText = (content: z.infer<typeof ContentSchema> | undefined): string =>
  typeof content === 'string' ? content : Array.isArray(content) ? content.map((p) => p.text).join('') : '';

/**
 * The prompt's tokens as OpenAI counts chat input (o200k): each message's text, name, tool calls
 * and tool call id, 4 framing tokens a message, 3 to prime the answer, and every other field the
 * provider reads as input (tool definitions, tool choice, a response format's schema), as JSON.
 * A provider that counts more is charged what it reports (the hold is the gateway's estimate).
 * @example promptTokens({ messages: [{ role: 'user', content: 'hi' }] }) // 8
 */
export function promptTokens(req: Pick<ChatRequest, 'messages' | 'tools' | 'tool_choice' | 'response_format'>): number {
  let n = 3;
  for (const m of req.messages) {
    n += 4 + encode(contentText(m.content)).length + (m.name ? encode(m.name).length : 0);
    if (m.tool_calls) n += encode(JSON.stringify(m.tool_calls)).length;
    if (m.tool_call_id) n += encode(m.tool_call_id).length;
  }
  for (const extra of [req.tools, req.tool_choice, req.response_format]) {
    if (extra) n += encode(JSON.stringify(extra)).length;
  }
  return n;
}

/** Tokens in text the provider streamed (the fallback count when it never reported usage). */
export const textTokens = (text: string): number => encode(text).length;

/**
 * The request the provider gets: the known fields, the answer's limit as max_completion_tokens,
 * and, for a stream, usage always asked for (the gateway bills from it; the caller sees it only
 * if they asked).
 */
export function providerBody(req: ChatRequest, maxOutput: number): Record<string, unknown> {
  const { max_tokens: _old, stream_options: _asked, n: _n, ...rest } = req;
  return {
    ...rest,
    max_completion_tokens: maxOutput,
    ...(req.stream ? { stream_options: { include_usage: true } } : {}),
  };
}
