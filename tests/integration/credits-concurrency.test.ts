// Concurrency claims, proven in parallel over real HTTP.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../helpers.ts';
import { balanceOf } from '../purchases.ts';

Deno.test('concurrent debits never overdraw: 200 parallel 1-credit debits on 100 credits → exactly 100 succeed', async () => {
  const id = await newUser();
  await fund(id, '100');
  const token = await userToken(id);
  // 50 gpt-4o input tokens cost exactly 1 credit.
  const results = await Promise.all(Array.from({ length: 200 }, () =>
    reportUsage('/credits/usage', {
      token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
    })));
  const statuses = results.map((r) => r.status);
  assert.equal(statuses.filter((s) => s === 201).length, 100);
  assert.equal(statuses.filter((s) => s === 402).length, 100);
  const balance = (await api('/credits/balance', { token })).body.data as Record<string, string>;
  assert.deepEqual(balance, { balance: '0', held: '0', available: '0', expiring: null });
  const [{ min }] = await testDb`select min(balance_after)::text as min from billing.entries e
    join billing.accounts a on a.id = e.account_id where a.user_id = ${id}`;
  assert.equal(Number(min) >= 0, true, 'a balance went negative on the way');
  await assertLedgerInvariants();
});

Deno.test('one Idempotency-Key sent 100 times in parallel makes one transfer and 100 identical responses', async () => {
  const id = await newUser();
  await fund(id, '1000');
  const token = await userToken(id);
  const key = crypto.randomUUID();
  const results = await Promise.all(Array.from({ length: 100 }, () =>
    reportUsage('/credits/usage', {
      token,
      headers: { 'idempotency-key': key },
      body: { model: 'gpt-4o', input_tokens: 1000, output_tokens: 500 },
    })));
  assert.deepEqual(new Set(results.map((r) => r.status)), new Set([201]));
  assert.equal(new Set(results.map((r) => r.text)).size, 1, 'responses differ');
  assert.equal(results.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 99);
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${id} and t.kind = 'usage'`;
  assert.equal(n, 1);
  assert.equal(((await api('/credits/balance', { token })).body.data as Record<string, string>).balance, '950');
  await assertLedgerInvariants();
});

Deno.test('a replay returns the stored response byte for byte; another request under the key is 409', async () => {
  const id = await newUser();
  await fund(id, '100');
  const token = await userToken(id);
  const headers = { 'idempotency-key': crypto.randomUUID() };
  const body = { model: 'gpt-4o', input_tokens: 1000, output_tokens: 500 };
  const first = await reportUsage('/credits/usage', { token, headers, body });
  const again = await reportUsage('/credits/usage', { token, headers, body });
  assert.equal(again.text, first.text);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  const other = await reportUsage('/credits/usage', { token, headers, body: { ...body, input_tokens: 2000 } });
  assert.equal(other.status, 409);
  assert.equal((other.body.error as Record<string, string>).code, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(((await api('/credits/balance', { token })).body.data as Record<string, string>).balance, '50');
});

Deno.test('a refused request is replayed too: the same key stays 402 even after a top-up', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const headers = { 'idempotency-key': crypto.randomUUID() };
  const body = { model: 'gpt-4o', input_tokens: 1000, output_tokens: 500 };
  const first = await reportUsage('/credits/usage', { token, headers, body });
  assert.equal(first.status, 402);
  await fund(id, '100');
  const again = await reportUsage('/credits/usage', { token, headers, body });
  assert.equal(again.status, 402);
  assert.equal(again.text, first.text);
  const fresh = await reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body,
  });
  assert.equal(fresh.status, 201);
});

Deno.test('parallel holds never reserve more than the balance', async () => {
  const id = await newUser();
  await fund(id, '10');
  const token = await userToken(id);
  const results = await Promise.all(
    Array.from(
      { length: 30 },
      () =>
        api('/credits/holds', { token, headers: { 'idempotency-key': crypto.randomUUID() }, body: { amount: '1' } }),
    ),
  );
  assert.equal(results.filter((r) => r.status === 201).length, 10);
  assert.deepEqual(await balanceOf(token), { balance: '10', held: '10', available: '0' });
  await assertLedgerInvariants();
});
