// A spending cap clamps an AI call as the credits do (docs/ai-gateway.md § The last credits): a
// cap with less room than the free credits holds the answer that fits its room, a student's own
// cap or a school's cap on its member alike; and a cap with room for less than the least answer
// refuses with a 402 that names the least answer's price, what the caller needs to be let through.
import assert from 'node:assert/strict';
import { gatewayUrl, settled, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';

const long = 'hi #standin words=3000';
const chat = (token: string) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: long }] }),
  });

/** The user's latest charged call: its granted maximum, prompt and charge. */
const lastCall = async (userId: string) =>
  (await testDb`select c.max_output_tokens::int as granted, c.prompt_tokens::int as prompt,
    trim_scale(c.charged)::text as charged from billing.ai_calls c
    where c.user_id = ${userId} and c.status = 'charged' order by c.created_at desc limit 1`)[0];

Deno.test("a student's cap with less room than their credits clamps the call to the cap's room", async () => {
  const s = await student('1000');
  const capped = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '5' } });
  assert.equal(capped.status, 200, capped.text);
  const res = await chat(s.token);
  assert.equal(res.status, 200, await res.clone().text());
  const granted = Number(res.headers.get('x-ai-max-output-tokens'));
  await res.text();
  await settled(s.id);
  const call = await lastCall(s.id);
  assert.ok(granted >= 64 && granted < 4096 && granted === call.granted, `granted ${granted}`);
  assert.ok(Number(call.charged) <= 5, `charged ${call.charged} within the cap`);
  const [cap] = await testDb`select trim_scale(spent)::text as spent from billing.spend_caps s
    join billing.accounts a on a.id = s.account_id where a.user_id = ${s.id}`;
  assert.equal(cap.spent, call.charged, 'the cap counts what was charged, the rest of the hold given back');
  await assertLedgerInvariants();
});

Deno.test("a cap with room for less than the least answer: 402 naming the least answer's price", async () => {
  const s = await student('1000');
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '5' } });
  const first = await chat(s.token);
  assert.equal(first.status, 200);
  await first.text();
  await settled(s.id);
  const { prompt, charged } = await lastCall(s.id);
  const res = await chat(s.token);
  const body = await res.json();
  assert.equal(res.status, 402, JSON.stringify(body));
  assert.equal(body.error.code, 'SPEND_CAP_REACHED');
  const [{ least }] = await testDb`select trim_scale(billing.ai_hold_amount('gpt-4o', ${prompt}, 64))::text as least`;
  assert.equal(body.error.details.required, least, 'what is needed: the least answer, not the whole one');
  assert.match(
    body.error.message,
    new RegExp(`needs ${least.replace('.', '\\.')} credits and the cap of 5 has ${charged}`),
  );
});

Deno.test("a school's cap on its member clamps the member's call on the pool to the cap's room", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '5' },
  });
  assert.equal(capped.status, 200, capped.text);
  const res = await chat(ada.token);
  assert.equal(res.status, 200, await res.clone().text());
  await res.text();
  await settled(ada.id);
  const call = await lastCall(ada.id);
  assert.ok(call.granted >= 64 && call.granted < 4096, `granted ${call.granted}`);
  assert.ok(Number(call.charged) <= 5, `charged ${call.charged} within the member's cap`);
  assert.equal((await walletOf(owner.token, org)).balance, String(1000 - Number(call.charged)));
  await assertLedgerInvariants();
});
