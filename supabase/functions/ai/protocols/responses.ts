// OpenAI's Responses API (POST /ai/v1/responses), stateless: what a request may ask, how its prompt
// and usage are read. Refused with a 400 (never silently dropped): what bills outside the rate
// card (built-in tools: web and file search, code interpreter, computer use, image generation)
// and what keeps state at the provider for the student (stored responses, previous_response_id,
// conversations, background runs). The provider is always sent store: false; the model's earlier
// answers come back as item references the gateway sealed (references.ts), opened here before
// the prompt is counted.
import { z } from 'zod';
import { pgInt, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema, tokenText } from '../../_shared/values/text.ts';
import type { Usage } from '../metering.ts';
import { count } from '../../_shared/adapters/ai.ts';
import { keepItems, openReferences, pendingItem, ReferenceIdSchema, referencePrefix, sealItem } from '../references.ts';
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

/** A field the gateway refuses, with why (null and absent are the same). */
const refused = (why: string) => z.null({ error: why }).optional();
const stateless = 'is not served: the gateway keeps no earlier prompts, at the provider or here; ' +
  'send the conversation as input (the AI SDK does so by default)';
/** An item's id: the provider's, or a reference the gateway gave (never sent on to the provider). */
const ItemIdSchema = z.union([tokenText(128), ReferenceIdSchema]);

const TextPartSchema = z.object({
  type: z.enum(['input_text', 'output_text'], 'only text parts are served (input_text, output_text)'),
  text: pgText(1_000_000),
});
const ContentSchema = z.union([pgText(1_000_000), z.array(TextPartSchema).max(100)]);
const ItemSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('message'),
    role: z.enum(['user', 'assistant', 'system', 'developer']),
    content: ContentSchema,
    id: ItemIdSchema.optional(),
    status: z.string().max(32).optional(),
  }),
  z.object({
    type: z.literal('function_call'),
    call_id: tokenText(128),
    name: pgText(128),
    arguments: pgText(1_000_000),
    id: tokenText(128).optional(),
    status: z.string().max(32).optional(),
  }),
  z.object({
    type: z.literal('function_call_output'),
    call_id: tokenText(128),
    output: ContentSchema,
  }),
  // A reasoning model's earlier reasoning, passed back encrypted (include: reasoning.encrypted_content).
  z.object({
    type: z.literal('reasoning'),
    id: ItemIdSchema.optional(),
    summary: z.array(z.object({ type: z.literal('summary_text'), text: pgText(100_000) })).max(100),
    encrypted_content: pgText(1_000_000).nullish(),
  }),
  // One of the model's earlier answer items, by the id the gateway gave it.
  z.object({ type: z.literal('item_reference'), id: z.string().max(4_000_000) }),
], { error: 'input items may be message, function_call, function_call_output, reasoning or item_reference' });
// A message item may leave out its type (the AI SDK and the openai SDK both send { role, content }).
const InputItemSchema = z.preprocess(
  (x) => (x && typeof x === 'object' && !('type' in x) && 'role' in x ? { ...x, type: 'message' } : x),
  ItemSchema,
);

export const ResponsesRequestSchema = z.object({
  model: ModelSchema,
  models: FallbackModelsSchema.optional(),
  input: z.union([pgText(1_000_000), z.array(InputItemSchema).min(1).max(1000)]),
  instructions: pgText(1_000_000).nullish(),
  max_output_tokens: pgInt(1, 1_000_000).nullish(),
  stream: z.boolean().default(false),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  // Function tools only: built-in tools bill per call and per result, outside the rate card.
  tools: z.array(z.object({
    type: z.literal('function', 'only function tools are served (no built-in tools)'),
    name: pgText(128),
    description: pgText(100_000).nullish(),
    parameters: JsonBlockSchema.nullish(),
    strict: z.boolean().nullish(),
  })).max(128).nullish(),
  // A function's name, never a built-in tool's.
  tool_choice: z.union([
    z.enum(['none', 'auto', 'required']),
    z.object({
      type: z.literal('function', 'tool_choice may name a function only'),
      name: pgText(128).regex(/^[A-Za-z0-9_.:-]+$/, 'must be a tool name'),
    }),
  ]).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  text: z.object({ format: JsonBlockSchema.nullish(), verbosity: z.enum(['low', 'medium', 'high']).nullish() })
    .nullish(),
  reasoning: z.object({
    effort: z.enum(['none', 'minimal', 'low', 'medium', 'high', 'xhigh']).nullish(),
    summary: z.enum(['auto', 'concise', 'detailed']).nullish(),
  }).nullish(),
  include: z.array(z.literal('reasoning.encrypted_content', 'only reasoning.encrypted_content may be included'))
    .max(1).nullish(),
  truncation: z.enum(['auto', 'disabled']).nullish(),
  user: tokenText(256).nullish(),
  safety_identifier: tokenText(256).nullish(),
  prompt_cache_key: tokenText(256).nullish(),
  store: z.literal(false, 'must be false or left out: the gateway has the provider store nothing').nullish(),
  previous_response_id: refused(stateless),
  conversation: refused(stateless),
  background: z.literal(false, 'background responses are not served: the gateway bills while it waits').nullish(),
});
export type ResponsesRequest = z.infer<typeof ResponsesRequestSchema>;

type Item = z.infer<typeof ItemSchema>;
const contentText = (c: z.infer<typeof ContentSchema>) => typeof c === 'string' ? c : c.map((p) => p.text).join('');
function itemText(item: Item): string {
  switch (item.type) {
    case 'message':
      return contentText(item.content);
    case 'function_call':
      return JSON.stringify({ name: item.name, arguments: item.arguments });
    case 'function_call_output':
      return contentText(item.output);
    case 'reasoning':
      // Encrypted reasoning is billed as the tokens it holds, which its ciphertext's bytes exceed.
      return item.summary.map((s) => s.text).join('') + (item.encrypted_content ?? '');
    case 'item_reference':
      return item.id; // never reaches the provider: expand() opens every one first
  }
}

/**
 * An earlier answer item as input: a message's text, or reasoning whose encrypted content carries
 * it (the provider keeps none, so reasoning without it is left out); null to leave it out.
 */
function asInput(item: Record<string, unknown>): Item | null {
  if (item.type === 'message' && Array.isArray(item.content)) {
    const text = (item.content as Record<string, unknown>[]).map((p) => String(p.text ?? p.refusal ?? ''));
    return { type: 'message', role: 'assistant', content: text.map((t) => ({ type: 'output_text', text: t })) };
  }
  if (item.type === 'reasoning' && typeof item.encrypted_content === 'string' && typeof item.id === 'string') {
    const summary = Array.isArray(item.summary) ? item.summary as { type: 'summary_text'; text: string }[] : [];
    return { type: 'reasoning', id: item.id, summary, encrypted_content: item.encrypted_content };
  }
  return null;
}

/** The input with every reference opened, and ids the gateway gave left out (the provider never saw them). */
async function expand(req: ResponsesRequest, userId: string): Promise<ResponsesRequest> {
  if (typeof req.input === 'string') return req;
  const input = req.input as Item[];
  // Each distinct reference opened once, and every kept item read in one statement.
  const opened = await openReferences(
    userId,
    input.flatMap((item, i) => item.type === 'item_reference' ? [{ id: item.id, field: `input.${i}.id` }] : []),
  );
  return {
    ...req,
    input: input.map((item): Item | null => {
      if (item.type === 'item_reference') return asInput(opened.get(item.id)!);
      if (!('id' in item) || !item.id?.startsWith(referencePrefix)) return item;
      const { id: _ours, ...rest } = item;
      return rest as Item;
    }).filter((item): item is Item => item !== null),
  };
}

/** The items of an answer the gateway gives a reference for: what the AI SDK sends back by id. */
const referable = (item: unknown): item is { id: string; type: string } =>
  !!item && typeof item === 'object' && 'id' in item && typeof item.id === 'string' &&
  ['message', 'reasoning'].includes(String((item as { type?: unknown }).type));
const items = (req: ResponsesRequest): Item[] =>
  typeof req.input === 'string' ? [{ type: 'message', role: 'user', content: req.input }] : req.input as Item[];

/** The Responses API's usage: input includes cached input and cache writes, output includes reasoning. */
const fromUsage = (raw: unknown): Usage => {
  const u = (raw ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const input = count(u.input_tokens), output = count(u.output_tokens);
  const cached = Math.min(input, count(u.input_tokens_details?.cached_tokens));
  const written = Math.min(input - cached, count(u.input_tokens_details?.cache_write_tokens));
  const reasoning = Math.min(output, count(u.output_tokens_details?.reasoning_tokens));
  return {
    input_tokens: input - cached - written,
    cached_input_tokens: cached,
    cache_write_tokens: written,
    output_tokens: output - reasoning,
    reasoning_tokens: reasoning,
  };
};

/** Why a response ended: its status, or for an incomplete one the reason (max_output_tokens …). */
const responseEnd = (r: Record<string, unknown> | undefined) =>
  r?.status === 'incomplete'
    ? reasonWord((r.incomplete_details as Record<string, unknown> | undefined)?.reason) ?? 'incomplete'
    : reasonWord(r?.status);

const terminal = new Set(['response.completed', 'response.incomplete', 'response.failed']);

/** POST /ai/v1/responses: OpenAI's Responses API. */
export const responses: Protocol<ResponsesRequest> = {
  endpoint: 'responses',
  schema: ResponsesRequestSchema,
  model: (req) => req.model,
  streamed: (req) => req.stream,
  outputLimit: (req) => ({ asked: req.max_output_tokens ?? null, field: 'max_output_tokens' }),
  *promptTexts(req) {
    if (req.instructions) yield req.instructions;
    for (const item of items(req)) yield itemText(item);
    for (const extra of [req.tools, req.tool_choice, req.text?.format]) if (extra) yield JSON.stringify(extra);
  },
  // The instructions are one item.
  framing: (req, bound) => messageFraming(items(req).length + (req.instructions ? 1 : 0), Boolean(req.tools), bound),
  writesCache: () => false,
  expand,
  wholeAnswerOnly: (req) => forcesWholeAnswer(req.tool_choice, req.text?.format),
  providerBody: (req, maxOutput) => ({ ...req, max_output_tokens: maxOutput, store: false }),
  // Each message and reasoning item gets a reference that carries it (the provider's id stays inside).
  async sealAnswer(body, userId) {
    if (!Array.isArray(body.output)) return body;
    const output = await Promise.all(
      body.output.map(async (item) => referable(item) ? { ...item, id: await sealItem(userId, item) } : item),
    );
    return { ...body, output };
  },
  fromUsage,
  toUsage(u) {
    const input = u.input_tokens + u.cached_input_tokens + (u.cache_write_tokens ?? 0);
    return {
      input_tokens: input,
      input_tokens_details: { cached_tokens: u.cached_input_tokens, cache_write_tokens: u.cache_write_tokens ?? 0 },
      output_tokens: u.output_tokens + u.reasoning_tokens,
      output_tokens_details: { reasoning_tokens: u.reasoning_tokens },
      total_tokens: input + u.output_tokens + u.reasoning_tokens,
    };
  },
  finishReason: (body) => responseEnd(body),
  answerText(body) {
    // Every output item whole (text, refusals, tool calls, reasoning summaries): over-counting is the safe side.
    return Array.isArray(body.output) ? JSON.stringify(body.output) : '';
  },
  eventText(data) {
    const event = parsed(data);
    return typeof event.type === 'string' && event.type.endsWith('.delta') && typeof event.delta === 'string'
      ? event.delta
      : '';
  },
  reader(_req, userId) {
    let last: Record<string, unknown> | null = null;
    let usage: Usage | null = null;
    // A stream names an item (output_item.added) before writing it: its reference is made then,
    // every event's mention of the provider's id becomes it, and the item is kept once done.
    const refs = new Map<string, Awaited<ReturnType<typeof pendingItem>>>();
    const done: { ref: Awaited<ReturnType<typeof pendingItem>>; item: Record<string, unknown> }[] = [];
    return {
      async rewrite(e) {
        if (e.data.includes('"response.output_item.')) {
          const event = parsed(e.data);
          const item = event.item;
          if (event.type === 'response.output_item.added' && referable(item)) {
            refs.set(item.id, await pendingItem(userId));
          }
          const ref = referable(item) ? refs.get(item.id) : undefined;
          if (event.type === 'response.output_item.done' && ref) {
            done.push({ ref, item: item as Record<string, unknown> });
          }
        }
        let { data, raw } = e;
        for (const [id, ref] of refs) {
          if (!data.includes(id)) continue;
          data = data.replaceAll(`"${id}"`, `"${ref.id}"`);
          raw = raw.replaceAll(`"${id}"`, `"${ref.id}"`);
        }
        return { name: e.name, data, raw };
      },
      keepItems: async (callId) =>
        keepItems(userId, callId, await Promise.all(done.map(({ ref, item }) => ref.seal(item)))),
      see({ name, data }) {
        if (name === 'response.output_text.delta') return 'send';
        const event = parsed(data);
        const type = name ?? String(event.type);
        if (type === 'error') return 'error';
        if (!terminal.has(type)) return 'send';
        // The terminal event carries the whole response and its usage: kept back, sent with its cost.
        last = event;
        const reported = (event.response as Record<string, unknown> | undefined)?.usage;
        if (reported) usage = fromUsage(reported);
        // The provider's end: kept back (held), it ends the reading; a failure is an error.
        return type === 'response.failed' ? 'error' : 'end';
      },
      usage: () => usage,
      held: () => last ? JSON.stringify(last) : null,
      finishReason: () => responseEnd(last?.response as Record<string, unknown> | undefined),
    };
  },
  closing(_req, held, usage, cost) {
    if (!held) return responses.failure(answerCut());
    const event = JSON.parse(held);
    const response = event.response ?? {};
    return sseEvent(event.type, {
      ...event,
      response: { ...response, usage: usageWithCost(responses, response.usage, usage, cost) },
    });
  },
  failure: (error) =>
    sseEvent('error', { type: 'error', code: error.code, message: error.message, param: null, sequence_number: 0 }),
};
