// An ai_completion job whose model's upstream fails before it answers (no connection, silence past
// AI_TIMEOUT_MS, 429, 500, a 200 whose body is no answer) is answered by the next upstream
// configured for the model (AI_UPSTREAM_<NAME>_FALLBACK_FOR), as a gateway call is
// (docs/ai-gateway.md § Upstreams): charged once at the model's card for what the answering
// provider reported, its capture naming that upstream (the operator's cost is its price). A
// provider that refuses the request itself (400) fails the job at once (asked again, it would
// refuse again): no other upstream asked, nothing charged.
import assert from 'node:assert/strict';
import { balanceOf, countingBackup, priceOf, standinCall, student } from '../support/ai.ts';
import { assertLedgerInvariants, awayFromCron, env, key, spawnGateway, testDb, until } from '../support/helpers.ts';

const model = 'gpt-4o-mini';

/** A primary upstream that fails one way (null: no server, nothing listens). */
function failing(how: 'refused' | 'timeout' | 429 | 500 | 'no answer' | 400) {
  if (how === 'refused') return { base: 'http://127.0.0.1:1/v1', close: async () => {} };
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    if (how === 'timeout') await new Promise((r) => setTimeout(r, 3_000));
    if (typeof how === 'number') return Response.json({ error: { message: 'no' } }, { status: how });
    return how === 'no answer' ? Response.json({ error: { message: 'overloaded', code: 502 } }) : Response.json({});
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, close: () => server.shutdown() };
}

/** Runs one job through a gateway whose primary fails `how`, with the backup behind it. */
async function jobWith(how: Parameters<typeof failing>[0]) {
  const s = await student('10');
  const tag = crypto.randomUUID().replaceAll('-', '');
  const primary = failing(how);
  const backup = countingBackup();
  const gw = spawnGateway({
    AI_PROVIDER: 'openai',
    AI_API_BASE: primary.base,
    AI_UPSTREAMS: 'backup',
    AI_UPSTREAM_BACKUP_BASE: backup.base,
    AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
    AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
    AI_TIMEOUT_MS: '1000',
  });
  try {
    await gw.ready();
    await awayFromCron(); // the stack's own worker ticks on the minute
    const created = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({
        type: 'ai_completion',
        input: { model, prompt: `say it #standin words=3 tag=${tag}`, max_tokens: 50 },
      }),
    });
    assert.equal(created.status, 202, await created.clone().text());
    const id = (await created.json()).data.job_id as string;
    const job = await until('the job ran', async () => {
      const [j] = await testDb`select status, result, error, attempts from billing.jobs where id = ${id}`;
      return j && (['completed', 'failed'].includes(j.status) || j.error !== null) && j;
    }, 30_000);
    const captures = [
      ...await testDb`select trim_scale(t.amount)::text as amount, t.metadata ->> 'upstream' as upstream
      from billing.transfers t join billing.jobs j on j.hold_id = t.hold_id where j.id = ${id}`,
    ];
    return { s, job, tag, captures, backupHits: backup.hits() };
  } finally {
    await gw.kill();
    await primary.close();
    await backup.close();
  }
}

for (const how of ['refused', 'timeout', 429, 500, 'no answer'] as const) {
  Deno.test(`a job whose upstream fails (${how}) is answered by the next, charged once at the card`, async () => {
    const { s, job, tag, captures, backupHits } = await jobWith(how);
    assert.deepEqual(
      { status: job.status, error: job.error, text: job.result?.text.trim(), backupHits },
      { status: 'completed', error: null, text: 'word1 word2 word3', backupHits: 1 },
    );
    const answered = await standinCall(tag);
    assert.deepEqual(captures, [{ amount: await priceOf(model, answered.usage!), upstream: 'backup' }]);
    const [{ left }] = await testDb`select trim_scale(10 - ${captures[0].amount}::numeric)::text as left`;
    assert.deepEqual(await balanceOf(s.id), left, 'charged once, the rest released');
    await assertLedgerInvariants();
  });
}

Deno.test('a job the provider refuses (400) is not sent to another upstream, and charges nothing', async () => {
  const { s, job, captures, backupHits } = await jobWith(400);
  assert.deepEqual({ status: job.status, code: job.error?.code }, { status: 'failed', code: 'PROVIDER_REFUSED' });
  assert.equal(backupHits, 0);
  assert.deepEqual(captures, []);
  assert.equal(await balanceOf(s.id), '10');
  const [{ held }] = await testDb`select count(*)::int as held from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id} and h.status = 'active'`;
  assert.equal(held, 0);
  await assertLedgerInvariants();
});
