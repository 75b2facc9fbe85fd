// POST /v1/chat/completions: OpenAI's Chat Completions, JSON or SSE (`data:` chunks, a final
// usage chunk when `stream_options.include_usage`, then `data: [DONE]`).
import {
  answer,
  calls,
  directivesIn,
  frame,
  openaiError,
  openaiUnauthorized,
  sleep,
  sse,
  text,
  textTokens,
} from './common.ts';

type Message = { role: string; content?: unknown; name?: string; tool_calls?: unknown };

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

export async function chat(req: Request, key: string): Promise<Response> {
  const unauthorized = openaiUnauthorized(req, key);
  if (unauthorized) return unauthorized;
  const body = await req.json();
  const messages: Message[] = Array.isArray(body.messages) ? body.messages : [];
  const d = directivesIn(text([...messages].reverse().find((m) => m.role === 'user')?.content));
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) return Response.json(openaiError(Number(d.fail)), { status: Number(d.fail) });

  const a = answer(d, Number(body.max_completion_tokens ?? body.max_tokens ?? 4096));
  const finish = a.cut ? 'length' : 'stop';
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
      choices: [{ index: 0, message: { role: 'assistant', content: a.parts.join('') }, finish_reason: finish }],
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
    chunk({ role: 'assistant', content: '' }, null),
    ...a.parts.map((w) => chunk({ content: w }, null)),
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
