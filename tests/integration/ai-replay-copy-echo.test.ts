// The replay copy an Idempotency-Key asks for holds none of the prompt, even where the provider
// echoes a field of the request in its own form rather than byte for byte (OpenAI's Responses
// API echoes function tools in its order, with `strict` filled in): a student who never consented
// has no tool description or schema of theirs stored, whole or streamed, and a replay still
// answers with what the request sent.
import assert from 'node:assert/strict';
import { settled, student } from '../support/ai.ts';
import { functionsUrl, testDb } from '../support/helpers.ts';

for (const stream of [false, true]) {
  Deno.test(`Responses${stream ? ', streamed' : ''}: a tool echoed in the provider's form is not kept in the replay copy`, async () => {
    const s = await student();
    const marker = `tool${crypto.randomUUID().replaceAll('-', '')}`;
    const body = JSON.stringify({
      model: 'gpt-4o-mini',
      input: '#standin words=2',
      max_output_tokens: 20,
      stream,
      tools: [{
        type: 'function',
        name: 'lookup',
        description: `find the grade of ${marker}`,
        parameters: { type: 'object', properties: { [`${marker}_id`]: { type: 'string' } } },
      }],
      tool_choice: 'none',
    });
    const k = crypto.randomUUID();
    const send = () =>
      fetch(`${functionsUrl}/ai/v1/responses`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': k },
        body,
      });
    const first = await send();
    assert.equal(first.status, 200);
    assert.ok((await first.text()).includes(marker), 'the provider echoed the tool');
    const call = await settled(s.id);
    assert.equal(call.status, 'charged');
    const [{ n }] = await testDb`select count(*)::int as n from billing.ai_calls c
      where c.user_id = ${s.id} and c::text like ${`%${marker}%`}`;
    assert.equal(n, 0, 'no copy of the prompt is stored');
    const again = await send();
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.ok((await again.text()).includes(marker), 'the replay echoes the tool it was sent');
  });
}
