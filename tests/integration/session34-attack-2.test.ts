// Attack round 11 (helper-12) on the fix of round 10 (#55): disputes ranked by age against a
// call's or job's hold (billing.hold_classes, billing.give_way_unpayable) and what a job could not
// charge now owed (billing.pay_ai_owed, job-owed:<job>). Outside tester: a student's token; admin
// grants, purchases and disputes (Stripe emulator) only as setup; the database for reading (and
// for time passing: backdated lots and jobs). Each scenario asserts exact amounts, then the core's
// invariants.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  backdateLot,
  key,
  newUser,
  reportUsage,
  spawnGateway,
  testDb,
  until,
  untilJobRunning,
  userToken,
} from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import { chat, coreInvariants, figures } from '../support/disputed.ts';
import { grantLot } from '../support/lots.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { person, school } from '../support/orgs.ts';

type Json = Record<string, unknown>;
const codeOf = (r: { body: Json }) => (r.body.error as { code?: string } | undefined)?.code;
const detailsOf = (r: { body: Json }) => (r.body.error as { details?: Json } | undefined)?.details ?? {};

/** An ai_completion job of `words` one-letter words for `model`: holds 2·words − 1 + 16 + max_tokens. */
const jobBody = (model: string, words = 20, max_tokens = 20) => ({
  type: 'ai_completion',
  input: { model, prompt: Array.from({ length: words }, () => 'a').join(' '), max_tokens },
});

/**
 * A student whose ai_completion job for `m` (20 one-letter words, max 20: holds 75, costs 40) ran
 * while their only credits (100 promotional, for any model) expired under it: the job completed
 * with 40 unbilled, now owed (session34-attack.test.ts, 1b). Balance 0.
 */
async function owedJob(m: string) {
  const id = await newUser();
  const token = await userToken(id);
  const lot = await grantLot(id, '100', 'promo_grant');
  assert.equal(lot.status, 201, lot.text);
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '2500' });
  await gw.ready();
  let jobId: string;
  try {
    const res = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify(jobBody(m)),
    });
    assert.equal(res.status, 202);
    jobId = ((await res.json()).data as { job_id: string }).job_id;
    await untilJobRunning(gw.url, jobId);
    await backdateLot((lot.body.data as { lot_id: string }).lot_id);
    await testDb`select billing.expire_lots(500)`;
    await until('the job finished', async () => {
      const [j] = await testDb`select j.status from billing.jobs j where j.id = ${jobId}`;
      return ['completed', 'failed', 'cancelled'].includes(j.status);
    }, 60_000);
  } finally {
    await gw.kill();
  }
  const [j] = await testDb`select j.status, trim_scale(j.unbilled)::text as unbilled, j.owed_transfer_id
    from billing.jobs j where j.id = ${jobId}`;
  assert.deepEqual({ ...j }, { status: 'completed', unbilled: '40', owed_transfer_id: null });
  assert.equal((await figures(id)).balance, '0');
  return { id, token, jobId };
}

/** The transfers that paid job `jobId`'s rest: key, amount. */
const owedPayments = (jobId: string) =>
  testDb`select t.idempotency_key as key, trim_scale(t.amount)::text as amount, t.metadata ->> 'model' as model
    from billing.transfers t where t.idempotency_key like ${'%owed:' + jobId}`;

// ============================================================ 1. the owed job paid exactly once

Deno.test({
  name:
    "a job's owed rest raced by eight gateway calls and four jobs at once is paid exactly once, from the student's credits, and every one of them goes ahead",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const { id, token, jobId } = await owedJob(m);
  assert.equal((await grantLot(id, '1000', 'promo_grant')).status, 201);
  const rs = await Promise.all([
    ...Array.from({ length: 8 }, (_, i) => chat(token, m, `words=5 first_byte_delay=${10 * i}`, 10)),
    ...Array.from({ length: 4 }, () => api('/jobs', { token, headers: key(), body: jobBody(m, 5, 5) })),
  ]);
  assert.deepEqual(
    rs.map((r) => r.status),
    [...Array(8).fill(200), ...Array(4).fill(202)],
    rs.map((r) => r.text).join('\n'),
  );
  await until('every call and job settled', async () => {
    const [r] = await testDb`select
      (select count(*)::int from billing.ai_calls where user_id = ${id} and status = 'held') as calls,
      (select count(*)::int from billing.jobs where user_id = ${id} and status not in ('completed', 'failed', 'cancelled')) as jobs`;
    return r.calls === 0 && r.jobs === 0;
  }, 60_000);
  const paid = await owedPayments(jobId);
  const [j] = await testDb`select j.owed_transfer_id from billing.jobs j where j.id = ${jobId}`;
  const [{ spent }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as spent from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${id} and t.kind in ('usage', 'hold_capture') and t.metadata ->> 'owed' is null`;
  const f = await figures(id);
  assert.deepEqual(
    { paid: paid.map((p) => ({ ...p })), linked: j.owed_transfer_id !== null, balance: f.balance, held: f.held },
    {
      paid: [{ key: `job-owed:${jobId}`, amount: '40', model: m }],
      linked: true,
      balance: String(1000 - 40 - Number(spent)),
      held: '0',
    },
  );
  await coreInvariants([id]);
});

// ============================================================ 2. the owed job and credits for other models

Deno.test({
  name:
    "a job's owed rest for model m is never paid by credits for another model: a call for m2 on credits for m2 only is refused 402 unbilled_usage (no balance in it); credits for any model then pay it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const [m, m2] = [await creditPerToken(), await creditPerToken()];
  const { id, token, jobId } = await owedJob(m);
  assert.equal((await grantLot(id, '500', 'promo_grant', { applies_to: [m2] })).status, 201);
  const call = await chat(token, m2, 'words=5', 10);
  const job = await api('/jobs', { token, headers: key(), body: jobBody(m2, 5, 5) });
  const refused = [call, job].map((r) => ({
    status: r.status,
    code: codeOf(r),
    reason: detailsOf(r).reason,
    owed: detailsOf(r).owed,
    available: detailsOf(r).available,
  }));
  const ref = { status: 402, code: 'INSUFFICIENT_CREDITS', reason: 'unbilled_usage', owed: '40', available: undefined };
  assert.deepEqual(refused, [ref, ref], `${call.text}\n${job.text}`);
  assert.deepEqual((await owedPayments(jobId)).length, 0);
  const stuck = await figures(id);
  assert.deepEqual({ balance: stuck.balance, for_some: stuck.for_some, held: stuck.held }, {
    balance: '500',
    for_some: '500',
    held: '0',
  });
  // 100 for any model: the next call for m2 pays the 40 from them, and itself from the credits for m2.
  assert.equal((await grantLot(id, '100', 'promo_grant')).status, 201);
  const next = await chat(token, m2, 'words=5', 10);
  assert.equal(next.status, 200, next.text);
  const [c] = await testDb`select trim_scale(charged)::text as charged from billing.ai_calls
    where user_id = ${id} and status = 'charged'`;
  const f = await figures(id);
  assert.deepEqual(
    { paid: (await owedPayments(jobId)).map((p) => ({ ...p })), for_any: f.for_any, for_some: f.for_some },
    {
      paid: [{ key: `job-owed:${jobId}`, amount: '40', model: m }],
      for_any: '60',
      for_some: String(500 - Number(c.charged)),
    },
  );
  await coreInvariants([id]);
});

// ============================================================ 3. an owed job past its expiry

Deno.test({
  name:
    'a job still owed cannot be cancelled away, is kept past its expiry (expire_jobs), paid by the next call, then deleted at the next sweep',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const { id, token, jobId } = await owedJob(m);
  // The student cannot make it go away: a finished job is not cancelled (nor deleted).
  const dodge = await api(`/jobs/${jobId}`, { token, method: 'DELETE' });
  assert.deepEqual({ status: dodge.status, code: codeOf(dodge) }, { status: 409, code: 'JOB_FINISHED' });
  await testDb`update billing.jobs set expires_at = now() - interval '1 second' where id = ${jobId}`;
  await testDb`select billing.expire_jobs(500)`;
  assert.equal((await testDb`select 1 from billing.jobs where id = ${jobId}`).length, 1);
  assert.equal((await grantLot(id, '100', 'promo_grant')).status, 201);
  const call = await chat(token, m, 'words=5', 10);
  assert.equal(call.status, 200, call.text);
  await testDb`select billing.expire_jobs(500)`;
  const [c] = await testDb`select trim_scale(charged)::text as charged from billing.ai_calls
    where user_id = ${id} and status = 'charged'`;
  assert.deepEqual(
    {
      kept: (await testDb`select 1 from billing.jobs where id = ${jobId}`).length,
      paid: (await owedPayments(jobId)).map((p) => p.amount),
      balance: (await figures(id)).balance,
    },
    { kept: 0, paid: ['40'], balance: String(60 - Number(c.charged)) },
  );
  await coreInvariants([id]);
});

// ============================================================ 4. a call held before the dispute opened, on lists

/**
 * A student who bought 5,000 credits and spent 4,995 of them on another model, then got 5,000
 * promotional credits for any model (priority 30) and 100 for model m only (a school's, priority
 * 40): 5,005 for any model, 100 for m.
 */
async function listStudent() {
  const m = await creditPerToken();
  const other = await creditPerToken();
  const id = await newUser();
  const token = await userToken(id);
  const p = await buy(token, 'mini');
  await until('paid', async () => (await figures(id))?.balance === '5000');
  const spent = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: other, input_tokens: 4995, output_tokens: 0 },
  });
  assert.equal(spent.status, 201, spent.text);
  assert.equal((await grantLot(id, '5000', 'promo_grant', { priority: 30 })).status, 201);
  const lot = await grantLot(id, '100', 'promo_grant', { priority: 40, applies_to: [m] });
  assert.equal(lot.status, 201, lot.text);
  return { m, id, token, session: p.session_id };
}

Deno.test("a gateway call held just before a dispute opened is captured from the credits for its model, not from the dispute's cover, when they can pay it: the lost dispute leaves no debt", async () => {
  const { m, id, token, session } = await listStudent();
  // A slow call for m: held (111) before the dispute, from the 5,005 for any model or the 100 for m.
  const call = chat(token, m, 'words=30 first_byte_delay=3000', 40);
  await until('the call held', async () => {
    const [h] = await testDb`select h.id from billing.holds h join billing.ai_calls c on c.hold_id = h.id
      where c.user_id = ${id} and h.status = 'active'`;
    return h;
  });
  // The student's bank opens the chargeback while the call runs: 5,000 frozen in credits for any model.
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'open' });
  await until('the dispute held', async () => {
    const [r] =
      await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
      where a.user_id = ${id} and h.purpose = 'dispute' and h.status = 'active'`;
    return r.n === 1;
  });
  assert.equal((await call).status, 200);
  const c = await until('the call charged', async () => {
    const [x] =
      await testDb`select c.status, trim_scale(c.charged)::text as charged, c.transfer_id from billing.ai_calls c
      where c.user_id = ${id}`;
    return x.status === 'charged' && x;
  });
  const drawn = await testDb`select case when l.applies_to is null then 'for_any' else 'for_m' end as from,
      trim_scale(sum(x.amount))::text as amount
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id where x.transfer_id = ${c.transfer_id}
    group by 1 order by 1`;
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'lost' });
  const end = await until('the dispute lost', async () => {
    const f = await figures(id);
    return f.held === '0' && f;
  });
  // The call cost about 60: the 5 for any model the dispute leaves, then the 100 for m, pay it
  // whole. Taking it from the 5,000 for any model instead (the spending order, priority 30 before
  // 40) spends the dispute's cover: the lost dispute then takes 5,000 from 4,945 and leaves a
  // debt of 55 that the school's credits for m net.
  const spent = Number(c.charged);
  assert.ok(spent > 5 && spent <= 105, c.charged);
  assert.deepEqual(
    {
      drawn: drawn.map((d) => ({ ...d })),
      end: { balance: end.balance, for_any: end.for_any, for_some: end.for_some, in_debt: end.in_debt },
    },
    {
      drawn: [{ from: 'for_any', amount: '5' }, { from: 'for_m', amount: String(spent - 5) }],
      end: { balance: String(105 - spent), for_any: '0', for_some: String(105 - spent), in_debt: false },
    },
    JSON.stringify({ end, charged: c.charged }),
  );
  await coreInvariants([id]);
});

// ============================================================ 5. a running job cancelled

Deno.test({
  name:
    "a job's owed rest is never paid from a dispute's cover: with 5,000 frozen and 30 spare, the next call is refused 402 unbilled_usage; the lost dispute takes its 5,000 and leaves no debt",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const { id, token, jobId } = await owedJob(m);
  const p = await buy(token, 'mini');
  await until('paid', async () => (await figures(id))?.balance === '5000');
  await emulator(`/_emulator/charges/${await chargeOf(p.session_id)}/dispute`, { outcome: 'open' });
  await until('the dispute held', async () => (await figures(id)).held === '5000');
  assert.equal((await grantLot(id, '30', 'promo_grant')).status, 201);
  const call = await chat(token, m, 'words=5', 10);
  const job = await api('/jobs', { token, headers: key(), body: jobBody(m, 5, 5) });
  assert.deepEqual(
    [call, job].map((r) => ({ status: r.status, reason: detailsOf(r).reason, owed: detailsOf(r).owed })),
    [{ status: 402, reason: 'unbilled_usage', owed: '40' }, { status: 402, reason: 'unbilled_usage', owed: '40' }],
    `${call.text}\n${job.text}`,
  );
  assert.equal((await owedPayments(jobId)).length, 0);
  await emulator(`/_emulator/charges/${await chargeOf(p.session_id)}/dispute`, { outcome: 'lost' });
  const end = await until('the dispute lost', async () => {
    const f = await figures(id);
    return f.held === '0' && f;
  });
  assert.deepEqual({ balance: end.balance, in_debt: end.in_debt }, { balance: '30', in_debt: false });
  await coreInvariants([id]);
});

Deno.test({
  name:
    "a metered job running when a dispute opened is charged from the credits for its model, not from the dispute's cover, when they can pay it: the lost dispute leaves no debt",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const { m, id, token, session } = await listStudent();
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '1500' });
  await gw.ready();
  let jobId = '';
  try {
    // 20 one-letter words for m: holds 75, costs 40; the model answers slowly.
    const res = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify(jobBody(m)),
    });
    assert.equal(res.status, 202);
    jobId = ((await res.json()).data as { job_id: string }).job_id;
    await untilJobRunning(gw.url, jobId);
    await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'open' });
    await until('the job finished', async () => {
      const [j] = await testDb`select status from billing.jobs where id = ${jobId}`;
      return ['completed', 'failed', 'cancelled'].includes(j.status);
    }, 60_000);
  } finally {
    await gw.kill();
  }
  const [job] = await testDb`select j.status, h.capture_transfer_id, trim_scale(h.captured_amount)::text as captured
    from billing.jobs j join billing.holds h on h.id = j.hold_id where j.id = ${jobId}`;
  const drawn = await testDb`select case when l.applies_to is null then 'for_any' else 'for_m' end as from,
      trim_scale(sum(x.amount))::text as amount
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id where x.transfer_id = ${job.capture_transfer_id}
    group by 1 order by 1`;
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'lost' });
  const end = await until('the dispute lost', async () => {
    const f = await figures(id);
    return f.held === '0' && f;
  });
  assert.deepEqual(
    {
      status: job.status,
      captured: job.captured,
      drawn: drawn.map((d) => ({ ...d })),
      end: { balance: end.balance, for_any: end.for_any, for_some: end.for_some, in_debt: end.in_debt },
    },
    {
      status: 'completed',
      captured: '40',
      drawn: [{ from: 'for_any', amount: '5' }, { from: 'for_m', amount: '35' }],
      end: { balance: '65', for_any: '0', for_some: '65', in_debt: false },
    },
    JSON.stringify({ end }),
  );
  await coreInvariants([id]);
});

// ============================================================ 7. an owed job held by a school's pool

Deno.test({
  name:
    "a member's job whose hold on the school's pool gave way owes its rest to the pool: the member's next call is refused 402 unbilled_usage without a figure of the pool; credits for the pool pay it, never the member's own",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', null);
  const granted = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount: '100', reason: 'pilot' },
  });
  assert.equal(granted.status, 201, granted.text);
  // Ada's own 500 credits: never the pool's debts' payer.
  assert.equal((await grantLot(ada.id, '500', 'promo_grant')).status, 201);
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '2500' });
  await gw.ready();
  let jobId = '';
  try {
    const res = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ada.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify(jobBody(m)),
    });
    assert.equal(res.status, 202);
    jobId = ((await res.json()).data as { job_id: string }).job_id;
    await untilJobRunning(gw.url, jobId);
    // The pool's credits expire under the job.
    const [lot] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
      where a.org_id = ${org} and a.member_id is null and l.open`;
    await backdateLot(lot.id);
    await testDb`select billing.expire_lots(500)`;
    await until('the job finished', async () => {
      const [j] = await testDb`select status from billing.jobs where id = ${jobId}`;
      return ['completed', 'failed', 'cancelled'].includes(j.status);
    }, 60_000);
  } finally {
    await gw.kill();
  }
  const [j] = await testDb`select j.status, trim_scale(j.unbilled)::text as unbilled, a.org_id
    from billing.jobs j join billing.holds h on h.id = j.hold_id join billing.accounts a on a.id = h.account_id
    where j.id = ${jobId}`;
  assert.deepEqual({ ...j }, { status: 'completed', unbilled: '40', org_id: org });
  const call = await chat(ada.token, m, 'words=5', 10);
  assert.equal(call.status, 402, call.text);
  const refusal = { code: codeOf(call), details: detailsOf(call) };
  assert.equal((await figures(ada.id)).balance, '500');
  // The pool is granted 100: Ada's next call pays the 40 from it, and is itself paid by it.
  const more = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount: '100', reason: 'pilot' },
  });
  assert.equal(more.status, 201, more.text);
  const next = await chat(ada.token, m, 'words=5', 10);
  assert.equal(next.status, 200, next.text);
  const [c] = await testDb`select trim_scale(charged)::text as charged from billing.ai_calls
    where user_id = ${ada.id} and status = 'charged'`;
  const [pool] = await testDb`select trim_scale(balance)::text as balance from billing.accounts
    where org_id = ${org} and member_id is null`;
  assert.deepEqual(
    {
      paid: (await owedPayments(jobId)).map((p) => p.amount),
      pool: pool.balance,
      own: (await figures(ada.id)).balance,
    },
    { paid: ['40'], pool: String(100 - 40 - Number(c.charged)), own: '500' },
  );
  await coreInvariants([ada.id]);
  // Ada's refusal said nothing of the pool: not its balance, and not whether it is in debt (a
  // pool's refusal from billing.restricted_draw leaves `debt` out; this one, from the writer's
  // spend_refusal through post_user_transfer, adds the pool's in_debt).
  assert.deepEqual(refusal, {
    code: 'INSUFFICIENT_CREDITS',
    details: { required: '40', reason: 'unbilled_usage', owed: '40' },
  });
});
