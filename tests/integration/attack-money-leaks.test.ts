// An outside attack on credit lots, caps, holds, jobs, auto-recharge and school wallets after #30,
// with students' tokens only (the operator's secrets for setup: grants, paying and disputing
// through the Stripe emulator, the minute schedule). Each test failed before the fix it guards.
import assert from 'node:assert/strict';
import type { AutoRecharge } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, reportUsage, testDb, tick, until, withGateway } from '../helpers.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { chargeOf, emulator } from '../purchases.ts';

type Json = Record<string, unknown>;
type Person = Awaited<ReturnType<typeof person>>;
const dataOf = (r: { body: Json }) => r.body.data as Json;

/** gpt-4o input: 50 tokens = 1 credit. */
const spend = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });
const hold = (token: string, amount: string) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 600 } });
const holdAction = (token: string, id: unknown, action: 'capture' | 'release', body: Json = {}) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: key(), body });

/** A purchase paid through Checkout: for the caller, or for their organisation. */
async function pays(token: string, body: Json) {
  const co = await api('/checkout/sessions', { token, headers: key(), body });
  assert.equal(co.status, 201, co.text);
  const { session_id } = dataOf(co) as { session_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  return session_id;
}

const accountOf = async (org: string, member: string | null) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.org_id = ${org} and a.member_id is not distinct from ${member}`)[0];

/** Starts an ai_completion job through `url` (a gateway whose provider may be slow); its id. */
async function startJob(url: string, who: Person) {
  const res = await fetch(`${url}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${who.token}`, 'content-type': 'application/json', ...key() },
    body: JSON.stringify({
      type: 'ai_completion',
      input: { model: 'gpt-4o', prompt: 'hello world', max_tokens: 1000 },
    }),
  });
  assert.equal(res.status, 202);
  return (await res.json()).data.job_id as string;
}
const jobOf = async (id: string) =>
  (await testDb`select status, attempts, error from billing.jobs where id = ${id}`)[0];
const finished = (id: string) =>
  until('the job to finish', async () => {
    const j = await jobOf(id);
    return ['completed', 'failed', 'cancelled'].includes(j.status) && j;
  });

Deno.test("a member's answers from a pooled wallet never show its balance: usage, holds, captures, releases", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '12345.678');
  const answers = [await spend(member.token, 1)];
  const h = await hold(member.token, '10');
  answers.push(h, await holdAction(member.token, dataOf(h).hold_id, 'capture', { amount: '4' }));
  const h2 = await hold(member.token, '10');
  answers.push(h2, await holdAction(member.token, dataOf(h2).hold_id, 'release'));
  for (const r of answers) {
    assert.ok(r.status === 200 || r.status === 201, r.text);
    assert.ok(!r.text.includes('.678'), `the pool's balance is not in the answer: ${r.text}`);
    const { balance, available, org_id } = dataOf(r);
    assert.deepEqual({ balance, available, org_id }, { balance: '0', available: '0', org_id: org }, "the member's own");
  }
  assert.equal((await walletOf(admin.token, org)).balance, '12340.678', 'the pool paid');
});

Deno.test("a refund under a member's pool hold: the hold gives way and is captured, and the answer shows the member's own", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', null);
  const session = await pays(admin.token, { package_id: 'mini', org_id: org });
  const h = await hold(member.token, '4000');
  assert.equal(h.status, 201, h.text);
  // A refund takes 3,000 back from under the hold: the pool has 2,000, not for the member to read.
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 300 });
  const c = await holdAction(member.token, dataOf(h).hold_id, 'capture');
  assert.equal(c.status, 200, c.text);
  const { captured, balance, available, org_id } = dataOf(c);
  assert.deepEqual({ captured, balance, available, org_id }, {
    captured: '2000',
    balance: '0',
    available: '0',
    org_id: org,
  });
  assert.deepEqual(await accountOf(org, null), { balance: '0', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('credits a refund takes back from under a hold are no longer held: a job under it completes once, never run again', async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'allowance', null);
  const session = await pays(admin.token, { package_id: 'mini', org_id: org });
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '5000' } });
  assert.equal(funded.status, 201, funded.text);
  // A slow provider keeps the job under its hold while the purchase is refunded in full.
  await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '400' }, async (url) => {
    const job = await startJob(url, member);
    await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 500 });
    assert.deepEqual(await accountOf(org, member.id), { balance: '0', held: '0' }, 'nothing is held that is not there');
    const { status, attempts } = await finished(job);
    assert.deepEqual({ status, attempts }, { status: 'completed', attempts: 1 }, 'the provider was called once');
  });
  assert.deepEqual(await accountOf(org, member.id), { balance: '0', held: '0' });
  await assertLedgerInvariants();
});

/** A member of `admin`'s allowance school, funded `amount` from a 1,000-credit grant. */
async function allowanceSchool(admin: Person, member: Person, amount: string) {
  const org = await school(admin, [member], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount } });
  assert.equal(funded.status, 201, funded.text);
  return org;
}
const sweepAsScheduled = () => testDb`select billing.sweep_ended_terms()`;

Deno.test('what a hold gives back in an allowance its member removed can no longer spend goes back to the wallet', async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await allowanceSchool(admin, member, '500');
  // A job under way when the member is removed: reserved from the allowance and leased by a
  // worker (as claim_jobs leaves it; set here so no other worker can race the removal).
  const [{ id }] = await testDb`select id from billing.enqueue_job(${member.id}, 'ai_completion',
    '{"model": "gpt-4o", "prompt": "hello world", "max_tokens": 1000}'::jsonb, ${crypto.randomUUID()}, null, 60.54)`;
  await testDb`update billing.jobs set status = 'processing', locked_by = 'test-worker',
    locked_until = now() + interval '1 minute', attempts = 1 where id = ${id}`;
  const removed = await api(`/orgs/${org}/members/${member.id}`, { method: 'DELETE', token: admin.token });
  assert.equal(removed.status, 200, removed.text);
  assert.deepEqual(
    await accountOf(org, member.id),
    { balance: '60.54', held: '60.54' },
    "the sweep left the job's hold",
  );
  const [done] = await testDb`select status from billing.complete_job(${id}, 'test-worker', '{"text": "ok"}'::jsonb,
    '{"model": "gpt-4o", "input_tokens": 11, "output_tokens": 20}'::jsonb)`;
  assert.equal(done.status, 'completed', 'work under way finishes');
  await sweepAsScheduled();
  assert.equal((await accountOf(org, member.id)).balance, '0', 'nothing stays behind in the allowance');
  const wallet = await walletOf(admin.token, org);
  // The job cost (11 × 5 + 20 × 15) × 4 / 1,000 = 1.42; the rest of its reserve came back.
  assert.equal(wallet.balance, '998.58', 'the wallet got the rest back');
  await assertLedgerInvariants();
});

Deno.test("a removed member's jobs that no worker has started are cancelled: the pool's credits are not held nor spent for them", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '1000');
  // Queued behind a backlog: reserved from the pool, not yet claimed by a worker.
  const [{ id }] = await testDb`select id from billing.enqueue_job(${member.id}, 'ai_completion',
    '{"model": "gpt-4o", "prompt": "hello world", "max_tokens": 1000}'::jsonb, ${crypto.randomUUID()}, null, 60.54)`;
  assert.deepEqual(await accountOf(org, null), { balance: '1000', held: '60.54' });
  const removed = await api(`/orgs/${org}/members/${member.id}`, { method: 'DELETE', token: admin.token });
  assert.equal(removed.status, 200, removed.text);
  await tick();
  const job = await jobOf(id);
  assert.equal(job.status, 'cancelled');
  assert.equal(job.error.code, 'MEMBER_REMOVED');
  assert.deepEqual(await accountOf(org, null), { balance: '1000', held: '0' }, 'nothing held, nothing spent');
  await assertLedgerInvariants();
});

Deno.test('a hold released after its school switched to a pool goes back to the wallet, not stranded in the allowance', async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await allowanceSchool(admin, member, '300');
  const h = await hold(member.token, '100');
  assert.equal(h.status, 201, h.text);
  const pool = await api(`/orgs/${org}`, { method: 'PATCH', token: admin.token, body: { funding: 'pool' } });
  assert.equal(pool.status, 200, pool.text);
  assert.equal((await holdAction(member.token, dataOf(h).hold_id, 'release')).status, 200);
  await sweepAsScheduled();
  assert.deepEqual(await accountOf(org, member.id), { balance: '0', held: '0' });
  assert.equal((await walletOf(admin.token, org)).balance, '1000');
  await assertLedgerInvariants();
});

Deno.test('a dispute turns auto-recharge off and forgets the card: the disputed card is never charged again to refill', async () => {
  const s = await person('student');
  const session = await pays(s.token, { package_id: 'starter', save_card: true });
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(on.status, 200, on.text);

  // The dispute's hold takes what is available to 0: before, that crossing queued a recharge.
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'open' });
  const [{ n }] = await testDb`select count(*)::int as n from billing.recharges where user_id = ${s.id}`;
  assert.equal(n, 0, 'no recharge queued');
  const settings = dataOf(await api('/credits/auto-recharge', { token: s.token })) as unknown as AutoRecharge;
  assert.deepEqual([settings.enabled, settings.disabled_reason, settings.card_saved], [false, 'dispute', false]);
  const again = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: s.token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(again.status, 409, 'the card is gone: only an on-session payment saves one again');
  await assertLedgerInvariants();
});
