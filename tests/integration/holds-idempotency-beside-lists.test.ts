// One Idempotency-Key on POST /credits/holds sent with many bodies at once, beside a gateway
// call for a model with credits of its own: one hold, every other answer a replay or a 409.
// (Kept from the dispute attacks of #55; the cases that raced calls against a dispute's hold
// were dropped with dispute holds, issue #77: a disputed buyer is now suspended.)
import assert from 'node:assert/strict';
import { api, newUser, testDb, userToken } from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import { chat, coreInvariants, figures } from '../support/disputed.ts';
import { grantLot } from '../support/lots.ts';

type Json = Record<string, unknown>;
const codeOf = (r: { body: Json }) => (r.body.error as { code?: string } | undefined)?.code;

Deno.test('one Idempotency-Key on POST /credits/holds sent with twelve amounts at once beside a gateway call on lists: one hold, every other answer a replay or a 409, held exact', async () => {
  const m = await creditPerToken();
  const id = await newUser();
  const token = await userToken(id);
  assert.equal((await grantLot(id, '300', 'promo_grant')).status, 201);
  assert.equal((await grantLot(id, '100', 'promo_grant', { applies_to: [m] })).status, 201);
  const k = crypto.randomUUID();
  const rs = await Promise.all([
    ...Array.from(
      { length: 12 },
      (_, i) => api('/credits/holds', { token, headers: { 'idempotency-key': k }, body: { amount: String(100 + i) } }),
    ),
    chat(token, m, 'words=20 first_byte_delay=50'),
  ]);
  const holds = rs.slice(0, 12);
  const placed = holds.filter((r) => r.status === 201);
  assert.equal(placed.length, 1, holds.map((r) => `${r.status} ${codeOf(r)}`).join(', '));
  assert.ok(
    holds.filter((r) => r.status !== 201).every((r) =>
      r.status === 409 && ['IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_IN_USE'].includes(codeOf(r) ?? '')
    ),
    holds.map((r) => r.text).join('\n'),
  );
  assert.equal(rs[12].status, 200, rs[12].text);
  const amount = (placed[0].body.data as { amount: string }).amount;
  const [c] =
    await testDb`select trim_scale(charged)::text as charged from billing.ai_calls where user_id = ${id} and status = 'charged'`;
  const f = await figures(id);
  assert.deepEqual({ balance: f.balance, held: f.held }, { balance: String(400 - Number(c.charged)), held: amount });
  await coreInvariants([id]);
});
