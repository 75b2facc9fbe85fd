// The AI gateway for members of schools: a pool pays for a member's call (held from the pool,
// captured from it, never shown to the member) and for what it cost past its hold, and a member
// removed mid-stream is charged for the answer under way from the school's hold, while their
// next call has nothing to draw on.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { ask, gatewayUrl } from '../support/ai.ts';
import { api, assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { person, school, walletOf } from '../support/orgs.ts';

const client = (token: string) => new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 });

Deno.test("a pool school's member calls the gateway: the pool is held and charged, its balance never shown", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const r = await client(ada.token).chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('#standin words=5'),
    max_tokens: 50,
  });
  const [c] = await testDb`select trim_scale(c.charged)::text as charged, a.org_id from billing.ai_calls c
    join billing.holds h on h.id = c.hold_id join billing.accounts a on a.id = h.account_id where c.user_id = ${ada.id}`;
  assert.equal(c.org_id, org, 'the pool held the call');
  assert.equal((r.usage as unknown as { cost: string }).cost, c.charged);
  const wallet = await walletOf(owner.token, org);
  assert.equal(wallet.balance, String(1000 - Number(c.charged)));
  assert.ok(!JSON.stringify(r).includes('"balance"'), "the member's answer never shows the pool's balance");
  await assertLedgerInvariants();
});

Deno.test('a member removed mid-stream is charged for the answer under way from the hold; the next call is refused', async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const stream = await client(ada.token).chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('#standin words=40 delay=40'),
    max_tokens: 200,
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0, cost = '';
  for await (const chunk of stream) {
    if (++chunks === 3) {
      const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
      assert.equal(removed.status, 200, removed.text);
    }
    if (chunk.usage) cost = (chunk.usage as unknown as { cost: string }).cost;
  }
  assert.ok(Number(cost) > 0, 'the answer under way was charged');
  const wallet = await walletOf(owner.token, org);
  assert.equal(wallet.balance, String(1000 - Number(cost)));
  await assert.rejects(
    client(ada.token).chat.completions.create({ model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 5 }),
    (err: unknown) => err instanceof OpenAI.APIError && err.status === 402,
  );
  await assertLedgerInvariants();
});

Deno.test("what a member's call costs beyond its hold is charged whole to the pool, counted past the member's cap, never to her own account", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const capped = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '1' },
  });
  assert.equal(capped.status, 200, capped.text);
  // The provider bills 30,000 prompt tokens the hold (within the cap of 1) did not cover.
  const r = await client(ada.token).chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=30000'),
    max_tokens: 10,
  });
  const [c] = await testDb`select c.id, trim_scale(c.charged)::text as charged,
    trim_scale((billing.price_usage('gpt-4o', (c.usage ->> 'input_tokens')::bigint, (c.usage ->> 'output_tokens')::bigint,
      0, 0)).amount)::text as price,
    (select trim_scale(s.spent)::text from billing.spend_caps s where s.member_id = ${ada.id}) as cap_spent
    from billing.ai_calls c where c.user_id = ${ada.id}`;
  assert.equal((r.usage as unknown as { cost: string }).cost, c.price);
  assert.ok(Number(c.price) > 1, 'the provider billed past the cap');
  assert.deepEqual([c.charged, c.cap_spent], [c.price, c.price], 'charged whole, and all of it counted past her cap');
  // The excess is the pool's, on its wallet, naming the member whose call it was.
  const [excess] = await testDb`select a.org_id, a.member_id as allowance_of, t.member_id from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where t.idempotency_key = ${'ai-overage:' + c.id}`;
  assert.deepEqual({ ...excess }, { org_id: org, allowance_of: null, member_id: ada.id });
  const [own] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id in (t.from_account_id, t.to_account_id) where a.user_id = ${ada.id}`;
  assert.equal(own.n, 0, "nothing moved on the member's own account");
  const [{ left }] = await testDb`select trim_scale(1000 - ${c.price}::numeric)::text as left`;
  assert.equal((await walletOf(owner.token, org)).balance, left);
  await assert.rejects(
    client(ada.token).chat.completions.create({ model: 'gpt-4o', messages: ask('hi'), max_tokens: 5 }),
    (err: unknown) => {
      // Her cap, counted past, refuses the pool; she has nothing of her own to fall back on.
      assert.ok(err instanceof OpenAI.APIError && err.status === 402, String(err));
      const e = err.error as {
        code: string;
        details: { wallets: { wallet: string; reason: string; cap?: { spent: string } }[] };
      };
      assert.equal(e.code, 'INSUFFICIENT_CREDITS');
      assert.deepEqual(e.details.wallets.map((w) => [w.wallet, w.reason, w.cap?.spent]), [
        ['organisation', 'cap', c.price],
        ['personal', 'insufficient', undefined],
      ]);
      return true;
    },
  );
  assert.equal((await walletOf(owner.token, org)).balance, left, 'the refused call took nothing');
  await assertLedgerInvariants();
});
