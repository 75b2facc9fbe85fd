// Structured output and tool calls through the gateway, against the real local stack and the
// provider stand-in (which plays them: docs/ai-gateway.md § Locally), with the pinned clients apps
// use: the AI SDK (`Output.object`, a tool loop with `stopWhen`) over @ai-sdk/openai (Chat
// Completions and the default Responses model) and @ai-sdk/anthropic, and the `openai` and
// Anthropic SDKs. Every step is a call of its own, charged the card price of the usage the
// provider reported for it.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import type OpenAI from 'openai';
import { generateText, type LanguageModel, type LanguageModelUsage, Output, stepCountIs, streamText, tool } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { z } from 'zod';
import {
  activeHolds,
  balanceIsGrantsLessCharges,
  callsOf,
  cardPrice,
  gatewayUrl,
  priceOf,
  settled,
  student,
} from '../support/ai.ts';

const claude = 'claude-haiku-4-5';
const gpt = 'gpt-4o-mini';

// Every schema feature an app's object is likely to use.
const Quiz = z.object({
  title: z.string(),
  score: z.number(),
  questions: z.number().int().min(3).max(10),
  published: z.boolean(),
  tags: z.array(z.string()).min(2),
  level: z.enum(['easy', 'medium', 'hard']),
  author: z.object({ name: z.string(), answers: z.array(z.object({ correct: z.boolean(), points: z.number() })) }),
  note: z.string().optional(),
});

const weather = tool({
  description: 'The weather in a city',
  inputSchema: z.object({ city: z.string(), unit: z.enum(['celsius', 'fahrenheit']) }),
  execute: ({ city, unit }) => Promise.resolve({ city, unit, temperature: 21 }),
});

/** The three ways the AI SDK reaches the gateway. */
function models(token: string): { name: string; model: LanguageModel; model_id: string }[] {
  const openai = createOpenAI({ baseURL: gatewayUrl, apiKey: token });
  const anthropic = createAnthropic({ baseURL: gatewayUrl, apiKey: token });
  return [
    { name: 'Chat Completions', model: openai.chat(gpt), model_id: gpt },
    // The AI SDK's default: the Responses API, at its default options.
    { name: 'Responses', model: openai(gpt), model_id: gpt },
    { name: 'Messages', model: anthropic(claude), model_id: claude }, // charged as its card
  ];
}

/** The card price of a step's usage as the AI SDK reports it. */
const stepPrice = (model: string, u: LanguageModelUsage) =>
  cardPrice(model, {
    input: u.inputTokenDetails.noCacheTokens ?? u.inputTokens!,
    cached: u.inputTokenDetails.cacheReadTokens ?? 0,
    write: u.inputTokenDetails.cacheWriteTokens ?? 0,
    output: u.outputTokens! - (u.outputTokenDetails.reasoningTokens ?? 0),
    reasoning: u.outputTokenDetails.reasoningTokens ?? 0,
  });

/** The user's last `usages.length` calls, oldest first, are each charged the card price of its step's usage, in the ledger. */
async function assertChargedPerStep(userId: string, model: string, usages: LanguageModelUsage[]) {
  await settled(userId);
  const calls = (await callsOf(userId)).slice(0, usages.length).reverse();
  assert.equal(calls.length, usages.length);
  for (const [i, u] of usages.entries()) {
    assert.equal(calls[i].status, 'charged', `step ${i + 1}`);
    assert.notEqual(calls[i].charged, '0');
    assert.equal(calls[i].charged, await stepPrice(model, u), `step ${i + 1} of ${model}`);
    // The ledger's transfer moved exactly that (its numeric(38, 18) text, trailing zeros trimmed).
    assert.equal(calls[i].transfer_amount.replace(/\.?0+$/, ''), calls[i].charged, `step ${i + 1}: the ledger`);
  }
}

Deno.test('Output.object gets an object valid for its schema from each API, streamed and not, charged its usage', async () => {
  const s = await student();
  for (const m of models(s.token)) {
    const whole = await generateText({
      model: m.model,
      prompt: 'a quiz #standin',
      output: Output.object({ schema: Quiz }),
    });
    assert.equal(whole.output.level, 'easy', m.name);
    assert.ok(Number.isInteger(whole.output.questions) && whole.output.questions >= 3, m.name);
    assert.ok(whole.output.tags.length >= 2 && whole.output.author.answers.length >= 1, m.name);
    await assertChargedPerStep(s.id, m.model_id, [whole.usage]);

    const streamed = streamText({ model: m.model, prompt: 'a quiz #standin', output: Output.object({ schema: Quiz }) });
    for await (const _ of streamed.textStream) { /* read to the end */ }
    assert.deepEqual(await streamed.output, whole.output, m.name);
    const usage = await streamed.usage;
    assert.equal(usage.outputTokens, whole.usage.outputTokens, m.name);
    await assertChargedPerStep(s.id, m.model_id, [usage]);
  }
  assert.equal(await activeHolds(s.id), 0);
  assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
});

Deno.test('a tool loop (stopWhen) calls the tool, then answers with its result, on each API; every step is charged', async () => {
  const s = await student();
  for (const m of models(s.token)) {
    const whole = await generateText({
      model: m.model,
      prompt: 'the weather in Paris? #standin words=5',
      tools: { weather },
      stopWhen: stepCountIs(5),
    });
    assert.equal(whole.steps.length, 2, m.name);
    const [call] = whole.steps[0].toolCalls;
    assert.equal(call?.toolName, 'weather', m.name);
    assert.deepEqual(call.input, { city: 'word1', unit: 'celsius' });
    assert.deepEqual(whole.steps[0].toolResults[0].output, { city: 'word1', unit: 'celsius', temperature: 21 });
    assert.equal(whole.steps[1].toolCalls.length, 0, m.name);
    assert.equal(whole.text, ' word1 word2 word3 word4 word5', m.name);
    await assertChargedPerStep(s.id, m.model_id, whole.steps.map((x) => x.usage));

    // Streamed, with the final answer an object: the tool first, then the object.
    const streamed = streamText({
      model: m.model,
      prompt: 'a quiz about the weather in Paris #standin',
      tools: { weather },
      output: Output.object({ schema: Quiz }),
      stopWhen: stepCountIs(5),
    });
    for await (const _ of streamed.textStream) { /* read to the end */ }
    const steps = await streamed.steps;
    assert.deepEqual(steps.map((x) => x.toolCalls.length), [1, 0], m.name);
    assert.equal((await streamed.output).level, 'easy', m.name);
    await assertChargedPerStep(s.id, m.model_id, steps.map((x) => x.usage));
  }
  assert.equal(await activeHolds(s.id), 0);
  assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
});

Deno.test('the openai SDK: a tool call and its result (Chat Completions, Responses), streamed and not, each charged', async () => {
  const s = await student();
  const tools: OpenAI.Chat.ChatCompletionTool[] = [{
    type: 'function',
    function: {
      name: 'lookup',
      parameters: { type: 'object', properties: { term: { type: 'string' } }, required: ['term'] },
    },
  }];
  const question = { role: 'user' as const, content: 'define entropy #standin words=3' };
  const first = await s.openai.chat.completions.create({ model: gpt, messages: [question], tools });
  const [call] = first.choices[0].message.tool_calls ?? [];
  assert.equal(first.choices[0].finish_reason, 'tool_calls');
  assert.ok(call?.type === 'function');
  assert.equal(call.function.name, 'lookup');
  assert.deepEqual(JSON.parse(call.function.arguments), { term: 'word1' });
  const answer = await s.openai.chat.completions.create({
    model: gpt,
    messages: [question, first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: 'disorder' }],
    tools,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of answer) {
    text += chunk.choices[0]?.delta.content ?? '';
    usage = chunk.usage ?? usage;
  }
  assert.equal(text, ' word1 word2 word3');
  await settled(s.id);
  const [second, firstCall] = await callsOf(s.id);
  assert.equal(firstCall.charged, await priceOf(gpt, first.usage!));
  assert.equal(second.charged, await priceOf(gpt, usage!));

  // Responses: a function_call item, then the answer to its output.
  const respTools: OpenAI.Responses.FunctionTool[] = [{
    type: 'function',
    name: 'lookup',
    strict: true,
    parameters: { type: 'object', properties: { term: { type: 'string' } }, required: ['term'] },
  }];
  const events: OpenAI.Responses.ResponseStreamEvent[] = [];
  for await (
    const e of await s.openai.responses.create({ model: gpt, input: question.content, tools: respTools, stream: true })
  ) {
    events.push(e);
  }
  const done = events.at(-1);
  assert.equal(done?.type, 'response.completed');
  const item = done.response.output[0];
  assert.ok(item.type === 'function_call');
  assert.deepEqual(JSON.parse(item.arguments), { term: 'word1' });
  assert.ok(events.some((e) => e.type === 'response.function_call_arguments.delta'));
  const final = await s.openai.responses.create({
    model: gpt,
    input: [
      { role: 'user', content: question.content },
      { type: 'function_call', call_id: item.call_id, name: item.name, arguments: item.arguments },
      { type: 'function_call_output', call_id: item.call_id, output: 'disorder' },
    ],
    tools: respTools,
  });
  assert.equal(final.output_text, ' word1 word2 word3');
  await settled(s.id);
  const [r2, r1] = await callsOf(s.id);
  for (const [c, u] of [[r1, done.response.usage!], [r2, final.usage!]] as const) {
    const cached = u.input_tokens_details.cached_tokens;
    assert.equal(c.charged, await cardPrice(gpt, { input: u.input_tokens - cached, cached, output: u.output_tokens }));
  }
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('the Anthropic SDK: a tool_use and its tool_result, streamed and not, each charged', async () => {
  const s = await student();
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  const tools: Anthropic.Messages.Tool[] = [{
    name: 'lookup',
    input_schema: { type: 'object', properties: { term: { type: 'string' }, depth: { type: 'integer' } } },
  }];
  const question = { role: 'user' as const, content: 'define entropy #standin words=3' };
  const first = await anthropic.messages.stream({ model: claude, max_tokens: 200, messages: [question], tools })
    .finalMessage();
  assert.equal(first.stop_reason, 'tool_use');
  const use = first.content[0];
  assert.ok(use.type === 'tool_use');
  assert.deepEqual(use.input, { term: 'word1', depth: 1 });
  const final = await anthropic.messages.create({
    model: claude,
    max_tokens: 200,
    tools,
    messages: [
      question,
      { role: 'assistant', content: first.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'disorder' }] },
    ],
  });
  assert.equal(final.stop_reason, 'end_turn');
  assert.deepEqual(final.content.map((b) => b.type === 'text' && b.text), [' word1 word2 word3']);
  await settled(s.id);
  const [c2, c1] = await callsOf(s.id);
  for (const [c, u] of [[c1, first.usage], [c2, final.usage]] as const) {
    assert.equal(c.charged, await cardPrice(claude, { input: u.input_tokens, output: u.output_tokens }));
  }
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('tool choice: none answers in text; required and a named tool call one, on each API', async () => {
  const s = await student();
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  const fn = (name: string) => ({ type: 'function' as const, function: { name, parameters: { type: 'object' } } });
  const chat = (tool_choice: OpenAI.Chat.ChatCompletionToolChoiceOption) =>
    s.openai.chat.completions.create({
      model: gpt,
      messages: [{ role: 'user', content: 'go #standin words=2' }],
      tools: [fn('a'), fn('b')],
      tool_choice,
    });
  assert.equal((await chat('none')).choices[0].message.tool_calls, undefined);
  assert.equal((await chat('none')).choices[0].message.content, ' word1 word2');
  assert.equal((await chat('required')).choices[0].message.tool_calls?.[0].type, 'function');
  const named = (await chat({ type: 'function', function: { name: 'b' } })).choices[0].message.tool_calls?.[0];
  assert.equal(named?.type === 'function' && named.function.name, 'b');

  const resp = (tool_choice: OpenAI.Responses.ResponseCreateParams['tool_choice']) =>
    s.openai.responses.create({
      model: gpt,
      input: 'go #standin words=2',
      tools: [{ type: 'function', name: 'a', parameters: null, strict: false }],
      tool_choice,
    });
  assert.equal((await resp('none')).output_text, ' word1 word2');
  assert.equal((await resp('required')).output[0].type, 'function_call');

  const claudeWith = (tool_choice: Anthropic.Messages.ToolChoice) =>
    anthropic.messages.create({
      model: claude,
      max_tokens: 50,
      messages: [{ role: 'user', content: 'go #standin words=2' }],
      tools: [{ name: 'a', input_schema: { type: 'object' } }, { name: 'b', input_schema: { type: 'object' } }],
      tool_choice,
    });
  assert.deepEqual((await claudeWith({ type: 'none' })).content.map((b) => b.type), ['text']);
  const forced = (await claudeWith({ type: 'tool', name: 'b' })).content[0];
  assert.equal(forced.type === 'tool_use' && forced.name, 'b');
  assert.equal((await claudeWith({ type: 'any' })).stop_reason, 'tool_use');
  assert.equal(await activeHolds(s.id), 0);
});
