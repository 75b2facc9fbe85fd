// Metered jobs and
// school allowances on accounts with many lists. Jobs run on a throw-away gateway whose local
// provider answers slowly (AI_LOCAL_CHUNK_DELAY_MS), so a job's hold is live while the attack
// runs. Outside tester: a student's token, a school the tester creates and its owner's token;
// admin grants, purchases and refunds (Stripe emulator) only as setup; the database for reading.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  key,
  newUser,
  spawnGateway,
  testDb,
  until,
  untilJobRunning,
  userToken,
} from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import { checkLots } from '../support/money.ts';
import { buy, chargeOf, deliverWithRetries, emulator } from '../support/purchases.ts';
import { chargeCredits as charge, grantLot, models, orgGrant, ownAccount } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';

type Json = Record<string, unknown>;

/**
 * An ai_completion job of `words` one-letter words (the local provider echoes them back, up to
 * max_tokens): it reserves (2·words − 1 bytes + 16) + max_tokens, and costs words + min(words, max).
 */
const jobBody = (model: string, words: number, max = words) => ({
  type: 'ai_completion',
  input: { model, prompt: Array.from({ length: words }, () => 'a').join(' '), max_tokens: max },
});
const reserveOf = (words: number, max = words) => 2 * words - 1 + 16 + max;
const priceOf = (words: number, max = words) => words + Math.min(words, max);

async function createJob(base: string, token: string, body: unknown) {
  const res = await fetch(`${base}/jobs`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'idempotency-key': crypto.randomUUID(),
      'content-type': 'application/json',
    },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() as Json };
}
const cancelJob = async (base: string, token: string, id: string) => {
  const res = await fetch(`${base}/jobs/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() as Json };
};

/** A job's hold now, and what its capture and its excess past the hold charged. */
async function jobMoney(id: string) {
  const [r] = await testDb`select j.status, h.status as hold_status,
      trim_scale(case when h.status in ('active', 'captured') then h.amount else 0 end)::text as held,
      coalesce(h.metadata ->> 'given_amount', '0') as given, h.metadata ->> 'given_to' as given_to,
      trim_scale(coalesce(h.captured_amount, 0))::text as captured,
      trim_scale(coalesce((select t.amount from billing.transfers t where t.idempotency_key = 'job-overage:' || j.id::text), 0))::text as overage,
      j.result -> 'usage' as usage
    from billing.jobs j left join billing.holds h on h.id = j.hold_id where j.id = ${id}`;
  return r as JobMoney;
}
interface JobMoney {
  status: string;
  hold_status: string | null;
  held: string;
  given: string;
  given_to: string | null;
  captured: string;
  overage: string;
  usage: unknown;
}
const charged = (m: { captured: string; overage: string }) =>
  Number((Number(m.captured) + Number(m.overage)).toFixed(9));

const done = (id: string) =>
  until('the job finished', async () => {
    const m = await jobMoney(id);
    return ['completed', 'failed', 'cancelled'].includes(m.status) && m;
  }, 60_000);

const state = async (accountId: string) =>
  (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where id = ${accountId}`)[0];

async function invariants() {
  await checkLots();
  await assertLedgerInvariants();
}

/** A slow provider: each of the local stand-in's 5 chunks waits `ms`. */
async function slowGateway(ms: number) {
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: String(ms) });
  await gw.ready();
  return gw;
}

// ============================================================ 3. a refund (no bound) under a dispute: a job's hold

// Its job must be seen running (its hold live) before the dispute (untilJobRunning: op sanitizers off).
Deno.test({
  name:
    'a dispute open over spent credits leaves a job for a model whose own list (40) is untouched above the balance: a 1¢ refund (10 credits) of another purchase leaves its hold what it reserved, and the job is charged its whole price',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const [m] = [await creditPerToken()];
  const zs = await models(21);
  const other = zs[20];
  const id = await newUser();
  const token = await userToken(id);
  const p1 = await buy(token, 'mini'); // 5,000 for any model
  const p2 = await buy(token, 'mini');
  const acct = await until('paid', async () => {
    const r =
      await testDb`select id::text from billing.accounts where user_id = ${id} and org_id is null and balance = 10000`;
    return r[0]?.id as string | undefined;
  });
  for (let i = 0; i < 20; i++) {
    assert.equal((await grantLot(id, '5', 'promo_grant', { applies_to: [zs[i]] })).status, 201);
  }
  assert.equal((await grantLot(id, '40', 'promo_grant', { applies_to: [m] })).status, 201);
  // 5,140 spent for any model (all of p1's lot, 140 of p2's): the balance 5,000, p1 still owes 5,000 if lost.
  assert.equal((await charge(token, other, 5140)).status, 201);
  assert.equal((await state(acct)).balance, '5000');
  const gw = await slowGateway(2500);
  try {
    const words = 20;
    const created = await createJob(gw.url, token, jobBody(m, words));
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const jobId = (created.body.data as { job_id: string }).job_id;
    await untilJobRunning(gw.url, jobId);
    const before = await jobMoney(jobId);
    assert.equal(before.held, String(reserveOf(words))); // 75
    const ch = await chargeOf(p1.session_id);
    const open = (await emulator(`/_emulator/charges/${ch}/dispute`, { outcome: 'open', deliver: false })).events;
    for (const e of open) assert.ok((await deliverWithRetries(e)).status < 300);
    const disputed = await state(acct);
    const refund = await api('/checkout/refunds', {
      token: await adminToken(),
      headers: key(),
      body: { purchase_id: p2.purchase_id, amount_cents: 1 },
    });
    assert.equal(refund.status, 202, refund.text);
    await until('refunded', async () => Number((await state(acct)).balance) === Number(disputed.balance) - 10);
    const after = await jobMoney(jobId);
    const end = await done(jobId);
    const figures = JSON.stringify({ before, disputed, after, end });
    // The refund took 10 free credits from the balance; the job's hold keeps all it reserved
    // (docs/credit-lots.md § Refunds, disputes and debt 1), and its price, 40, is captured from it,
    // nothing past it.
    assert.deepEqual(
      {
        status: end.status,
        held_after_refund: after.held,
        captured: end.captured,
        overage: end.overage,
        end: await state(acct),
      },
      {
        status: 'completed',
        held_after_refund: String(reserveOf(words)),
        captured: String(priceOf(words)),
        overage: '0',
        end: { balance: String(Number(disputed.balance) - 10 - priceOf(words)), held: '0' },
      },
      figures,
    );
  } finally {
    await gw.kill();
  }
  await invariants();
});

// ============================================================ 1. jobs on 12 lists racing charges, cancels and an expiry

/** POST /credits/usage of `credits` of a 1-credit-a-token model, as the product's server reports it. */
const chargeTokens = (token: string, model: string, credits: number) =>
  api('/credits/usage', {
    token: Deno.env.get('SUPABASE_SERVICE_ROLE_KEY'),
    headers: key(),
    body: {
      user_id: JSON.parse(atob(token.split('.')[1].replaceAll('-', '+').replaceAll('_', '/'))).sub,
      model,
      input_tokens: credits,
      output_tokens: 0,
    },
  });

Deno.test('six jobs on 12 lists (each list for its own model and a shared one) racing 90 charges for the shared model and two cancels, then an expiry under one job: every job is charged exactly its price, from its own list or, the list expired, as debt that a grant pays first; the shared model gets every credit no job needs', async () => {
  const ms = await Promise.all(Array.from({ length: 12 }, () => creditPerToken()));
  const [shared] = await models(1);
  const id = await newUser();
  for (let i = 0; i < 12; i++) {
    assert.equal(
      (await grantLot(id, '40', 'promo_grant', {
        applies_to: [ms[i], shared],
        expires_at: i === 0 ? new Date(Date.now() + 86_400_000).toISOString() : undefined,
      })).status,
      201,
    );
  }
  const token = await userToken(id);
  const acct = await ownAccount(id);
  const gw = await slowGateway(3000);
  try {
    const jobs: string[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await createJob(gw.url, token, jobBody(ms[i], 5)); // reserves 30, costs 10
      assert.equal(r.status, 202, JSON.stringify(r.body));
      jobs.push((r.body.data as { job_id: string }).job_id);
    }
    assert.deepEqual({ ...await state(acct) }, { balance: '480', held: '180' });
    const wave = await Promise.all([
      cancelJob(gw.url, token, jobs[4]),
      cancelJob(gw.url, token, jobs[5]),
      ...Array.from({ length: 70 }, () => charge(token, shared, 5)),
    ]);
    for (const c of wave.slice(0, 2)) assert.equal(c.status, 200, JSON.stringify(c.body));
    // A cancelled job's hold waits for its worker's report, at its next checkpoint (billing.cancel_job).
    await until('the cancelled jobs stopped', async () => (await state(acct)).held === '120', 20_000);
    const drain = await Promise.all(Array.from({ length: 20 }, () => charge(token, shared, 5)));
    const rs = [...wave.slice(2), ...drain] as unknown as { status: number; text: string }[];
    for (const r of rs) assert.ok(r.status === 201 || r.status === 402, r.text);
    const ok = rs.filter((r) => r.status === 201).length;
    // 480 less the four live jobs' 120, in charges of 5.
    assert.equal(ok, 72);
    assert.deepEqual({ ...await state(acct) }, { balance: '120', held: '120' });
    // Job 0's list (30 left, all its hold) expires: that hold gives way, the other three stay whole.
    const [{ lot }] = await testDb`select id::text as lot from billing.lots where account_id = ${acct} and open
      order by expires_at limit 1`;
    await backdateLot(lot);
    await testDb`select billing.expire_due_lots(${acct}::bigint)`;
    assert.deepEqual({ ...await state(acct) }, { balance: '90', held: '90' });
    // A list a live job needs all of pays nothing else, even its own model.
    assert.equal((await chargeTokens(token, ms[1], 1)).status, 402);
    const ends = [];
    for (const j of jobs) ends.push(await done(j));
    // Job 0's hold gave way whole: its price is charged past it, and no lot left may pay for its
    // model, so all 10 is debt. The three others capture theirs from their holds.
    assert.deepEqual(
      ends.map((e) => `${e.status} ${e.captured} + ${e.overage}`),
      [
        'completed 0 + 10',
        'completed 10 + 0',
        'completed 10 + 0',
        'completed 10 + 0',
        'cancelled 0 + 0',
        'cancelled 0 + 0',
      ],
      JSON.stringify(ends),
    );
    // 90 − 30 captured − 10 owed; the three lists keep their 20 each beside the debt of 10.
    assert.deepEqual({ ...await state(acct) }, { balance: '50', held: '0' });
    const [{ lists }] = await testDb`select trim_scale(sum(remaining))::text as lists from billing.lots
      where account_id = ${acct} and open`;
    assert.equal(lists, '60');
    // The lists stay spendable for their models beside the debt; job 0's model, which only credits
    // for any model could pay now, is refused for it, until a grant pays the debt first.
    const owing = await chargeTokens(token, ms[0], 1);
    assert.equal(owing.status, 402, owing.text);
    assert.equal((owing.body.error as { details: Json }).details.debt, true, owing.text);
    assert.equal((await grantLot(id, '10', 'promo_grant')).status, 201);
    assert.deepEqual({ ...await state(acct) }, { balance: '60', held: '0' });
    const paid = await chargeTokens(token, ms[0], 1);
    assert.equal(paid.status, 402, paid.text);
    assert.equal((paid.body.error as { details: Json }).details.debt, false, 'the grant went to the debt');
  } finally {
    await gw.kill();
  }
  await invariants();
});

// ============================================================ 2. a school switches to pool funding while jobs hold a member's allowance

Deno.test("a school switches to pool funding while four jobs hold its member's allowance on 12 lists, racing her charges for the shared model: the sweep leaves each job what it needs, each is charged exactly its price, and no credit is made or lost", async () => {
  const ms = await Promise.all(Array.from({ length: 12 }, () => creditPerToken()));
  const [shared] = await models(1);
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '480', 'promo_grant');
  for (let i = 0; i < 12; i++) {
    const r = await api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { amount: '40', user_id: ada.id, applies_to: [ms[i], shared] },
    });
    assert.equal(r.status, 201, r.text);
  }
  const [{ id: allowance }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id = ${ada.id}`;
  const [{ id: wallet }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const gw = await slowGateway(2500);
  try {
    const jobs: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await createJob(gw.url, ada.token, jobBody(ms[i], 5)); // reserves 30, costs 10
      assert.equal(r.status, 202, JSON.stringify(r.body));
      jobs.push((r.body.data as { job_id: string }).job_id);
    }
    assert.deepEqual({ ...await state(allowance) }, { balance: '480', held: '120' });
    const [patched, ...rs] = await Promise.all([
      api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, headers: key(), body: { funding: 'pool' } }),
      ...Array.from({ length: 30 }, () => charge(ada.token, shared, 5)),
    ]);
    assert.equal(patched.status, 200, patched.text);
    for (const r of rs) assert.ok(r.status === 201 || r.status === 402, r.text);
    const ok = rs.filter((r) => r.status === 201).length;
    // A charge that chose the allowance before the switch and found it swept once it had the lock is
    // refused (402) though the pool has the credits: a refusal, not money (reported, not asserted).
    const refused = rs.filter((r) => r.status === 402).map((r) => r.text);
    if (refused.length) console.log('refused during the switch:', refused.length, refused[0]);
    const swept = await state(allowance);
    assert.equal(swept.held, '120');
    assert.equal(swept.balance, '120', JSON.stringify({ swept, ok }));
    const ends = [];
    for (const j of jobs) ends.push(await done(j));
    assert.deepEqual(ends.map((e) => `${e.status} ${charged(e)}`), Array(4).fill('completed 10'), JSON.stringify(ends));
    await testDb`select billing.sweep_ended_terms(100)`; // pg_cron: what the jobs gave back goes to the wallet
    const a = await state(allowance);
    const w = await state(wallet);
    assert.deepEqual(
      { allowance: a, wallet: w.balance, ok },
      { allowance: { balance: '0', held: '0' }, wallet: String(480 - 40 - 5 * ok), ok },
    );
  } finally {
    await gw.kill();
  }
  await invariants();
});

// ============================================================ 1. jobs for the model 20 lists share, racing charges for each list's own model

Deno.test("18 jobs for the model 20 lists share (each hold spread over lists) enqueued at once with 60 charges for the lists' own models: what is held and charged never passes the 800, and every job placed is charged exactly its price", async () => {
  const s = await creditPerToken();
  const ms = await models(20);
  const id = await newUser();
  for (let i = 0; i < 20; i++) {
    assert.equal((await grantLot(id, '40', 'promo_grant', { applies_to: [ms[i], s] })).status, 201);
  }
  const token = await userToken(id);
  const acct = await ownAccount(id);
  const gw = await slowGateway(300);
  try {
    const rs = await Promise.all([
      // 18 jobs: the route allows 20 a minute. Each reserves 30, costs 10: 540 + 300 asked of 800.
      ...Array.from({ length: 18 }, () => createJob(gw.url, token, jobBody(s, 5))),
      ...Array.from({ length: 60 }, (_, k) => charge(token, ms[k % 20], 5)),
    ]);
    const jobRs = rs.slice(0, 18) as Awaited<ReturnType<typeof createJob>>[];
    const chargeRs = rs.slice(18) as { status: number; text: string }[];
    for (const r of jobRs) assert.ok(r.status === 202 || r.status === 402, JSON.stringify(r.body));
    for (const r of chargeRs) assert.ok(r.status === 201 || r.status === 402, r.text);
    const jobs = jobRs.filter((r) => r.status === 202).map((r) => (r.body.data as { job_id: string }).job_id);
    const ok = chargeRs.filter((r) => r.status === 201).length;
    assert.ok(30 * jobs.length + 5 * ok <= 800, `${jobs.length} jobs, ${ok} charges`);
    const ends = [];
    for (const j of jobs) ends.push(await done(j));
    assert.deepEqual(
      ends.map((e) => `${e.status} ${charged(e)}`),
      Array(jobs.length).fill('completed 10'),
      JSON.stringify(ends.filter((e) => charged(e) !== 10)),
    );
    assert.deepEqual({ ...await state(acct) }, { balance: String(800 - 5 * ok - 10 * jobs.length), held: '0' });
    console.log(`${jobs.length} jobs placed, ${ok} charges of 5`);
  } finally {
    await gw.kill();
  }
  await invariants();
});

// ============================================================ 4. a member's charge planned twice (source, then draw) racing the school's funding

Deno.test("a member's 40 charges for the shared model (her allowance on 10 lists first, then her own 10 for any model) racing 10 fundings of the lists: each charge is paid whole by one source, and no credit is made or lost", async () => {
  const ms = await models(11);
  const shared = ms[10];
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '500', 'promo_grant');
  assert.equal((await grantLot(ada.id, '10', 'promo_grant')).status, 201);
  const fund = (i: number, amount: string) =>
    api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { amount, user_id: ada.id, applies_to: [ms[i], shared] },
    });
  for (let i = 0; i < 10; i++) assert.equal((await fund(i, '10')).status, 201);
  const [{ id: allowance }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id = ${ada.id}`;
  const [{ id: wallet }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const own = await ownAccount(ada.id);
  const rs = await Promise.all([
    ...Array.from({ length: 40 }, (_, k) => charge(ada.token, k % 4 ? shared : ms[k % 10], 3)),
    ...Array.from({ length: 10 }, (_, i) => fund(i, '5')),
  ]);
  const charges = rs.slice(0, 40) as { status: number; text: string }[];
  for (const r of charges) assert.ok(r.status === 201 || r.status === 402, r.text);
  for (const r of rs.slice(40) as { status: number; text: string }[]) assert.equal(r.status, 201, r.text);
  const ok = charges.filter((r) => r.status === 201).length;
  // Each charge is one transfer of 3 from one account.
  const [{ n, total }] = await testDb`select count(*)::int as n, trim_scale(coalesce(sum(t.amount), 0))::text as total
    from billing.transfers t where t.kind = 'usage' and t.from_account_id = any(${[allowance, own]}::bigint[])`;
  const [a, o, w] = [await state(allowance), await state(own), await state(wallet)];
  assert.deepEqual(
    { n, total, sum: Number(a.balance) + Number(o.balance) + Number(w.balance) },
    { n: ok, total: String(3 * ok), sum: 510 - 3 * ok },
    JSON.stringify({ a, o, w }),
  );
  // 150 on the lists and 10 for any model: every charge for the shared model fits (30 × 3 = 90); a
  // list's own model may find its list spent by the shared model first (spending order): 201 or 402.
  assert.deepEqual(charges.filter((r, k) => k % 4 && r.status !== 201).map((r) => r.text), []);
  await invariants();
});
