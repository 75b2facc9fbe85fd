// DELETE /ai/v1/calls/{id}/content reaches every copy of a call's text a student can ask for:
// the content kept with consent and the replay copy an Idempotency-Key kept. The key then
// answers 409 IDEMPOTENCY_ANSWER_GONE (as it does once the copy's 24 hours have passed), never
// a second provider call or charge.
import assert from 'node:assert/strict';
import { callsOf, gatewayUrl, student } from '../support/ai.ts';
import { api, testDb } from '../support/helpers.ts';

for (const stream of [false, true]) {
  Deno.test(`deleting a call's content deletes its replay copy${stream ? ' (streamed)' : ''}: the key answers 409 IDEMPOTENCY_ANSWER_GONE`, async () => {
    const s = await student();
    await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
    const key = crypto.randomUUID();
    const send = () =>
      fetch(`${gatewayUrl}/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({
          model: 'gpt-4o-mini',
          messages: [{ role: 'user', content: 'keep me #standin words=2' }],
          max_tokens: 10,
          stream,
        }),
      });
    const first = await send();
    assert.equal(first.status, 200);
    await first.text();
    const id = first.headers.get('x-ai-call-id')!;
    assert.equal((await send()).headers.get('idempotent-replayed'), 'true', 'replayed while the copy is kept');

    const deleted = await api(`/ai/v1/calls/${id}/content`, { method: 'DELETE', token: s.token });
    assert.equal(deleted.status, 200, deleted.text);
    const [call] =
      await testDb`select answer, (select count(*)::int from billing.ai_logs l where l.call_id = c.id) as logs
      from billing.ai_calls c where c.id = ${id}`;
    assert.deepEqual([call.answer, call.logs], [null, 0], 'no copy of its text is left');

    const again = await send();
    assert.equal(again.status, 409);
    assert.equal(((await again.json()).error as { code: string }).code, 'IDEMPOTENCY_ANSWER_GONE');
    const calls = await callsOf(s.id);
    assert.equal(calls.length, 1, 'no second call');
    assert.equal(calls[0].status, 'charged', 'charged once');
  });
}
