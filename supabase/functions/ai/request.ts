// What a Chat Completions request can cost before the provider is called (its prompt's tokens),
// and the request the provider gets.
import { encode } from 'gpt-tokenizer';
import type { ChatRequest } from './schemas.ts';

type Content = ChatRequest['messages'][number]['content'];
const contentText = (content: Content): string =>
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
