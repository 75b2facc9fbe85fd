// A capture whose database connection breaks mid-statement is tried again (retryingTransient in
// _shared/adapters/db.ts): an AI call's (ai/metering.ts) and a job's (jobs/worker.ts). The provider
// billed the work: before, a call was left held for the sweep to fail, charged nothing, and a job
// was run again (the provider asked twice). The break is real: the capture is made to wait on a
// row lock, and its server connection is terminated while it waits (what a Postgres restart or a
// pooler losing its server shows the gateway); the lock is let go and the retry captures once.
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceIsGrantsLessCharges, callsOf, priceOf, student } from '../support/ai.ts';
import { jobOf, key, testDb, until, untilJobRunning, withGateway } from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';

/**
 * Locks the rows `lockRows` selects (`$1`: `id`) until the statement calling billing.`fn` waits on
 * them, terminates that statement's connection, and lets go of the lock a little later (the first
 * retry meets it still held).
 */
async function breakWhileWaiting(lockRows: string, id: string, fn: string): Promise<void> {
  const lock = await testDb.reserve();
  try {
    await lock`begin`;
    await lock.unsafe(lockRows, [id]);
    const pid = await until(
      `${fn} waits on the lock`,
      async () =>
        (await testDb<{ pid: number }[]>`select pid from pg_stat_activity
        where query like ${`%billing.${fn}(%`} and wait_event_type = 'Lock' and pid <> pg_backend_pid()`)[0]?.pid,
    );
    const [{ ok }] = await testDb`select pg_terminate_backend(${pid}) as ok`;
    assert.equal(ok, true);
    await new Promise((r) => setTimeout(r, 300));
    await lock`commit`;
  } finally {
    lock.release();
  }
}

/** Breaks the capture of `userId`'s AI call once it is held: its record is what the capture waits on. */
async function breakTheCapture(userId: string): Promise<void> {
  const callId = await until(
    'the call is held',
    async () =>
      (await testDb<{ id: string }[]>`select id::text from billing.ai_calls
      where user_id = ${userId} and status = 'held'`)[0]?.id,
  );
  await breakWhileWaiting('select 1 from billing.ai_calls where id = $1 for update', callId, 'finish_ai_call');
}

Deno.test({
  name:
    'a whole answer whose capture loses its connection is captured on a retry: charged once, its price, no hold left',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await student();
  const answer = s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('hello #standin words=6 first_byte_delay=800'),
    max_tokens: 32,
  });
  const [r] = await Promise.all([answer, breakTheCapture(s.id)]);
  const calls = await callsOf(s.id);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].status, 'charged');
  assert.equal(calls[0].charged, await priceOf('gpt-4o', r.usage!));
  assert.equal((r.usage as unknown as { cost: string }).cost, calls[0].charged);
  assert.equal(await activeHolds(s.id), 0);
  await balanceIsGrantsLessCharges(s.id);
});

Deno.test({
  name: 'a stream whose capture loses its connection is captured on a retry, and its closing usage carries the cost',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await student();
  const read = (async () => {
    const stream = await s.openai.chat.completions.create({
      model: 'gpt-4o',
      messages: ask('hello #standin words=6 delay=150'),
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: Record<string, unknown> | undefined;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage as unknown as Record<string, unknown>;
    return usage!;
  })();
  const [usage] = await Promise.all([read, breakTheCapture(s.id)]);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(usage.cost, c.charged);
  assert.equal(
    c.charged,
    await priceOf('gpt-4o', usage as unknown as Parameters<typeof priceOf>[1]),
  );
  assert.equal(await activeHolds(s.id), 0);
  await balanceIsGrantsLessCharges(s.id);
});

Deno.test({
  name: 'a job whose capture loses its connection is captured on a retry: completed on its first attempt, charged once',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await student('10');
  // A slow local model keeps the job running while its account is locked: complete_job settles the
  // account first and waits there (its checkpoints never touch the account).
  await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '250' }, async (url) => {
    const res = await fetch(`${url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({
        type: 'ai_completion',
        input: { model: 'gpt-4o', prompt: 'one two three four five six seven eight', max_tokens: 100 },
      }),
    });
    assert.equal(res.status, 202);
    const id = (await res.json()).data.job_id as string;
    await untilJobRunning(url, id);
    const [{ account }] = await testDb`select id::text as account from billing.accounts where user_id = ${s.id}`;
    await breakWhileWaiting('select 1 from billing.accounts where id = $1::bigint for update', account, 'complete_job');
    const job = await until('the job to finish', async () => {
      const j = await jobOf(id);
      return ['completed', 'failed', 'cancelled'].includes(j.status) && j;
    });
    assert.deepEqual({ status: job.status, attempts: job.attempts }, { status: 'completed', attempts: 1 });
  });
  // 8 in × $5/M + 8 out × $15/M, × 4, in credits: 0.64, captured once; the rest released.
  assert.deepEqual(await balanceOf(s.token), { balance: '9.36', held: '0', available: '9.36' });
});
