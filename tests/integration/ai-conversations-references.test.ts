// What a student can and cannot make of the gateway's sealed item references (ai/references.ts)
// on POST /ai/v1/responses: the same reference sent many times is opened once (a few hundred
// bytes of request never make hundreds of database reads), a reference opens only as the gateway
// spelled it, a 400 names the first reference that fails, and however many times an answer is
// sent back by reference, the prompt counted and held covers what the provider billed.
import assert from 'node:assert/strict';
import { generateText, type ModelMessage, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { gatewayUrl, priceOf, settled, standinCall, student } from '../support/ai.ts';
import { api, testDb } from '../support/helpers.ts';

const model = 'gpt-4o-mini';
const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

/** A first answer of `words` words, and the reference the AI SDK sends back for it. */
async function firstAnswer(token: string, stream: boolean, words: number) {
  const openai = createOpenAI({ baseURL: gatewayUrl, apiKey: token });
  const messages: ModelMessage[] = [{ role: 'user', content: `Hello #standin words=${words}` }];
  const response = stream
    ? await (async () => {
      const r = streamText({ model: openai(model), messages, maxOutputTokens: 2 * words + 20 });
      await r.text;
      return await r.response;
    })()
    : (await generateText({ model: openai(model), messages, maxOutputTokens: 2 * words + 20 })).response;
  const part = (response.messages[0].content as { providerOptions?: { openai?: { itemId?: string } } }[])[0];
  const id = part.providerOptions?.openai?.itemId;
  if (typeof id !== 'string' || !id.startsWith('ref_')) throw new Error(`not a reference: ${id}`);
  return id;
}

/** How many times the gateway has read kept items (pg_stat_statements, every role). */
async function keptItemReads(): Promise<number> {
  const [{ n }] = await testDb`select coalesce(sum(s.calls), 0)::int as n from extensions.pg_stat_statements s
    where s.toplevel and s.query like '%billing.open_ai_reference_items(%'`;
  return n;
}

/** A turn sending `id` (or each of `ids`) back `times` times. */
const turnWith = (token: string, id: string | string[], times: number, t: string) =>
  api('/ai/v1/responses', {
    token,
    body: {
      model,
      max_output_tokens: 20,
      input: [
        ...Array.from({ length: times }, () => [id].flat().map((x) => ({ type: 'item_reference', id: x }))).flat(),
        { role: 'user', content: `And then? #standin words=3 tag=${t}` },
      ],
    },
  });

Deno.test("streamed answers' references sent many times in one request are read in one statement", async () => {
  const s = await student('100000');
  const ids = [await firstAnswer(s.token, true, 20), await firstAnswer(s.token, true, 20)];
  const before = await keptItemReads();
  const res = await turnWith(s.token, ids, 150, tag());
  assert.equal(res.status, 200, res.text);
  assert.equal((await keptItemReads()) - before, 1, 'two references sent 150 times each: one read');
});

Deno.test('an answer sent back by reference many times is counted and held in full, and charged what the provider billed', async () => {
  for (const stream of [false, true]) {
    const s = await student('100000');
    const id = await firstAnswer(s.token, stream, 200);
    const t = tag();
    const res = await turnWith(s.token, id, 40, t);
    assert.equal(res.status, 200, res.text);
    const call = await settled(s.id);
    const reported = await standinCall(t);
    const u = reported.usage as unknown as {
      input_tokens: number;
      output_tokens: number;
      input_tokens_details: { cached_tokens: number };
      output_tokens_details: { reasoning_tokens: number };
    };
    // The provider read the answer 40 times over.
    assert.ok(u.input_tokens > 40 * 200, `billed ${u.input_tokens}`);
    assert.equal(call.status, 'charged');
    assert.equal(
      call.charged,
      await priceOf(model, {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        prompt_tokens_details: { cached_tokens: u.input_tokens_details.cached_tokens },
        completion_tokens_details: { reasoning_tokens: u.output_tokens_details.reasoning_tokens },
      }),
    );
    const [held] = await testDb`select c.prompt_tokens::int as prompt, h.amount >= c.charged as covered
      from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.id = ${call.id}`;
    assert.ok(held.prompt >= u.input_tokens, `counted ${held.prompt}, billed ${u.input_tokens}`);
    assert.equal(held.covered, true);
  }
});

Deno.test('a reference written another way (padding, a stray character, other spare bits) is refused as altered', async () => {
  const s = await student('100000');
  for (const stream of [false, true]) {
    const id = await firstAnswer(s.token, stream, 5);
    const own = await turnWith(s.token, id, 1, tag());
    assert.equal(own.status, 200, own.text);
    const body = id.slice('ref_'.length);
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    // The last character of unpadded base64 carries spare bits: another value of them decodes alike.
    const last = alphabet.indexOf(body.at(-1)!);
    const spare = body.length % 4 === 2 ? 15 : body.length % 4 === 3 ? 3 : 0;
    const variants = [
      `ref_${body}==`,
      `ref_${body.slice(0, 9)}.${body.slice(9)}`,
      `ref_${body.slice(0, 9)} ${body.slice(9)}`,
    ];
    if (spare) variants.push(`ref_${body.slice(0, -1)}${alphabet[last ^ 1]}`);
    for (const variant of variants) {
      const t = tag();
      const res = await turnWith(s.token, variant, 1, t);
      assert.equal(res.status, 400, `${variant}: ${res.text}`);
      assert.equal((res.body.error as { code: string }).code, 'ITEM_REFERENCE_UNRESOLVABLE');
      assert.match((res.body.error as { message: string }).message, /altered/);
      assert.equal((await standinCall(t)).status, 'unknown', 'never reaches the provider');
    }
  }
});

Deno.test('of references none of which opens, the 400 names the first, however long each takes to try', async () => {
  const s = await student();
  // The first takes longest to try (a megabyte to authenticate), the others none.
  const input = [
    { type: 'item_reference', id: `ref_${'A'.repeat(1_000_000)}` },
    ...Array.from({ length: 20 }, () => ({ type: 'item_reference', id: 'ref_AAAA' })),
    { role: 'user', content: 'x' },
  ];
  const res = await api('/ai/v1/responses', { token: s.token, body: { model, input } });
  assert.equal(res.status, 400, res.text);
  const error = res.body.error as { code: string; field: string };
  assert.equal(error.code, 'ITEM_REFERENCE_UNRESOLVABLE');
  assert.equal(error.field, 'input.0.id');
});
