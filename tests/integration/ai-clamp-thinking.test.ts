// Anthropic refuses extended thinking whose budget is not below max_tokens (a 400), so a call
// with a thinking budget is never clamped to that budget or less: its least answer is
// AI_MIN_OUTPUT_TOKENS beyond the budget, held when it fits, a 402 when it does not.
import assert from 'node:assert/strict';
import { balanceOf, gatewayUrl, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants } from '../support/helpers.ts';

const thinkingCall = (token: string) =>
  fetch(`${gatewayUrl}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'claude-3-5-haiku',
      max_tokens: 4000,
      thinking: { type: 'enabled', budget_tokens: 1024 },
      messages: [{ role: 'user', content: 'hi #standin words=3000' }],
    }),
  });

Deno.test('a clamped call with extended thinking keeps max_tokens above its budget', async () => {
  const s = await student('25');
  const res = await thinkingCall(s.token);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const granted = Number(res.headers.get('x-ai-max-output-tokens'));
  assert.ok(granted >= 1024 + 64 && granted < 4000, `granted ${granted}: clamped, the least answer beyond the budget`);
  await settled(s.id);
  await assertLedgerInvariants();
});

Deno.test('credits for less than the thinking budget: a 402 before the provider, never its 400', async () => {
  const s = await student('9.87');
  const res = await thinkingCall(s.token);
  const body = await res.json();
  assert.equal(res.status, 402, JSON.stringify(body));
  assert.equal(body.error.code, 'INSUFFICIENT_CREDITS');
  assert.equal(await balanceOf(s.id), '9.87', 'nothing was charged');
});
