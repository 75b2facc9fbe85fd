// Holds and jobs on a school's credits: a member's answers from a pooled wallet show only their
// own balance; a refund or a removal reaches credits under a member's hold; what a hold gives
// back after its member was removed, or after the school switched to a pool, goes back to the
// wallet; a removed member's queued jobs are cancelled. Students' tokens act; the operator's
// secrets only set up (grants, paying through the Stripe emulator, the minute schedule).
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, jobOf, key, sweepExpiredHolds, testDb, tick, until } from '../support/helpers.ts';
import { dataOf, spendWith } from '../support/money.ts';
import { accountOf, person, school, verifyOrg, walletOf } from '../support/orgs.ts';
import { chargeOf, emulator, pays } from '../support/purchases.ts';

type Json = Record<string, unknown>;
type Person = Awaited<ReturnType<typeof person>>;

/** gpt-4o input: 50 tokens = 1 credit. */
const spend = (token: string, credits: number) => spendWith(token, crypto.randomUUID(), credits);
const hold = (token: string, amount: string) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 600 } });
const holdAction = (token: string, id: unknown, action: 'capture' | 'release', body: Json = {}) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: key(), body });

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
    // Times may end in .678 ms; only the credit amounts in the answer must not.
    const amounts = Object.values(dataOf(r)).filter((v) => typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v));
    assert.ok(!amounts.some((v) => String(v).endsWith('.678')), `the pool's balance is not in the answer: ${r.text}`);
    const { balance, available, org_id } = dataOf(r);
    assert.deepEqual({ balance, available, org_id }, { balance: '0', available: '0', org_id: org }, "the member's own");
  }
  assert.equal((await walletOf(admin.token, org)).balance, '12340.678', 'the pool paid');
});

Deno.test("a refund under a member's pool hold: the hold finishes, the school owes what it spent, and the answer shows the member's own", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const session = await pays(admin.token, { package_id: 'mini', org_id: org });
  const h = await hold(member.token, '4000');
  assert.equal(h.status, 201, h.text);
  // A refund of 3,000: the 1,000 free at once, 2,000 of the hold's reservation after it ends. The
  // hold spends all it reserved, so the school owes those 2,000; the member reads none of it.
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 300 });
  const c = await holdAction(member.token, dataOf(h).hold_id, 'capture');
  assert.equal(c.status, 200, c.text);
  const { captured, balance, available, org_id } = dataOf(c);
  assert.deepEqual({ captured, balance, available, org_id }, {
    captured: '4000',
    balance: '0',
    available: '0',
    org_id: org,
  });
  await sweepExpiredHolds(); // the minute's tick bills what the hold spent of the claimed credits
  assert.deepEqual(await accountOf(org, null), { balance: '-2000', held: '0' });
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

Deno.test("a member's charge that waited on her allowance while the school switched to a pool is paid by the pool, not refused", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'allowance', '100');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: admin.token,
    headers: key(),
    body: { amount: '40', user_id: member.id },
  });
  assert.equal(funded.status, 201, funded.text);
  // The switch (and its sweep of the allowance into the wallet) holds its locks until it commits;
  // the charge chose the allowance before it and waits on it. Committed, the allowance is empty
  // and the pool pays: the charge must look again, not stop at the allowance.
  let charged: Promise<{ status: number; text: string }> | undefined;
  await testDb.begin(async (tx) => {
    await tx`select billing.update_org(${admin.id}, ${org}, '{"funding": "pool"}'::jsonb)`;
    charged = spend(member.token, 5);
    await until(
      'the charge waits on the switch',
      async () =>
        (await testDb`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%run_usage_report%'`)
          .length > 0,
      10_000,
    );
  });
  const r = await charged!;
  assert.equal(r.status, 201, r.text);
  assert.deepEqual(
    { allowance: await accountOf(org, member.id), wallet: await accountOf(org, null) },
    { allowance: { balance: '0', held: '0' }, wallet: { balance: '95', held: '0' } },
  );
  await assertLedgerInvariants();
});
