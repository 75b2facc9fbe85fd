// AI batches (docs/ai-gateway.md § Batches) against what a student may send: ids, bodies,
// metadata, timing, a retry's key, races of creates, cancels, polls and the sync. None of it
// loses, creates or double-counts money, reaches another student's data, lets a banned student
// use the provider, parks unbounded files there, or answers a 5xx.
import assert from 'node:assert/strict';
import { activeHolds, advanceBatchClock, creditPerToken, student, syncBatches } from '../support/ai.ts';
import { assertLedgerInvariants, holdsLapse, sweepExpiredHolds, testDb } from '../support/helpers.ts';
import {
  call,
  chatLine,
  closeAll,
  createBatch,
  messageRequest,
  money,
  settledOnce,
  upload,
} from '../support/batches.ts';

Deno.test('malformed file and batch ids (36 dashes) answer 404, never a 5xx', async () => {
  const s = await student('10');
  const dashes = '-'.repeat(36); // passes the routes' /^[0-9a-f-]{36}$/ but is no uuid: Postgres refuses the cast
  const answers: string[] = [];
  for (
    const [method, path, body] of [
      ['GET', `/files/${dashes}`],
      ['GET', `/files/${dashes}/content`],
      ['GET', `/files/batch_output_${dashes}/content`],
      ['GET', `/batches/${dashes}`],
      ['POST', `/batches/${dashes}/cancel`],
      ['GET', `/messages/batches/${dashes}`],
      ['POST', `/messages/batches/${dashes}/cancel`],
      ['GET', `/messages/batches/${dashes}/results`],
      ['POST', '/batches', { input_file_id: dashes, endpoint: '/v1/chat/completions', completion_window: '24h' }],
    ] as [string, string, unknown?][]
  ) {
    const r = await call(s.token, method, path, body);
    answers.push(`${method} ${path} ${r.status}`);
  }
  assert.deepEqual(answers.filter((a) => !a.endsWith(' 404')), [], 'every one is not found');
});

Deno.test("a banned student's token sends no batch file to the provider", async () => {
  const s = await student('5');
  await testDb`update auth.users set banned_until = now() + interval '1 day' where id = ${s.id}`;
  // Their chat call and message batch are refused 401; the upload is the one door left open.
  const chat = await call(s.token, 'POST', '/chat/completions', {
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'hi' }],
  });
  assert.equal(chat.status, 401);
  const f = await upload(s.token, [chatLine('a', 'text the platform should not relay')]);
  assert.equal(f.status, 401, `upload answered ${f.status}`);
  const [{ n }] = await testDb`select count(*)::int as n from billing.ai_batch_files where user_id = ${s.id}`;
  assert.equal(n, 0, 'nothing was sent to the provider or recorded');
});

Deno.test('a student parks at most ten batch files at the provider before creating their batches', async () => {
  // Every upload is counted (up to 4 MiB) and stored at the platform's provider account: files
  // in no batch yet are limited per student, checked before any work (ATTACKS.md, "Work before
  // the check"). A school-funded student has no credits of their own: credits are not the test.
  const s = await student('0');
  for (let i = 0; i < 10; i++) assert.equal((await upload(s.token, [chatLine('a', `file ${i}`)])).status, 200);
  const sixth = await upload(s.token, [chatLine('a', 'word '.repeat(2000))]);
  assert.deepEqual([sixth.status, sixth.json.error?.code], [429, 'AI_BATCH_LIMIT']);
  const [{ n }] = await testDb`select count(*)::int as n from billing.ai_batch_files where user_id = ${s.id}`;
  assert.equal(n, 10);
});

Deno.test('a message batch keeps its Idempotency-Key while it runs, and is settled once even after its hold lapsed', async () => {
  const s = await student('50');
  const body = { requests: [messageRequest('a', 'q #standin words=3')] };
  const k = { 'idempotency-key': crypto.randomUUID() };
  const first = await call(s.token, 'POST', '/messages/batches', body, k);
  assert.equal(first.status, 200);
  const m = await money(first.json.id);
  // The hold reaches its TTL unsettled (the sync did not reach it in 26 hours), and the call
  // sweep marks the call failed, which frees its key.
  await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${m.call_id})`);
  await sweepExpiredHolds();
  await testDb`update billing.ai_calls set created_at = created_at - interval '2 minutes' where id = ${m.call_id}`;
  await testDb`select billing.sweep_ai_calls(500)`;
  // The same key again: a second batch (and call) under it, while the first still runs.
  const again = await call(s.token, 'POST', '/messages/batches', body, k);
  await advanceBatchClock(120);
  await call(s.token, 'GET', `/messages/batches/${first.json.id}`);
  await call(s.token, 'GET', `/messages/batches/${again.json.id}`);
  await syncBatches();
  try {
    // The first batch's settling now breaks the key's unique index (two live calls under it):
    // it raises at every poll and every sync, forever in_progress, first in the sync's queue.
    const [{ status }] = await testDb`select status from billing.ai_batches where id = ${first.json.id}`;
    assert.equal(status, 'ended', 'the provider ended it: it is settled');
    settledOnce(await money(first.json.id));
  } finally {
    await closeAll(s.id, s.token);
    // Not left stuck in the shared stack's sync queue: its hold lapsed and its call failed already.
    await testDb`update billing.ai_batches set status = 'failed', ended_at = now()
      where id = ${first.json.id} and status = 'in_progress'`;
  }
  await assertLedgerInvariants();
});

Deno.test('a batch is charged at the card it was held under, not one published while it ran', async () => {
  const model = await creditPerToken(); // 1 credit a token; the batch price is half
  const s = await student('2000');
  const f = await upload(s.token, [
    chatLine('l0', 'q #standin words=5', model),
    chatLine('l1', 'q #standin words=5', model),
  ]);
  const b = await createBatch(s.token, f.json.id);
  assert.equal(b.status, 200);
  // A price rise (×10) published while the batch runs (up to 24 hours).
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 2, 10000, 10000, 1, now() - interval '1 second')`;
  await advanceBatchClock(120);
  const done = await call(s.token, 'GET', `/batches/${b.json.id}`);
  assert.equal(done.json.status, 'completed');
  const m = await money(b.json.id);
  settledOnce(m);
  const lines = await testDb`select usage from billing.ai_batch_lines where batch_id = ${b.json.id}`;
  const tokens = lines.reduce((n, l) => n + l.usage.input_tokens + l.usage.output_tokens, 0);
  // Held at 70 (the old card's worst case at half price); charged 240 at the new one, 170 past
  // the hold drawn from free credits (or owed).
  assert.equal(m.charged, String(tokens * 0.5), "the lines at the held card's batch price");
  await assertLedgerInvariants();
});

Deno.test('ten batches created at once: five run; one file raced ten times is one batch and one hold', async () => {
  const s = await student('100');
  const files = await Promise.all(
    Array.from({ length: 10 }, () => upload(s.token, [chatLine('a', 'hi #standin batch_at=36000')])),
  );
  const created = await Promise.all(files.map((f) => createBatch(s.token, f.json.id)));
  assert.deepEqual(created.map((r) => r.status).sort(), [...Array(5).fill(200), ...Array(5).fill(429)]);
  const t = await student('100');
  const same = await upload(t.token, [chatLine('a', 'hi #standin batch_at=36000')]);
  const raced = await Promise.all(Array.from({ length: 10 }, () => createBatch(t.token, same.json.id)));
  assert.equal(new Set(raced.map((r) => r.json.id)).size, 1);
  assert.equal(await activeHolds(t.id), 1);
  await closeAll(s.id, s.token);
  await closeAll(t.id, t.token);
  assert.equal(await activeHolds(s.id), 0);
  assert.equal(await activeHolds(t.id), 0);
  await assertLedgerInvariants();
});

Deno.test('lines the provider bills past the whole hold are charged once, in full, the excess owed', async () => {
  const s = await student('1');
  const f = await upload(s.token, [0, 1, 2].map((i) => chatLine(`l${i}`, 'q #standin words=20 extra_prompt=400000')));
  const b = await createBatch(s.token, f.json.id);
  await advanceBatchClock(120);
  await Promise.all([
    call(s.token, 'GET', `/batches/${b.json.id}`),
    syncBatches(),
    call(s.token, 'GET', `/batches/${b.json.id}`),
  ]);
  const m = await money(b.json.id);
  settledOnce(m);
  assert.ok(Number(m.charged) > Number(m.held));
  const [{ bal }] = await testDb`select trim_scale(balance)::text as bal from billing.accounts where user_id = ${s.id}`;
  const [{ left }] = await testDb`select trim_scale(1 - ${m.charged}::numeric)::text as left`;
  assert.equal(bal, left, 'the excess is owed by the student');
  await assertLedgerInvariants();
});

Deno.test('a batch settled after its hold lapsed is charged its lines once', async () => {
  const s = await student('1');
  const f = await upload(s.token, [0, 1, 2].map((i) => chatLine(`l${i}`, 'q #standin words=5')));
  const b = await createBatch(s.token, f.json.id);
  const before = await money(b.json.id);
  await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${before.call_id})`);
  await sweepExpiredHolds();
  await advanceBatchClock(120);
  await Promise.all([call(s.token, 'GET', `/batches/${b.json.id}`), syncBatches()]);
  settledOnce(await money(b.json.id));
  await assertLedgerInvariants();
});

Deno.test('cancels raced against the sync, polls and results settle each batch once', async () => {
  const s = await student('50');
  const f = await upload(
    s.token,
    Array.from({ length: 20 }, (_, i) => chatLine(`l${i}`, `q #standin words=5 batch_at=${i < 10 ? 60 : 36000}`)),
  );
  const b = await createBatch(s.token, f.json.id);
  const mb = await call(s.token, 'POST', '/messages/batches', {
    requests: Array.from(
      { length: 6 },
      (_, i) => messageRequest(`m${i}`, `q #standin words=5 batch_at=${i < 3 ? 60 : 36000}`),
    ),
  });
  await advanceBatchClock(120);
  await Promise.all([
    call(s.token, 'POST', `/batches/${b.json.id}/cancel`),
    call(s.token, 'POST', `/messages/batches/${mb.json.id}/cancel`),
    syncBatches(),
    call(s.token, 'GET', `/batches/${b.json.id}`),
    call(s.token, 'GET', `/messages/batches/${mb.json.id}/results`),
    call(s.token, 'POST', `/batches/${b.json.id}/cancel`),
    call(s.token, 'POST', `/messages/batches/${mb.json.id}/cancel`),
    syncBatches(),
  ]);
  const o = await call(s.token, 'GET', `/batches/${b.json.id}`);
  const a = await call(s.token, 'GET', `/messages/batches/${mb.json.id}`);
  assert.deepEqual([o.json.status, o.json.request_counts], ['cancelled', { total: 20, completed: 10, failed: 10 }]);
  assert.equal(a.json.request_counts.succeeded, 3);
  settledOnce(await money(b.json.id));
  settledOnce(await money(mb.json.id));
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('hour-long cache writes anywhere in a message batch are refused, as are mixed models and aliases', async () => {
  const s = await student('50');
  const hour = { type: 'ephemeral', ttl: '1h' };
  for (
    const requests of [
      [messageRequest('a', 'q', { system: [{ type: 'text', text: 'sys', cache_control: hour }] })],
      [messageRequest('a', 'q', { tools: [{ name: 't', input_schema: { type: 'object' }, cache_control: hour }] })],
      [messageRequest('a', 'q', {
        messages: [{
          role: 'user',
          content: [{
            type: 'tool_result',
            tool_use_id: 'x',
            content: [{ type: 'text', text: 'r', cache_control: hour }],
          }],
        }],
      })],
      [messageRequest('a', 'q'), messageRequest('b', 'q', { model: 'claude-sonnet-4-5' })],
      [messageRequest('a', 'q'), messageRequest('b', 'q', { model: 'claude-haiku-4-5-20251001' })],
    ]
  ) {
    const r = await call(s.token, 'POST', '/messages/batches', { requests });
    assert.equal(r.status, 400, r.text);
  }
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("metadata Postgres refuses is a 400, and another student's batch call record is not found", async () => {
  const [a, b] = [await student('10'), await student('10')];
  for (const metadata of [{ k: 'x\u0000y' }, { k: '\ud800' }, { ['\u0000']: 'x' }]) {
    const f = await upload(a.token, [chatLine('a', 'hi #standin batch_at=36000')]);
    const r = await createBatch(a.token, f.json.id, { metadata });
    assert.equal(r.status, 400, r.text);
  }
  const f = await upload(a.token, [chatLine('a', 'hi #standin batch_at=36000')]);
  const batch = await createBatch(a.token, f.json.id);
  const { call_id } = await money(batch.json.id);
  const theirs = await call(b.token, 'GET', `/calls/${call_id}`);
  assert.equal(theirs.status, 404);
  assert.doesNotMatch(theirs.text, /custom_id/);
  await closeAll(a.id, a.token);
});
