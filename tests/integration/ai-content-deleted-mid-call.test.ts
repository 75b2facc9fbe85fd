// A call whose content its owner deletes while it runs keeps nothing when it settles: neither
// content in ai_logs nor the replay copy its Idempotency-Key asked for (docs/ai-gateway.md,
// "Content, only with consent": deleting a call's content ends its replay copy's 24 hours).
import assert from 'node:assert/strict';
import { ask } from '../support/ai.ts';
import { api, functionsUrl, fund, newUser, testDb, until, userToken } from '../support/helpers.ts';

for (const consented of [false, true]) {
  Deno.test(`a replay copy is not stored for a call whose content was deleted while it ran${consented ? ' (consenting student)' : ''}`, async () => {
    const id = await newUser();
    await fund(id, '10');
    const token = await userToken(id);
    if (consented) await api('/ai/v1/content-consent', { method: 'PUT', token, body: { keep_content: true } });
    const marker = `gone${crypto.randomUUID().replaceAll('-', '')}`;
    const res = await fetch(`${functionsUrl}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': marker },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        messages: ask(`#standin words=15 delay=150 ${marker}`),
        stream: true,
        max_tokens: 200,
      }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    await reader.read();
    const [held] = await testDb`select id from billing.ai_calls where user_id = ${id} and status = 'held'`;
    const del = await api(`/ai/v1/calls/${held.id}/content`, { method: 'DELETE', token });
    assert.equal(del.status, 200, del.text);
    while (!(await reader.read()).done) { /* the rest of the answer */ }
    const [call] = await until('the call settled', async () => {
      const rows = await testDb`select status, answer is null as no_copy from billing.ai_calls where id = ${held.id}`;
      return rows[0]?.status !== 'held' && rows;
    });
    assert.equal(call.status, 'charged');
    assert.equal(call.no_copy, true, 'the replay copy was stored after its owner deleted the call content');
  });
}
