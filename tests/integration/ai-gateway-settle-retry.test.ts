// A call's capture whose database connection breaks mid-statement is tried again (ai/metering.ts,
// settling): the provider billed the call, and a call left held is failed by the sweep with nothing
// charged. The break is real: the capture is made to wait on a lock on its record, and its server
// connection is terminated while it waits (the gateway sees what a Postgres restart or a pooler
// losing its server shows it); the lock is then let go and the retry captures the call once.
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceIsGrantsLessCharges, callsOf, priceOf, student } from '../support/ai.ts';
import { testDb, until } from '../support/helpers.ts';

/** Holds the record of `userId`'s call that `answer` started, once held, until the capture waits on it; then breaks the capture's connection. */
async function breakTheCapture(userId: string): Promise<void> {
  const callId = await until(
    'the call is held',
    async () =>
      (await testDb<{ id: string }[]>`select id::text from billing.ai_calls
      where user_id = ${userId} and status = 'held'`)[0]?.id,
  );
  const lock = await testDb.reserve();
  try {
    await lock`begin`;
    await lock`select 1 from billing.ai_calls where id = ${callId} for update`;
    const pid = await until(
      'the capture waits on the record',
      async () =>
        (await testDb<{ pid: number }[]>`select pid from pg_stat_activity
        where query like '%billing.finish_ai_call(%' and wait_event_type = 'Lock' and pid <> pg_backend_pid()`)[0]
          ?.pid,
    );
    const [{ ok }] = await testDb`select pg_terminate_backend(${pid}) as ok`;
    assert.equal(ok, true);
    await new Promise((r) => setTimeout(r, 300)); // the first retry meets the lock still held
    await lock`commit`;
  } finally {
    lock.release();
  }
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
