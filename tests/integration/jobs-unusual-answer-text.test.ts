// An ai_completion whose provider answers with what Postgres refuses in text and jsonb (a NUL, a
// lone surrogate) is still charged what the provider billed and completes: the result holds
// U+FFFD in their place. Storing it must never fail the capture it is written with (the provider
// billed the call either way). The stand-in writes them on `#standin unusual`.
import assert from 'node:assert/strict';
import { balanceOf, priceOf, standinCall, student } from '../support/ai.ts';
import { assertLedgerInvariants, key, spawnGateway, testDb, until } from '../support/helpers.ts';

Deno.test('a job answer with a NUL and a lone surrogate is charged what the provider billed and delivered', async () => {
  const s = await student('10');
  const tag = crypto.randomUUID().replaceAll('-', '');
  const gw = spawnGateway({ AI_PROVIDER: 'openai' }); // to the stand-in provider (AI_API_BASE)
  try {
    await gw.ready();
    const input = { model: 'gpt-4o', prompt: `say it #standin words=2 unusual tag=${tag}`, max_tokens: 50 };
    const created = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({ type: 'ai_completion', input }),
    });
    assert.equal(created.status, 202);
    const id = (await created.json()).data.job_id as string;
    const job = await until('the job finished', async () => {
      const [j] = await testDb`select status, result, error from billing.jobs where id = ${id}`;
      return j && ['completed', 'failed'].includes(j.status) && j;
    }, 30_000);
    assert.equal(job.status, 'completed', JSON.stringify(job.error));
    assert.equal(job.result.text, ' word1 word2 nul\uFFFD lone\uFFFD');
    const answered = await standinCall(tag);
    const [charge] = await testDb`select trim_scale(t.amount)::text as amount from billing.transfers t
      join billing.jobs j on j.hold_id = t.hold_id where j.id = ${id} and t.kind = 'hold_capture'`;
    assert.equal(charge?.amount, await priceOf('gpt-4o', answered.usage!));
    const [{ left }] = await testDb`select trim_scale(10 - ${charge.amount}::numeric)::text as left`;
    assert.equal(await balanceOf(s.id), left, 'charged once, nothing else');
  } finally {
    await gw.kill();
  }
  await assertLedgerInvariants();
});
