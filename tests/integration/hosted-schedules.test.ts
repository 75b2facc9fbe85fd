// The hosted schedules end to end: pg_cron's own commands queue their requests through pg_net
// (the local stand-in), and sending them as pg_net's worker does (scripts/local/ticker.ts)
// reaches each function, which accepts the cron secret. Vault holds what the functions have.
import assert from 'node:assert/strict';
import { env, functionsUrl, testDb } from '../support/helpers.ts';
import { deliver, takeRequests } from '../../scripts/local/ticker.ts';

/** Runs a statement that returns one value (a cron job's command, net.http_post): pg_net's request id, if any. */
async function queue(statement: string): Promise<string | null> {
  const [row] = await testDb.unsafe(statement);
  return row ? String(Object.values(row)[0]) : null;
}

Deno.test('each hosted schedule posts to its function with the cron secret, and the function accepts it', async () => {
  const jobs = await testDb<{ jobname: string; command: string }[]>`
    select jobname::text, command from cron.job where command like '%billing.call_function(%' order by jobname`;
  assert.deepEqual(jobs.map((j) => j.jobname), [
    'billing-ai-batches-sync',
    'billing-deep-health',
    'billing-jobs-tick',
    'billing-notify-dispatch',
    'billing-reconcile-providers',
    'billing-reconcile-providers-resume',
  ]);
  for (const job of jobs) {
    const path = /call_function\('([^']+)'/.exec(job.command)?.[1];
    const id = await queue(job.command);
    if (id === null) {
      // Only the resumption sends nothing, and only when no reconciliation run is unfinished.
      const [{ open }] = await testDb`select count(*)::int as open from billing.reconciliation_progress
        where finished_at is null`;
      assert.deepEqual([job.jobname, open], ['billing-reconcile-providers-resume', 0]);
      continue;
    }
    const [req] = await takeRequests(testDb, { ids: [id] });
    assert.equal(req.url, `${functionsUrl}${path}`, `${job.jobname}: the URL`);
    assert.equal(req.method, 'POST');
    assert.equal(req.headers?.Authorization, `Bearer ${env('CRON_SECRET')}`, `${job.jobname}: the cron secret`);
    assert.ok(req.timeout_milliseconds > 5000, `${job.jobname}: a timeout longer than pg_net's default`);
    const sent = await deliver(testDb, req);
    // A reconciliation still paging answers 202 (the resumption calls again).
    const accepted = path === '/providers/reconciliation/run' ? [200, 202] : [200];
    assert.ok(accepted.includes(sent.status ?? 0), `${job.jobname}: ${path} answered ${sent.status ?? sent.error}`);
    const [answer] = await testDb`select status_code from net._http_response where id = ${id}::bigint`;
    assert.equal(answer.status_code, sent.status, `${job.jobname}: the answer is recorded as pg_net records it`);
  }
});

Deno.test('the pg_net stand-in sends what net.http_post queued, and times out as asked', async () => {
  const seen: { method: string; path: string; contentType: string | null; probe: string | null; body: string }[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === '/slow') await new Promise((r) => setTimeout(r, 1000));
    seen.push({
      method: req.method,
      path: url.pathname + url.search,
      contentType: req.headers.get('content-type'),
      probe: req.headers.get('x-probe'),
      body: await req.text(),
    });
    return new Response('{"ok": true}', { headers: { 'content-type': 'application/json' } });
  });
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    const id = await queue(`select net.http_post(url => '${base}/echo', body => '{"a": 1}'::jsonb,
      params => '{"q": "a b"}'::jsonb, headers => '{"X-Probe": "1"}'::jsonb)`) as string;
    const [req] = await takeRequests(testDb, { ids: [id] });
    assert.equal(req.timeout_milliseconds, 5000, "pg_net's default timeout");
    assert.equal((await deliver(testDb, req)).status, 200);
    assert.deepEqual(seen[0], {
      method: 'POST',
      path: '/echo?q=a%20b',
      contentType: 'application/json',
      probe: '1',
      body: '{"a": 1}',
    });
    assert.equal((await takeRequests(testDb, { ids: [id] })).length, 0, 'a request is taken once');

    const slow = await queue(`select net.http_post('${base}/slow', timeout_milliseconds => 200)`) as string;
    const sent = await deliver(testDb, (await takeRequests(testDb, { ids: [slow] }))[0]);
    assert.equal(sent.timedOut, true);
    const [answer] = await testDb`select timed_out, status_code from net._http_response where id = ${slow}::bigint`;
    assert.deepEqual({ ...answer }, { timed_out: true, status_code: null });
  } finally {
    await server.shutdown();
  }
});
