// POST /v1/responses: OpenAI's Responses API, a Response object or typed SSE events (each with
// its `sequence_number`, no [DONE]) ending in response.completed / response.incomplete /
// response.failed, or in an `error` event. A request with tools gets a function_call item as its
// tool choice allows (structured.ts), one with a `text.format` JSON schema a JSON answer valid for it.
import type OpenAI from 'openai';
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
  openaiError,
  openaiUnauthorized,
  sleep,
  sse,
  text,
  textAnswer,
  textTokens,
} from './common.ts';
import { argumentsFor, type Tool, type ToolChoice, toolToCall, valueFor } from './structured.ts';

type Res = OpenAI.Responses.Response;
// `output_text` is the SDK's own convenience, computed on the client; the API never sends it.
type WireResponse = Omit<Res, 'output_text'>;
type Wire<E> = E extends { response: Res } ? Omit<E, 'response'> & { response: WireResponse } : E;
type WireEvent = Wire<OpenAI.Responses.ResponseStreamEvent>;
type Item = Json;

/** The input as items: a string input is one user message. */
const itemsOf = (input: unknown): Item[] =>
  typeof input === 'string' ? [{ role: 'user', content: input }] : Array.isArray(input) ? input.filter(isObject) : [];

/** The text an item is counted by: a call as JSON of {name, arguments}, a call's output, a message's content. */
function itemText(item: Item): string {
  if (item.type === 'function_call') return JSON.stringify({ name: item.name, arguments: item.arguments });
  if (item.type === 'function_call_output') return text(item.output);
  return text(item.content);
}

/** A tool as OpenAI echoes it: a function's fields in its own order, `strict` true unless sent false. */
const echoedTool = (t: unknown) =>
  isObject(t) && t.type === 'function'
    ? {
      type: 'function',
      description: t.description ?? null,
      name: t.name,
      parameters: t.parameters ?? null,
      strict: t.strict ?? true,
    }
    : t;

/**
 * The prompt as the gateway frames it: 3, then 4 + the tokens of each message (the instructions
 * as one, then every input item), then the tools' and the text format's JSON when present.
 */
export function responsesPromptTokens(body: Json): number {
  const items = itemsOf(body.input);
  const texts = [...(typeof body.instructions === 'string' ? [body.instructions] : []), ...items.map(itemText)];
  let n = 3;
  for (const t of texts) n += 4 + textTokens(t);
  if (body.tools != null) n += textTokens(JSON.stringify(body.tools));
  const format = isObject(body.text) ? body.text.format : undefined;
  if (format != null) n += textTokens(JSON.stringify(format));
  return n;
}

/** The tool this request calls (structured.ts says which), if any. */
function toolOf(body: Json): Tool | null {
  const tools = (Array.isArray(body.tools) ? body.tools.filter(isObject) : [])
    .map((t) => ({ name: String(t.name), schema: t.parameters }));
  const c = body.tool_choice;
  const choice: ToolChoice = isObject(c) ? { name: String(c.name) } : (c as ToolChoice | undefined) ?? 'auto';
  const items = itemsOf(body.input);
  const called = items.filter((i) => i.type === 'function_call').map((i) => String(i.name));
  return toolToCall(tools, choice, called, items.at(-1)?.type === 'function_call_output');
}

/** The answer's JSON when `text.format` asks for one (a json_schema, or any JSON object). */
function jsonOf(body: Json): string | null {
  const format = isObject(body.text) && isObject(body.text.format) ? body.text.format : {};
  if (format.type === 'json_schema') return JSON.stringify(valueFor(format.schema));
  return format.type === 'json_object' ? '{}' : null;
}

/** The directives of the last user item. */
export const directives = (body: Json): Directives =>
  directivesIn(itemText([...itemsOf(body.input)].reverse().find((i) => i.role === 'user') ?? {}));

export async function responses(req: Request, key: string): Promise<Response> {
  const unauthorized = openaiUnauthorized(req, key);
  if (unauthorized) return unauthorized;
  const body = await jsonBody(req);
  const d = directives(body);
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) return Response.json(openaiError(Number(d.fail)), { status: Number(d.fail) });

  const maxOutput = typeof body.max_output_tokens === 'number' ? body.max_output_tokens : null;
  const tool = toolOf(body);
  const json = tool ? argumentsFor(tool) : jsonOf(body);
  const a: Answer = json === null ? answer(d, maxOutput ?? Infinity) : textAnswer(json, d, maxOutput ?? Infinity);
  const prompt = responsesPromptTokens(body) + Number(d.extra_prompt ?? 0);
  const cached = Math.min(Number(d.cached ?? 0), prompt);
  const usage: OpenAI.Responses.ResponseUsage = {
    input_tokens: prompt,
    input_tokens_details: {
      cached_tokens: cached,
      cache_write_tokens: Math.min(Number(d.cache_write ?? 0), prompt - cached),
    },
    output_tokens: a.outputTokens + a.reasoning,
    output_tokens_details: { reasoning_tokens: a.reasoning },
    total_tokens: prompt + a.outputTokens + a.reasoning,
  };
  const id = `resp_${crypto.randomUUID().replaceAll('-', '')}`;
  const itemId = `${tool ? 'fc' : 'msg'}_${crypto.randomUUID().replaceAll('-', '')}`;
  const created = Math.floor(Date.now() / 1000);
  const answerText = a.parts.join('');
  const part: OpenAI.Responses.ResponseOutputText = {
    type: 'output_text',
    text: answerText,
    annotations: [],
    logprobs: [],
  };
  const message: OpenAI.Responses.ResponseOutputMessage = {
    id: itemId,
    type: 'message',
    role: 'assistant',
    status: a.cut ? 'incomplete' : 'completed',
    content: [part],
  };
  const call: OpenAI.Responses.ResponseFunctionToolCall = {
    id: itemId,
    type: 'function_call',
    call_id: `call_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`,
    name: tool?.name ?? '',
    arguments: answerText,
    status: a.cut ? 'incomplete' : 'completed',
  };
  const item = tool ? call : message;
  const response = (status: 'in_progress' | 'completed' | 'incomplete' | 'failed'): WireResponse => ({
    id,
    object: 'response',
    created_at: created,
    status,
    access_programs: null,
    background: false,
    error: status === 'failed' ? { code: 'server_error', message: 'stand-in failure after usage' } : null,
    incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: typeof body.instructions === 'string' ? body.instructions : null,
    max_output_tokens: maxOutput,
    metadata: isObject(body.metadata) ? body.metadata as Record<string, string> : {},
    model: String(body.model),
    output: status === 'in_progress' ? [] : [item],
    parallel_tool_calls: body.parallel_tool_calls !== false,
    previous_response_id: null,
    reasoning: isObject(body.reasoning) ? body.reasoning as OpenAI.Reasoning : null,
    temperature: typeof body.temperature === 'number' ? body.temperature : 1,
    text: isObject(body.text) ? body.text as OpenAI.Responses.ResponseTextConfig : { format: { type: 'text' } },
    tool_choice: 'auto',
    tools: Array.isArray(body.tools) ? body.tools.map(echoedTool) as OpenAI.Responses.Tool[] : [],
    top_p: typeof body.top_p === 'number' ? body.top_p : 1,
    truncation: 'disabled',
    ...(status !== 'in_progress' ? { completed_at: status === 'completed' ? created : null } : {}),
    ...(status !== 'in_progress' && !d.no_usage ? { usage } : {}),
  });
  const final = a.cut ? 'incomplete' : 'completed';

  if (body.stream !== true) {
    calls.set(tag, { status: 'done', protocol: 'responses', usage: d.no_usage ? undefined : usage });
    return Response.json(response(final));
  }

  const events: WireEvent[] = [];
  const seq = () => events.length;
  const at = { item_id: itemId, output_index: 0, content_index: 0 };
  events.push({ type: 'response.created', sequence_number: seq(), response: response('in_progress') });
  events.push({ type: 'response.in_progress', sequence_number: seq(), response: response('in_progress') });
  events.push({
    type: 'response.output_item.added',
    sequence_number: seq(),
    output_index: 0,
    item: tool ? { ...call, status: 'in_progress', arguments: '' } : { ...message, status: 'in_progress', content: [] },
  });
  if (tool) {
    for (const p of a.parts) {
      events.push({
        type: 'response.function_call_arguments.delta',
        sequence_number: seq(),
        item_id: itemId,
        output_index: 0,
        delta: p,
      });
    }
  } else {
    events.push({ type: 'response.content_part.added', sequence_number: seq(), ...at, part: { ...part, text: '' } });
    for (const w of a.parts) {
      events.push({ type: 'response.output_text.delta', sequence_number: seq(), ...at, delta: w, logprobs: [] });
    }
  }
  let reported: unknown = d.no_usage ? undefined : usage;
  if (d.error_event) {
    events.push({
      type: 'error',
      sequence_number: seq(),
      code: 'server_error',
      message: 'stand-in failure mid-stream',
      param: null,
    });
    reported = undefined;
  } else {
    if (tool) {
      events.push({
        type: 'response.function_call_arguments.done',
        sequence_number: seq(),
        item_id: itemId,
        output_index: 0,
        arguments: answerText,
      });
    } else {
      events.push({
        type: 'response.output_text.done',
        sequence_number: seq(),
        ...at,
        text: answerText,
        logprobs: [],
      });
      events.push({ type: 'response.content_part.done', sequence_number: seq(), ...at, part });
    }
    events.push({ type: 'response.output_item.done', sequence_number: seq(), output_index: 0, item });
    if (d.error_after_usage) {
      events.push({ type: 'response.failed', sequence_number: seq(), response: response('failed') });
    } else if (a.cut) {
      events.push({ type: 'response.incomplete', sequence_number: seq(), response: response(final) });
    } else events.push({ type: 'response.completed', sequence_number: seq(), response: response(final) });
  }
  return sse(events.map((e) => frame(e, e.type)), { tag, protocol: 'responses', d, usage: reported });
}
