// The gateway's other APIs against the real local stack, through the clients apps use today at
// their defaults: OpenAI's Responses API and embeddings (the `openai` SDK, the AI SDK's default
// model factory) and Anthropic's Messages (the Anthropic SDK, @ai-sdk/anthropic). Each charge is
// the rate card's price of what the provider (the stand-in) reported, worked out here from the
// card's own prices; a streamed call costs what it costs whole; failures charge what the rules say.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { APICallError, generateText, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import {
  activeHolds,
  balanceIsGrantsLessCharges,
  balanceOf,
  callsOf,
  cardPrice,
  gatewayUrl,
  messagesPrice,
  settled,
  standinCall,
  student,
} from '../support/ai.ts';
import { api, assertLedgerInvariants, testDb, withGateway } from '../support/helpers.ts';

const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;
const claude = 'claude-haiku-4-5';
const anthropicOf = (token: string) =>
  new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: token, maxRetries: 0 });

/** The price of a Responses usage object (input includes cached and writes, output includes reasoning). */
const responsesPrice = (model: string, u: OpenAI.Responses.ResponseUsage) => {
  const cached = u.input_tokens_details?.cached_tokens ?? 0;
  const write = (u.input_tokens_details as { cache_write_tokens?: number })?.cache_write_tokens ?? 0;
  const reasoning = u.output_tokens_details?.reasoning_tokens ?? 0;
  return cardPrice(model, {
    input: u.input_tokens - cached - write,
    cached,
    write,
    output: u.output_tokens - reasoning,
    reasoning,
  });
};

Deno.test('Responses: a whole call is charged the card price of the provider usage, and says its cost', async () => {
  const s = await student();
  const r = await s.openai.responses.create({
    model: 'gpt-4o',
    instructions: 'be brief',
    input: 'hello #standin words=7 cached=4 reasoning=3',
    max_output_tokens: 64,
  });
  assert.match(r.output_text, /word7/);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(c.usage_source, 'provider');
  assert.equal(c.charged, await responsesPrice('gpt-4o', r.usage!));
  assert.equal((r.usage as unknown as { cost: string }).cost, c.charged);
  assert.equal(c.transfer_metadata.cached_input_tokens, 4);
  assert.equal(c.transfer_metadata.reasoning_tokens, 3);
  assert.equal(await activeHolds(s.id), 0);
  assert.equal(await balanceOf(s.id), String(1000 - Number(c.charged)));
  await assertLedgerInvariants();
});

Deno.test('Responses: streamed costs what whole costs; the terminal event carries the cost; incomplete is charged', async () => {
  const s = await student();
  const input = 'the same question #standin words=9 cached=2 reasoning=5';
  const whole = await s.openai.responses.create({ model: 'gpt-4o-mini', input, max_output_tokens: 100 });
  const stream = await s.openai.responses.create({ model: 'gpt-4o-mini', input, max_output_tokens: 100, stream: true });
  let text = '', seq = -1;
  let done: OpenAI.Responses.Response | undefined;
  for await (const event of stream) {
    assert.ok(event.sequence_number > seq, 'sequence numbers rise');
    seq = event.sequence_number;
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') done = event.response;
  }
  assert.equal(text, whole.output_text);
  const [streamed, unstreamed] = await callsOf(s.id);
  assert.equal(streamed.charged, unstreamed.charged);
  assert.equal((done?.usage as unknown as { cost: string }).cost, streamed.charged);

  // Cut by max_output_tokens: response.incomplete, charged what the provider reported.
  const cut = await s.openai.responses.create({
    model: 'gpt-4o-mini',
    input: 'a long one #standin words=60',
    max_output_tokens: 16,
    stream: true,
  });
  let incomplete: OpenAI.Responses.Response | undefined;
  for await (const event of cut) if (event.type === 'response.incomplete') incomplete = event.response;
  assert.equal(incomplete?.status, 'incomplete');
  const c = await settled(s.id);
  assert.equal(c.usage_source, 'provider');
  assert.equal(c.charged, await responsesPrice('gpt-4o-mini', incomplete!.usage!));
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('Responses: an error event before usage charges nothing; response.failed with usage is charged and marked', async () => {
  const s = await student();
  await assert.rejects(async () => {
    const stream = await s.openai.responses.create({
      model: 'gpt-4o',
      input: '#standin words=8 error_event',
      stream: true,
      max_output_tokens: 50,
    });
    for await (const _ of stream) { /* read to the end */ }
  });
  const broken = await settled(s.id);
  assert.equal(broken.status, 'failed');
  assert.equal(broken.charged, '0');

  const stream = await s.openai.responses.create({
    model: 'gpt-4o',
    input: '#standin words=5 error_after_usage',
    stream: true,
    max_output_tokens: 50,
  });
  let failed: OpenAI.Responses.Response | undefined;
  for await (const event of stream) if (event.type === 'response.failed') failed = event.response;
  const c = await settled(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(c.failure, 'PROVIDER_FAILED_AFTER_USAGE');
  assert.equal(c.charged, await responsesPrice('gpt-4o', failed!.usage!));
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('Responses: built-in tools and anything kept at the provider are a 400 that never reaches it', async () => {
  const s = await student();
  const refused: [string, Record<string, unknown>][] = [
    ['tools', { tools: [{ type: 'web_search' }] }],
    ['tools', { tools: [{ type: 'code_interpreter', container: { type: 'auto' } }] }],
    ['previous_response_id', { previous_response_id: 'resp_123' }],
    ['conversation', { conversation: 'conv_123' }],
    ['store', { store: true }],
    ['background', { background: true }],
    ['input', { input: [{ type: 'item_reference', id: 'msg_1' }] }],
    ['input', { input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'https://x.invalid/a.png' }] }] }],
  ];
  for (const [field, extra] of refused) {
    const t = tag();
    const res = await api('/ai/v1/responses', {
      token: s.token,
      body: { model: 'gpt-4o', input: `#standin tag=${t}`, ...extra },
    });
    assert.equal(res.status, 400, `${JSON.stringify(extra)}: ${res.text}`);
    assert.match(
      JSON.stringify((res.body.error as { details?: unknown }).details ?? res.body.error),
      new RegExp(field),
    );
    assert.equal((await standinCall(t)).status, 'unknown', `${field} never reaches the provider`);
  }
  assert.equal((await callsOf(s.id)).length, 0);
  assert.equal(await balanceOf(s.id), '1000');
});

Deno.test("the AI SDK's default model factory (the Responses API) works, streamed and not, at the same price", async () => {
  const s = await student();
  const gw = createOpenAI({ baseURL: gatewayUrl, apiKey: s.token });
  const whole = await generateText({ model: gw('gpt-4o-mini'), prompt: 'hi #standin words=4', maxOutputTokens: 40 });
  assert.match(whole.text, /word4/);
  const streamed = streamText({ model: gw('gpt-4o-mini'), prompt: 'hi #standin words=4', maxOutputTokens: 40 });
  let text = '';
  for await (const part of streamed.textStream) text += part;
  assert.equal(text, whole.text);
  await settled(s.id);
  const calls = await callsOf(s.id);
  assert.equal(calls.length, 2);
  assert.equal(calls[0].charged, calls[1].charged);
  assert.equal(
    calls[0].charged,
    await cardPrice('gpt-4o-mini', {
      input: whole.usage.inputTokens!,
      output: whole.usage.outputTokens!,
    }),
  );
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('Messages: every input kind Anthropic reports is priced, cache writes at the card price', async () => {
  const s = await student();
  const anthropic = anthropicOf(s.token);
  const m = await anthropic.messages.create({
    model: claude,
    max_tokens: 100,
    system: [{ type: 'text', text: 'a long shared preamble', cache_control: { type: 'ephemeral' } }],
    messages: [{ role: 'user', content: 'hello #standin words=6 cached=3 cache_write=5 reasoning=4' }],
  });
  assert.equal(m.usage.cache_read_input_tokens, 3);
  assert.equal(m.usage.cache_creation_input_tokens, 5);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(c.charged, await messagesPrice(claude, m.usage));
  assert.equal((m.usage as unknown as { cost: string }).cost, c.charged);
  assert.equal(c.transfer_metadata.cache_write_tokens, 5);
  assert.equal(c.transfer_metadata.cached_input_tokens, 3);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('Messages: a stream of cumulative counts is charged the last, never a sum, and costs what whole costs', async () => {
  const s = await student();
  const anthropic = anthropicOf(s.token);
  const body = {
    model: claude,
    max_tokens: 200,
    messages: [{ role: 'user' as const, content: 'count me #standin words=12 deltas=3 cached=2' }],
  };
  const whole = await anthropic.messages.create(body);
  const final = await anthropic.messages.stream(body).finalMessage();
  assert.equal(final.usage.output_tokens, whole.usage.output_tokens);
  await settled(s.id);
  const [streamed, unstreamed] = await callsOf(s.id);
  assert.equal(streamed.charged, unstreamed.charged);
  assert.equal(streamed.charged, await messagesPrice(claude, whole.usage));
  assert.equal(streamed.usage.output_tokens, whole.usage.output_tokens);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("Messages: the Anthropic SDK's finalMessage() of a stream carries the cost, as create() does", async () => {
  // The SDK builds the final message from message_start and copies from message_delta's usage
  // only the fields it knows (output_tokens_details whole): usage.cost on the event is dropped.
  const s = await student();
  const anthropic = anthropicOf(s.token);
  const body = {
    model: claude,
    max_tokens: 200,
    messages: [{ role: 'user' as const, content: 'cost me #standin words=7 deltas=2' }],
  };
  type Costed = { cost?: string; output_tokens_details?: { cost?: string } | null };
  const whole = await anthropic.messages.create(body);
  const stream = anthropic.messages.stream(body);
  let deltaCost: string | undefined;
  stream.on('streamEvent', (e) => {
    if (e.type === 'message_delta') deltaCost = (e.usage as unknown as Costed).cost ?? deltaCost;
  });
  const final = await stream.finalMessage();
  await settled(s.id);
  const [streamed, unstreamed] = await callsOf(s.id);
  assert.equal((final.usage as unknown as Costed).output_tokens_details?.cost, streamed.charged);
  assert.equal(deltaCost, streamed.charged, "the last message_delta's usage.cost");
  assert.equal((whole.usage as unknown as Costed).output_tokens_details?.cost, unstreamed.charged);
  assert.equal((whole.usage as unknown as Costed).cost, unstreamed.charged);
  // @ai-sdk/anthropic keeps the raw usage: providerMetadata.anthropic.usage.cost.
  const gw = createAnthropic({ baseURL: gatewayUrl, apiKey: s.token });
  const r = streamText({ model: gw(claude), prompt: 'hi #standin words=3', maxOutputTokens: 40 });
  await r.consumeStream();
  const meta = (await r.providerMetadata)?.anthropic as { usage?: Costed } | undefined;
  await settled(s.id);
  assert.equal(meta?.usage?.cost, (await callsOf(s.id))[0].charged);
});

Deno.test('Messages: x-api-key or a bearer token; @ai-sdk/anthropic works streamed and not', async () => {
  const s = await student();
  const res = await fetch(`${gatewayUrl}/messages`, {
    method: 'POST',
    headers: { 'x-api-key': s.token, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: JSON.stringify({
      model: claude,
      max_tokens: 20,
      messages: [{ role: 'user', content: 'hi #standin words=2' }],
    }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal((await res.json()).type, 'message');
  const gw = createAnthropic({ baseURL: gatewayUrl, apiKey: s.token });
  const whole = await generateText({ model: gw(claude), prompt: 'hi #standin words=4', maxOutputTokens: 40 });
  assert.match(whole.text, /word4/);
  const streamed = streamText({ model: gw(claude), prompt: 'hi #standin words=4', maxOutputTokens: 40 });
  let text = '';
  for await (const part of streamed.textStream) text += part;
  assert.equal(text, whole.text);
  await settled(s.id);
  const [a, b] = await callsOf(s.id);
  assert.equal(a.charged, b.charged);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('Messages: server tools and images are a 400; a write on a card without its price is refused', async () => {
  const s = await student();
  const user = [{ role: 'user', content: 'hi' }];
  for (
    const [field, extra] of [
      ['tools', { tools: [{ type: 'web_search_20250305', name: 'web_search' }] }],
      ['messages', {
        messages: [{
          role: 'user',
          content: [{ type: 'image', source: { type: 'url', url: 'https://x.invalid/a.png' } }],
        }],
      }],
    ] as const
  ) {
    const res = await api('/ai/v1/messages', {
      token: s.token,
      body: { model: claude, max_tokens: 10, messages: user, ...extra },
    });
    assert.equal(res.status, 400, res.text);
    assert.match(JSON.stringify(res.body.error), new RegExp(field));
  }
  // A Claude card without a cache-write price: a request asking to write the cache cannot be priced.
  const model = `claude-test-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${model}, 1, 1, 5, 2, now() - interval '1 minute', 'anthropic')`;
  const res = await api('/ai/v1/messages', {
    token: s.token,
    body: {
      model,
      max_tokens: 10,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral' } }] }],
    },
  });
  assert.equal(res.status, 400, res.text);
  assert.equal((res.body.error as { code: string }).code, 'UNPRICED_USAGE');
  assert.equal(await balanceOf(s.id), '1000');
});

Deno.test('embeddings: billed on the input the provider counted, at the input price; arrays and base64 work', async () => {
  const s = await student();
  const one = await s.openai.embeddings.create({ model: 'text-embedding-3-small', input: 'a study note' });
  assert.equal(one.data.length, 1);
  assert.ok(one.data[0].embedding.length > 0);
  const many = await s.openai.embeddings.create({
    model: 'text-embedding-3-small',
    input: ['first note', 'second note', 'third'],
    encoding_format: 'float',
  });
  assert.equal(many.data.length, 3);
  const [c2, c1] = await callsOf(s.id);
  assert.equal(c1.charged, await cardPrice('text-embedding-3-small', { input: one.usage.prompt_tokens, output: 0 }));
  assert.equal(c2.charged, await cardPrice('text-embedding-3-small', { input: many.usage.prompt_tokens, output: 0 }));
  assert.equal((many.usage as unknown as { cost: string }).cost, c2.charged);
  const models = await api('/ai/v1/models', { token: s.token });
  const listed = (models.body as unknown as { data: { id: string; endpoints: string[] }[] }).data;
  assert.deepEqual(listed.find((m) => m.id === 'text-embedding-3-small')?.endpoints.includes('embeddings'), true);
  assert.deepEqual(listed.find((m) => m.id === claude)?.endpoints, ['messages']);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('one upstream per model: an API its upstream does not speak is ENDPOINT_NOT_SUPPORTED; an OpenAI-compatible host serves its models', async () => {
  const s = await student();
  for (
    const [path, body] of [
      ['/ai/v1/chat/completions', { model: claude, messages: [{ role: 'user', content: 'hi' }] }],
      ['/ai/v1/responses', { model: claude, input: 'hi' }],
      ['/ai/v1/messages', { model: 'gpt-4o', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }],
    ] as const
  ) {
    const res = await api(path, { token: s.token, body });
    assert.equal(res.status, 400, `${path}: ${res.text}`);
    assert.equal((res.body.error as { code: string }).code, 'ENDPOINT_NOT_SUPPORTED');
  }
  const model = `school-llama-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${model}, 1, 0.2, 0.4, 2, now() - interval '1 minute', 'compat')`;
  const r = await s.openai.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'hi #standin words=3' }],
  });
  assert.match(r.choices[0].message.content ?? '', /word3/);
  const refused = await api('/ai/v1/responses', { token: s.token, body: { model, input: 'hi' } });
  assert.equal((refused.body.error as { code: string }).code, 'ENDPOINT_NOT_SUPPORTED');
  const [c] = await callsOf(s.id);
  assert.equal(
    c.charged,
    await cardPrice(model, { input: r.usage!.prompt_tokens, output: r.usage!.completion_tokens }),
  );
});

Deno.test('a 402 reaches each SDK as its own error type, and the provider is never called', async () => {
  const s = await student('0.001');
  const t = tag();
  await assert.rejects(
    s.openai.responses.create({ model: 'gpt-4o', input: `#standin tag=${t}`, max_output_tokens: 1000 }),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError);
      return err.status === 402;
    },
  );
  await assert.rejects(
    anthropicOf(s.token).messages.create({
      model: claude,
      max_tokens: 1000,
      messages: [{ role: 'user', content: `#standin tag=${t}` }],
    }),
    (err) => err instanceof Anthropic.APIError && err.status === 402,
  );
  await assert.rejects(
    generateText({
      model: createOpenAI({ baseURL: gatewayUrl, apiKey: s.token })('gpt-4o'),
      prompt: `#standin tag=${t}`,
      maxRetries: 0,
    }),
    (err) => APICallError.isInstance(err) && err.statusCode === 402,
  );
  assert.equal((await standinCall(t)).status, 'unknown');
  assert.equal(await balanceOf(s.id), '0.001');
});

Deno.test('parallel calls across the APIs over a small balance never overspend, and leave no hold', async () => {
  const s = await student('20'); // each call holds about 6.5 credits: three at a time at most
  const anthropic = anthropicOf(s.token);
  const calls = Array.from(
    { length: 12 },
    (_, i) =>
      i % 2
        ? s.openai.responses.create({
          model: 'gpt-4o',
          input: '#standin words=5 first_byte_delay=300',
          max_output_tokens: 100,
          stream: false,
        })
        : anthropic.messages.create({
          model: claude,
          max_tokens: 400,
          messages: [{ role: 'user', content: '#standin words=5 first_byte_delay=300' }],
        }),
  );
  const outcomes = await Promise.allSettled(calls);
  const ok = outcomes.filter((o) => o.status === 'fulfilled').length;
  for (const o of outcomes) if (o.status === 'rejected') assert.equal((o.reason as { status: number }).status, 402);
  assert.ok(ok >= 1 && ok < 12, `${ok} of 12 ran`);
  const charged = (await callsOf(s.id)).reduce((sum, c) => sum + Number(c.charged), 0);
  assert.ok(charged <= 20, `charged ${charged} of a balance of 20`);
  const b = await balanceIsGrantsLessCharges(s.id);
  assert.ok(b.exact, `the balance is the grants less the calls' charges: ${JSON.stringify(b)}`);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('a client that hangs up mid-stream is charged what the provider reports (Responses and Messages)', async () => {
  const s = await student();
  const t1 = tag();
  const controller = new AbortController();
  const stream = await s.openai.responses.create(
    {
      model: 'gpt-4o',
      input: `#standin words=60 delay=30 extra_prompt=3000 tag=${t1}`,
      max_output_tokens: 2000,
      stream: true,
    },
    { signal: controller.signal },
  );
  let n = 0;
  try {
    for await (const _ of stream) if (++n === 8) controller.abort();
  } catch { /* the SDK ends the loop with its abort error */ }
  const c1 = await settled(s.id);
  const up1 = await standinCall(t1);
  assert.equal(up1.status, 'done');
  assert.equal(c1.charged, await responsesPrice('gpt-4o', up1.usage as unknown as OpenAI.Responses.ResponseUsage));

  const t2 = tag();
  const anthropic = anthropicOf(s.token);
  const ms = anthropic.messages.stream({
    model: claude,
    max_tokens: 2000,
    messages: [{ role: 'user', content: `#standin words=60 delay=30 deltas=4 tag=${t2}` }],
  });
  let m = 0;
  try {
    for await (const _ of ms) if (++m === 8) ms.abort();
  } catch { /* aborted */ }
  await new Promise((r) => setTimeout(r, 100));
  const c2 = await settled(s.id);
  const up2 = await standinCall(t2);
  assert.equal(up2.status, 'done');
  assert.equal(c2.charged, await messagesPrice(claude, up2.usage as unknown as Anthropic.Messages.Usage));
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test("a Responses stream cut at the call's deadline is charged what was streamed and ends with ANSWER_CUT", async () => {
  await withGateway({ AI_CALL_MAX_SECONDS: '10' }, async (url) => {
    const s = await student();
    const res = await fetch(`${url}/ai/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4o',
        input: '#standin words=40 delay=300',
        max_output_tokens: 200,
        stream: true,
      }),
    });
    const text = await res.text();
    assert.match(text, /event: error\ndata: \{"type":"error","code":"ANSWER_CUT"/);
    assert.doesNotMatch(text, /response\.completed/);
    const c = await settled(s.id);
    assert.equal(c.status, 'charged');
    assert.equal(c.usage_source, 'tokenizer');
    // 40 words are 80 tokens; at 300 ms a word, about 30 were read in 10 s.
    assert.ok(c.usage.output_tokens > 0 && c.usage.output_tokens < 80, `${c.usage.output_tokens} tokens read`);
    assert.equal(await activeHolds(s.id), 0);
  });
});
