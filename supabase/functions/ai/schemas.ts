// What a Chat Completions request may ask of the gateway. Only these fields reach the provider;
// anything else is dropped (z.object strips it), so no field a student adds (a pricier service
// tier, audio, n > 1, predicted outputs) changes what the provider bills without the hold knowing.
import { z } from 'zod';
import { jsonObject, pgInt, pgText } from '../_shared/values/pg-values.ts';
import { ModelSchema, tokenText } from '../_shared/values/text.ts';

const TextPartSchema = z.object({ type: z.literal('text'), text: pgText(1_000_000) });
const ContentSchema = z.union([pgText(1_000_000), z.array(TextPartSchema).max(100), z.null()]);
/** A tool's definition, a tool call or a response format: JSON walked without recursion, bounded. */
const JsonBlockSchema = jsonObject({ depth: 10, entries: 500, key: 256, text: 100_000 });
const MessageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: ContentSchema.optional(),
  name: pgText(64).regex(/^[A-Za-z0-9_-]+$/, 'must be a name').optional(),
  tool_calls: z.array(JsonBlockSchema).max(128).optional(),
  tool_call_id: tokenText(128).optional(),
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
  user: tokenText(256).nullish(),
  // Function tools only: other kinds (custom, built-in search) bill in ways the hold cannot see.
  tools: z.array(z.object({ type: z.literal('function'), function: JsonBlockSchema })).max(128).nullish(),
  tool_choice: z.union([z.enum(['none', 'auto', 'required']), JsonBlockSchema]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: JsonBlockSchema.nullish(),
});
export type ChatRequest = z.infer<typeof ChatRequestSchema>;
