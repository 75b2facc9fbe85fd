// An ai_completion job keeps its prompt and answer (redacted, in billing.ai_logs, 30 days) by the
// gateway's one consent rule: the student's, or the paying school's, read when the job is queued
// and again when it completes. Nothing in the job's input can ask for more; withdrawal and
// per-call deletion reach a job's kept content; the student reads it in the call log. What a job
// runs on and delivers (jobs.input, jobs.result) goes with its 24 hours, whatever it cost: what
// it cost is on the ledger.
import assert from 'node:assert/strict';
import { api, finishedJob, fund, key, newUser, testDb, tick, userToken } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

// deno-lint-ignore no-explicit-any
const data = (r: { body: Record<string, unknown> }) => r.body.data as any;
const marker = () => `kept${crypto.randomUUID().replaceAll('-', '')}`;

async function funded() {
  const id = await newUser();
  await fund(id, '10');
  return { id, token: await userToken(id) };
}

/** Queues an ai_completion job (input as given) and runs it to its end; its id. */
async function runJob(token: string, input: Record<string, unknown>): Promise<string> {
  const r = await api('/jobs', { token, headers: key(), body: { type: 'ai_completion', input } });
  assert.equal(r.status, 202, r.text);
  const id = data(r).job_id as string;
  await tick();
  const j = await finishedJob(id);
  assert.equal(j.status, 'completed');
  return id;
}

const ask = (prompt: string) => ({ model: 'gpt-4o', prompt, max_tokens: 20 });
const consent = (token: string, keep: boolean) =>
  api('/ai/v1/content-consent', { method: 'PUT', token, body: { keep_content: keep } });

/** Every ai_logs row whose text holds `m`. */
const logsHolding = async (m: string) => [
  ...await testDb`select job_id, consent_level from billing.ai_logs
                  where prompt_redacted like ${'%' + m + '%'} or response_redacted like ${'%' + m + '%'}`,
];

Deno.test('consent_level in a job input is refused 400, as any unknown field, and no job is made', async () => {
  const s = await funded();
  for (const extra of [{ consent_level: 'content' }, { keep_content: true }]) {
    const r = await api('/jobs', {
      token: s.token,
      headers: key(),
      body: { type: 'ai_completion', input: { ...ask('hi'), ...extra } },
    });
    assert.equal(r.status, 400, r.text);
    const error = r.body.error as { code: string; field: string; message: string };
    assert.deepEqual([error.code, error.field], ['VALIDATION_FAILED', 'input']);
    assert.ok(error.message.includes(Object.keys(extra)[0]), error.message);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('a job of a student who never consented keeps no prompt or answer in ai_logs', async () => {
  const s = await funded();
  const m = marker();
  const id = await runJob(s.token, ask(`hello ${m} world`));
  assert.deepEqual(await logsHolding(m), []);
  const [log] =
    await testDb`select consent_level, input_tokens > 0 as counted from billing.ai_logs where job_id = ${id}`;
  assert.deepEqual({ ...log }, { consent_level: 'none', counted: true }, 'the counts are logged, not the text');
  const seen = await api(`/ai/v1/calls/${id}`, { token: s.token });
  assert.equal(seen.status, 200, seen.text);
  assert.deepEqual([data(seen).endpoint, data(seen).content_kept, data(seen).content], ['job', false, null]);
});

Deno.test('a consenting student reads a job content in the call log, and deleting it reaches the job', async () => {
  const s = await funded();
  await consent(s.token, true);
  const m = marker();
  const id = await runJob(s.token, ask(`mail ada.lovelace@example.com ${m}`));
  const seen = await api(`/ai/v1/calls/${id}`, { token: s.token });
  assert.equal(seen.status, 200, seen.text);
  const content = data(seen).content as { prompt: string; answer: string };
  assert.ok(content.prompt.includes(m) && content.prompt.includes('[EMAIL]'), content.prompt);
  assert.ok(!content.prompt.includes('ada.lovelace@example.com'), 'redacted');
  assert.ok(content.answer.includes(m), content.answer);
  const other = await funded();
  assert.equal((await api(`/ai/v1/calls/${id}`, { token: other.token })).status, 404, "another student's job");
  assert.equal((await api(`/ai/v1/calls/${id}/content`, { method: 'DELETE', token: other.token })).status, 404);

  const deleted = await api(`/ai/v1/calls/${id}/content`, { method: 'DELETE', token: s.token });
  assert.equal(deleted.status, 200, deleted.text);
  assert.deepEqual(await logsHolding(m), []);
  const [job] = await testDb`select input, result from billing.jobs where id = ${id}`;
  assert.deepEqual([job.input, job.result], [{}, null], "the finished job's input and result are gone too");
  assert.equal(data(await api(`/ai/v1/calls/${id}`, { token: s.token })).content, null);
  assert.equal((await api(`/ai/v1/calls/${id}/content`, { method: 'DELETE', token: s.token })).status, 200, 'twice');
});

Deno.test("withdrawing consent deletes a job's kept content at once", async () => {
  const s = await funded();
  await consent(s.token, true);
  const m = marker();
  const id = await runJob(s.token, ask(`note ${m}`));
  assert.equal((await logsHolding(m)).length, 1);
  assert.equal((await consent(s.token, false)).status, 200);
  assert.deepEqual(await logsHolding(m), []);
  assert.equal(data(await api(`/ai/v1/calls/${id}`, { token: s.token })).content_kept, false);
});

Deno.test('a job queued under consent that is withdrawn before it ends keeps nothing, whichever ends first', async () => {
  const s = await funded();
  await consent(s.token, true);
  const m = marker();
  const r = await api('/jobs', {
    token: s.token,
    headers: key(),
    body: { type: 'ai_completion', input: ask(`late ${m}`) },
  });
  assert.equal(r.status, 202, r.text);
  const id = data(r).job_id as string;
  await consent(s.token, false);
  await tick();
  assert.equal((await finishedJob(id)).status, 'completed');
  assert.deepEqual(await logsHolding(m), []);
});

Deno.test("a school's consent keeps the content of the jobs it pays for, and its withdrawal deletes it", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const patched = await api(`/orgs/${org}`, {
    method: 'PATCH',
    token: owner.token,
    body: { ai_content_consent: true },
  });
  assert.equal(patched.status, 200, patched.text);
  const m = marker();
  const id = await runJob(ada.token, ask(`pooled ${m}`));
  const [log] = await logsHolding(m);
  assert.equal(log?.job_id, id, 'kept under the school consent');
  assert.equal(data(await api(`/ai/v1/calls/${id}`, { token: ada.token })).org_id, org);
  await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: false } });
  assert.deepEqual(await logsHolding(m), []);
});

Deno.test('a job that cost more than its hold (the excess charged at once, into debt) goes whole with its input and result when its 24 hours end, and its debt stays on the balance', async () => {
  const id = await newUser();
  await fund(id, '0.01');
  const m = marker();
  // A hold of 0.01 under a job that costs more: the provider's bill past it is charged when the
  // job completes, past the balance as debt, so nothing about the job's money waits on its row.
  const [{ id: jobId }] = await testDb`select id from billing.enqueue_job(${id}, 'ai_completion',
    ${JSON.stringify(ask(`overran ${m}`))}::text::jsonb, ${crypto.randomUUID()}, null, 0.01)`;
  await tick();
  assert.equal((await finishedJob(jobId)).status, 'completed');
  const money = async () =>
    (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(h.captured_amount)::text as captured,
        (select trim_scale(t.amount)::text from billing.transfers t where t.idempotency_key = 'job-overage:' || ${jobId}::text)
          as overage
      from billing.accounts a join billing.holds h on h.account_id = a.id
      where a.user_id = ${id} and h.purpose = 'job'`)[0];
  const done = await money();
  assert.equal(done.captured, '0.01', JSON.stringify(done));
  assert.ok(Number(done.overage) > 0, JSON.stringify(done));
  assert.equal(done.balance, String(-Number(done.overage)), 'the excess past the 0.01 is debt');
  await testDb`update billing.jobs set expires_at = now() - interval '1 second' where id = ${jobId}`;
  await testDb`select billing.expire_jobs(500)`;
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs j where j.id = ${jobId}
    or j.input::text like ${'%' + m + '%'} or j.result::text like ${'%' + m + '%'}`;
  assert.equal(n, 0, 'the job, its input and its result are gone');
  assert.deepEqual(await money(), done, 'the ledger keeps what the job cost, the debt with it');
});
