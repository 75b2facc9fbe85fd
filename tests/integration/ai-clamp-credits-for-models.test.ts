// Credits for some models clamp only the calls of those models (docs/ai-gateway.md § The last
// credits: "its free credits for the model"): a call of another model is clamped to the credits
// that may pay for it, and never held on, or charged to, credits for other models.
import assert from 'node:assert/strict';
import { gatewayUrl, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { grantLot } from '../support/lots.ts';

Deno.test("a call is clamped to the credits that may pay for its model, never another model's", async () => {
  const s = await student('9.87');
  const granted = await grantLot(s.id, '100', 'promo_grant', { applies_to: ['gpt-4o-mini*'] });
  assert.equal(granted.status, 201, granted.text);
  const res = await fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi #standin words=3000' }] }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const max = Number(res.headers.get('x-ai-max-output-tokens'));
  await res.text();
  const call = await settled(s.id);
  assert.ok(max >= 64 && max < 4096, `clamped to the 9.87 credits for any model: ${max}`);
  assert.ok(Number(call.charged) <= 9.87, JSON.stringify(call));
  // The clamped hold covered the whole price: its capture is the charge, nothing past it, no debt.
  const [paid] = await testDb`select trim_scale(h.captured_amount)::text as captured,
      (select count(*)::int from billing.transfers t where t.idempotency_key = 'ai-overage:' || c.id) as overages,
      trim_scale(a.balance)::text as balance
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id join billing.accounts a on a.id = h.account_id
    where c.id = ${call.id}`;
  const [left] = await testDb`select trim_scale(109.87 - ${call.charged}::numeric)::text as b`;
  assert.deepEqual({ ...paid }, { captured: call.charged, overages: 0, balance: left.b }, JSON.stringify(call));
  const [lot] = await testDb`select trim_scale(l.remaining)::text as remaining from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id} and l.applies_to is not null`;
  assert.equal(lot.remaining, '100', "the credits for gpt-4o-mini paid nothing of gpt-4o's call");
  await assertLedgerInvariants();
});
