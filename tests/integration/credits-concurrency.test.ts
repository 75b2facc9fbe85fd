// Concurrency claims, proven in parallel over real HTTP: debits, holds, captures, releases,
// batches, refunds, voids and disputes at once on one account never overdraw it nor lose a credit.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  fund,
  key,
  newUser,
  reportUsage,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { batch, codeOf, dataOf, spendWith, usageEvent, voidCharge } from '../support/money.ts';
import { balanceOf, chargeOf, emulator, startCheckout } from '../support/purchases.ts';

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

Deno.test('usage, holds, captures, releases and a Stripe refund at once on one account keep the ledger whole', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const charge = await chargeOf(co.session_id);
  const holds = await Promise.all(
    Array.from({ length: 4 }, () => api('/credits/holds', { token: s.token, body: { amount: '300' }, headers: key() })),
  );
  const ids = holds.filter((h) => h.status === 201).map((h) => dataOf(h).hold_id as string);
  await Promise.all([
    ...Array.from({ length: 12 }, () => spendWith(s.token, crypto.randomUUID(), 100)),
    ...ids.slice(0, 2).map((h) =>
      api(`/credits/holds/${h}/capture`, { token: s.token, body: { amount: '200' }, headers: key() })
    ),
    ...ids.slice(2).map((h) => api(`/credits/holds/${h}/release`, { token: s.token, body: {}, headers: key() })),
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 }),
  ]);
  const b = await balanceOf(s.token);
  assert.equal(
    Number(b.balance) <= 0,
    true,
    `a full refund took back what was left (or made it debt): ${JSON.stringify(b)}`,
  );
  await assertLedgerInvariants();
});

Deno.test('a dispute opened while usage, a batch and a void race on the account keeps every credit accounted for', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const first = await spendWith(s.token, crypto.randomUUID(), 100);
  assert.equal(first.status, 201, first.text);
  const charge = await chargeOf(co.session_id);
  await Promise.all([
    emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }),
    ...Array.from({ length: 6 }, () => spendWith(s.token, crypto.randomUUID(), 50)),
    batch(Array.from({ length: 4 }, () => usageEvent(s.id, crypto.randomUUID(), 25))),
    voidCharge(dataOf(first).transfer_id as string),
    api('/credits/holds', { token: s.token, body: { amount: '10' }, headers: key() }),
  ]);
  await assertLedgerInvariants();
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await assertLedgerInvariants();
  const b = await balanceOf(s.token);
  assert.ok(Number(b.balance) <= 0, `a lost dispute took back what was left of the purchase: ${JSON.stringify(b)}`);
  const again = await spendWith(s.token, crypto.randomUUID(), 1);
  assert.equal(again.status, 402, again.text);
  assert.equal(codeOf(again), 'INSUFFICIENT_CREDITS');
});
