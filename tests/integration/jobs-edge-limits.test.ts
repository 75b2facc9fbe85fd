// The jobs tick within edge limits, over real HTTP and Postgres: a ledger_export does one page
// per job per tick and checkpoints it; workers killed in the middle of a page or between pages
// lose nothing and repeat nothing; a tick answers by its budget (+ 1 s) even when a page takes
// longer, and that page still finishes after the answer.
import assert from 'node:assert/strict';
import {
  api,
  awayFromCron,
  env,
  functionsUrl,
  newUser,
  spawnGateway,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';

type Job = { status: string; checkpoints: number; locked_by: string | null; attempts: number };

/** A user whose ledger has `entries` grants, and a token for them. */
async function userWithLedger(entries: number) {
  const id = await newUser();
  await testDb`select billing.grant_credits(${id}, 1, 'promo_grant', ${`edge-${id}-`} || i) from generate_series(1, ${entries}) i`;
  return { id, token: await userToken(id) };
}

/** A ledger_export created in SQL and parked (not due) so that only this test's ticks run it. */
async function parkedExport(userId: string, pageSize: number): Promise<string> {
  const [job] = await testDb`select id from billing.enqueue_job(${userId}, 'ledger_export',
    ${JSON.stringify({ page_size: pageSize })}::text::jsonb, ${crypto.randomUUID()})`;
  await park(job.id);
  return job.id;
}

const park = (id: string) => testDb`update billing.jobs set run_after = now() + interval '1 hour' where id = ${id}`;

/**
 * Makes the jobs due ahead of any other, ticks as pg_cron would, and parks them again. A tick
 * whose worker dies (a failpoint) is what the caller wants; a 429 is waited out (locally every
 * caller of the tick shares one address, hence one limit) and the tick made again.
 */
async function tickFirst(ids: string[], base = functionsUrl): Promise<void> {
  await awayFromCron(3_000); // pg_cron's own tick would take a due job a page further too
  for (let attempt = 0;; attempt++) {
    await testDb`update billing.jobs set run_after = now() - interval '1 day' where id = any(${ids}::uuid[])`;
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
    break;
  }
  for (const id of ids) {
    await testDb`update billing.jobs set run_after = now() + interval '1 hour' where id = ${id} and status = 'processing'`;
  }
}

async function job(id: string): Promise<Job> {
  const [j] = await testDb<Job[]>`select status, jsonb_array_length(checkpoints) as checkpoints, locked_by, attempts
    from billing.jobs where id = ${id}`;
  return j;
}

/** The export's CSV must be the ledger's CSV, byte for byte: no line missing, none repeated. */
async function assertExportIsTheLedger(token: string, jobId: string, entries: number) {
  const exported = await api(`/jobs/${jobId}/result`, { token });
  assert.equal(exported.status, 200);
  const ledger = await api('/credits/ledger?format=csv', { token });
  assert.equal(exported.text, ledger.text);
  const lines = exported.text.trim().split('\r\n');
  assert.equal(lines.length, 1 + entries);
  assert.equal(new Set(lines).size, lines.length, 'a line is repeated');
}

Deno.test('a ledger_export runs one page per job per tick; the CSV is exactly the ledger', async () => {
  const a = await userWithLedger(23);
  const b = await userWithLedger(12);
  const jobA = await parkedExport(a.id, 5); // 5 pages
  const jobB = await parkedExport(b.id, 5); // 3 pages
  for (let t = 1; t <= 5; t++) {
    await tickFirst([jobA, jobB]);
    // 'started' and then one checkpoint per page: each tick took each job exactly one page further.
    const [ja, jb] = [await job(jobA), await job(jobB)];
    assert.equal(ja.checkpoints, 1 + t, `tick ${t}: export A`);
    assert.equal(jb.checkpoints, 1 + Math.min(t, 3), `tick ${t}: export B`);
    assert.equal(ja.status, t < 5 ? 'processing' : 'completed');
    assert.equal(jb.status, t < 3 ? 'processing' : 'completed');
    if (ja.status === 'processing') assert.equal(ja.locked_by, null, 'between ticks the job is not leased');
  }
  assert.equal((await job(jobA)).attempts, 1, 'slices that ended well are not attempts');
  await assertExportIsTheLedger(a.token, jobA, 23);
  await assertExportIsTheLedger(b.token, jobB, 12);
});

Deno.test('workers killed mid-page and between pages: the export resumes, no row missing or repeated', async () => {
  const u = await userWithLedger(23);
  const id = await parkedExport(u.id, 5);
  await tickFirst([id]);
  assert.equal((await job(id)).checkpoints, 2, 'started, page 1');

  // Dies after reading page 2 and before its checkpoint: nothing of page 2 is saved.
  const midPage = spawnGateway({ FAILPOINTS: 'ledger_export.before_checkpoint', JOBS_LEASE_SECONDS: '1' });
  try {
    await midPage.ready();
    await tickFirst([id], midPage.url);
  } finally {
    await midPage.kill();
  }
  let j = await job(id);
  assert.equal(j.checkpoints, 2, 'the page being read when the worker died was not saved');
  assert.match(j.locked_by ?? '', /^tick-/, 'the dead worker still holds the lease');
  await new Promise((r) => setTimeout(r, 1100)); // its lease runs out
  await tickFirst([id]);
  assert.equal((await job(id)).checkpoints, 3, 'page 2, read again from the saved cursor');

  // Dies after saving page 3, before handing the job back.
  const betweenPages = spawnGateway({ FAILPOINTS: 'ledger_export.after_checkpoint', JOBS_LEASE_SECONDS: '1' });
  try {
    await betweenPages.ready();
    await tickFirst([id], betweenPages.url);
  } finally {
    await betweenPages.kill();
  }
  j = await job(id);
  assert.equal(j.checkpoints, 4, 'page 3 was saved with its checkpoint');
  assert.notEqual(j.locked_by, null, 'the dead worker still holds the lease');
  await new Promise((r) => setTimeout(r, 1100));
  await tickFirst([id]);
  await tickFirst([id]);
  j = await job(id);
  assert.equal(j.status, 'completed');
  assert.equal(j.checkpoints, 6, 'started and five pages, each once');
  assert.equal(j.attempts, 3, 'two attempts died, the third completed');
  await assertExportIsTheLedger(u.token, id, 23);
});

Deno.test('a tick answers by its budget + 1 s; a page still being read then is finished after the answer', async () => {
  const u = await userWithLedger(7);
  const id = await parkedExport(u.id, 5);
  const gw = spawnGateway({ JOBS_TICK_BUDGET_MS: '200', JOBS_EXPORT_PAGE_DELAY_MS: '2500' });
  try {
    await gw.ready();
    await tickFirst([id], gw.url); // the page takes 2.5 s; the tick answers at 1.2 s
    const during = await job(id);
    assert.equal(during.status, 'processing');
    assert.equal(during.checkpoints, 1, 'the tick answered before the page was saved');
    assert.match(during.locked_by ?? '', /^tick-/, 'its worker still holds the job');
    const after = await until('the page to be saved after the answer', async () => {
      const j = await job(id);
      return j.checkpoints === 2 && j.locked_by === null && j;
    });
    assert.equal(after.status, 'processing', 'one page, then the job waits for the next tick');
  } finally {
    await gw.kill();
  }
  await tickFirst([id]);
  assert.equal((await job(id)).status, 'completed');
  await assertExportIsTheLedger(u.token, id, 7);
});
