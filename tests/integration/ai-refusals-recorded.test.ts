// Refusals on the record: a call refused after its body was read (a refused field or form, a
// reference that cannot be opened, too few credits) is one call-log row with its code, which the
// student sees in GET /ai/v1/calls and the operator in /admin/ai/calls and the AI panel's
// refusals by code; a body that is not JSON stays off the record, as a 429 does (docs/ai-gateway.md).
import assert from 'node:assert/strict';
import { gatewayUrl, refusalsOf, student } from '../support/ai.ts';
import { adminToken, api } from '../support/helpers.ts';

type Logged = { model: string | null; endpoint: string; outcome: string; code: string | null; stream: boolean };
const myRefusals = async (token: string) =>
  ((await api('/ai/v1/calls?outcome=refused', { token })).body.data as { items: Logged[] }).items;

Deno.test('a refused field, an unopenable reference and too few credits are each a refused call on the record', async () => {
  const s = await student();
  const poor = await student('0');
  const tools = await api('/ai/v1/responses', {
    token: s.token,
    body: { model: 'gpt-4o-mini', input: 'hi', stream: true, tools: [{ type: 'web_search' }] },
  });
  assert.equal(tools.status, 400);
  const n = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], n: 3 },
  });
  assert.equal(n.status, 400);
  const reference = await api('/ai/v1/responses', {
    token: s.token,
    body: { model: 'gpt-4o-mini', input: [{ type: 'item_reference', id: 'msg_1' }] },
  });
  assert.equal(reference.status, 400);
  const broke = await api('/ai/v1/messages', {
    token: poor.token,
    body: { model: 'claude-haiku-4-5', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] },
  });
  assert.equal(broke.status, 402);
  // Not JSON: off the record.
  const garbled = await fetch(`${gatewayUrl}/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
    body: '{"model": "gpt-4o-mini", "input": ',
  });
  assert.equal(garbled.status, 400);
  await garbled.body?.cancel();

  assert.deepEqual(
    (await myRefusals(s.token)).map((c) => [c.endpoint, c.model, c.stream, c.code]),
    [
      ['responses', 'gpt-4o-mini', false, 'ITEM_REFERENCE_UNRESOLVABLE'],
      ['chat', 'gpt-4o', false, 'VALIDATION_FAILED'],
      ['responses', 'gpt-4o-mini', true, 'VALIDATION_FAILED'],
    ],
    'the student sees each refusal with its code; the unparseable body is not among them',
  );
  assert.deepEqual((await myRefusals(poor.token)).map((c) => c.code), ['INSUFFICIENT_CREDITS']);
  assert.equal((await refusalsOf(s.id)).length, 3);

  const admin = await adminToken();
  const logged = await api(`/admin/ai/calls?user_id=${s.id}&outcome=refused`, { token: admin });
  assert.equal((logged.body.data as { items: Logged[] }).items.length, 3);
  const stats = (await api('/admin/ai/stats', { token: admin })).body.data as {
    hour: { refusals: { code: string; calls: number }[] };
  };
  const byCode = new Map(stats.hour.refusals.map((r) => [r.code, r.calls]));
  for (const code of ['VALIDATION_FAILED', 'ITEM_REFERENCE_UNRESOLVABLE', 'INSUFFICIENT_CREDITS']) {
    assert.ok((byCode.get(code) ?? 0) >= 1, `${code} among the panel's refusals`);
  }
  const counts = stats.hour.refusals.map((r) => r.calls);
  assert.deepEqual(counts, [...counts].sort((a, b) => b - a), 'most first');
});
