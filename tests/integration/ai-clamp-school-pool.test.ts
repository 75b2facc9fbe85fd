// A school member's call on the pool's last credits is clamped like anyone's (docs/ai-gateway.md
// § The last credits), but the pool's balance is the school's: what the member is told of the
// hold (x-credits-held, x-ai-max-output-tokens) is the price of the prompt and the granted answer,
// never the pool's own figure.
import assert from 'node:assert/strict';
import { gatewayUrl, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';

const long = 'hi #standin words=3000';
const chat = (token: string, stream: boolean) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: long }], stream }),
  });

/** The hold of the user's latest call, and the card's price of its prompt and granted answer. */
const holdOf = async (userId: string) =>
  (await testDb`select trim_scale(h.amount)::text as held, c.max_output_tokens::int as granted,
    trim_scale(billing.ai_hold_amount(c.model, c.prompt_tokens, c.max_output_tokens))::text as price
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id
    where c.user_id = ${userId} order by c.created_at desc limit 1`)[0];

Deno.test("a pool member's clamped call is held for the price of its answer, never told the pool's balance", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '7.317');
  const res = await chat(ada.token, true);
  assert.equal(res.status, 200, await res.clone().text());
  const told = res.headers.get('x-credits-held');
  await res.text();
  await settled(ada.id);
  const { held, granted, price } = await holdOf(ada.id);
  assert.ok(granted >= 64 && granted < 4096, `clamped: granted ${granted}`);
  assert.equal(told, held);
  assert.notEqual(told, '7.317', "x-credits-held is not the pool's balance");
  assert.equal(held, price, 'the hold is the price of the prompt and the granted answer');
  const wallet = await walletOf(owner.token, org);
  assert.ok(Number(wallet.balance) >= 0 && Number(wallet.held) === 0, JSON.stringify(wallet));
  await assertLedgerInvariants();
});

Deno.test("a student's own clamped call is held for the price of its answer too, whole and streamed", async () => {
  for (const stream of [false, true]) {
    const s = await student('9.87');
    const res = await chat(s.token, stream);
    assert.equal(res.status, 200, await res.clone().text());
    await res.text();
    await settled(s.id);
    const { held, granted, price } = await holdOf(s.id);
    assert.ok(granted < 4096, `clamped: granted ${granted}`);
    assert.equal(held, price, `stream ${stream}: the hold is the price of the prompt and the granted answer`);
  }
  await assertLedgerInvariants();
});
