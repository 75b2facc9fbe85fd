// A local stand-in for an OpenAI-compatible provider on :54332, so the AI gateway runs and is
// tested offline. It speaks Chat Completions' wire format (JSON, and SSE with a final usage
// chunk carrying cached and reasoning token details when asked for) and counts tokens with the
// same tokenizer the gateway uses. It is NOT a model: it answers with numbered words.
//   POST /v1/chat/completions   (Authorization: Bearer AI_API_KEY)   GET /v1/models
//   GET /_standin/calls/:tag     how a tagged call ended (done, aborted) and the usage it reported
// A test steers a call with directives in the last user message, e.g. `#standin words=40
// cached=8 reasoning=12 delay=20 tag=abc`: words (answer length), cached / reasoning (tokens
// reported as such), delay (ms between chunks), first_byte_delay (ms before the answer),
// fail=<status> (an error answer), stop_after=<n> (the connection drops after n chunks),
// no_usage (never reports usage), error_after_usage (an error event after the usage chunk),
// extra_prompt=<n> (bills n more prompt tokens than the gateway can count, as another tokenizer may).
import { encode } from 'gpt-tokenizer';
import { asText, utf8Bytes } from '../../supabase/functions/_shared/domain/token-bounds.ts';

const port = Number(Deno.env.get('AI_STANDIN_PORT') ?? 54332);
const key = Deno.env.get('AI_API_KEY') ?? '';
const calls = new Map<string, { status: 'running' | 'done' | 'aborted'; usage?: unknown }>();

type Message = { role: string; content?: unknown; name?: string; tool_calls?: unknown };

const text = (content: unknown): string =>
  typeof content === 'string'
    ? content
    : Array.isArray(content)
    ? content.map((p) => (p && typeof p === 'object' && 'text' in p ? String(p.text) : '')).join('')
    : '';

/** Tokens as OpenAI counts them (o200k, the whole text at once); a text with a run of 2,000 non-spaces, whose encoding would take minutes, as its bytes (what no provider exceeds). */
const textTokens = (t: string) => /\S{2000}/.test(t) ? utf8Bytes(t) : encode(t, asText).length;

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

function directives(messages: Message[]): Record<string, string> {
  const last = [...messages].reverse().find((m) => m.role === 'user');
  const found: Record<string, string> = {};
  for (const m of text(last?.content).matchAll(/#standin((?:\s+[a-z_]+(?:=[A-Za-z0-9_-]+)?)*)/g)) {
    for (const d of m[1].trim().split(/\s+/)) {
      const [k, v] = d.split('=');
      found[k] = v ?? 'true';
    }
  }
  return found;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const errorBody = (status: number) => ({
  error: { message: `stand-in failure ${status}`, type: 'server_error', param: null, code: 'standin_failure' },
});

async function chat(req: Request): Promise<Response> {
  if (req.headers.get('authorization') !== `Bearer ${key}`) {
    return Response.json({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error' } }, {
      status: 401,
    });
  }
  const body = await req.json();
  const messages: Message[] = Array.isArray(body.messages) ? body.messages : [];
  const d = directives(messages);
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) return Response.json(errorBody(Number(d.fail)), { status: Number(d.fail) });

  const limit = Number(body.max_completion_tokens ?? body.max_tokens ?? 4096);
  const reasoning = Math.min(Number(d.reasoning ?? 0), limit);
  const words = Array.from({ length: Number(d.words ?? 12) }, (_, i) => ` word${i + 1}`);
  // Whole words while they fit in what the limit leaves after reasoning.
  const answer: string[] = [];
  let outputTokens = 0;
  for (const w of words) {
    const t = encode(w, asText).length;
    if (reasoning + outputTokens + t > limit) break;
    answer.push(w);
    outputTokens += t;
  }
  const finish = answer.length < words.length ? 'length' : 'stop';
  const prompt = promptTokens(messages, [body.tools, body.tool_choice, body.response_format]) +
    Number(d.extra_prompt ?? 0);
  const usage = {
    prompt_tokens: prompt,
    completion_tokens: outputTokens + reasoning,
    total_tokens: prompt + outputTokens + reasoning,
    prompt_tokens_details: { cached_tokens: Math.min(Number(d.cached ?? 0), prompt) },
    completion_tokens_details: { reasoning_tokens: reasoning },
  };
  const id = `chatcmpl-${crypto.randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const model = String(body.model);

  if (!body.stream) {
    calls.set(tag, { status: 'done', usage });
    return Response.json({
      id,
      object: 'chat.completion',
      created,
      model,
      choices: [{ index: 0, message: { role: 'assistant', content: answer.join('') }, finish_reason: finish }],
      ...(d.no_usage ? {} : { usage }),
    });
  }

  const enc = new TextEncoder();
  const chunk = (delta: unknown, finishReason: string | null) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  });
  const events: unknown[] = [
    chunk({ role: 'assistant', content: '' }, null),
    ...answer.map((w) => chunk({ content: w }, null)),
    chunk({}, finish),
  ];
  if (body.stream_options?.include_usage && !d.no_usage) {
    events.push({ id, object: 'chat.completion.chunk', created, model, choices: [], usage });
  }
  const delay = Number(d.delay ?? 0);
  const stopAfter = d.stop_after === undefined ? Infinity : Number(d.stop_after);
  calls.set(tag, { status: 'running' });
  let i = 0;
  return new Response(
    new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (i >= stopAfter) return controller.error(new Error('connection dropped (stop_after)'));
        if (i < events.length) {
          if (delay && i > 0) await sleep(delay);
          controller.enqueue(enc.encode(`data: ${JSON.stringify(events[i++])}\n\n`));
          return;
        }
        if (d.error_after_usage) {
          controller.enqueue(enc.encode(`data: ${JSON.stringify(errorBody(500))}\n\n`));
        } else controller.enqueue(enc.encode('data: [DONE]\n\n'));
        calls.set(tag, { status: 'done', usage: d.no_usage ? undefined : usage });
        controller.close();
      },
      cancel() {
        calls.set(tag, { status: 'aborted' });
      },
    }),
    { headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' } },
  );
}

Deno.serve({ hostname: '127.0.0.1', port, onListen: () => console.log(`AI stand-in on :${port}`) }, (req) => {
  const url = new URL(req.url);
  if (url.pathname === '/v1/chat/completions' && req.method === 'POST') return chat(req);
  if (url.pathname === '/v1/models' && req.method === 'GET') {
    return Response.json({ object: 'list', data: [{ id: 'standin', object: 'model', created: 0, owned_by: 'local' }] });
  }
  const tagged = url.pathname.match(/^\/_standin\/calls\/([A-Za-z0-9_-]+)$/);
  if (tagged) return Response.json(calls.get(tagged[1]) ?? { status: 'unknown' });
  if (url.pathname === '/_standin/healthz') return new Response('ok');
  return Response.json({ error: { message: 'not found', type: 'invalid_request_error' } }, { status: 404 });
});
