// What a Chat Completions request can cost before the provider is called (the most its prompt
// can be billed), and the request the provider gets.
import { countTokens, tokenBoundOf } from '../_shared/domain/token-bounds.ts';
import type { ChatRequest } from './schemas.ts';

type Content = ChatRequest['messages'][number]['content'];
const contentText = (content: Content): string =>
  typeof content === 'string' ? content : Array.isArray(content) ? content.map((p) => p.text).join('') : '';

type Prompt = Pick<ChatRequest, 'messages' | 'tools' | 'tool_choice' | 'response_format'>;

/** Every text the provider reads as input: each message's text, name, tool calls and tool call id, and the tool definitions, tool choice and a response format's schema, as JSON. */
function* promptTexts(req: Prompt): Generator<string> {
  for (const m of req.messages) {
    yield contentText(m.content);
    if (m.name) yield m.name;
    if (m.tool_calls) yield JSON.stringify(m.tool_calls);
    if (m.tool_call_id) yield m.tool_call_id;
  }
  for (const extra of [req.tools, req.tool_choice, req.response_format]) if (extra) yield JSON.stringify(extra);
}

// OpenAI's chat framing: 4 tokens a message, 3 to prime the answer. Another family's framing is
// its own, so a bytes-bounded model is held for more: 16 a message and, with tools, the few
// hundred tokens of a tool-use system prompt (Anthropic's is 264–346).
const framing = (req: Prompt, bound: 'o200k' | 'utf8') =>
  bound === 'o200k' ? 3 + 4 * req.messages.length : 16 + 16 * req.messages.length + (req.tools ? 1024 : 0);

/**
 * The most input tokens the provider can bill for the request's prompt, or null when it passes
 * `limit` (counting stops there: a huge prompt costs no more work than one at the limit).
 * @example await promptTokens({ messages: [{ role: 'user', content: 'hi' }] }, 'gpt-4o', 128_000) // 8
 */
export async function promptTokens(req: Prompt, model: string, limit: number): Promise<number | null> {
  const bound = tokenBoundOf(model);
  const base = framing(req, bound);
  const text = await countTokens(promptTexts(req), bound, limit - base);
  return text === null ? null : base + text;
}

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
