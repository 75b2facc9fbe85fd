// The AI gateway's money lifecycle attacked with what a student (or a school member) holds: their
// own tokens, the public routes and the official SDKs. The database only plays the clock and
// pg_cron (a hold's TTL passing, the sweeps, the expiry job), the operator's side (a refund
// through the Stripe emulator, an admin's grant) and is read for the assertions. Each attack
// checks exact amounts and the ledger's invariants: nothing charged twice, served work never
// free, held = Σ active holds, no balance below zero without a reversal, no charged call's key
// freed.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, callsOf, gatewayUrl } from '../support/ai.ts';
import { api, assertLedgerInvariants, spawnGateway, testDb } from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';

const client = (token: string, base = gatewayUrl) => new OpenAI({ baseURL: base, apiKey: token, maxRetries: 0 });

/** What pg_cron does once a call's hold has outlived its TTL: the hold expires, the sweep frees the call. */
async function outliveTtl(callId: string) {
  await testDb`update billing.holds set expires_at = now() - interval '1 second'
    where id = (select hold_id from billing.ai_calls where id = ${callId})`;
  await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${callId}`;
  await testDb`select billing.release_expired_holds(500)`;
  await testDb`select billing.sweep_ai_calls(500)`;
}

Deno.test("a member's gateway call that dies and expires gives its hold back to the member's own cap", async () => {
  // A school's cap on one member counts the member's holds on the wallet while they live; a hold
  // that expires (the gateway died: GATEWAY_LOST, nothing charged) must give that room back, as a
  // release or a capture does, or the member is refused for spending they never did.
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '5' },
  });
  assert.equal(capped.status, 200, capped.text);
  const messages = ask('#standin words=2');
  const gw = spawnGateway({ FAILPOINTS: 'ai.after_hold' });
  await gw.ready();
  try {
    await client(ada.token, `${gw.url}/ai/v1`).chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 40 })
      .catch(() => {}); // the gateway died after the hold
  } finally {
    await gw.kill();
  }
  const [lost] = await testDb`select c.id, trim_scale(h.amount)::text as held from billing.ai_calls c
    join billing.holds h on h.id = c.hold_id where c.user_id = ${ada.id}`;
  const spent = async () =>
    (await testDb`select trim_scale(s.spent)::text as spent from billing.spend_caps s where s.member_id = ${ada.id}`)[0]
      .spent;
  assert.equal(await spent(), lost.held, 'the live hold counts against her cap');
  await outliveTtl(lost.id);
  const [c] = await callsOf(ada.id);
  assert.deepEqual([c.status, c.failure, c.charged], ['failed', 'GATEWAY_LOST', '0']);
  assert.deepEqual(await walletOf(owner.token, org), { balance: '1000', held: '0', available: '1000' });
  // Her next call fits the cap again (2.66 lost + 2.8 held would pass 5: SPEND_CAP_REACHED).
  const next = await client(ada.token).chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 40 });
  const cost = (next.usage as unknown as { cost: string }).cost;
  assert.equal(await spent(), cost, 'the cap counts what she spent, not the expired hold');
  assert.equal((await walletOf(owner.token, org)).balance, String(1000 - Number(cost)));
  await assertLedgerInvariants();
});
