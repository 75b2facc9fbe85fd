// Conversations on the Responses API written the AI SDK's default way (`openai(model)`, which
// sends the model's earlier answers back as item references): every turn answers and is charged
// exactly what the provider (the stand-in) reported, though neither the gateway nor the provider
// keeps the answers (ai/references.ts). A reference that cannot be opened (another student's,
// altered, expired) is a 400 that says why and names the way to send the text, on the record.
import assert from 'node:assert/strict';
import {
  convertToModelMessages,
  generateText,
  type ModelMessage,
  readUIMessageStream,
  streamText,
  type UIMessage,
} from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { activeHolds, callsOf, gatewayUrl, priceOf, refusalsOf, settled, standinCall, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, testDb, withGateway } from '../support/helpers.ts';
import { sealItem } from '../../supabase/functions/ai/references.ts';

const model = 'gpt-4o-mini';
const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

/** An AI SDK provider at the gateway, as its guide writes it, recording the bodies it sends. */
function gatewayFor(token: string) {
  const sent: string[] = [];
  const openai = createOpenAI({
    baseURL: gatewayUrl,
    apiKey: token,
    fetch: (input, init) => {
      sent.push(String(init?.body ?? ''));
      return fetch(input, init);
    },
  });
  return { openai, sent };
}

/** The turn's call as the ledger charged it, against the rate card's price of what the stand-in reported. */
async function assertChargedExactly(userId: string, t: string) {
  const call = await settled(userId);
  const reported = await standinCall(t);
  assert.equal(reported.status, 'done');
  const u = reported.usage as unknown as {
    input_tokens: number;
    output_tokens: number;
    input_tokens_details: { cached_tokens: number };
    output_tokens_details: { reasoning_tokens: number };
  };
  const price = await priceOf(model, {
    prompt_tokens: u.input_tokens,
    completion_tokens: u.output_tokens,
    prompt_tokens_details: { cached_tokens: u.input_tokens_details.cached_tokens },
    completion_tokens_details: { reasoning_tokens: u.output_tokens_details.reasoning_tokens },
  });
  assert.equal(call.status, 'charged');
  assert.equal(call.usage_source, 'provider');
  assert.equal(call.charged, price);
  // The prompt counted and held (references opened) covers what the provider billed.
  const [held] = await testDb`select c.prompt_tokens::int as prompt, h.amount >= c.charged as covered
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.id = ${call.id}`;
  assert.ok(held.prompt >= u.input_tokens, `counted ${held.prompt}, billed ${u.input_tokens}`);
  assert.equal(held.covered, true);
  return u;
}

type TurnOf = (openai: ReturnType<typeof createOpenAI>, messages: ModelMessage[]) => Promise<ModelMessage[]>;

/**
 * Ten turns: each answers, sends the earlier answers by reference (from the second on), and is
 * charged what the provider billed, its prompt holding every earlier answer's text.
 */
async function tenTurns(turn: TurnOf) {
  const s = await student();
  const gw = gatewayFor(s.token);
  const messages: ModelMessage[] = [];
  let lastInput = 0, lastOutput = 0;
  for (let n = 1; n <= 10; n++) {
    const t = tag();
    messages.push({ role: 'user', content: `Turn ${n}: go on. #standin words=${4 + n} tag=${t}` });
    messages.push(...await turn(gw.openai, messages));
    const u = await assertChargedExactly(s.id, t);
    // The provider read every earlier answer: the prompt grew by the last answer and this question.
    if (n > 1) assert.ok(u.input_tokens >= lastInput + lastOutput + 8, `turn ${n}: ${u.input_tokens}`);
    lastInput = u.input_tokens;
    lastOutput = u.output_tokens;
  }
  const references = gw.sent.map((b) => (b.match(/"type":"item_reference"/g) ?? []).length);
  assert.deepEqual(references, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal((await callsOf(s.id)).length, 10);
  assert.equal((await refusalsOf(s.id)).length, 0);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
}

Deno.test('a ten-turn generateText conversation pushing response.messages answers and is charged exactly each turn', async () => {
  await tenTurns(async (openai, messages) => {
    const result = await generateText({ model: openai(model), messages, maxOutputTokens: 60 });
    assert.match(result.text, /word1/);
    return result.response.messages;
  });
});

Deno.test('a ten-turn streamText conversation answers and is charged exactly each turn', async () => {
  await tenTurns(async (openai, messages) => {
    const result = streamText({ model: openai(model), messages, maxOutputTokens: 60 });
    assert.match(await result.text, /word1/);
    return (await result.response).messages;
  });
});

/** A first turn's answer, and the reference the AI SDK would send back for it. */
async function firstAnswer(token: string, stream: boolean) {
  const { openai } = gatewayFor(token);
  const messages: ModelMessage[] = [{ role: 'user', content: 'Hello #standin words=5' }];
  const result = stream
    ? await (async () => {
      const r = streamText({ model: openai(model), messages, maxOutputTokens: 40 });
      await r.text;
      return { response: await r.response };
    })()
    : await generateText({ model: openai(model), messages, maxOutputTokens: 40 });
  const [answer] = result.response.messages;
  const part = (answer.content as { providerOptions?: { openai?: { itemId?: string } } }[])[0];
  const id = part.providerOptions?.openai?.itemId;
  if (typeof id !== 'string' || !id.startsWith('ref_')) throw new Error(`not a reference: ${id}`);
  return id;
}

/** A second turn sending `id` back as the AI SDK does. */
const secondTurn = (token: string, id: string, t: string) =>
  api('/ai/v1/responses', {
    token,
    body: {
      model,
      input: [
        { role: 'user', content: 'Hello' },
        { type: 'item_reference', id },
        { role: 'user', content: `And then? #standin tag=${t}` },
      ],
    },
  });

Deno.test("another student's, an altered and an expired reference are a 400 that says why, on the record", async () => {
  const owner = await student(), other = await student();
  for (const stream of [false, true]) {
    const id = await firstAnswer(owner.token, stream);
    // The owner's second turn opens it.
    const own = await secondTurn(owner.token, id, tag());
    assert.equal(own.status, 200, own.text);
    const flipped = id.slice(0, 20) + (id[20] === 'A' ? 'B' : 'A') + id.slice(21);
    // Sealed 31 days ago: past the retention (AI_REFERENCE_RETENTION_DAYS, 30).
    const expired = await sealItem(owner.id, {
      type: 'message',
      role: 'assistant',
      content: [{ type: 'output_text', text: 'old' }],
    }, Date.now() - 31 * 86_400_000);
    const cases: [string, string, RegExp][] = [
      [other.token, id, /not a reference the gateway gave this account/],
      [owner.token, flipped, /not a reference the gateway gave this account, or it was altered/],
      [owner.token, expired, /expired/],
      [owner.token, 'msg_123', /not one the gateway gave/],
    ];
    for (const [token, ref, why] of cases) {
      const t = tag();
      const res = await secondTurn(token, ref, t);
      assert.equal(res.status, 400, res.text);
      const error = res.body.error as { code: string; message: string; field: string };
      assert.equal(error.code, 'ITEM_REFERENCE_UNRESOLVABLE');
      assert.equal(error.field, 'input.1.id');
      assert.match(error.message, why);
      assert.match(error.message, /providerOptions\.openai\.store = false/);
      assert.equal((await standinCall(t)).status, 'unknown', 'never reaches the provider');
    }
  }
  assert.deepEqual((await refusalsOf(other.id)).map((r) => r.failure), [
    'ITEM_REFERENCE_UNRESOLVABLE',
    'ITEM_REFERENCE_UNRESOLVABLE',
  ]);
  assert.equal((await refusalsOf(owner.id)).length, 6);
  assert.equal(await activeHolds(owner.id), 0);
});

Deno.test('previous_response_id is a 400 that says why, and a refused part says its own reason', async () => {
  const s = await student();
  const prev = await api('/ai/v1/responses', {
    token: s.token,
    body: { model, input: 'hi', previous_response_id: 'resp_123' },
  });
  assert.equal(prev.status, 400);
  assert.equal(
    (prev.body.error as { message: string }).message,
    'previous_response_id is not served: the gateway keeps no earlier prompts, at the provider or here; ' +
      'send the conversation as input (the AI SDK does so by default).',
  );
  const image = await api('/ai/v1/responses', {
    token: s.token,
    body: {
      model,
      input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'https://x.invalid/a.png' }] }],
    },
  });
  assert.equal(image.status, 400);
  assert.equal(
    (image.body.error as { message: string }).message,
    'input.0.content.0.type only text parts are served (input_text, output_text).',
  );
});

Deno.test('a chat kept as UI messages (useChat) and sent through convertToModelMessages answers every turn', async () => {
  const s = await student();
  const gw = gatewayFor(s.token);
  const ui: UIMessage[] = [];
  for (let n = 1; n <= 4; n++) {
    const t = tag();
    ui.push({ id: `u${n}`, role: 'user', parts: [{ type: 'text', text: `Turn ${n} #standin words=5 tag=${t}` }] });
    // The chatbot guide's route handler, and what useChat makes of its stream.
    const result = streamText({
      model: gw.openai(model),
      system: 'You are a helpful assistant.',
      messages: await convertToModelMessages(ui),
      maxOutputTokens: 60,
    });
    let answer: UIMessage | undefined;
    for await (const m of readUIMessageStream({ stream: result.toUIMessageStream() })) answer = m;
    assert.ok(answer);
    ui.push(answer);
    await assertChargedExactly(s.id, t);
  }
  const references = gw.sent.map((b) => (b.match(/"type":"item_reference"/g) ?? []).length);
  assert.deepEqual(references, [0, 1, 2, 3]);
});

/** A turn sending `id` back to a throw-away gateway at `url`; `t` tags the stand-in's call. */
const turnAt = (url: string, token: string, id: string, t: string) =>
  fetch(`${url}/ai/v1/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      input: [{ type: 'item_reference', id }, { role: 'user', content: `#standin tag=${t}` }],
    }),
  });

Deno.test("a streamed answer's reference opens while Redis is unreachable: nothing of it is kept there", async () => {
  const s = await student();
  const id = await firstAnswer(s.token, true);
  await withGateway({ UPSTASH_REDIS_REST_URL: 'http://127.0.0.1:9' }, async (url) => {
    const t = tag();
    const res = await turnAt(url, s.token, id, t);
    assert.equal(res.status, 200, await res.text());
    assert.equal((await standinCall(t)).status, 'done');
  });
  assert.equal((await callsOf(s.id)).length, 2);
});

Deno.test("a streamed answer's reference while the database is unreachable is a 503 to retry, never a call", async () => {
  const s = await student();
  const id = await firstAnswer(s.token, true);
  await withGateway({ DB_POOLER_URL: 'postgresql://postgres:postgres@127.0.0.1:9/postgres' }, async (url) => {
    const t = tag();
    const res = await turnAt(url, s.token, id, t);
    const { error } = await res.json();
    assert.equal(res.status, 503);
    assert.equal(error.code, 'ITEM_REFERENCE_UNAVAILABLE');
    assert.equal(error.retryable, true);
    assert.equal((await standinCall(t)).status, 'unknown');
  });
});
