// POST /v1/messages: Anthropic's Messages API, a Message or SSE events (message_start, a text
// block, ping, message_delta with cumulative usage, message_stop). Usage as Anthropic reports it:
// input_tokens, cache_read_input_tokens and cache_creation_input_tokens are exclusive kinds. A
// request with tools gets a tool_use block as its tool choice allows (structured.ts): with a tool
// forced, as the AI SDK asks for JSON, its input is valid for the tool's schema; one with a
// structured output's format (output_config.format) a text block of JSON valid for its schema.
import type Anthropic from '@anthropic-ai/sdk';
import {
  type Answer,
  answer,
  calls,
  type Directives,
  directivesIn,
  frame,
  isObject,
  type Json,
  jsonBody,
  sleep,
  sse,
  text,
  textAnswer,
  textTokens,
} from './common.ts';
import { argumentsFor, type Tool, type ToolChoice, toolToCall, valueFor } from './structured.ts';

type ErrorType = Anthropic.ErrorType | 'request_too_large';
type WireError = { type: 'error'; error: { type: ErrorType; message: string } };
type WireEvent =
  | Anthropic.Messages.RawMessageStreamEvent
  | Omit<Anthropic.Messages.RawMessageDeltaEvent, 'usage'>
  | { type: 'ping' }
  | WireError;

/** Anthropic's error body, as a response with `status`. */
export function anthropicError(status: number, type: ErrorType, message: string): Response {
  const body: WireError & { request_id: string | null } = { type: 'error', error: { type, message }, request_id: null };
  return Response.json(body, { status });
}

/** The error type Anthropic gives each HTTP status. */
const errorTypeOf = (status: number): ErrorType =>
  ({
    400: 'invalid_request_error',
    401: 'authentication_error',
    402: 'billing_error',
    403: 'permission_error',
    404: 'not_found_error',
    413: 'request_too_large',
    429: 'rate_limit_error',
    504: 'timeout_error',
    529: 'overloaded_error',
  } as Record<number, ErrorType>)[status] ?? 'api_error';

/** A block's text: a text block's text, a tool use as JSON of {name, input}, a tool result's content text; other blocks (thinking, images) count nothing. */
function blockText(b: unknown): string {
  if (!isObject(b)) return '';
  if (b.type === 'text') return String(b.text ?? '');
  if (b.type === 'tool_use') return JSON.stringify({ name: b.name, input: b.input });
  if (b.type === 'tool_result') return text(b.content);
  return '';
}
/** A message's (or the system prompt's) text: a string, or its blocks' texts joined. */
const contentText = (content: unknown): string =>
  typeof content === 'string' ? content : Array.isArray(content) ? content.map(blockText).join('') : '';

const messagesOf = (body: Json): Json[] => Array.isArray(body.messages) ? body.messages.filter(isObject) : [];

/** The prompt as the gateway frames it: 8, then 4 + the tokens of the system prompt (when present) and of each message, then the tools' JSON when present. */
export function messagesPromptTokens(body: Json): number {
  const texts = [
    ...(body.system != null ? [contentText(body.system)] : []),
    ...messagesOf(body).map((m) => contentText(m.content)),
  ];
  let n = 8;
  for (const t of texts) n += 4 + textTokens(t);
  if (body.tools != null) n += textTokens(JSON.stringify(body.tools));
  const format = formatOf(body);
  if (format) n += textTokens(JSON.stringify(format));
  return n;
}

/** A structured output's format (output_config.format, a JSON schema), if the request asks for one. */
const formatOf = (body: Json): Json | null => {
  const format = isObject(body.output_config) ? body.output_config.format : null;
  return isObject(format) && format.type === 'json_schema' ? format : null;
};

const blocksOf = (m: Json | undefined): Json[] => Array.isArray(m?.content) ? m.content.filter(isObject) : [];

/** The tool this request calls (structured.ts says which), if any. */
function toolOf(body: Json): Tool | null {
  const tools = (Array.isArray(body.tools) ? body.tools.filter(isObject) : [])
    .map((t) => ({ name: String(t.name), schema: t.input_schema }));
  const c = isObject(body.tool_choice) ? body.tool_choice : { type: 'auto' };
  const choice: ToolChoice = c.type === 'tool'
    ? { name: String(c.name) }
    : c.type === 'any'
    ? 'required'
    : c.type === 'none'
    ? 'none'
    : 'auto';
  const all = messagesOf(body);
  const called = all.filter((m) => m.role === 'assistant').flatMap(blocksOf).filter((b) => b.type === 'tool_use')
    .map((b) => String(b.name));
  const last = all.at(-1);
  return toolToCall(
    tools,
    choice,
    called,
    last?.role === 'user' && blocksOf(last).some((b) => b.type === 'tool_result'),
  );
}

/** What the student wrote in a message: its string, or its text blocks (not tool results). */
const typed = (m: Json) =>
  typeof m.content === 'string' ? m.content : blocksOf(m).filter((b) => b.type === 'text').map(blockText).join('');

/** The directives of the last user message with text of its own (one carrying only tool results has none). */
export const directives = (body: Json): Directives =>
  directivesIn([...messagesOf(body)].reverse().map((m) => m.role === 'user' ? typed(m) : '').find(Boolean) ?? '');

/**
 * A text block as Anthropic sends it: `citations` only when the answer cites a document (its SDK's
 * type reads the absent field as null; @ai-sdk/anthropic 3, what npm installs on Node 20, refuses
 * a null there).
 */
const textBlock = (text: string) => ({ type: 'text', text }) as Anthropic.Messages.TextBlock;

/** Anthropic's answer to a wrong key or a missing anthropic-version header; null when both are right. */
export function anthropicRefusal(req: Request, key: string): Response | null {
  // The key as `x-api-key` or, as @anthropic-ai/sdk 1.x sends it, `Authorization: Bearer`.
  const given = req.headers.get('x-api-key') ?? req.headers.get('authorization')?.replace(/^Bearer /, '');
  if (given !== key) return anthropicError(401, 'authentication_error', 'invalid x-api-key');
  if (!req.headers.get('anthropic-version')) {
    return anthropicError(400, 'invalid_request_error', 'anthropic-version: header is required');
  }
  return null;
}

export async function messages(req: Request, key: string): Promise<Response> {
  const refused = anthropicRefusal(req, key);
  if (refused) return refused;
  const body = await jsonBody(req);
  if (typeof body.max_tokens !== 'number') {
    return anthropicError(400, 'invalid_request_error', 'max_tokens: Field required');
  }
  // Extended thinking's budget, as Anthropic checks it: at least 1,024 and less than max_tokens.
  const asked = isObject(body.thinking) ? body.thinking : {};
  if (asked.type === 'enabled') {
    const budget = Number(asked.budget_tokens);
    if (!(budget >= 1024 && budget < body.max_tokens)) {
      return anthropicError(
        400,
        'invalid_request_error',
        '`max_tokens` must be greater than `thinking.budget_tokens`, which must be ≥ 1024',
      );
    }
  }
  const d = directives(body);
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) {
    const status = Number(d.fail);
    return anthropicError(status, errorTypeOf(status), `stand-in failure ${status}`);
  }

  const tool = toolOf(body);
  const format = formatOf(body);
  const json = tool ? argumentsFor(tool) : format ? JSON.stringify(valueFor(format.schema)) : null;
  const a: Answer = json === null ? answer(d, body.max_tokens) : textAnswer(json, d, body.max_tokens);
  const prompt = messagesPromptTokens(body) + Number(d.extra_prompt ?? 0);
  const cacheRead = Math.min(Number(d.cached ?? 0), prompt);
  const cacheWrite = Math.min(Number(d.cache_write ?? 0), prompt - cacheRead);
  const hourWrite = Math.min(Number(d.cache_write_1h ?? 0), prompt - cacheRead - cacheWrite);
  const input = {
    input_tokens: prompt - cacheRead - cacheWrite - hourWrite,
    cache_creation_input_tokens: cacheWrite + hourWrite,
    cache_read_input_tokens: cacheRead,
  };
  const outputTokens = a.outputTokens + a.reasoning;
  const thinking = a.reasoning ? { thinking_tokens: a.reasoning } : null;
  const usageWith = (output: number, kinds: typeof input): Anthropic.Messages.Usage => ({
    ...kinds,
    // The writes by lifetime (zeros when the kinds are).
    cache_creation: {
      ephemeral_5m_input_tokens: kinds.cache_creation_input_tokens ? cacheWrite : 0,
      ephemeral_1h_input_tokens: kinds.cache_creation_input_tokens ? hourWrite : 0,
    },
    output_tokens: output,
    output_tokens_details: output === outputTokens ? thinking : null,
    server_tool_use: null,
    service_tier: 'standard',
    inference_geo: 'not_available',
    speed: null,
  });
  const usage = usageWith(outputTokens, input);
  const stopReason: Anthropic.Messages.StopReason = a.cut ? 'max_tokens' : tool ? 'tool_use' : 'end_turn';
  const answerText = a.parts.join('');
  const toolUse = (input: unknown): Anthropic.Messages.ToolUseBlock => ({
    type: 'tool_use',
    id: `toolu_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`,
    name: tool?.name ?? '',
    input,
    caller: { type: 'direct' },
  });
  const cutInput = () => {
    try {
      return JSON.parse(answerText);
    } catch {
      return {};
    }
  };
  const block: Anthropic.Messages.ContentBlock = tool ? toolUse(cutInput()) : textBlock(answerText);
  const message = (content: Anthropic.Messages.ContentBlock[], stop: Anthropic.Messages.StopReason | null) => ({
    id: `msg_${crypto.randomUUID().replaceAll('-', '')}`,
    type: 'message' as const,
    role: 'assistant' as const,
    model: String(body.model),
    content,
    stop_reason: stop,
    stop_sequence: null,
    stop_details: null,
    container: null,
    diagnostics: null,
  });

  if (body.stream !== true) {
    calls.set(tag, { status: 'done', protocol: 'messages', usage: d.no_usage ? undefined : usage });
    const whole: Omit<Anthropic.Messages.Message, 'usage'> & { usage?: Anthropic.Messages.Usage } = {
      ...message([block], stopReason),
      ...(d.no_usage ? {} : { usage }),
    };
    return Response.json(whole);
  }

  // no_usage: message_start's usage is all zeros and message_delta carries none (the SDK's
  // MessageStream then throws reading it, as it would on such a provider).
  const zeros = { input_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 };
  const events: WireEvent[] = [];
  events.push(
    {
      type: 'message_start',
      message: { ...message([], null), usage: d.no_usage ? usageWith(0, zeros) : usageWith(1, input) },
    } satisfies Anthropic.Messages.RawMessageStartEvent,
  );
  events.push({
    type: 'content_block_start',
    index: 0,
    content_block: block.type === 'tool_use' ? { ...block, input: {} } : textBlock(''),
  });
  events.push({ type: 'ping' });
  for (const w of a.parts) {
    const delta: Anthropic.Messages.RawContentBlockDelta = tool
      ? { type: 'input_json_delta', partial_json: w }
      : { type: 'text_delta', text: w };
    events.push({ type: 'content_block_delta', index: 0, delta });
  }
  events.push({ type: 'content_block_stop', index: 0 });
  const failure = (message: string): WireError => ({ type: 'error', error: { type: 'api_error', message } });
  let reported: unknown = d.no_usage ? undefined : usage;
  if (d.error_event) {
    events.push(failure('stand-in failure mid-stream'));
    reported = undefined;
  } else {
    // deltas=n: n message_delta events, output_tokens cumulative and rising to the true total.
    const n = Math.max(1, Number(d.deltas ?? 1));
    for (let k = 1; k <= n; k++) {
      const last = k === n;
      const delta: Anthropic.Messages.RawMessageDeltaEvent = {
        type: 'message_delta',
        delta: { stop_reason: last ? stopReason : null, stop_sequence: null, stop_details: null, container: null },
        usage: {
          ...input,
          output_tokens: last ? outputTokens : Math.floor((outputTokens * k) / n),
          output_tokens_details: last ? thinking : null,
          server_tool_use: null,
        },
      };
      if (d.no_usage) {
        const { usage: _omitted, ...withoutUsage } = delta;
        events.push(withoutUsage);
      } else events.push(delta);
    }
    events.push(d.error_after_usage ? failure('stand-in failure after usage') : { type: 'message_stop' });
  }
  return sse(events.map((e) => frame(e, e.type)), { tag, protocol: 'messages', d, usage: reported });
}
