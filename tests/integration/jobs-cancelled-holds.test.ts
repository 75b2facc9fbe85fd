// A metered job cancelled while queued frees its hold at once; one cancelled while its worker
// runs it keeps its hold for the worker's report, which charges once (a retry and the sweep add
// nothing; a report after the sweep charges nothing). Kept from attack round 16 (session 35);
// its plan-dispute cases were dropped with dispute holds (issue #77).
import assert from 'node:assert/strict';
import { api, key, spawnGateway, student, testDb, tick, until } from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';
import { claimedJob, coreInvariants, spendTry } from '../support/disputed.ts';

const jobRow = async (id: string) =>
  (await testDb`select status, attempts, locked_by, locked_until, hold_id::text,
      (select h.status from billing.holds h where h.id = j.hold_id) as hold_status
    from billing.jobs j where j.id = ${id}`)[0];

const createJob = async (base: string, token: string, input: unknown) => {
  const res = await fetch(`${base}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
    body: JSON.stringify({ type: 'ai_completion', input }),
  });
  const body = await res.json();
  assert.equal(res.status, 202, JSON.stringify(body));
  return body.data.job_id as string;
};

const cancel = async (base: string, token: string, id: string) => {
  const r = await fetch(`${base}/jobs/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
  return { status: r.status, body: await r.json() };
};

// ---------------------------------------------------------------------------------------------
// A1. A job whose provider answered 503 waits for its retry: fail_job leaves it `processing` with
//     no lease (locked_by and locked_until null) until run_after. Nobody runs it. DELETE /jobs/:id
//     then must release its hold at once (docs/api.md: only "while a worker runs the job" does the
//     hold wait). cancel_job tests `locked_until > now()`: NULL, so `not (… and NULL)` is NULL and
//     the release is skipped; locked_until stays NULL, so expire_jobs' first loop
//     (`locked_until < now()`) never frees it either, and its second loop deletes the cancelled job
//     without releasing. The student's estimate stays held until the hold's own TTL (an hour).
Deno.test({
  name: 'a job cancelled while it waits for a retry (no worker, no lease) frees its hold at once',
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const s = await student('10');
    const gw = spawnGateway({ AI_PROVIDER: 'openai' });
    try {
      await gw.ready();
      const tag = crypto.randomUUID().replaceAll('-', '');
      const id = await createJob(gw.url, s.token, {
        model: 'gpt-4o',
        prompt: `#standin fail=503 tag=${tag}`,
        max_tokens: 100,
      });
      let nudged = Date.now() + 2_000;
      await until('the first attempt failed, waiting for its retry', async () => {
        const j = await jobRow(id);
        if (j.status === 'queued' && Date.now() > nudged) {
          nudged = Date.now() + 5_000;
          tick(gw.url).catch(() => {});
        }
        return j.status === 'processing' && j.attempts === 1 && j.locked_by === null;
      }, 30_000);
      const held = (await balanceOf(s.token)).held;
      assert.notEqual(held, '0', 'the estimate is held');
      const r = await cancel(gw.url, s.token, id);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.data.status, 'cancelled');
      // The sweep, as pg_cron runs it every five minutes.
      await testDb`select billing.expire_jobs(500)`;
      const j = await jobRow(id);
      const b = await balanceOf(s.token);
      assert.deepEqual({ hold: j.hold_status, held: b.held, available: b.available }, {
        hold: 'released',
        held: '0',
        available: '10',
      });
    } finally {
      await gw.kill();
    }
    await coreInvariants([s.id]);
  },
});

// A2 (probe). The same job cancelled while queued (never claimed): released at once.
Deno.test('a metered job cancelled while queued frees its hold at once', async () => {
  const s = await student('10');
  const id = await testDb.begin(async (sql) => {
    const [j] = await sql`select id from billing.enqueue_job(${s.id}, 'ai_completion',
      ${JSON.stringify({ model: 'gpt-4o', prompt: 'one two', max_tokens: 100 })}::text::jsonb, ${crypto.randomUUID()},
      null, 1.5)`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${j.id}`;
    return j.id as string;
  });
  assert.equal((await balanceOf(s.token)).held, '1.5');
  const r = await api(`/jobs/${id}`, { method: 'DELETE', token: s.token });
  assert.equal(r.status, 200, r.text);
  assert.equal((await balanceOf(s.token)).held, '0');
  await coreInvariants([s.id]);
});

const usage = JSON.stringify({ model: 'gpt-4o', input_tokens: 50, output_tokens: 0 });

// A3 (probe). Cancelled while its worker runs it: the report charges once (a retried report is
// JOB_CANCELLED, the sweep frees nothing more); a report after the sweep charges nothing.
Deno.test('the report of a cancelled job charges once, a retry and the sweep add nothing; a report after the sweep charges nothing', async () => {
  const s = await student('10');
  const id = await claimedJob(s.id, 'w-probe-a', 2);
  const r = await api(`/jobs/${id}`, { method: 'DELETE', token: s.token });
  assert.equal(r.status, 200, r.text);
  assert.equal((await balanceOf(s.token)).held, '2', 'the hold waits for the worker');
  assert.equal(await spendTry(s.token, 9), false, 'the held credits are not spendable meanwhile');
  const [done] =
    await testDb`select status from billing.complete_job(${id}, 'w-probe-a', '{"text":"x"}'::jsonb, ${usage}::text::jsonb)`;
  assert.equal(done.status, 'cancelled');
  const charged = await balanceOf(s.token);
  assert.ok(Number(charged.balance) < 10 && charged.held === '0', JSON.stringify(charged));
  await assert.rejects(
    testDb`select billing.complete_job(${id}, 'w-probe-a', '{"text":"x"}'::jsonb, ${usage}::text::jsonb)`,
    /JOB_CANCELLED/,
  );
  await testDb`select billing.expire_jobs(500)`;
  const left = charged.balance;
  assert.deepEqual(await balanceOf(s.token), { balance: left, held: '0', available: left });
  const [{ result }] = await testDb`select result from billing.jobs where id = ${id}`;
  assert.equal(result, null, 'the result is not kept');

  // The second job: the worker never reports before its lease ends; the sweep frees the hold; its
  // late report is JOB_CANCELLED (nothing charged), and fail_job too.
  const id2 = await claimedJob(s.id, 'w-probe-b', 2, 1);
  assert.equal((await api(`/jobs/${id2}`, { method: 'DELETE', token: s.token })).status, 200);
  await new Promise((r) => setTimeout(r, 1_100));
  await testDb`select billing.expire_jobs(500)`;
  assert.equal((await balanceOf(s.token)).held, '0');
  await assert.rejects(
    testDb`select billing.complete_job(${id2}, 'w-probe-b', '{}'::jsonb, ${usage}::text::jsonb)`,
    /JOB_CANCELLED/,
  );
  await assert.rejects(testDb`select billing.fail_job(${id2}, 'w-probe-b', null, false)`, /JOB_CANCELLED/);
  assert.deepEqual(await balanceOf(s.token), { balance: left, held: '0', available: left });
  await coreInvariants([s.id]);
});
