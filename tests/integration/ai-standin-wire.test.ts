// The AI stand-in (scripts/local/ai-standin.ts) speaks Responses, Anthropic Messages and
// Embeddings faithfully enough that the official SDKs parse them, and reports usage exactly as
// the prompt-count rules say (counted here, independently, with gpt-tokenizer). It talks to the
// stand-in directly: AI_STANDIN_PORT (else AI_STANDIN_URL, else :54332), AI_API_KEY (else .local/env).
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { generateText, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { encode } from 'gpt-tokenizer';

async function fromLocalEnv(name: string): Promise<string | undefined> {
  const file = await Deno.readTextFile(new URL('../../.local/env', import.meta.url)).catch(() => '');
  return file.match(new RegExp(`^${name}=(.*)$`, 'm'))?.[1];
}
const port = Deno.env.get('AI_STANDIN_PORT');
const base = port ? `http://127.0.0.1:${port}` : Deno.env.get('AI_STANDIN_URL') ?? 'http://127.0.0.1:54332';
const apiKey = Deno.env.get('AI_API_KEY') ?? await fromLocalEnv('AI_API_KEY') ?? '';

const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey, maxRetries: 0 });

const tokens = (t: string) => encode(t).length;
/** What an answer of `words` numbered words costs in output tokens (each word counted alone). */
const answerTokens = (words: number) =>
  Array.from({ length: words }, (_, i) => tokens(` word${i + 1}`)).reduce((a, b) => a + b, 0);
const tag = () => `w${crypto.randomUUID().replaceAll('-', '')}`;

type Part = { type?: string; text?: string };
const joined = (c: unknown): string =>
  typeof c === 'string'
    ? c
    : Array.isArray(c)
    ? c.map((p: Part) => p.type === 'text' || p.type === 'input_text' || p.type === 'output_text' ? p.text ?? '' : '')
      .join('')
    : '';

/** The Responses prompt rule: 3 + Σ (4 + tokens) over the instructions and each item, + tools, + text.format. */
function responsesPrompt(body: Record<string, unknown>): number {
  const items = typeof body.input === 'string'
    ? [{ role: 'user', content: body.input }]
    : body.input as Record<string, unknown>[];
  let n = 3 + (typeof body.instructions === 'string' ? 4 + tokens(body.instructions) : 0);
  for (const i of items) {
    const t = i.type === 'function_call'
      ? JSON.stringify({ name: i.name, arguments: i.arguments })
      : i.type === 'function_call_output'
      ? joined(i.output)
      : joined(i.content);
    n += 4 + tokens(t);
  }
  if (body.tools) n += tokens(JSON.stringify(body.tools));
  const format = (body.text as { format?: unknown } | undefined)?.format;
  if (format) n += tokens(JSON.stringify(format));
  return n;
}

/** The Messages prompt rule: 8 + Σ (4 + tokens) over the system prompt and each message, + tools. */
function messagesPrompt(body: Record<string, unknown>): number {
  const blockText = (b: Record<string, unknown>): string =>
    b.type === 'text'
      ? String(b.text)
      : b.type === 'tool_use'
      ? JSON.stringify({ name: b.name, input: b.input })
      : b.type === 'tool_result'
      ? joined(b.content)
      : '';
  const contentText = (c: unknown) =>
    typeof c === 'string' ? c : (c as Record<string, unknown>[]).map(blockText).join('');
  const texts = [
    ...(body.system !== undefined ? [contentText(body.system)] : []),
    ...(body.messages as { content: unknown }[]).map((m) => contentText(m.content)),
  ];
  let n = 8;
  for (const t of texts) n += 4 + tokens(t);
  if (body.tools) n += tokens(JSON.stringify(body.tools));
  return n;
}

/** A fetch that keeps the JSON body of each request it sends (what an SDK really sent). */
function recordingFetch() {
  const sent: Record<string, unknown>[] = [];
  const f: typeof fetch = (input, init) => {
    if (typeof init?.body === 'string') sent.push(JSON.parse(init.body));
    return fetch(input, init);
  };
  return { sent, fetch: f };
}

async function standinCall(t: string): Promise<{ status: string; protocol?: string; usage?: unknown }> {
  return await (await fetch(`${base}/_standin/calls/${t}`)).json();
}

// ---------------------------------------------------------------- Responses

Deno.test('responses.create (whole) parses and its usage is the prompt rule, cached and reasoning included', async () => {
  const t = tag();
  const body = {
    model: 'gpt-4o-mini',
    instructions: 'You are terse.',
    input: `say something #standin words=7 cached=5 reasoning=3 tag=${t}`,
  };
  const r = await openai.responses.create(body);
  const prompt = responsesPrompt(body);
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, Array.from({ length: 7 }, (_, i) => ` word${i + 1}`).join(''));
  assert.deepEqual(r.usage, {
    input_tokens: prompt,
    input_tokens_details: { cached_tokens: 5, cache_write_tokens: 0 },
    output_tokens: answerTokens(7) + 3,
    output_tokens_details: { reasoning_tokens: 3 },
    total_tokens: prompt + answerTokens(7) + 3,
  });
  assert.deepEqual(await standinCall(t), { status: 'done', protocol: 'responses', usage: r.usage });
});

Deno.test('a Responses prompt counts items, function calls, their outputs, tools and the text format', async () => {
  const body = {
    model: 'gpt-4o-mini',
    input: [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: [{ type: 'input_text' as const, text: 'weather in Paris?' }] },
      { type: 'function_call' as const, call_id: 'c1', name: 'weather', arguments: '{"city":"Paris"}' },
      { type: 'function_call_output' as const, call_id: 'c1', output: '{"temp":21}' },
      { role: 'assistant' as const, content: [{ type: 'output_text' as const, text: 'It is 21.', annotations: [] }] },
      { role: 'user' as const, content: [{ type: 'input_text' as const, text: 'thanks #standin words=2' }] },
    ],
    tools: [{
      type: 'function' as const,
      name: 'weather',
      strict: true,
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    }],
    text: {
      format: {
        type: 'json_schema' as const,
        name: 'answer',
        schema: { type: 'object', properties: { a: { type: 'string' } } },
      },
    },
  };
  const r = await openai.responses.create(body as OpenAI.Responses.ResponseCreateParamsNonStreaming);
  assert.equal(r.usage?.input_tokens, responsesPrompt(body));
  // Its one tool was called already: the answer is JSON for the text format, counted whole.
  assert.equal(r.output_text, '{"a":"word1"}');
  assert.equal(r.usage?.output_tokens, tokens('{"a":"word1"}'));
});

Deno.test('responses.create (stream) sends typed events in sequence and ends in response.completed with the usage', async () => {
  const body = { model: 'gpt-4o-mini', input: 'stream it #standin words=5 cached=2 reasoning=4' };
  const events: OpenAI.Responses.ResponseStreamEvent[] = [];
  for await (const e of await openai.responses.create({ ...body, stream: true })) events.push(e);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  assert.deepEqual(events.slice(0, 4).map((e) => e.type), [
    'response.created',
    'response.in_progress',
    'response.output_item.added',
    'response.content_part.added',
  ]);
  const deltas = events.filter((e) => e.type === 'response.output_text.delta');
  assert.equal(deltas.length, 5);
  const last = events.at(-1);
  assert.equal(last?.type, 'response.completed');
  if (last?.type !== 'response.completed') return;
  const prompt = responsesPrompt(body);
  const [message] = last.response.output;
  assert.equal(
    message.type === 'message' && message.content[0].type === 'output_text' && message.content[0].text,
    deltas.map((d) => d.delta).join(''),
  );
  assert.deepEqual(last.response.usage, {
    input_tokens: prompt,
    input_tokens_details: { cached_tokens: 2, cache_write_tokens: 0 },
    output_tokens: answerTokens(5) + 4,
    output_tokens_details: { reasoning_tokens: 4 },
    total_tokens: prompt + answerTokens(5) + 4,
  });
});

Deno.test('a Responses answer cut by max_output_tokens is incomplete, whole and streamed', async () => {
  const body = { model: 'gpt-4o-mini', input: 'long #standin words=40', max_output_tokens: 16 };
  const whole = await openai.responses.create(body);
  assert.equal(whole.status, 'incomplete');
  assert.deepEqual(whole.incomplete_details, { reason: 'max_output_tokens' });
  assert.ok(whole.usage && whole.usage.output_tokens <= 16 && whole.usage.output_tokens > 0);
  assert.equal(whole.usage.output_tokens, tokens(whole.output_text));
  const events: OpenAI.Responses.ResponseStreamEvent[] = [];
  for await (const e of await openai.responses.create({ ...body, stream: true })) events.push(e);
  const last = events.at(-1);
  assert.equal(last?.type, 'response.incomplete');
  if (last?.type === 'response.incomplete') assert.deepEqual(last.response.usage, whole.usage);
});

Deno.test('a Responses stream with error_event sends the text, then an error event and no terminal event', async () => {
  const t = tag();
  const res = await fetch(`${base}/v1/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', input: `x #standin words=3 error_event tag=${t}`, stream: true }),
  });
  const frames = (await res.text()).trim().split('\n\n');
  const types = frames.map((f) => f.match(/^event: (.+)$/m)?.[1]);
  assert.deepEqual(types.slice(-4), [
    'response.output_text.delta',
    'response.output_text.delta',
    'response.output_text.delta',
    'error',
  ]);
  const error = JSON.parse(frames.at(-1)?.split('data: ')[1] ?? 'null');
  assert.deepEqual({ ...error, message: 'm' }, {
    type: 'error',
    code: 'server_error',
    message: 'm',
    param: null,
    sequence_number: frames.length - 1,
  });
  assert.deepEqual(await standinCall(t), { status: 'done', protocol: 'responses' });
  // The SDK surfaces it as an error.
  await assert.rejects(async () => {
    for await (const _ of await openai.responses.create({ model: 'm', input: 'x #standin error_event', stream: true }));
  });
});

Deno.test('a Responses stream with error_after_usage ends in response.failed carrying the usage and an error', async () => {
  const body = { model: 'gpt-4o-mini', input: 'x #standin words=3 error_after_usage' };
  const events: OpenAI.Responses.ResponseStreamEvent[] = [];
  for await (const e of await openai.responses.create({ ...body, stream: true })) events.push(e);
  const last = events.at(-1);
  assert.equal(last?.type, 'response.failed');
  if (last?.type !== 'response.failed') return;
  assert.equal(last.response.status, 'failed');
  assert.equal(last.response.error?.code, 'server_error');
  assert.equal(last.response.usage?.input_tokens, responsesPrompt(body));
  assert.equal(last.response.usage?.output_tokens, answerTokens(3));
});

Deno.test('a Responses stream with stop_after=n drops after n events; no_usage leaves the terminal usage out', async () => {
  const t = tag();
  const seen: string[] = [];
  await assert.rejects(async () => {
    for await (
      const e of await openai.responses.create({ model: 'm', input: `x #standin stop_after=3 tag=${t}`, stream: true })
    ) {
      seen.push(e.type);
    }
  });
  assert.deepEqual(seen, ['response.created', 'response.in_progress', 'response.output_item.added']);
  assert.equal((await standinCall(t)).status, 'running');
  const events: OpenAI.Responses.ResponseStreamEvent[] = [];
  for await (const e of await openai.responses.create({ model: 'm', input: 'x #standin no_usage', stream: true })) {
    events.push(e);
  }
  const last = events.at(-1);
  assert.equal(last?.type, 'response.completed');
  if (last?.type === 'response.completed') assert.equal(last.response.usage, undefined);
});

Deno.test('Responses fail=<status> answers OpenAI error JSON with that status', async () => {
  await assert.rejects(openai.responses.create({ model: 'm', input: 'x #standin fail=429' }), (e) => {
    assert.ok(e instanceof OpenAI.APIError);
    assert.equal(e.status, 429);
    return true;
  });
});

// ---------------------------------------------------------------- Embeddings

Deno.test("embeddings.create decodes the default base64, matches float, and bills each input's tokens", async () => {
  const t = tag();
  const input = ['the first text', `second #standin extra_prompt=2 tag=${t}`];
  const b64 = await openai.embeddings.create({ model: 'text-embedding-3-small', input });
  const float = await openai.embeddings.create({ model: 'text-embedding-3-small', input, encoding_format: 'float' });
  assert.equal(b64.data.length, 2);
  assert.equal(b64.data[0].embedding.length, 1536);
  assert.deepEqual(Array.from(b64.data[1].embedding), float.data[1].embedding);
  assert.notDeepEqual(float.data[0].embedding, float.data[1].embedding);
  const prompt = tokens(input[0]) + tokens(input[1]) + 2;
  assert.deepEqual(float.usage, { prompt_tokens: prompt, total_tokens: prompt });
  assert.deepEqual(await standinCall(t), { status: 'done', protocol: 'embeddings', usage: float.usage });
  const again = await openai.embeddings.create({
    model: 'm',
    input: 'the first text',
    encoding_format: 'float',
    dimensions: 16,
  });
  assert.equal(again.data[0].embedding.length, 16);
  const ids = await openai.embeddings.create({ model: 'm', input: [[1, 2, 3], [4, 5]], encoding_format: 'float' });
  assert.deepEqual(ids.usage, { prompt_tokens: 5, total_tokens: 5 });
});

Deno.test("embeddings have the real model's dimension, or the dimensions asked for (a vector(1536) column takes them)", async () => {
  const dims = async (model: string, dimensions?: number) =>
    (await openai.embeddings.create({ model, input: 'a note', encoding_format: 'float', dimensions })).data[0].embedding
      .length;
  assert.equal(await dims('text-embedding-3-small'), 1536);
  assert.equal(await dims('text-embedding-3-large'), 3072);
  assert.equal(await dims('text-embedding-ada-002'), 1536);
  assert.equal(await dims('text-embedding-3-large', 256), 256);
  const v = (await openai.embeddings.create({ model: 'text-embedding-3-small', input: 'a note' })).data[0].embedding;
  assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-5, 'unit length, as OpenAI returns');
  // As OpenAI: no more dimensions than the model has, and none asked of ada-002.
  await assert.rejects(dims('text-embedding-3-small', 2000), (e) => e instanceof OpenAI.APIError && e.status === 400);
  await assert.rejects(dims('text-embedding-ada-002', 256), (e) => e instanceof OpenAI.APIError && e.status === 400);
});

// ---------------------------------------------------------------- Anthropic Messages

Deno.test('messages.create (whole) parses and reports the exclusive input kinds Anthropic reports', async () => {
  const t = tag();
  const body = {
    model: 'claude-standin',
    max_tokens: 256,
    system: [{ type: 'text' as const, text: 'You are terse.', cache_control: { type: 'ephemeral' as const } }],
    messages: [{
      role: 'user' as const,
      content: `hello #standin words=6 cached=7 cache_write=5 reasoning=2 tag=${t}`,
    }],
  };
  const m = await anthropic.messages.create(body);
  const prompt = messagesPrompt(body);
  assert.equal(m.stop_reason, 'end_turn');
  assert.equal(m.content[0].type === 'text' && m.content[0].text, ' word1 word2 word3 word4 word5 word6');
  assert.equal(m.usage.cache_read_input_tokens, 7);
  assert.equal(m.usage.cache_creation_input_tokens, 5);
  assert.equal(m.usage.input_tokens, prompt - 12);
  assert.equal(m.usage.output_tokens, answerTokens(6) + 2);
  assert.deepEqual(await standinCall(t), { status: 'done', protocol: 'messages', usage: m.usage });
});

Deno.test('a Messages prompt counts tool_use as JSON of {name, input}, tool_result content and the tools', async () => {
  const body = {
    model: 'claude-standin',
    max_tokens: 6,
    tools: [{ name: 'weather', input_schema: { type: 'object' as const, properties: { city: { type: 'string' } } } }],
    messages: [
      { role: 'user' as const, content: 'weather in Paris?' },
      {
        role: 'assistant' as const,
        content: [
          { type: 'text' as const, text: 'Looking.' },
          { type: 'tool_use' as const, id: 'tu1', name: 'weather', input: { city: 'Paris' } },
        ],
      },
      {
        role: 'user' as const,
        content: [
          { type: 'tool_result' as const, tool_use_id: 'tu1', content: [{ type: 'text' as const, text: '21C' }] },
          { type: 'text' as const, text: 'thanks #standin words=30' },
        ],
      },
    ],
  };
  const m = await anthropic.messages.create(body);
  assert.equal(m.usage.input_tokens, messagesPrompt(body));
  assert.equal(m.stop_reason, 'max_tokens');
  assert.ok(m.usage.output_tokens <= 6);
});

Deno.test('messages.stream with deltas=3: finalMessage carries the last cumulative usage, never a sum', async () => {
  const body = {
    model: 'claude-standin',
    max_tokens: 256,
    system: 'Be brief.',
    messages: [{ role: 'user' as const, content: 'stream #standin words=9 cached=4 cache_write=3 deltas=3' }],
  };
  const stream = anthropic.messages.stream(body);
  const outputs: number[] = [];
  const types: string[] = [];
  stream.on('streamEvent', (e) => {
    types.push(e.type);
    if (e.type === 'message_delta') outputs.push(e.usage.output_tokens);
  });
  const m = await stream.finalMessage();
  const prompt = messagesPrompt(body);
  assert.deepEqual(types.slice(0, 2), ['message_start', 'content_block_start']);
  assert.equal(types.at(-1), 'message_stop');
  assert.equal(outputs.length, 3);
  assert.ok(outputs[0] < outputs[1] && outputs[1] < outputs[2]);
  assert.equal(outputs[2], answerTokens(9));
  assert.equal(m.usage.output_tokens, answerTokens(9));
  assert.equal(m.usage.cache_read_input_tokens, 4);
  assert.equal(m.usage.cache_creation_input_tokens, 3);
  assert.equal(m.usage.input_tokens, prompt - 7);
  assert.equal(
    m.content[0].type === 'text' && m.content[0].text,
    Array.from({ length: 9 }, (_, i) => ` word${i + 1}`).join(''),
  );
});

Deno.test('a Messages stream fails on error_event (before any message_delta) and on error_after_usage (after it)', async () => {
  for (const directive of ['error_event', 'error_after_usage']) {
    const seen: string[] = [];
    const stream = anthropic.messages.stream({
      model: 'm',
      max_tokens: 64,
      messages: [{ role: 'user', content: `x #standin words=2 ${directive}` }],
    });
    stream.on('streamEvent', (e) => seen.push(e.type));
    await assert.rejects(stream.finalMessage(), Anthropic.APIError);
    assert.equal(seen.includes('message_delta'), directive === 'error_after_usage', directive);
    assert.ok(!seen.includes('message_stop'));
  }
});

Deno.test('a Messages stream drops after stop_after events; fail and a missing header or max_tokens answer Anthropic errors', async () => {
  const t = tag();
  const stream = anthropic.messages.stream({
    model: 'm',
    max_tokens: 64,
    messages: [{ role: 'user', content: `x #standin stop_after=4 tag=${t}` }],
  });
  await assert.rejects(stream.finalMessage());
  assert.deepEqual(await standinCall(t), { status: 'running', protocol: 'messages' });
  await assert.rejects(
    anthropic.messages.create({
      model: 'm',
      max_tokens: 8,
      messages: [{ role: 'user', content: 'x #standin fail=529' }],
    }),
    (e) => e instanceof Anthropic.APIError && e.status === 529,
  );
  const post = (headers: Record<string, string>, body: unknown) =>
    fetch(`${base}/v1/messages`, { method: 'POST', headers, body: JSON.stringify(body) });
  const ok = { model: 'm', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] };
  const noVersion = await post({ 'x-api-key': apiKey }, ok);
  assert.equal(noVersion.status, 400);
  assert.equal((await noVersion.json()).error.type, 'invalid_request_error');
  const badKey = await post({ 'x-api-key': 'nope', 'anthropic-version': '2023-06-01' }, ok);
  assert.equal(badKey.status, 401);
  assert.deepEqual((await badKey.json()).error.type, 'authentication_error');
  const noMax = await post({ 'x-api-key': apiKey, 'anthropic-version': '2023-06-01' }, {
    ...ok,
    max_tokens: undefined,
  });
  assert.equal(noMax.status, 400);
  assert.deepEqual((await noMax.json()).type, 'error');
});

// ---------------------------------------------------------------- AI SDK

Deno.test('the AI SDK (createOpenAI → /responses) reads the usage, generateText and streamText', async () => {
  const rec = recordingFetch();
  const model = createOpenAI({ baseURL: `${base}/v1`, apiKey, fetch: rec.fetch })('gpt-4o-mini');
  const g = await generateText({ model, system: 'Be brief.', prompt: 'hi #standin words=4 cached=3', maxRetries: 0 });
  assert.equal(g.text, ' word1 word2 word3 word4');
  const prompt = responsesPrompt(rec.sent[0]);
  assert.equal(g.usage.inputTokens, prompt);
  assert.equal(g.usage.inputTokenDetails.cacheReadTokens, 3);
  assert.equal(g.usage.outputTokens, answerTokens(4));
  const s = streamText({ model, prompt: 'hi #standin words=6 reasoning=2', maxRetries: 0 });
  assert.equal(await s.text, ' word1 word2 word3 word4 word5 word6');
  const u = await s.usage;
  assert.equal(u.inputTokens, responsesPrompt(rec.sent[1]));
  assert.equal(u.outputTokens, answerTokens(6) + 2);
  assert.equal(u.outputTokenDetails.reasoningTokens, 2);
});

Deno.test('the AI SDK (createAnthropic → /messages) reads the usage, generateText and streamText', async () => {
  const rec = recordingFetch();
  const model = createAnthropic({ baseURL: `${base}/v1`, apiKey, fetch: rec.fetch })('claude-standin');
  const g = await generateText({
    model,
    system: 'Be brief.',
    prompt: 'hi #standin words=4 cached=3 cache_write=2',
    maxRetries: 0,
  });
  assert.equal(g.text, ' word1 word2 word3 word4');
  const prompt = messagesPrompt(rec.sent[0]);
  assert.equal(g.usage.inputTokens, prompt);
  assert.equal(g.usage.inputTokenDetails.noCacheTokens, prompt - 5);
  assert.equal(g.usage.inputTokenDetails.cacheReadTokens, 3);
  assert.equal(g.usage.inputTokenDetails.cacheWriteTokens, 2);
  assert.equal(g.usage.outputTokens, answerTokens(4));
  const s = streamText({ model, prompt: 'hi #standin words=6 deltas=2', maxRetries: 0 });
  assert.equal(await s.text, ' word1 word2 word3 word4 word5 word6');
  const u = await s.usage;
  assert.equal(u.inputTokens, messagesPrompt(rec.sent[1]));
  assert.equal(u.outputTokens, answerTokens(6));
});
