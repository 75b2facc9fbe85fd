// An AI call's begin never ends what fell due (billing.begin_ai_call answers {state: 'settle'}):
// the gateway settles the spender in a statement of its own (billing.settle_spender) and asks
// again (ai/metering.ts settlingFirst). A call on an account with a hold past its TTL or a lot
// past its expiry goes ahead, from what is left once they ended, and calls racing on such an
// account end them once.
import assert from 'node:assert/strict';
import { ask, callsOf, student } from '../support/ai.ts';
import { assertLedgerInvariants, backdateLot, fund, holdsLapse, testDb } from '../support/helpers.ts';

/** The user's newest lot (the last grant's). */
async function newestLot(userId: string): Promise<string> {
  const [r] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${userId} order by l.id desc limit 1`;
  return r.id;
}

/** An overdue user hold of 5 and a lot of 50 past its expiry, neither ended yet. */
async function dueStudent() {
  const s = await student('100');
  await testDb`select billing.reserve_credits(${s.id}, 5, ${`due-hold:${s.id}`})`;
  await holdsLapse(testDb`h.idempotency_key = ${`due-hold:${s.id}`}`);
  await fund(s.id, '50');
  await backdateLot(await newestLot(s.id));
  return s;
}

async function accountFacts(userId: string) {
  const [r] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      (select count(*)::int from billing.transfers t where t.from_account_id = a.id and t.kind = 'expiry') as expiries,
      (select count(*)::int from billing.holds h where h.account_id = a.id and h.status = 'expired') as expired_holds,
      (select trim_scale(100 - coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${userId})
        as grants_less_charges
    from billing.accounts a where a.user_id = ${userId}`;
  return r;
}

Deno.test('a call on an account with an overdue hold and a lot past its expiry ends them, then holds', async () => {
  const s = await dueStudent();
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('hi #standin words=3'),
    max_tokens: 20,
  });
  assert.match(r.choices[0].message.content ?? '', /word3/);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  const f = await accountFacts(s.id);
  assert.equal(f.expiries, 1, 'the lot past its expiry expired');
  assert.equal(f.expired_holds, 1, 'the overdue hold ended');
  assert.equal(f.held, '0');
  assert.equal(f.balance, f.grants_less_charges, 'the call was paid from the 100 left, never from the expired 50');
  await assertLedgerInvariants();
});

Deno.test('calls racing on an account that fell due end what fell due once, and all go ahead', async () => {
  const s = await dueStudent();
  const calls = await Promise.allSettled(Array.from({ length: 6 }, (_, i) =>
    s.openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: ask(`hi ${i} #standin words=2`),
      max_tokens: 20,
    })));
  assert.deepEqual(calls.map((c) => c.status), Array(6).fill('fulfilled'));
  const f = await accountFacts(s.id);
  assert.equal(f.expiries, 1);
  assert.equal(f.expired_holds, 1);
  assert.equal((await callsOf(s.id)).filter((c) => c.status === 'charged').length, 6);
  assert.equal(f.balance, f.grants_less_charges);
  await assertLedgerInvariants();
});

Deno.test('a call that outlives its hold finishes: the gateway settles the account, then charges it all as the excess', async () => {
  const s = await student('100');
  const pending = s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('hi #standin words=3 first_byte_delay=1500'),
    max_tokens: 20,
  });
  let call: { hold_id: string } | undefined;
  for (let i = 0; !call && i < 50; i++) {
    await new Promise((r) => setTimeout(r, 50));
    [call] =
      await testDb`select c.hold_id::text from billing.ai_calls c where c.user_id = ${s.id} and c.status = 'held'`;
  }
  assert.ok(call, 'the call is under way');
  // Its hold's TTL passes while the provider answers: the finish meets an account that fell due.
  await holdsLapse(testDb`h.id = ${call.hold_id}`);
  const r = await pending;
  assert.match(r.choices[0].message.content ?? '', /word3/);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  const [h] = await testDb`select h.status, (select trim_scale(t.amount)::text from billing.transfers t
      where t.idempotency_key = 'ai-overage:' || ${c.id}) as excess
    from billing.holds h where h.id = ${call.hold_id}`;
  assert.equal(h.status, 'expired', 'the overdue hold ended before the finish');
  assert.equal(h.excess, c.charged, 'the hold it outlived captured nothing: its price is the excess');
  const f = await accountFacts(s.id);
  assert.equal(f.held, '0');
  assert.equal(f.balance, f.grants_less_charges);
  await assertLedgerInvariants();
});
