// Bulk corrections (POST /admin/corrections): previewed, then one idempotent run in batches that
// survives a crash halfway and reaches charges made while it runs, voiding each charge once.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  fund,
  newUser,
  reportUsage,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';

// A model of its own per test: runs filter by model, and other tests' charges must not match.
async function model(): Promise<string> {
  const name = `outage-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
               values (${name}, 1, 5, 15, 4, '2026-01-01')`;
  return name;
}

async function student(credits = '1000') {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}

/** `credits` of `m` (50 input tokens = 1 credit), reported by the server for `token`'s user. */
async function use(token: string, m: string, credits: number) {
  const r = await reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: m, input_tokens: credits * 50, output_tokens: 0 },
  });
  assert.equal(r.status, 201, r.text);
  return dataOf(r).transfer_id as string;
}

/** A streamed gateway call of `m` whose provider fails after reporting usage; what it charged. */
async function gatewayCallThatFails(token: string, m: string): Promise<string> {
  const res = await fetch(`${env('SUPABASE_URL')}/functions/v1/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: m,
      messages: [{ role: 'user', content: '#standin words=5 error_after_usage' }],
      max_tokens: 20,
      stream: true,
    }),
  });
  assert.equal(res.status, 200);
  await res.text();
  const [c] = await until('the call is settled', async () => {
    const rows = await testDb`select trim_scale(charged)::text as charged, status from billing.ai_calls
      where model = ${m} and status = 'charged'`;
    return rows.length ? rows : undefined;
  });
  return c.charged;
}

const start = (admin: string, key: string, body: Record<string, unknown>) =>
  api('/admin/corrections', { token: admin, headers: { 'idempotency-key': key }, body });

// A run completes only 10 s after its `to`: poll twice a second, under the admin's 100/min limit.
async function finish(admin: string, id: string) {
  return await until('the run completes', async () => {
    await new Promise((r) => setTimeout(r, 500));
    const r = await api(`/admin/corrections/${id}/continue`, { token: admin, body: { batch: 2 } });
    assert.equal(r.status, 200, r.text);
    return dataOf(r).status === 'completed' ? dataOf(r) : undefined;
  }, 30_000);
}

const balance = async (token: string) => dataOf(await api('/credits/balance', { token })).balance;

Deno.test('a bulk correction is previewed (count, credits, who), then voids exactly those charges once', async () => {
  const m = await model();
  const [a, b] = [await student(), await student()];
  const from = new Date(Date.now() - 1000).toISOString();
  await use(a.token, m, 10);
  // Only the AI gateway marks a charge failed: a reporter's metadata cannot (400, nothing charged).
  const flagged = await reportUsage('/credits/usage', {
    token: a.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: m, input_tokens: 5 * 50, output_tokens: 0, metadata: { failed: true } },
  });
  assert.deepEqual([flagged.status, codeOf(flagged)], [400, 'VALIDATION_FAILED'], flagged.text);
  // A call the gateway recorded as failed: the provider reported usage, then the stream failed.
  const failedCall = await gatewayCallThatFails(a.token, m);
  await use(b.token, m, 7);
  await use(b.token, 'gpt-4o', 3);
  await new Promise((r) => setTimeout(r, 20));
  const to = new Date().toISOString();
  const admin = await adminToken();

  const failed = await api('/admin/corrections/preview', {
    token: admin,
    body: { model: m, from, to, failed_only: true },
  });
  assert.equal(failed.status, 200, failed.text);
  assert.deepEqual([dataOf(failed).charges, dataOf(failed).credits], [1, failedCall]);
  const [{ total }] = await testDb`select trim_scale(17 + ${failedCall}::numeric)::text as total`;
  const all = await api('/admin/corrections/preview', { token: admin, body: { model: m, from, to } });
  const p = dataOf(all);
  assert.deepEqual([p.charges, p.credits, p.users, p.orgs], [3, total, 2, 0]);
  assert.deepEqual((p.top_users as { user_id: string }[]).map((u) => u.user_id), [a.id, b.id]);

  const key = crypto.randomUUID();
  const body = { model: m, from, to, reason: 'provider outage' };
  const r = await start(admin, key, body);
  assert.equal(r.status, 201, r.text);
  const run = dataOf(r);
  assert.deepEqual([run.voided, run.credits], [3, total]);
  const replay = await start(admin, key, body);
  assert.deepEqual([replay.status, dataOf(replay).id, dataOf(replay).replayed], [200, run.id, true]);
  const reused = await start(admin, key, { ...body, failed_only: true });
  assert.deepEqual([reused.status, codeOf(reused)], [409, 'IDEMPOTENCY_KEY_REUSED']);

  const done = await finish(admin, run.id as string);
  assert.deepEqual([done.voided, done.credits], [3, total]);
  assert.deepEqual([await balance(a.token), await balance(b.token)], ['1000', '997']);
  const got = await api(`/admin/corrections/${run.id}`, { token: admin });
  assert.equal(dataOf(got).status, 'completed');
  const after = await api('/admin/corrections/preview', { token: admin, body: { model: m, from, to } });
  assert.equal(after.status, 200, after.text);
  assert.deepEqual([dataOf(after).charges, dataOf(after).already_voided], [0, 3]);
  await assertLedgerInvariants();
});

Deno.test('a run that crashes halfway resumes without voiding any charge twice', async () => {
  const m = await model();
  const s = await student();
  const from = new Date(Date.now() - 1000).toISOString();
  for (let i = 0; i < 5; i++) await use(s.token, m, 2);
  const to = new Date().toISOString();
  const admin = await newUser();
  await testDb`update auth.users set raw_app_meta_data = '{"role": "admin"}' where id = ${admin}`;
  const [{ run }] = await testDb`select billing.start_correction_run(${admin}, ${crypto.randomUUID()}, ${m},
    ${from}::timestamptz, ${to}::timestamptz, false, 'outage') as run`;

  // A batch that dies before it commits: its server process is killed in the middle of the transaction.
  const app = `crash-${crypto.randomUUID().slice(0, 8)}`;
  const batch = new Deno.Command('psql', {
    args: [
      env('SUPABASE_DB_URL'),
      '-c',
      `begin; select billing.process_correction_run('${run.id}', 3); select pg_sleep(60);`,
    ],
    env: { PGAPPNAME: app },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  await until('the batch is under way', async () => {
    const [x] =
      await testDb`select pid from pg_stat_activity where application_name = ${app} and query like '%pg_sleep%'`;
    return x;
  });
  await testDb`select pg_terminate_backend(pid) from pg_stat_activity where application_name = ${app}`;
  await batch.status;
  const [{ n }] = await testDb`select count(*)::int as n from billing.charge_voids where run_id = ${run.id}`;
  assert.equal(n, 0, 'the batch rolled back whole');

  // One batch commits, then the rest.
  await testDb`select billing.process_correction_run(${run.id}::uuid, 2)`;
  const token = await userToken(admin, { admin: true });
  const done = await finish(token, run.id);
  assert.deepEqual([done.voided, done.credits], [5, '10']);
  const [{ voids }] = await testDb`select count(*)::int as voids from billing.transfers t
    where t.kind = 'void' and t.to_account_id = (select id from billing.accounts where user_id = ${s.id})`;
  assert.equal(voids, 5);
  assert.equal(await balance(s.token), '1000');
  await assertLedgerInvariants();
});

Deno.test('a range corrected while it is being charged: every charge in it voided once, none after it', async () => {
  const m = await model();
  const s = await student('1000');
  const from = new Date(Date.now() - 1000).toISOString();
  const admin = await adminToken();
  let to = '';
  let runId = '';
  // Charges keep arriving while the run is started and its batches run.
  const charging = (async () => {
    for (let i = 0; i < 30; i++) await use(s.token, m, 1);
  })();
  await until('some charges', async () => {
    const [{ n }] = await testDb`select count(*)::int as n from billing.transfers where metadata ->> 'model' = ${m}`;
    return n >= 10;
  });
  to = new Date().toISOString();
  const r = await start(admin, crypto.randomUUID(), { model: m, from, to, reason: 'outage' });
  assert.equal(r.status, 201, r.text);
  runId = dataOf(r).id as string;
  await api(`/admin/corrections/${runId}/continue`, { token: admin, body: { batch: 3 } });
  await charging;
  const done = await finish(admin, runId);
  const [c] = await testDb`
    select count(*) filter (where t.created_at < ${to}::timestamptz)::int as inside,
           count(*) filter (where t.created_at < ${to}::timestamptz and v.charge_id is not null)::int as inside_voided,
           count(*) filter (where t.created_at >= ${to}::timestamptz and v.charge_id is not null)::int as after_voided
    from billing.transfers t left join billing.charge_voids v on v.charge_id = t.id
    where t.kind = 'usage' and t.metadata ->> 'model' = ${m}`;
  assert.equal(c.inside_voided, c.inside);
  assert.equal(c.after_voided, 0);
  assert.equal(done.voided, c.inside);
  assert.equal(await balance(s.token), String(1000 - (30 - c.inside)));
  await assertLedgerInvariants();
});

Deno.test('corrections refuse what they should: students, unknown runs, future ranges, a missing key', async () => {
  const s = await student('10');
  const body = { model: 'gpt-4o', from: '2026-01-01T00:00:00Z', to: '2026-01-02T00:00:00Z', reason: 'x' };
  const student403 = await start(s.token, 'k', body);
  assert.deepEqual([student403.status, codeOf(student403)], [403, 'FORBIDDEN']);
  const admin = await adminToken();
  const unknown = await api(`/admin/corrections/${crypto.randomUUID()}`, { token: admin });
  assert.deepEqual([unknown.status, codeOf(unknown)], [404, 'CORRECTION_NOT_FOUND']);
  const bad = await api('/admin/corrections/not-a-uuid', { token: admin });
  assert.deepEqual([bad.status, codeOf(bad)], [404, 'CORRECTION_NOT_FOUND']);
  const future = await start(admin, crypto.randomUUID(), {
    ...body,
    to: new Date(Date.now() + 3_600_000).toISOString(),
  });
  assert.deepEqual([future.status, codeOf(future)], [400, 'INVALID_RANGE']);
  const reversed = await start(admin, crypto.randomUUID(), { ...body, from: body.to, to: body.from });
  assert.equal(reversed.status, 400, reversed.text);
  const noKey = await api('/admin/corrections', { token: admin, body });
  assert.deepEqual([noKey.status, codeOf(noKey)], [400, 'IDEMPOTENCY_KEY_REQUIRED']);
  const [{ n }] = await testDb`select count(*)::int as n from billing.correction_runs where requested_by in
    (select id from auth.users where id = ${s.id})`;
  assert.equal(n, 0);
});
