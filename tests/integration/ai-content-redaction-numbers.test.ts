// A provider reads the numbers of a request as well as its strings (a tool's schema: `const`,
// `enum`, `default`, `examples`): a card or phone number written as a JSON number is redacted
// in the content kept with consent as it is when written as text.
import assert from 'node:assert/strict';
import { student } from '../support/ai.ts';
import { api, until } from '../support/helpers.ts';

Deno.test('a card and a phone number written as JSON numbers in a tool schema are not kept', async () => {
  const s = await student();
  const on = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  assert.equal(on.status, 200, on.text);
  await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'pay it #standin words=2' }],
    tools: [{
      type: 'function',
      function: {
        name: 'pay',
        parameters: {
          type: 'object',
          properties: {
            card: { type: 'integer', const: 4111111111111111 },
            phone: { type: 'integer', enum: [14155552671] },
          },
        },
      },
    }],
    tool_choice: 'none',
  });
  const prompt = await until('the content kept', async () => {
    const list = await api('/ai/v1/calls?limit=1', { token: s.token });
    const [call] = (list.body.data as { items: Array<{ id: string; outcome: string }> }).items;
    if (!call || call.outcome === 'held') return false;
    const one = await api(`/ai/v1/calls/${call.id}`, { token: s.token });
    return (one.body.data as { content: { prompt: string } | null }).content?.prompt ?? false;
  });
  assert.ok(!prompt.includes('4111111111111111'), prompt);
  assert.ok(!prompt.includes('14155552671'), prompt);
  assert.ok(prompt.includes('"pay"'), 'the rest of the request is kept');
});
