// The same Idempotency-Key while its call is still with a failing upstream (before the fallback
// answered) is 409 IDEMPOTENCY_KEY_IN_USE, never a second call; once answered, the key replays
// the fallback's answer (streamed, byte for byte), says who answered it, and the student is
// charged once (docs/ai-gateway.md § Upstreams, "Who answered", and the idempotency rules).
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceOf, heldCall, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

Deno.test('the same key while the card upstream stalls is refused in use; the fallback answer is replayed, charged once', async () => {
  const s = await student('50');
  await withGateway({
    AI_API_BASE: `${standin}/_standin/fail/timeout/v1`,
    AI_UPSTREAMS: 'compat,backup',
    AI_UPSTREAM_BACKUP_BASE: `${standin}/v1`,
    AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
    AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
    AI_TIMEOUT_MS: '4000', // long enough that the second send lands while the first still waits
  }, async (url) => {
    const key = `fb-${crypto.randomUUID()}`;
    const send = () =>
      fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ model, messages: ask('#standin words=6'), max_tokens: 30, stream: true }),
      });
    const first = send();
    // The first call has claimed the key and is waiting on the silent card upstream (a fixed sleep
    // can lose this race on a slow machine: the second send would then claim the key itself).
    await heldCall(s.id); // its only call: the first, holding the key
    const during = await send();
    assert.equal(during.status, 409);
    assert.equal((await during.json()).error.code, 'IDEMPOTENCY_KEY_IN_USE');
    const answered = await first;
    const text = await answered.text();
    assert.equal(answered.headers.get('x-ai-answered-by'), `backup/${model}`);
    assert.match(text, /word6/);
    const again = await send();
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.headers.get('x-ai-answered-by'), `backup/${model}`);
    assert.equal(await again.text(), text);
  });
  const charged = await testDb`select trim_scale(charged)::text as charged from billing.ai_calls
    where user_id = ${s.id} and status = 'charged'`;
  assert.equal(charged.length, 1);
  const [b] = await testDb`select trim_scale(50 - ${charged[0].charged}::numeric)::text as b`;
  assert.equal(await balanceOf(s.id), b.b);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});
