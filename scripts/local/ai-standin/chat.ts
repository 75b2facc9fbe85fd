// POST /v1/chat/completions: OpenAI's Chat Completions, JSON or SSE (`data:` chunks, a final
// usage chunk when `stream_options.include_usage`, then `data: [DONE]`). A request with tools
// gets a tool call as its tool choice allows (structured.ts), one with a `response_format` JSON
// schema a JSON answer valid for it.
import {
  type Answer,
  answer,
  calls,
  type Directives,
  directivesIn,
  frame,
  type Json,
  openaiError,
  openaiUnauthorized,
  sleep,
  sse,
  text,
  textAnswer,
  textTokens,
} from './common.ts';
import { argumentsFor, type Tool, type ToolChoice, toolToCall, valueFor } from './structured.ts';

type Message = { role: string; content?: unknown; name?: string; tool_calls?: unknown };
type Call = { function?: { name?: string } };
type Body = {
  tools?: { function?: { name?: string; parameters?: unknown } }[];
  tool_choice?: unknown;
  response_format?: { type?: string; json_schema?: { schema?: unknown } };
};

/** The tool this request calls (structured.ts says which), if any. */
function toolOf(body: Body, messages: Message[]): Tool | null {
  const tools = (body.tools ?? []).map((t) => ({ name: String(t.function?.name), schema: t.function?.parameters }));
  const c = body.tool_choice as { function?: { name?: string } } | string | undefined;
  const choice: ToolChoice = typeof c === 'object' ? { name: String(c.function?.name) } : (c as ToolChoice) ?? 'auto';
  const called = messages.flatMap((m) => Array.isArray(m.tool_calls) ? m.tool_calls as Call[] : [])
    .map((t) => String(t.function?.name));
  return toolToCall(tools, choice, called, messages.at(-1)?.role === 'tool');
}

/** The answer's JSON when the request asks for one (a json_schema, or any JSON object). */
function jsonOf(body: Body): string | null {
  const f = body.response_format;
  if (f?.type === 'json_schema') return JSON.stringify(valueFor(f.json_schema?.schema));
  return f?.type === 'json_object' ? '{}' : null;
}

/** A count of chat input like OpenAI's: each message's text and name, 4 framing tokens each, 3 to prime the answer, tools and a response format's schema. */
function promptTokens(messages: Message[], extras: unknown[]): number {
  let n = 3;
  for (const m of messages) {
    n += 4 + textTokens(text(m.content)) + (m.name ? textTokens(m.name) : 0);
    if (m.tool_calls) n += textTokens(JSON.stringify(m.tool_calls));
  }
  for (const x of extras) if (x) n += textTokens(JSON.stringify(x));
  return n;
}

/** The directives of the last user message. */
export const directives = (body: Json): Directives => {
  const messages: Message[] = Array.isArray(body.messages) ? body.messages : [];
  return directivesIn(text([...messages].reverse().find((m) => m.role === 'user')?.content));
};

export async function chat(req: Request, key: string): Promise<Response> {
  const unauthorized = openaiUnauthorized(req, key);
  if (unauthorized) return unauthorized;
  const body = await req.json();
  const messages: Message[] = Array.isArray(body.messages) ? body.messages : [];
  const d = directives(body);
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) return Response.json(openaiError(Number(d.fail)), { status: Number(d.fail) });

  const limit = Number(body.max_completion_tokens ?? body.max_tokens ?? 4096);
  const tool = toolOf(body, messages);
  const json = tool ? argumentsFor(tool) : jsonOf(body);
  const a: Answer = json === null ? answer(d, limit) : textAnswer(json, d, limit);
  const finish = a.cut ? 'length' : tool ? 'tool_calls' : 'stop';
  const callId = `call_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
  const toolCall = (args: string) => ({
    id: callId,
    type: 'function',
    function: { name: tool?.name, arguments: args },
  });
  const prompt = promptTokens(messages, [body.tools, body.tool_choice, body.response_format]) +
    Number(d.extra_prompt ?? 0);
  const usage = {
    prompt_tokens: prompt,
    completion_tokens: a.outputTokens + a.reasoning,
    total_tokens: prompt + a.outputTokens + a.reasoning,
    prompt_tokens_details: { cached_tokens: Math.min(Number(d.cached ?? 0), prompt) },
    completion_tokens_details: { reasoning_tokens: a.reasoning },
  };
  const id = `chatcmpl-${crypto.randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const model = String(body.model);

  if (!body.stream) {
    calls.set(tag, { status: 'done', protocol: 'chat', usage });
    return Response.json({
      id,
      object: 'chat.completion',
      created,
      model,
      choices: [{
        index: 0,
        message: tool
          ? { role: 'assistant', content: null, tool_calls: [toolCall(a.parts.join(''))] }
          : { role: 'assistant', content: a.parts.join('') },
        finish_reason: finish,
      }],
      ...(d.no_usage ? {} : { usage }),
    });
  }

  const chunk = (delta: unknown, finishReason: string | null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  });
  const events: unknown[] = [
    ...(tool
      ? [
        chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, ...toolCall('') }] }, null),
        ...a.parts.map((p) => chunk({ tool_calls: [{ index: 0, function: { arguments: p } }] }, null)),
      ]
      : [chunk({ role: 'assistant', content: '' }, null), ...a.parts.map((w) => chunk({ content: w }, null))]),
    chunk({}, finish),
  ];
  if (body.stream_options?.include_usage && !d.no_usage) {
    events.push({ id, object: 'chat.completion.chunk', created, model, choices: [], usage });
  }
  return sse(events.map((e) => frame(e)), {
    tag,
    protocol: 'chat',
    d,
    usage: d.no_usage ? undefined : usage,
    tail: d.error_after_usage ? frame(openaiError(500)) : frame('[DONE]'),
  });
}
