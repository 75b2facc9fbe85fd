// Parallel calls on the last credits are each clamped to what is left beside the others' holds
// (docs/ai-gateway.md § The last credits): the holds of calls running together are never more
// than the paying account has, so no two are held on the same credits, a student's own or a
// school pool shared by its members.
import assert from 'node:assert/strict';
import { activeHolds, gatewayUrl } from '../support/ai.ts';
import { assertLedgerInvariants, fund, newUser, testDb, until, userToken } from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';

/** A call for up to 200 tokens (about 12.4 credits) that waits before its first byte, so holds overlap. */
const longCall = (token: string) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi #standin words=3000 first_byte_delay=400' }],
      max_tokens: 200,
    }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));

/** Waits until none of the users' calls is still held. */
const allSettled = (users: string[]) =>
  until(
    'the calls settled',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = any(${users}) and status = 'held'`)[
        0
      ]
        .n === 0,
  );

/**
 * The granted answers' holds of the users' calls, what they charged and their holds captured, in
 * all, and how many cost more than their holds (an `ai-overage:<call>` charge).
 */
const heldAndCharged = async (users: string[]) =>
  (await testDb`select coalesce(sum(h.amount), 0)::numeric::text as held, coalesce(sum(c.charged), 0)::text as charged,
    trim_scale(coalesce(sum(c.charged), 0) - coalesce(sum(h.captured_amount), 0))::text as past_holds,
    count(*)::int as calls,
    count(*) filter (where exists (select 1 from billing.transfers t where t.idempotency_key = 'ai-overage:' || c.id))::int
      as overran
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = any(${users})`)[0];

Deno.test("eight parallel calls on a student's last 30 credits are held on 30 credits at most", async () => {
  const id = await newUser();
  await fund(id, '30');
  const token = await userToken(id);
  const outcomes = await Promise.all(Array.from({ length: 8 }, () => longCall(token)));
  for (const o of outcomes) assert.ok(o.status === 200 || o.status === 402, `${o.status} ${o.text.slice(0, 200)}`);
  const ran = outcomes.filter((o) => o.status === 200).length;
  assert.ok(ran >= 3 && ran < 8, `two whole answers and a clamped one at least: ${ran} ran`);
  await allSettled([id]);
  const r = await heldAndCharged([id]);
  assert.ok(Number(r.held) <= 30, `the calls that ran together held ${r.held} of 30`);
  // Each clamped hold covered its call's whole price: nothing charged past a hold, no debt.
  assert.ok(Number(r.charged) <= 30 && r.overran === 0 && r.past_holds === '0', JSON.stringify(r));
  const [a] = await testDb`select trim_scale(balance)::text as balance from billing.accounts where user_id = ${id}`;
  const [left] = await testDb`select trim_scale(30 - ${r.charged}::numeric)::text as b`;
  assert.equal(a.balance, left.b, 'the balance is 30 less what the calls charged');
  assert.equal(await activeHolds(id), 0);
  await assertLedgerInvariants();
});

Deno.test("two members racing on a pool's last 30 credits are held on 30 credits at most", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const bo = await person('bo');
  const org = await school(owner, [ada, bo], 'pool', '30');
  const outcomes = await Promise.all(Array.from({ length: 8 }, (_, i) => longCall(i % 2 ? ada.token : bo.token)));
  for (const o of outcomes) assert.ok(o.status === 200 || o.status === 402, `${o.status} ${o.text.slice(0, 200)}`);
  await allSettled([ada.id, bo.id]);
  const r = await heldAndCharged([ada.id, bo.id]);
  assert.ok(Number(r.held) <= 30, `the calls that ran together held ${r.held} of 30`);
  assert.ok(Number(r.charged) <= 30 && r.overran === 0 && r.past_holds === '0', JSON.stringify(r));
  const wallet = await walletOf(owner.token, org);
  const [left] = await testDb`select trim_scale(30 - ${r.charged}::numeric)::text as b`;
  assert.deepEqual([wallet.balance, wallet.held], [left.b, '0'], 'the pool is 30 less what the calls charged');
  await assertLedgerInvariants();
});
