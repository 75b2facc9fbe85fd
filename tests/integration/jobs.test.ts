// Async jobs over real HTTP: lifecycle, progress, cancellation, crash recovery, retries,
// parallel claims, metered holds, expiry, idempotency and isolation.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  functionsUrl,
  reportUsage,
  spawnGateway,
  student,
  testDb,
  tick,
  until,
} from '../support/helpers.ts';
import { balanceOf } from '../support/purchases.ts';
import { priceOf, standinCall } from '../support/ai.ts';
import { encodeCursor } from '../../supabase/functions/_shared/values/page.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;

async function createJob(token: string, body: unknown, base = functionsUrl, key = crypto.randomUUID()) {
  const res = await fetch(`${base}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'idempotency-key': key, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, body: await res.json() as Json };
}

async function getJob(token: string, id: string, base = functionsUrl) {
  const res = await fetch(`${base}/jobs/${id}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, headers: res.headers, body: await res.json() as Json };
}

/** A job created straight in SQL and not due for an hour, so no worker takes it meanwhile. */
async function waitingJob(userId: string, type = 'ledger_export', input: unknown = {}, reserve: number | null = null) {
  // One transaction: a worker never sees the job before it is set to wait (it would run it at once).
  return await testDb.begin(async (sql) => {
    const [job] = await sql`select id from billing.enqueue_job(${userId}, ${type}, ${
      JSON.stringify(input)
    }::text::jsonb,
      ${crypto.randomUUID()}, null, ${reserve})`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${job.id}`;
    return job.id as string;
  });
}

/** How many holds a user's account has had (jobs' reservations and the routes'). */
const holdsOf = async (userId: string) =>
  (await testDb`select count(*)::int as n from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${userId}`)[0].n as number;

const aiJob = {
  type: 'ai_completion',
  input: { model: 'gpt-4o', prompt: 'one two three four five six seven eight', max_tokens: 100 },
};

Deno.test('lifecycle: 202 with Location → polling → completed with the result; the usage is captured', async () => {
  const s = await student('10');
  const created = await createJob(s.token, aiJob);
  assert.equal(created.status, 202);
  const job = created.body.data as { job_id: string; status: string; poll_url: string };
  assert.equal(job.status, 'queued');
  assert.equal(created.headers.get('location'), job.poll_url);
  const done = await until('completion', async () => {
    const r = await getJob(s.token, job.job_id);
    return (data(r).status === 'completed') && r;
  });
  assert.equal(done.headers.get('retry-after'), null, 'no Retry-After once finished');
  const result = data(done).result as { text: string; usage: { input_tokens: number; output_tokens: number } };
  assert.equal(result.text, 'eight seven six five four three two one');
  assert.deepEqual(result.usage, { input_tokens: 8, output_tokens: 8 });
  // 8 in × $5/M + 8 out × $15/M, × 4, in credits: 0.64. The rest of the hold is released.
  assert.deepEqual(await balanceOf(s.token), {
    balance: '9.36',
    held: '0',
    available: '9.36',
  });
  const [t] =
    await testDb`select t.kind, t.amount::text from billing.transfers t join billing.holds h on h.id = t.hold_id
    join billing.jobs j on j.hold_id = h.id where j.id = ${job.job_id}`;
  assert.deepEqual({ ...t }, { kind: 'hold_capture', amount: '0.640000000000000000' });
  await assertLedgerInvariants();
});

Deno.test('a metered job the user cannot afford is 402 and creates no job', async () => {
  const s = await student('0.01');
  const r = await createJob(s.token, aiJob);
  assert.equal(r.status, 402);
  assert.equal((r.body.error as Json).code, 'INSUFFICIENT_CREDITS');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('a job for a model the student may not call through the gateway is 403 MODEL_NOT_ALLOWED and holds nothing', async () => {
  const s = await student('1000');
  const admin = await adminToken();
  const set = (models: string[]) =>
    api('/admin/model-access', { method: 'PUT', token: admin, body: { plan_id: null, models } });
  try {
    assert.equal((await set(['gpt-4o-mini'])).status, 200);
    const r = await createJob(s.token, aiJob);
    assert.deepEqual([r.status, (r.body.error as Json).code], [403, 'MODEL_NOT_ALLOWED']);
    const allowed = await createJob(s.token, { ...aiJob, input: { ...aiJob.input, model: 'gpt-4o-mini' } });
    assert.equal(allowed.status, 202);
  } finally {
    assert.equal((await set([])).status, 200);
  }
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id} and input ->> 'model' = 'gpt-4o'`;
  assert.equal(n, 0);
  assert.equal(await holdsOf(s.id), 1, 'only the allowed job reserved');
});

Deno.test('an unknown type or invalid input is 400 and creates no job', async () => {
  const s = await student('10');
  const unknown = await createJob(s.token, { type: 'mine_bitcoin', input: {} });
  assert.equal(unknown.status, 400);
  assert.equal((unknown.body.error as Json).code, 'UNKNOWN_JOB_TYPE');
  const bad = await createJob(s.token, {
    type: 'ai_completion',
    input: { model: 'gpt-4o', prompt: 'x', max_tokens: -5 },
  });
  assert.equal(bad.status, 400);
  assert.equal((bad.body.error as Json).field, 'input.max_tokens');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('the same Idempotency-Key makes one job', async () => {
  const s = await student('10');
  const key = crypto.randomUUID();
  const a = await createJob(s.token, aiJob, functionsUrl, key);
  const b = await createJob(s.token, aiJob, functionsUrl, key);
  assert.equal((a.body.data as Json).job_id, (b.body.data as Json).job_id);
  assert.equal(b.headers.get('idempotent-replayed'), 'true');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 1);
});

Deno.test('20 job requests at once under one key, with other bodies: one job, one reservation, the rest replay or 409', async () => {
  const s = await student('100');
  const key = crypto.randomUUID();
  const bodies = Array.from(
    { length: 20 },
    (_, i) => ({ ...aiJob, input: { ...aiJob.input, max_tokens: 100 + (i % 2) * 900 } }),
  );
  const rs = await Promise.all(bodies.map((b) => createJob(s.token, b, functionsUrl, key)));
  const accepted = rs.filter((r) => r.status === 202);
  assert.ok(accepted.length >= 1, rs.map((r) => r.status).join(','));
  assert.equal(new Set(accepted.map((r) => (r.body.data as Json).job_id)).size, 1);
  assert.ok(
    // The same body while the first is in flight: 409 IDEMPOTENCY_KEY_IN_USE (the claim path).
    rs.every((r) =>
      r.status === 202 ||
      (r.status === 409 &&
        ['IDEMPOTENCY_KEY_REUSED', 'IDEMPOTENCY_KEY_IN_USE'].includes((r.body.error as Json).code as string))
    ),
    rs.map((r) => `${r.status} ${JSON.stringify(r.body.error ?? '')}`).join('\n'),
  );
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 1);
  const holds = await holdsOf(s.id);
  assert.ok(holds <= 1, `${holds} holds for one job`);
  await api(`/jobs/${(accepted[0].body.data as Json).job_id}`, { token: s.token, method: 'DELETE' });
  await assertLedgerInvariants();
});

Deno.test("Retry-After grows with a waiting job's age: 2 s, 4 s, 8 s", async () => {
  const s = await student();
  const id = await waitingJob(s.id);
  const after = async (ageSeconds: number) => {
    await testDb`update billing.jobs set created_at = now() - make_interval(secs => ${ageSeconds}) where id = ${id}`;
    const r = await getJob(s.token, id);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal((r.body.data as Json).status, 'queued', JSON.stringify(r.body));
    return r.headers.get('retry-after');
  };
  assert.deepEqual([await after(1), await after(15), await after(120)], ['2', '4', '8']);
  await api(`/jobs/${id}`, { token: s.token, method: 'DELETE' });
});

Deno.test('cancelling a queued job releases its hold at once', async () => {
  const s = await student('10');
  const id = await waitingJob(s.id, 'ai_completion', aiJob.input, 5);
  assert.equal(data(await api('/credits/balance', { token: s.token })).held, '5');
  const r = await api(`/jobs/${id}`, { token: s.token, method: 'DELETE' });
  assert.equal(r.status, 200);
  assert.equal(data(r).status, 'cancelled');
  assert.deepEqual(await balanceOf(s.token), {
    balance: '10',
    held: '0',
    available: '10',
  });
  const again = await api(`/jobs/${id}`, { token: s.token, method: 'DELETE' });
  assert.equal(again.status, 409);
  assert.equal((again.body.error as Json).code, 'JOB_FINISHED');
});

Deno.test('cancelling a running job stops it at its next checkpoint; nothing is charged', async () => {
  const s = await student('10');
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '400' });
  try {
    await gw.ready();
    const job = (await createJob(s.token, aiJob, gw.url)).body.data as { job_id: string };
    await until('the job to run', async () => data(await getJob(s.token, job.job_id, gw.url)).status === 'processing');
    const r = await fetch(`${gw.url}/jobs/${job.job_id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${s.token}` },
    });
    assert.equal((await r.json()).data.status, 'cancelled');
    // The handler's next checkpoint sees the cancel and releases the hold.
    await until('the hold released', async () => (await balanceOf(s.token)).held === '0');
    const final = data(await getJob(s.token, job.job_id, gw.url));
    assert.equal(final.status, 'cancelled');
    assert.equal(final.result, undefined);
    assert.deepEqual(await balanceOf(s.token), {
      balance: '10',
      held: '0',
      available: '10',
    });
  } finally {
    await gw.kill();
  }
  await assertLedgerInvariants();
});

// The provider bills an answer it was asked for whether or not the student still wants it: a
// cancel while it answers leaves the job's hold to its worker, which charges what the provider
// reported and frees the rest (the result is not kept).
Deno.test('cancelling an ai_completion while the provider answers charges what the provider billed, and frees the rest', async () => {
  const s = await student('10');
  const tag = crypto.randomUUID().replaceAll('-', '');
  const gw = spawnGateway({ AI_PROVIDER: 'openai' }); // to the stand-in provider (AI_API_BASE)
  try {
    await gw.ready();
    const input = { model: 'gpt-4o', prompt: `#standin words=30 first_byte_delay=1500 tag=${tag}`, max_tokens: 100 };
    const job = (await createJob(s.token, { type: 'ai_completion', input }, gw.url)).body.data as { job_id: string };
    // Its checkpoint before the call is saved: the provider is being asked (1.5 s before it answers).
    await until('the provider asked', async () => {
      const [j] = await testDb`select status, progress from billing.jobs where id = ${job.job_id}`;
      return j?.status === 'processing' && j.progress >= 5;
    });
    const r = await fetch(`${gw.url}/jobs/${job.job_id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${s.token}` },
    });
    assert.equal((await r.json()).data.status, 'cancelled');
    const answered = await until('the provider answered', async () => {
      const c = await standinCall(tag);
      return c.status === 'done' && c;
    });
    const price = await priceOf('gpt-4o', answered.usage!);
    assert.notEqual(price, '0');
    await until('the job settled', async () => (await balanceOf(s.token)).held === '0');
    const final = data(await getJob(s.token, job.job_id, gw.url));
    assert.equal(final.status, 'cancelled');
    assert.equal(final.result, undefined);
    const [{ left }] = await testDb`select trim_scale(10 - ${price}::numeric)::text as left`;
    assert.deepEqual(await balanceOf(s.token), { balance: left, held: '0', available: left });
  } finally {
    await gw.kill();
  }
  await assertLedgerInvariants();
});

Deno.test('progress and checkpoints are visible while a job runs', async () => {
  const s = await student('10');
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '300' });
  try {
    await gw.ready();
    const job = (await createJob(s.token, aiJob, gw.url)).body.data as { job_id: string };
    const mid = await until('progress mid-way', async () => {
      const d = data(await getJob(s.token, job.job_id, gw.url));
      return (d.progress as number) > 5 && (d.progress as number) < 100 && d;
    });
    assert.equal(mid.status, 'processing');
    assert.deepEqual((mid.checkpoints as Json[]).map((c) => c.label), ['calling the model']);
  } finally {
    await gw.kill();
  }
});

/**
 * A worker tick (as pg_cron makes it) with this job first in line. A tick whose worker dies is
 * what the caller wants; a 429 is waited out (locally every caller of the tick shares one
 * address, hence one limit).
 */
async function tickFirst(jobId: string, base = functionsUrl) {
  for (let attempt = 0;; attempt++) {
    await testDb`update billing.jobs set run_after = now() - interval '1 day' where id = ${jobId}`;
    const res = await fetch(`${base}/jobs/worker/tick`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
    }).catch(() => null); // the worker process died
    const text = await res?.text();
    if (res && res.status === 429 && attempt < 5) {
      await new Promise((r) => setTimeout(r, 1000 * Number(res.headers.get('retry-after') ?? 1)));
      continue;
    }
    if (res && res.status !== 200) throw new Error(`the worker tick answered ${res.status}: ${text}`);
    return;
  }
}

/** Ticks until the job finishes (an export does one page per tick). */
async function tickUntilDone(token: string, jobId: string) {
  return await until('the export to finish', async () => {
    await tickFirst(jobId);
    const j = data(await getJob(token, jobId));
    return j.status === 'completed' && j;
  }, 30_000);
}

Deno.test('a worker process killed mid-export: another resumes from the checkpoint; the CSV is identical', async () => {
  const s = await student('1000');
  await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      reportUsage('/credits/usage', {
        token: s.token,
        headers: { 'idempotency-key': crypto.randomUUID() },
        body: { model: 'gpt-4o', input_tokens: 50 * (i + 1), output_tokens: 0 },
      })),
  );
  const jobId = ((await createJob(s.token, { type: 'ledger_export', input: { page_size: 2 } })).body.data as {
    job_id: string;
  }).job_id;
  await until('the first page (the worker started on creation)', async () => {
    const [j] =
      await testDb`select jsonb_array_length(checkpoints) as n, locked_by from billing.jobs where id = ${jobId}`;
    return j.n >= 2 && j.locked_by === null;
  });
  await tickFirst(jobId);
  await tickFirst(jobId);
  assert.ok((data(await getJob(s.token, jobId)).checkpoints as Json[]).length >= 3, 'a few pages');
  // A worker that dies in the middle of a page, after reading it and before its checkpoint.
  const gw = spawnGateway({ FAILPOINTS: 'ledger_export.before_checkpoint', JOBS_LEASE_SECONDS: '2' });
  try {
    await gw.ready();
    await tickFirst(jobId, gw.url);
  } finally {
    await gw.kill();
  }
  const before = data(await getJob(s.token, jobId));
  assert.equal(before.status, 'processing');
  await new Promise((r) => setTimeout(r, 2200)); // the dead worker's lease runs out
  const after = await tickUntilDone(s.token, jobId);
  const labels = (after.checkpoints as Json[]).map((c) => String(c.label));
  assert.equal(labels.filter((l) => l === 'started').length, 1, 'the export restarted from zero');
  const [{ attempts }] = await testDb`select attempts from billing.jobs where id = ${jobId}`;
  assert.equal(attempts, 2, 'the attempt that died, and the one that completed');

  const resumed = await api(`/jobs/${jobId}/result`, { token: s.token });
  const reference = await createJob(s.token, { type: 'ledger_export', input: { page_size: 2 } });
  const refId = (reference.body.data as { job_id: string }).job_id;
  await tickUntilDone(s.token, refId);
  const expected = await api(`/jobs/${refId}/result`, { token: s.token });
  assert.equal(resumed.text, expected.text);
  assert.equal(resumed.text.trim().split('\r\n').length, 1 + 13);
});

Deno.test('two workers never run the same job: parallel claims take each job once', async () => {
  const s = await student();
  await testDb`select billing.enqueue_job(${s.id}, 'ledger_export', '{}'::jsonb, 'parallel-' || i) from generate_series(1, 30) i`;
  const claims = await Promise.all(
    Array.from(
      { length: 6 },
      (_, w) => testDb`select id from billing.claim_jobs(${`claimer-${w}`}, 10, 30) where user_id = ${s.id}`,
    ),
  );
  const ids = claims.flatMap((rows) => rows.map((r) => r.id));
  assert.equal(new Set(ids).size, ids.length, 'a job was claimed twice');
  const [{ twice }] =
    await testDb`select count(*)::int as twice from billing.jobs where user_id = ${s.id} and attempts > 1`;
  assert.equal(twice, 0);
});

Deno.test('a failing provider is retried with backoff, then the job fails and its hold is released', async () => {
  const s = await student('10');
  const gw = spawnGateway({ AI_PROVIDER: 'openai', AI_API_BASE: 'http://127.0.0.1:1', AI_API_KEY: 'test' });
  try {
    await gw.ready();
    const job = (await createJob(s.token, aiJob, gw.url)).body.data as { job_id: string };
    // Each tick once the job is due again (its backoff passed), until it fails: however slowly
    // each attempt runs, the job is tried exactly max_attempts times.
    for (let i = 0; i < 6; i++) {
      const state = await until('the job due or failed', async () => {
        // A retryable failure leaves the job unlocked with its next run_after.
        const [j] = await testDb`select status, locked_by is null and run_after <= now() as due
          from billing.jobs where id = ${job.job_id}`;
        return j.status === 'failed' || j.due ? j.status as string : undefined;
      }, 30_000);
      if (state === 'failed') break;
      await tick(gw.url);
    }
    const final = data(await getJob(s.token, job.job_id, gw.url));
    assert.equal(final.status, 'failed');
    assert.equal((final.error as Json).code, 'JOB_ERROR');
    const [{ attempts }] = await testDb`select attempts from billing.jobs where id = ${job.job_id}`;
    assert.equal(attempts, 3);
    assert.deepEqual(await balanceOf(s.token), {
      balance: '10',
      held: '0',
      available: '10',
    });
  } finally {
    await gw.kill();
  }
});

Deno.test('expired jobs are deleted by the pg_cron job, releasing any hold left open', async () => {
  const s = await student('10');
  const id = await waitingJob(s.id, 'ai_completion', aiJob.input, 3);
  await testDb`update billing.jobs set expires_at = now() - interval '1 second' where id = ${id}`;
  await testDb`select billing.expire_jobs()`;
  assert.equal((await getJob(s.token, id)).status, 404);
  assert.equal(data(await api('/credits/balance', { token: s.token })).held, '0');
});

Deno.test("another student's job is 404 everywhere", async () => {
  const owner = await student();
  const other = await student();
  const id = await waitingJob(owner.id);
  assert.equal((await getJob(other.token, id)).status, 404);
  assert.equal((await api(`/jobs/${id}`, { token: other.token, method: 'DELETE' })).status, 404);
  assert.equal((await api(`/jobs/${id}/result`, { token: other.token })).status, 404);
  const list = data(await api('/jobs', { token: other.token })) as { items: Json[] };
  assert.equal(list.items.length, 0);
});

Deno.test("GET /jobs lists the caller's jobs newest first, by status, with a cursor", async () => {
  const s = await student();
  for (let i = 0; i < 3; i++) await waitingJob(s.id);
  const first = data(await api('/jobs?limit=2&status=queued', { token: s.token })) as {
    items: Json[];
    next_cursor: string;
  };
  assert.equal(first.items.length, 2);
  const second = data(await api(`/jobs?limit=2&status=queued&cursor=${first.next_cursor}`, { token: s.token })) as {
    items: Json[];
    next_cursor: string | null;
  };
  assert.equal(second.items.length, 1);
  assert.equal(second.next_cursor, null);
  assert.equal(new Set([...first.items, ...second.items].map((j) => j.job_id)).size, 3);
});

Deno.test("GET /jobs cursors at the edges: the largest position lists, past it or malformed is 400, and any position lists only the caller's jobs", async () => {
  const [s, other] = [await student(), await student()];
  const mine = await waitingJob(s.id);
  const theirs = await waitingJob(other.id);
  const [t] = await testDb`select floor(extract(epoch from created_at) * 1000000)::bigint::text as micros
    from billing.jobs where id = ${theirs}`;
  const list = (position: string) => api(`/jobs?cursor=${encodeCursor(position)}`, { token: s.token });
  const ids = (r: { body: Json }) => (data(r).items as Json[]).map((j) => j.job_id);
  const top = await list(`9223372036854775807:${crypto.randomUUID()}`);
  assert.equal(top.status, 200, top.text);
  assert.deepEqual(ids(top), [mine]);
  // Another student's job as the position: still only the caller's jobs, nothing of theirs.
  const across = await list(`${BigInt(t.micros) + 1n}:${theirs}`);
  assert.equal(across.status, 200, across.text);
  assert.ok(!across.text.includes(theirs));
  for (
    const bad of ['9223372036854775808:' + mine, `-1:${mine}`, `1e3:${mine}`, `1:${mine}\0`, `1:\ud800`, `1:${mine}:x`]
  ) {
    const r = await list(bad);
    assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${r.text}`);
  }
  await api(`/jobs/${mine}`, { token: s.token, method: 'DELETE' });
  await api(`/jobs/${theirs}`, { token: other.token, method: 'DELETE' });
});

Deno.test('the worker tick refuses a caller without the cron secret', async () => {
  const r = await fetch(`${functionsUrl}/jobs/worker/tick`, {
    method: 'POST',
    headers: { authorization: 'Bearer nope' },
  });
  assert.equal(r.status, 401);
  await r.body?.cancel();
});

Deno.test('a job with odd limits or an unpriced model is refused and places no hold', async () => {
  const s = await student('1000');
  for (const max_tokens of [0, 4097, 1.5, '10', -1, null]) {
    const r = await api('/jobs', {
      token: s.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { type: 'ai_completion', input: { model: 'gpt-4o-mini', prompt: 'one two', max_tokens } },
    });
    assert.equal(r.status, 400, `${max_tokens}: ${r.status} ${r.text}`);
  }
  const unpriced = await api('/jobs', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { type: 'ai_completion', input: { model: 'no-such-model', prompt: 'one two', max_tokens: 10 } },
  });
  assert.ok(unpriced.status >= 400 && unpriced.status < 500, unpriced.text);
  const [{ n }] = await testDb`select count(*)::int as n from billing.holds h join billing.accounts a
    on a.id = h.account_id where a.user_id = ${s.id}`;
  assert.equal(n, 0, 'no hold for a refused job');
});

Deno.test('an Idempotency-Key whose stored answer expired, sent with another job: 409 IDEMPOTENCY_KEY_REUSED, never the old job as if accepted', async () => {
  const s = await student('10');
  const key = crypto.randomUUID();
  const first = await createJob(s.token, aiJob, functionsUrl, key);
  assert.equal(first.status, 202);
  const firstId = (first.body.data as Json).job_id as string;
  await until(
    'the first job finishes',
    async () =>
      (await getJob(s.token, firstId)).body.data &&
      ['completed', 'failed'].includes(((await getJob(s.token, firstId)).body.data as Json).status as string),
  );
  // A day later the stored answer is gone (its 24 hours passed); the job is still kept.
  await testDb`update billing.idempotency_keys set expires_at = now() - interval '1 second'
    where user_id = ${s.id} and action = 'jobs.create' and key = ${key}`;
  const other = { ...aiJob, input: { ...aiJob.input, prompt: 'a different question entirely' } };
  const again = await createJob(s.token, other, functionsUrl, key);
  assert.notEqual(
    (again.body.data as Json | undefined)?.job_id,
    firstId,
    'a new request was answered with the old job',
  );
  assert.equal(again.status, 409, JSON.stringify(again.body));
  assert.equal((again.body.error as Json).code, 'IDEMPOTENCY_KEY_REUSED');
  // The same job again under the key is still that job (enqueue_job's own deduplication).
  await testDb`update billing.idempotency_keys set expires_at = now() - interval '1 second'
    where user_id = ${s.id} and action = 'jobs.create' and key = ${key}`;
  const same = await createJob(s.token, aiJob, functionsUrl, key);
  assert.equal(same.status, 202);
  assert.equal((same.body.data as Json).job_id, firstId);
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 1);
  await assertLedgerInvariants();
});

Deno.test('one Idempotency-Key used by two students and on /credits/holds: each request its own job or hold, each reserved once', async () => {
  const [a, b] = [await student('10'), await student('10')];
  const key = crypto.randomUUID();
  const [ja, jb] = [
    await createJob(a.token, aiJob, functionsUrl, key),
    await createJob(b.token, aiJob, functionsUrl, key),
  ];
  assert.equal(ja.status, 202);
  assert.equal(jb.status, 202);
  assert.equal(jb.headers.get('idempotent-replayed'), null, "another student's answer was replayed");
  assert.notEqual((ja.body.data as Json).job_id, (jb.body.data as Json).job_id);
  const hold = await api('/credits/holds', {
    token: a.token,
    body: { amount: '1' },
    headers: { 'idempotency-key': key },
  });
  assert.equal(hold.status, 201, hold.text);
  assert.equal(hold.headers.get('idempotent-replayed'), null);
  for (const s of [a, b]) {
    const jobs = await testDb`select hold_id from billing.jobs where user_id = ${s.id}`;
    assert.equal(jobs.length, 1);
    assert.ok(jobs[0].hold_id, 'a metered job without its reservation');
  }
  const holds = await holdsOf(a.id);
  assert.equal(holds, 2); // the job's and the route's
  await api(`/jobs/${(ja.body.data as Json).job_id}`, { token: a.token, method: 'DELETE' });
  await api(`/jobs/${(jb.body.data as Json).job_id}`, { token: b.token, method: 'DELETE' });
  await assertLedgerInvariants();
});

Deno.test('a client that hangs up mid-create, then retries 10 times at once: one job, one reservation, retries replay it or 409', async () => {
  const s = await student('10');
  const key = crypto.randomUUID();
  const gone = new AbortController();
  const first = fetch(`${functionsUrl}/jobs`, {
    method: 'POST',
    signal: gone.signal,
    headers: { authorization: `Bearer ${s.token}`, 'idempotency-key': key, 'content-type': 'application/json' },
    body: JSON.stringify(aiJob),
  }).then((r) => r.body?.cancel(), () => undefined);
  setTimeout(() => gone.abort(), 5);
  await first;
  const rs = await Promise.all(Array.from({ length: 10 }, () => createJob(s.token, aiJob, functionsUrl, key)));
  assert.ok(
    rs.every((r) => r.status === 202 || (r.status === 409 && (r.body.error as Json).code === 'IDEMPOTENCY_KEY_IN_USE')),
    rs.map((r) => `${r.status} ${JSON.stringify(r.body.error ?? '')}`).join('\n'),
  );
  const jobs = await until('the abandoned request settles', async () => {
    const rows = await testDb`select id, hold_id from billing.jobs where user_id = ${s.id}`;
    return rows.length ? rows : undefined;
  });
  assert.equal(jobs.length, 1);
  assert.ok(jobs[0].hold_id);
  assert.ok(rs.filter((r) => r.status === 202).every((r) => (r.body.data as Json).job_id === jobs[0].id));
  const holds = await holdsOf(s.id);
  assert.equal(holds, 1);
  await api(`/jobs/${jobs[0].id}`, { token: s.token, method: 'DELETE' });
  await assertLedgerInvariants();
});
