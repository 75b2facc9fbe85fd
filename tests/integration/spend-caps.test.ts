// Spend caps: exact under concurrency, holds count until released, per model, in batches and
// jobs, set by the student or an admin (which the student cannot lift), and refused with the cap, the spending and the reset; a
// refusal commits nothing.
import assert from 'node:assert/strict';
import type { SpendCap } from '../../supabase/functions/_shared/contract/index.ts';
import { adminToken, api, assertLedgerInvariants, env, key, reportUsage, student, testDb } from '../support/helpers.ts';
import { codeOf, dataOf, type Json, ledgerOf, spendWith, transfersUnder } from '../support/money.ts';
import { balanceOf } from '../support/purchases.ts';

async function setCap(token: string, body: Record<string, unknown>, path = '/credits/caps') {
  const r = await api(path, { method: 'PUT', token, body });
  assert.equal(r.status, 200, r.text);
  return (r.body.data as { items: SpendCap[] }).items;
}

/** gpt-4o input: 50 tokens = 1 credit; gpt-4o-mini: 1,000 input tokens = 0.6 credits. */
const use = (token: string, credits: number, model = 'gpt-4o') =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: model === 'gpt-4o' ? credits * 50 : credits * 5000 / 3, output_tokens: 0 }, // mini: multiples of 3
  });

Deno.test('a daily cap refuses what would go over it with 402 SPEND_CAP_REACHED, the spending and the reset', async () => {
  const s = await student('1000');
  const [cap] = await setCap(s.token, { period: 'day', amount: '100' });
  assert.deepEqual([cap.period, cap.time_zone, cap.model, cap.cap, cap.spent, cap.remaining], [
    'day',
    'UTC',
    null,
    '100',
    '0',
    '100',
  ]);
  assert.equal((await use(s.token, 60)).status, 201);
  assert.equal((await use(s.token, 40)).status, 201);
  const refused = await use(s.token, 1);
  assert.equal(refused.status, 402);
  const error = refused.body.error as { code: string; details: Record<string, string> };
  assert.equal(error.code, 'SPEND_CAP_REACHED');
  assert.deepEqual([error.details.cap, error.details.spent, error.details.required, error.details.period], [
    '100',
    '100',
    '1',
    'day',
  ]);
  const tomorrow = new Date();
  tomorrow.setUTCHours(24, 0, 0, 0);
  assert.equal(error.details.resets_at, tomorrow.toISOString());
  assert.equal((await balanceOf(s.token)).balance, '900', 'the refused request moved nothing');
  const [after] = ((await api('/credits/caps', { token: s.token })).body.data as { items: SpendCap[] }).items;
  assert.deepEqual([after.spent, after.remaining], ['100', '0']);
});

Deno.test('parallel requests never exceed a cap: 100 parallel 1-credit debits under a cap of 50 → exactly 50', async () => {
  const s = await student('1000');
  await setCap(s.token, { period: 'month', amount: '50' });
  const results = await Promise.all(Array.from({ length: 100 }, () => use(s.token, 1)));
  const codes = results.map((r) => r.status === 201 ? 'ok' : (r.body.error as { code: string }).code);
  assert.equal(codes.filter((c) => c === 'ok').length, 50);
  assert.equal(codes.filter((c) => c === 'SPEND_CAP_REACHED').length, 50);
  assert.equal((await balanceOf(s.token)).balance, '950');
  await assertLedgerInvariants();
});

Deno.test('a hold counts against the cap until released; a partial capture gives back the rest', async () => {
  const s = await student('1000');
  await setCap(s.token, { period: 'week', amount: '100' });
  const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '80' } });
  assert.equal(hold.status, 201);
  assert.equal((await use(s.token, 30)).status, 402, 'the hold counts');
  const id = (hold.body.data as { hold_id: string }).hold_id;
  const capture = await api(`/credits/holds/${id}/capture`, { token: s.token, headers: key(), body: { amount: '50' } });
  assert.equal(capture.status, 200);
  assert.equal((await use(s.token, 50)).status, 201, '80 − 30 unspent came back: 50 of 100 used');
  assert.equal((await use(s.token, 1)).status, 402);
  const hold2 = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1' } });
  assert.equal(hold2.status, 402, 'a hold over the cap is refused too');
});

Deno.test('a per-model cap limits that model only; the overall cap still counts every model', async () => {
  const s = await student('1000');
  await setCap(s.token, { period: 'day', model: 'gpt-4o', amount: '10' });
  await setCap(s.token, { period: 'day', amount: '20' });
  assert.equal((await use(s.token, 10)).status, 201);
  assert.equal((await use(s.token, 1)).status, 402);
  assert.equal((await use(s.token, 6, 'gpt-4o-mini')).status, 201);
  const caps = ((await api('/credits/caps', { token: s.token })).body.data as { items: SpendCap[] }).items;
  assert.deepEqual(caps.map((c) => [c.model, c.spent]), [[null, '16'], ['gpt-4o', '10']]);
  assert.equal((await use(s.token, 6, 'gpt-4o-mini')).status, 402, 'the overall cap: 16 + 6 > 20');
});

Deno.test('batch events over a cap are refused alone as cap_reached; the rest apply', async () => {
  const s = await student('1000');
  await setCap(s.token, { period: 'day', amount: '10' });
  const event = () => ({
    event_id: crypto.randomUUID(),
    user_id: s.id,
    model: 'gpt-4o',
    input_tokens: 200,
    output_tokens: 0,
    occurred_at: new Date().toISOString(),
  });
  const r = await api('/credits/usage/batch', {
    token: env('SUPABASE_SERVICE_ROLE_KEY'),
    body: { events: [event(), event(), event()] },
  });
  assert.equal(r.status, 200, r.text);
  const outcomes = (r.body.data as { outcomes: { status: string; cap?: { cap: string } }[] }).outcomes;
  assert.deepEqual(outcomes.map((o) => o.status), ['applied', 'applied', 'cap_reached']);
  assert.equal(outcomes[2].cap?.cap, '10');
  assert.equal((await balanceOf(s.token)).balance, '992');
});

Deno.test('a job whose reserve would pass the cap is 402 and creates no job', async () => {
  const s = await student('1000');
  await setCap(s.token, { period: 'day', amount: '1' });
  const r = await api('/jobs', {
    token: s.token,
    headers: key(),
    body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'hello there', max_tokens: 2000 } },
  });
  assert.equal(r.status, 402, r.text);
  assert.equal((r.body.error as { code: string }).code, 'SPEND_CAP_REACHED');
});

Deno.test("an admin caps any student; a student cannot cap another nor remove the admin's cap; the admin's null removes it", async () => {
  const s = await student('1000');
  const other = await student('1000');
  const admin = await adminToken();
  await setCap(admin, { period: 'day', amount: '5' }, `/credits/caps/users/${s.id}`);
  assert.equal((await use(s.token, 6)).status, 402);
  const denied = await api(`/credits/caps/users/${s.id}`, {
    method: 'PUT',
    token: other.token,
    body: { period: 'day', amount: null },
  });
  assert.equal(denied.status, 403);
  const own = await setCap(s.token, { period: 'day', amount: null });
  assert.deepEqual(
    own.map((c) => [c.set_by, c.cap]),
    [['admin', '5']],
    "the student's null removes only a cap of their own",
  );
  assert.equal((await use(s.token, 6)).status, 402);
  assert.deepEqual(await setCap(admin, { period: 'day', amount: null }, `/credits/caps/users/${s.id}`), []);
  assert.equal((await use(s.token, 6)).status, 201);
});

Deno.test("periods follow the cap's time zone; a bad period or time zone is 400 and changes nothing", async () => {
  const s = await student('1000');
  const [cap] = await setCap(s.token, { period: 'day', time_zone: 'Pacific/Kiritimati', amount: '5' });
  const started = new Date(cap.period_started_at);
  // Kiritimati is UTC+14: its midnight is 10:00 UTC.
  assert.equal(started.getUTCHours(), 10);
  assert.equal(Date.parse(cap.resets_at) - started.getTime(), 86_400_000);
  for (const body of [{ period: 'year', amount: '5' }, { period: 'day', time_zone: 'Mars/Base', amount: '5' }]) {
    const r = await api('/credits/caps', { method: 'PUT', token: s.token, body });
    assert.equal(r.status, 400, r.text);
  }
  assert.equal(((await api('/credits/caps', { token: s.token })).body.data as { items: SpendCap[] }).items.length, 1);
});

Deno.test('a cap refusal after the transfer is written commits nothing: the cap room and the ledger are unchanged', async () => {
  const s = await student('100');
  const set = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '10' } });
  assert.equal(set.status, 200, set.text);
  assert.equal((await spendWith(s.token, crypto.randomUUID(), 8)).status, 201);
  const before = await ledgerOf(s.id);
  const k = crypto.randomUUID();
  const over = await Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, k, 5)));
  for (const r of over) assert.equal(codeOf(r), 'SPEND_CAP_REACHED', r.text);
  assert.equal(new Set(over.map((r) => r.text)).size, 1);
  assert.equal(await transfersUnder(s.id, 'credits.usage', k), 0);
  assert.deepEqual(await ledgerOf(s.id), before);
  const [cap] = (dataOf(await api('/credits/caps', { token: s.token })) as { items: Json[] }).items;
  assert.deepEqual([cap.spent, cap.remaining], ['8', '2']);
  // What is left fits, in parallel: exactly two 1-credit charges of ten.
  const rs = await Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, crypto.randomUUID(), 1)));
  assert.equal(rs.filter((r) => r.status === 201).length, 2, rs.map((r) => r.status).join());
  assert.deepEqual((await ledgerOf(s.id)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test('a student cannot lift, delete or reset a cap an admin set; their own stricter cap applies beside it', async () => {
  const s = await student('1000');
  const admin = await adminToken();
  const byAdmin = await api(`/credits/caps/users/${s.id}`, {
    method: 'PUT',
    token: admin,
    body: { period: 'day', amount: '50' },
  });
  assert.equal(byAdmin.status, 200, byAdmin.text);
  assert.equal((await use(s.token, 40)).status, 201);

  // The attack: the student "sets" the same cap higher, removes it, and re-sends it in another time zone.
  const lifted = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '1000' } });
  assert.equal(lifted.status, 200, lifted.text);
  const removed = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  assert.equal(removed.status, 200, removed.text);
  const moved = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', amount: '1000', time_zone: 'Pacific/Kiritimati' },
  });
  assert.equal(moved.status, 200, moved.text);
  const caps = (moved.body.data as { items: SpendCap[] }).items;
  assert.deepEqual(caps.map((c) => [c.set_by, c.cap, c.spent]), [['admin', '50', '40'], ['self', '1000', '0']]);

  const refused = await use(s.token, 20);
  assert.equal(refused.status, 402, 'the admin cap still binds');
  assert.equal(codeOf(refused), 'SPEND_CAP_REACHED');
  assert.equal((refused.body.error as { details: { cap: string } }).details.cap, '50');
  assert.equal((await balanceOf(s.token)).balance, '960');

  // A stricter cap of the student's own applies too: the strictest wins (the admin's has 10 left).
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '4' } });
  const own = await use(s.token, 5);
  assert.equal(own.status, 402);
  assert.equal((own.body.error as { details: { cap: string } }).details.cap, '4');

  // The admin changing their own cap's time zone keeps what was spent this period.
  const rezoned = await api(`/credits/caps/users/${s.id}`, {
    method: 'PUT',
    token: admin,
    body: { period: 'day', amount: '50', time_zone: 'Asia/Tokyo' },
  });
  assert.equal(rezoned.status, 200, rezoned.text);
  const adminCap = (rezoned.body.data as { items: SpendCap[] }).items.find((c) => c.set_by === 'admin');
  assert.equal(adminCap?.spent, '40', 'a new time zone gives back no room');
  await assertLedgerInvariants();
});

Deno.test('an ai_completion job counts against a per-model cap when its hold is placed and gets back what it did not use', async () => {
  const s = await student('1000');
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', model: 'gpt-4o', amount: '20' } });
  const job = (maxTokens: number) =>
    api('/jobs', {
      token: s.token,
      headers: key(),
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'hello', max_tokens: maxTokens } },
    });
  // gpt-4o output: 10 credits per 1,000 tokens at the rate card; a job reserving more than the cap is refused.
  const big = await job(4000);
  assert.equal(big.status, 402, big.text);
  assert.equal(codeOf(big), 'SPEND_CAP_REACHED');
  const [{ held }] = await testDb`select coalesce(sum(h.amount), 0)::text as held from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id} and h.status = 'active'`;
  assert.equal(held, '0', 'nothing was held for the refused job');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0, 'and no job was created');

  // A small job fits (6.1 reserved: 5 prompt bytes and 100 output tokens) and counts against the
  // gpt-4o cap: while held in full, once done as what it cost (the worker may finish it first).
  const small = await job(100);
  assert.equal(small.status, 202, small.text);
  const caps = ((await api('/credits/caps', { token: s.token })).body.data as { items: SpendCap[] }).items;
  assert.ok(Number(caps[0].spent) > 0, `the job counts against the model's cap: ${JSON.stringify(caps)}`);
});
