// What a provider bills past a call's hold, when the account's free credits cannot pay it: the
// account's live holds give up what they reserved (billing.give_way_to_excess), at once; the caps
// count the excess once (the holds that gave get that room back), and what nothing pays is debt,
// refused with `debt: true` (docs/credit-lots.md § Refunds, disputes and debt 7).
import assert from 'node:assert/strict';
import { creditPerToken } from '../support/ai.ts';
import { api, assertLedgerInvariants, fund, key, newUser, testDb, userToken } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

/** A call of the 1-credit-a-token model whose prompt the stand-in bills `extra` tokens past it. */
const call = (token: string, model: string, extra: number, maxTokens = 20) =>
  api('/ai/v1/chat/completions', {
    token,
    headers: key(),
    body: {
      model,
      max_tokens: maxTokens,
      messages: [{ role: 'user', content: `#standin words=3 extra_prompt=${extra}` }],
    },
  });
const hold = (token: string, amount: string) => api('/credits/holds', { token, headers: key(), body: { amount } });

/** The call's price and, of the caller's own hold on the account, what it still holds and gave. */
async function excessTaken(userId: string) {
  const [c] = await testDb`
    select trim_scale(c.charged)::text as charged,
      (select jsonb_build_object('amount', trim_scale(h.amount)::text, 'status', h.status,
                                 'given', h.metadata ->> 'given_to_excess')
       from billing.holds h where h.purpose = 'user' and (h.member_id = c.user_id or h.account_id = (
         select a.id from billing.accounts a where a.user_id = c.user_id and a.org_id is null))) as hold
    from billing.ai_calls c where c.user_id = ${userId} and c.status = 'charged'`;
  return c as { charged: string; hold: { amount: string; status: string; given: string } };
}

Deno.test("a student's excess is taken from their own live hold, which shrinks; their cap counts it once", async () => {
  const model = await creditPerToken();
  const id = await newUser();
  await fund(id, '385');
  const token = await userToken(id);
  assert.equal(
    (await api('/credits/caps', { method: 'PUT', token, body: { period: 'day', amount: '500' } })).status,
    200,
  );
  // A hold of their own (300 counted), then a call that holds the 85 left and is billed past it.
  assert.equal((await hold(token, '300')).status, 201);
  assert.equal((await call(token, model, 200)).status, 200);
  const c = await excessTaken(id);
  const given = Number(c.hold.given);
  assert.ok(given > 0 && Number(c.charged) > 85, JSON.stringify(c));
  assert.deepEqual(
    [Number(c.hold.amount), c.hold.status],
    [300 - given, 'active'],
    'the hold gave what the excess took',
  );
  const [a] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      (select trim_scale(s.spent)::text from billing.spend_caps s where s.account_id = a.id) as spent
    from billing.accounts a where a.user_id = ${id}`;
  assert.deepEqual(
    [Number(a.balance), Number(a.held), Number(a.spent)],
    [385 - Number(c.charged), 300 - given, 300 - given + Number(c.charged)],
    'charged at once, no debt; the cap counts what is held and what was spent, each once',
  );
  await assertLedgerInvariants();
});

Deno.test("a member's excess is taken from their live hold on the pool; the cap the school set counts it once", async () => {
  const model = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '385');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '500' },
  });
  assert.equal(capped.status, 200, capped.text);
  assert.equal((await hold(ada.token, '300')).status, 201);
  assert.equal((await call(ada.token, model, 200)).status, 200);
  const c = await excessTaken(ada.id);
  const given = Number(c.hold.given);
  assert.ok(given > 0, JSON.stringify(c));
  const [cap] = await testDb`select trim_scale(s.spent)::text as spent from billing.spend_caps s
    join billing.accounts a on a.id = s.account_id where a.org_id = ${org} and a.member_id is null and s.member_id = ${ada.id}`;
  assert.equal(Number(cap.spent), 300 - given + Number(c.charged), "Ada's cap counts her hold and the call once");
  const [pool] = await testDb`select trim_scale(a.balance)::text as balance from billing.accounts a
    where a.org_id = ${org} and a.member_id is null`;
  assert.equal(Number(pool.balance), 385 - Number(c.charged), 'the pool paid the call whole, at once');
  await assertLedgerInvariants();
});

Deno.test('an excess past the free credits and every live hold: the holds end released, the rest is debt, refused with debt: true', async () => {
  const model = await creditPerToken();
  const id = await newUser();
  await fund(id, '300');
  const token = await userToken(id);
  assert.equal((await hold(token, '200')).status, 201);
  // Billed far past its hold: the free credits, then the live hold's 200, then debt.
  assert.equal((await call(token, model, 300)).status, 200);
  const c = await excessTaken(id);
  assert.deepEqual([c.hold.status, c.hold.given], ['released', '200'], 'the hold gave all it reserved');
  const [a] = await testDb`select a.balance < 0 as negative, a.held = 0 as nothing_held, billing.in_debt(a) as in_debt
    from billing.accounts a where a.user_id = ${id}`;
  assert.deepEqual(a, { negative: true, nothing_held: true, in_debt: true }, 'no debt beside a reservation');
  const next = await call(token, model, 0, 5);
  assert.equal(next.status, 402, next.text);
  assert.equal((next.body.error as { details: { debt: boolean } }).details.debt, true);
  await assertLedgerInvariants();
});

Deno.test("a member refused while the pool is in debt is told nothing of the school's debt", async () => {
  const model = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '100');
  // Ada's call is billed far past its hold: the pool pays what its member's call overran, as debt.
  assert.equal((await call(ada.token, model, 500)).status, 200);
  const [pool] = await testDb`select billing.in_debt(a) as in_debt from billing.accounts a
    where a.org_id = ${org} and a.member_id is null`;
  assert.equal(pool.in_debt, true);
  const next = await call(ada.token, model, 0, 5);
  assert.equal(next.status, 402, next.text);
  const details = (next.body.error as {
    details: { debt: boolean; wallets: { wallet: string; available?: string }[] };
  }).details;
  // `debt` is the member's own account's; the pool's figures are its admins'.
  assert.equal(details.debt, false);
  const pools = details.wallets.filter((w) => w.wallet === 'organisation');
  assert.equal(pools.length, 1);
  assert.equal(pools[0].available, undefined);
  await assertLedgerInvariants();
});
