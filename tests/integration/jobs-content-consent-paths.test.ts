// Consent is read when an ai_completion job is queued and again when it completes: a consent
// given only in between keeps nothing of that job (its student had not agreed when they sent it).
import assert from 'node:assert/strict';
import { api, finishedJob, fund, key, newUser, testDb, tick, userToken } from '../support/helpers.ts';

Deno.test('consent granted after a job was queued keeps nothing of that job', async () => {
  const id = await newUser();
  await fund(id, '10');
  const token = await userToken(id);
  const marker = `late${crypto.randomUUID().replaceAll('-', '')}`;
  const q = await api('/jobs', {
    token,
    headers: key(),
    body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: `hello ${marker}`, max_tokens: 20 } },
  });
  assert.equal(q.status, 202, q.text);
  const job = (q.body.data as { job_id: string }).job_id;
  const on = await api('/ai/v1/content-consent', {
    method: 'PUT',
    token,
    body: { keep_content: true },
  });
  assert.equal(on.status, 200, on.text);
  await tick();
  assert.equal((await finishedJob(job)).status, 'completed');
  const rows = await testDb`select consent_level from billing.ai_logs where job_id = ${job}
    and (prompt_redacted like ${'%' + marker + '%'} or response_redacted like ${'%' + marker + '%'})`;
  assert.equal(rows.length, 0, 'the prompt was kept under a consent given after the job was queued');
});
