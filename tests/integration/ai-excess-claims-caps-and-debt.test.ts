// What a provider bills past a call's hold, when the account's free credits cannot pay it and a
// live hold's reservation is claimed for it (billing.owe): the caps count the whole excess at once
// (docs/ai-gateway.md: "so the next call is refused"), and an account left owing beside that hold
// is refused with `debt: true`, as any account in debt (billing.in_debt).
import assert from 'node:assert/strict';
import { creditPerToken } from '../support/ai.ts';
import { adminToken, api, assertLedgerInvariants, fund, key, newUser, testDb, userToken } from '../support/helpers.ts';
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

/** The call's price and what the ledger claimed of it on live holds. */
async function excessClaimed(userId: string) {
  const [c] = await testDb`
    select trim_scale(c.charged)::text as charged, trim_scale(h.amount)::text as held,
      (select coalesce(sum(t.amount), 0) from billing.lot_take_backs t
       where t.kind = 'usage' and t.take_key like 'ai-overage:' || c.id || '%')::text as claimed
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${userId} and c.status = 'charged'`;
  return c;
}

Deno.test("a student's excess claimed on their own live hold counts against their cap at once", async () => {
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
  const c = await excessClaimed(id);
  assert.ok(Number(c.claimed) > 0, 'the excess was claimed on the live hold');
  const [cap] = await testDb`select trim_scale(s.spent)::text as spent from billing.spend_caps s
    join billing.accounts a on a.id = s.account_id where a.user_id = ${id}`;
  assert.equal(Number(cap.spent), 300 + Number(c.charged), "the cap counts the hold and the call's whole price");
  // Credits arrive (nothing to pay: the excess waits on the hold); the cap still refuses the next call.
  await fund(id, '500');
  const next = await call(token, model, 0);
  assert.equal(next.status, 402, next.text);
  await assertLedgerInvariants();
});

Deno.test("a member's excess claimed on a live hold on the pool counts against the cap the school set", async () => {
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
  const c = await excessClaimed(ada.id);
  assert.ok(Number(c.claimed) > 0, 'the excess was claimed on the live hold');
  const topUp = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount: '500', reason: 'top up' },
  });
  assert.equal(topUp.status, 201, topUp.text);
  const next = await call(ada.token, model, 0);
  assert.equal(next.status, 402, `300 held + the call's ${c.charged} is past Ada's cap of 500`);
  await assertLedgerInvariants();
});

Deno.test('an account left owing beside a live hold is refused with debt: true', async () => {
  const model = await creditPerToken();
  const id = await newUser();
  await fund(id, '300');
  const token = await userToken(id);
  assert.equal((await hold(token, '200')).status, 201);
  // Billed far past its hold: the free credits, then the live hold's 200 claimed, then debt.
  assert.equal((await call(token, model, 300)).status, 200);
  const [a] = await testDb`select a.balance >= 0 as not_negative,
      (select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open) > a.balance as owes
    from billing.accounts a where a.user_id = ${id}`;
  assert.deepEqual(
    a,
    { not_negative: true, owes: true },
    "a debt beside the hold's reservation, the balance not below zero",
  );
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
