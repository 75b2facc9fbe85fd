// A capture whose database connection breaks is tried again (retryingTransient in
// _shared/adapters/db.ts): an AI call's capture and release (ai/metering.ts) and a job's
// (jobs/worker.ts). The provider billed the work: before, a call was left held for the sweep to
// fail, charged nothing, and a job ran again (the provider asked twice). The breaks are real: the
// statement is made to wait on a row lock and its server connection is terminated, either while
// it waits (nothing committed: the retry does the work) or after its commit landed and before its
// answer (the retry is answered with what was done, never does it twice). Attack round 7
// (helper-8) added the committed break and the races a retry meets.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { activeHolds, ask, balanceIsGrantsLessCharges, callsOf, priceOf, student as aiStudent } from '../support/ai.ts';
import {
  api,
  env,
  finishedJob,
  functionsUrl,
  jobOf,
  startAiJob,
  student,
  testDb,
  until,
  untilJobRunning,
  withGateway,
} from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';

/** A connection as the platform's superuser (ALTER SYSTEM). */
const superuser = () =>
  postgres(env('SUPABASE_DB_URL').replace('//postgres:', '//supabase_admin:'), { max: 1, onnotice: () => {} });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The backend of the statement calling billing.`fn` while it waits on `event` (a Lock, or SyncRep). */
const waiting = (fn: string, event: 'Lock' | 'SyncRep') =>
  until(`${fn} waits (${event})`, async () =>
    (await testDb<{ pid: number }[]>`select pid from pg_stat_activity
      where query like ${`%billing.${fn}(%`} and (wait_event_type = ${event} or wait_event = ${event})
        and pid <> pg_backend_pid()`)[0]?.pid);

/** Where a break falls: while the statement waits (nothing done), or after its commit landed. */
type Break = 'waiting' | 'committed';

/**
 * Breaks the statement calling billing.`fn`: the rows `lockRows` selects (`$1`: `id`) are locked
 * until the statement waits on them. 'waiting': its connection is terminated there, and the lock
 * let go a little later (the first retry meets it still held). 'committed': every commit is made
 * to wait for a synchronous standby that does not exist, the lock is let go, the statement commits
 * locally (its commit record written and flushed) and waits for the standby, and its connection is
 * terminated there: the work is durable, the gateway sees a lost connection (what a pooler losing
 * its server between the commit and the answer shows it). The setting is reset at once after (and
 * at every start of the local stack: scripts/lib.sh pg_start).
 */
async function breakStatement(lockRows: string, id: string, fn: string, at: Break): Promise<void> {
  const su = at === 'committed' ? superuser() : undefined;
  const lock = await testDb.reserve();
  try {
    await lock`begin`;
    if (su) await lock`set local synchronous_commit = local`;
    await lock.unsafe(lockRows, [id]);
    const pid = await waiting(fn, 'Lock');
    if (su) {
      await su`alter system set synchronous_standby_names = 'attack7_nobody'`;
      await su`select pg_reload_conf()`;
      await sleep(500); // the checkpointer publishes that commits wait for a standby
      await lock`commit`;
      assert.equal(await waiting(fn, 'SyncRep'), pid, 'the statement committed locally and waits for the standby');
    }
    const [{ ok }] = await testDb`select pg_terminate_backend(${pid}) as ok`;
    assert.equal(ok, true);
    if (!su) {
      await sleep(300);
      await lock`commit`;
    }
  } finally {
    if (su) {
      await su`alter system reset synchronous_standby_names`;
      await su`select pg_reload_conf()`;
      await su.end();
    }
    lock.release();
  }
}

/** The user's AI call once it is held (the provider is being asked). */
const heldCall = (userId: string) =>
  until('the call is held', async () =>
    (await testDb<{ id: string }[]>`select id::text from billing.ai_calls
      where user_id = ${userId} and status = 'held'`)[0]?.id);

/** The ledger's transfers that name AI call `id`: its capture (and any excess), never two captures. */
const transfersOfCall = async (
  id: string,
) => (await testDb<{ kind: string; amount: string }[]>`select t.kind::text, trim_scale(t.amount)::text as amount
    from billing.transfers t where t.metadata ->> 'ai_call_id' = ${id} order by t.id`);

const onCall = 'select 1 from billing.ai_calls where id = $1::uuid for update';
const onAccount = 'select 1 from billing.accounts where id = $1::bigint for update';

for (const at of ['waiting', 'committed'] as const) {
  Deno.test({
    name: `a whole answer whose capture lost its connection (${at}) is charged once, its price, no hold left`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const s = await aiStudent();
    const answer = s.openai.chat.completions.create({
      model: 'gpt-4o',
      messages: ask('hello #standin words=6 first_byte_delay=3000'),
      max_tokens: 32,
    });
    const [r] = await Promise.all([
      answer,
      heldCall(s.id).then((id) => breakStatement(onCall, id, 'finish_ai_call', at)),
    ]);
    const calls = await callsOf(s.id);
    assert.deepEqual(calls.map((c) => c.status), ['charged']);
    const price = await priceOf('gpt-4o', r.usage!);
    assert.equal(calls[0].charged, price);
    assert.equal((r.usage as unknown as { cost: string }).cost, price, 'the answer carries what was charged');
    assert.deepEqual((await transfersOfCall(calls[0].id)).map((t) => t.amount), [price], 'one capture');
    assert.equal(await activeHolds(s.id), 0);
    assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
  });

  Deno.test({
    name:
      `a job whose capture lost its connection (${at}) is completed on its first attempt, charged once, never run again`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const s = await student('10');
    // A slow local model keeps the job running while its account is locked: complete_job settles
    // the account first and waits there (its checkpoints never touch the account).
    await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '250' }, async (url) => {
      const id = await startAiJob(url, s.token);
      await untilJobRunning(url, id);
      const [{ account }] = await testDb`select id::text as account from billing.accounts where user_id = ${s.id}`;
      await breakStatement(onAccount, account, 'complete_job', at);
      const job = await finishedJob(id);
      assert.deepEqual({ status: job.status, attempts: job.attempts }, { status: 'completed', attempts: 1 });
      // A retry of a capture that had committed is answered LEASE_LOST and stops: nothing queues it again.
      await sleep(1_500);
      const again = await jobOf(id);
      assert.deepEqual({ status: again.status, attempts: again.attempts }, { status: 'completed', attempts: 1 });
    });
    // 8 in × $5/M + 8 out × $15/M, × 4, in credits: 0.64, captured once; the rest released.
    assert.deepEqual(await balanceOf(s.token), { balance: '9.36', held: '0', available: '9.36' });
  });
}

Deno.test({
  name: 'a stream whose capture loses its connection is captured on a retry, and its closing usage carries the cost',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await aiStudent();
  const read = (async () => {
    const stream = await s.openai.chat.completions.create({
      model: 'gpt-4o',
      messages: ask('hello #standin words=6 delay=500'),
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: Record<string, unknown> | undefined;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage as unknown as Record<string, unknown>;
    return usage!;
  })();
  const [usage] = await Promise.all([
    read,
    heldCall(s.id).then((id) => breakStatement(onCall, id, 'finish_ai_call', 'waiting')),
  ]);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(usage.cost, c.charged);
  assert.equal(c.charged, await priceOf('gpt-4o', usage as unknown as Parameters<typeof priceOf>[1]));
  assert.equal(await activeHolds(s.id), 0);
  assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
});

Deno.test({
  name:
    'a provider failure whose release COMMITTED but lost its connection answers the failure; nothing charged, the key free',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await aiStudent('10');
  const k = crypto.randomUUID();
  const body = { model: 'gpt-4o', messages: ask('hello #standin fail=500 first_byte_delay=3000'), max_tokens: 32 };
  const send = () =>
    fetch(`${functionsUrl}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': k },
      body: JSON.stringify(body),
    });
  const broken = (async () => {
    const id = await heldCall(s.id);
    await breakStatement(onCall, id, 'fail_ai_call', 'committed');
  })();
  const [res] = await Promise.all([send(), broken]);
  const err = await res.json();
  assert.deepEqual({ status: res.status, code: err.error?.code }, { status: 502, code: 'PROVIDER_ERROR' });
  const calls = await callsOf(s.id);
  assert.deepEqual(calls.map((c) => [c.status, c.failure, c.charged]), [['failed', 'PROVIDER_ERROR_500', '0']]);
  assert.equal(await activeHolds(s.id), 0);
  assert.equal((await api('/credits/balance', { token: s.token })).body.data !== undefined, true);
  assert.deepEqual(
    (await testDb`select trim_scale(balance)::text as b, trim_scale(held)::text as h from billing.accounts
      where user_id = ${s.id}`)[0],
    { b: '10', h: '0' },
  );
});

Deno.test({
  name:
    'while a capture is retried: the same Idempotency-Key is 409 IN_USE, the sweep leaves the call, then one charge and a replay of it',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await aiStudent();
  const k = crypto.randomUUID();
  const body = { model: 'gpt-4o', messages: ask('hello #standin words=6 first_byte_delay=3000'), max_tokens: 32 };
  const send = () =>
    fetch(`${functionsUrl}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': k },
      body: JSON.stringify(body),
    });
  const first = send();
  const id = await heldCall(s.id);
  const lock = await testDb.reserve();
  let replayedMeanwhile: { status: number; code?: string };
  let swept: number;
  try {
    await lock`begin`;
    await lock`select 1 from billing.ai_calls where id = ${id}::uuid for update`;
    const pid = await waiting('finish_ai_call', 'Lock');
    await testDb`select pg_terminate_backend(${pid})`;
    // The retry now waits on the same lock: the capture is being retried.
    await until('the retry waits on the lock', async () => {
      const [w] = await testDb`select pid from pg_stat_activity where query like '%billing.finish_ai_call(%'
        and wait_event_type = 'Lock' and pid <> ${pid}`;
      return w;
    });
    const r = await send();
    replayedMeanwhile = { status: r.status, code: (await r.json()).error?.code };
    [{ swept }] = await testDb`select billing.sweep_ai_calls() as swept`;
    const [c] = await testDb`select status from billing.ai_calls where id = ${id}::uuid`;
    assert.equal(c.status, 'held', 'the sweep leaves a call whose capture is being retried');
    await lock`commit`;
  } finally {
    lock.release();
  }
  assert.deepEqual(replayedMeanwhile, { status: 409, code: 'IDEMPOTENCY_KEY_IN_USE' });
  assert.equal(swept, 0);
  const res = await first;
  assert.equal(res.status, 200);
  const answer = await res.json();
  const calls = await callsOf(s.id);
  assert.deepEqual(calls.map((c) => c.status), ['charged']);
  assert.equal(answer.usage.cost, calls[0].charged);
  const replay = await send();
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.equal((await replay.json()).usage.cost, calls[0].charged);
  assert.deepEqual((await transfersOfCall(id)).length, 1);
  assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
});

Deno.test({
  name: 'a job cancelled while its capture is retried is charged once: cancelled with its work charged, or completed',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await student('10');
  let outcome: { job: string; cancel: number; balance: string; held: string } | undefined;
  await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '250' }, async (url) => {
    const id = await startAiJob(url, s.token);
    await untilJobRunning(url, id);
    const [{ account }] = await testDb`select id::text as account from billing.accounts where user_id = ${s.id}`;
    const lock = await testDb.reserve();
    let cancel: Promise<Response>;
    try {
      await lock`begin`;
      await lock`select 1 from billing.accounts where id = ${account}::bigint for update`;
      const pid = await waiting('complete_job', 'Lock');
      // The student cancels while complete_job holds the job and waits on the account.
      cancel = fetch(`${url}/jobs/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${s.token}` } });
      await waiting('cancel_job', 'Lock');
      await testDb`select pg_terminate_backend(${pid})`;
      await sleep(600);
      await lock`commit`;
    } finally {
      lock.release();
    }
    const c = await cancel;
    await c.body?.cancel();
    const job = await finishedJob(id);
    await sleep(1_000);
    const b = await balanceOf(s.token);
    outcome = { job: job.status, cancel: c.status, balance: b.balance, held: b.held };
  });
  assert.ok(
    [
      // Cancelled while its worker ran it: the work the worker reports is charged (billing.cancel_job).
      JSON.stringify({ job: 'cancelled', cancel: 200, balance: '9.36', held: '0' }),
      JSON.stringify({ job: 'completed', cancel: 409, balance: '9.36', held: '0' }),
    ].includes(JSON.stringify(outcome)),
    JSON.stringify(outcome),
  );
});

Deno.test({
  name: 'a stream whose client leaves while its capture is retried is captured once, no hold left',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await aiStudent();
  const ctl = new AbortController();
  const res = await fetch(`${functionsUrl}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o',
      messages: ask('hello #standin words=6 delay=500'),
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true },
    }),
    signal: ctl.signal,
  });
  assert.equal(res.status, 200);
  const reading = res.body!.pipeTo(new WritableStream()).catch(() => {});
  const id = await heldCall(s.id);
  const lock = await testDb.reserve();
  try {
    await lock`begin`;
    await lock`select 1 from billing.ai_calls where id = ${id}::uuid for update`;
    const pid = await waiting('finish_ai_call', 'Lock');
    await testDb`select pg_terminate_backend(${pid})`;
    ctl.abort(); // the client leaves during the retries
    await reading;
    await sleep(500);
    await lock`commit`;
  } finally {
    lock.release();
  }
  const c = await until('the call settled', async () => {
    const [x] = await callsOf(s.id);
    return x.status !== 'held' && x;
  });
  assert.equal(c.status, 'charged');
  assert.equal((await transfersOfCall(id)).length, 1);
  // (The record's client_left stays false: the report is built once, before the first try; the
  // client left after the last text event, before the closing usage. A log field, no money.)
  assert.equal(await activeHolds(s.id), 0);
  assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true);
});
