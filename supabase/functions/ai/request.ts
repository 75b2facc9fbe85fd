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
    n += 4 + textTokens(contentText(m.content)) + (m.name ? textTokens(m.name) : 0);
    if (m.tool_calls) n += textTokens(JSON.stringify(m.tool_calls));
    if (m.tool_call_id) n += textTokens(m.tool_call_id);
  }
  for (const extra of [req.tools, req.tool_choice, req.response_format]) {
    if (extra) n += textTokens(JSON.stringify(extra));
  }
  return n;
}

/**
 * Tokens in `text` (o200k). Runs of 65+ characters with no split point (one letter repeated,
 * text in scripts without spaces) are counted 64 code points at a time: BPE's cost grows with
 * the square of a run's length (a million-character run took minutes), and a cut can only add
 * tokens, never hide one, so the count stays a safe bound for a hold.
 * @example textTokens('a'.repeat(1_000_000)) // in milliseconds, ≥ the true count
 */
export function textTokens(text: string): number {
  let n = 0, last = 0;
  for (const run of text.matchAll(/\S{65,}|\s{65,}/g)) {
    n += encode(text.slice(last, run.index)).length;
    const points = [...run[0]];
    for (let i = 0; i < points.length; i += 64) n += encode(points.slice(i, i + 64).join('')).length;
    last = run.index + run[0].length;
  }
  return n + encode(text.slice(last)).length;
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
