// A job's completion that meets its account fell due (a hold of the student's own past its TTL
// while the job ran) refuses without changing anything (billing.lock_holder), and the worker
// completes it again with billing.settle_holder in front (finishing): the work the provider
// billed is charged once, on the job's first attempt, and the job never runs again.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  finishedJob,
  holdsLapse,
  jobOf,
  key,
  startAiJob,
  student,
  testDb,
  untilJobRunning,
  withGateway,
} from '../support/helpers.ts';

Deno.test({
  name: "a job completing while the student's own hold falls due is charged once, on its first attempt",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const s = await student('10');
  const own = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1', ttl_seconds: 600 } });
  assert.equal(own.status, 201, own.text);
  const ownHold = (own.body.data as { hold_id: string }).hold_id;
  await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '250' }, async (url) => {
    const id = await startAiJob(url, s.token);
    await untilJobRunning(url, id);
    // While the job runs, the student's own hold passes its TTL: the account fell due.
    await holdsLapse(testDb`h.id = ${ownHold}`);
    const job = await finishedJob(id);
    assert.deepEqual({ status: job.status, attempts: job.attempts }, { status: 'completed', attempts: 1 });
    await new Promise((r) => setTimeout(r, 1_500));
    const again = await jobOf(id);
    assert.deepEqual({ status: again.status, attempts: again.attempts }, { status: 'completed', attempts: 1 });
    const [h] = await testDb`select (select status from billing.holds where id = ${ownHold}) as own,
        h.status as job_hold, trim_scale(coalesce(h.captured_amount, 0))::text as captured
      from billing.jobs j join billing.holds h on h.id = j.hold_id where j.id = ${id}`;
    assert.equal(h.own, 'expired', 'the overdue hold ended (settled before the completion)');
    assert.equal(h.job_hold, 'captured');
    assert.equal(h.captured, '0.64', '8 in and 8 out of gpt-4o, charged once');
  });
  const [a] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${s.id}`;
  assert.deepEqual(a, { balance: '9.36', held: '0' });
  await assertLedgerInvariants();
});
