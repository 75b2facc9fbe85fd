// Holds have an owner and a purpose: a student acts only on their own holds; a dispute places no
// hold but freezes the disputed lots' free credits (what holds reserved before stays theirs) and
// suspends the buyer; and a job under a hold is paid for its work once even when a refund, a
// dispute or an expiry reaches the credits meanwhile.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  backdateLot,
  finishedJob,
  fund,
  key,
  reportUsage,
  startAiJob,
  student,
  sweepExpiredHolds,
  testDb,
  tick,
  until,
  withGateway,
} from '../support/helpers.ts';
import { accountOf, person, school } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, emulator, pays, startCheckout } from '../support/purchases.ts';

type Json = Record<string, unknown>;

const post = (token: string, path: string, body: unknown = {}) =>
  api(path, { token, body, headers: { 'idempotency-key': crypto.randomUUID() } });

/** Spends `credits` of gpt-4o input (0.02 credits a token), reported by the server for `token`'s user. */
const spend = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });

async function dispute(sessionId: string, outcome: 'open' | 'lost' | 'won') {
  await emulator(`/_emulator/charges/${await chargeOf(sessionId)}/dispute`, { outcome });
}

async function holdsOf(userId: string) {
  return await testDb`
    select h.purpose, h.status, h.amount::float8 as amount from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${userId} order by h.created_at`;
}

Deno.test('a dispute places no hold: the buyer is suspended (403), the frozen credits cannot be spent, and lost they are taken back (debt never)', async () => {
  const s = await student();
  const co = await buy(s.token, 'mini');
  await dispute(co.session_id, 'open');
  assert.deepEqual((await holdsOf(s.id)).map((h) => h.purpose), [], 'no hold of any purpose');
  const spent = await spend(s.token, 1);
  assert.deepEqual([spent.status, (spent.body.error as Json).code], [403, 'ACCOUNT_DISPUTED'], spent.text);
  assert.deepEqual(await balanceOf(s.token), { balance: '5000', held: '0', available: '0' });
  await dispute(co.session_id, 'lost');
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test("credits parked in the student's own hold before a dispute stay reserved by it, and are taken back when it ends", async () => {
  const s = await student();
  const co = await buy(s.token, 'mini');
  const parked = await post(s.token, '/credits/holds', { amount: '5000', ttl_seconds: 3600 });
  assert.equal(parked.status, 201);
  await dispute(co.session_id, 'open');
  // The hold reserved them before the dispute: it finishes normally (docs/credit-lots.md §
  // Refunds, disputes and debt 3); the buyer cannot act while suspended.
  assert.deepEqual(await balanceOf(s.token), { balance: '5000', held: '5000', available: '0' });
  assert.deepEqual((await holdsOf(s.id)).map((h) => [h.purpose, h.status]), [['user', 'active']]);
  const holdId = (parked.body.data as Json).hold_id;
  const capture = await post(s.token, `/credits/holds/${holdId}/capture`);
  assert.deepEqual([capture.status, (capture.body.error as Json).code], [403, 'ACCOUNT_DISPUTED'], capture.text);
  await dispute(co.session_id, 'lost');
  // Lost: what the hold reserved stays reserved when it ends, and the minute's tick takes it back.
  const release = await post(s.token, `/credits/holds/${holdId}/release`);
  assert.equal(release.status, 200, release.text);
  assert.deepEqual(await balanceOf(s.token), { balance: '5000', held: '5000', available: '0' });
  await sweepExpiredHolds();
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test('a dispute shrinks no hold: each keeps what it reserved, and won, the student captures in full', async () => {
  const s = await student();
  await fund(s.id, '3000'); // not part of the disputed purchase (promotional: spent first)
  const co = await buy(s.token, 'mini');
  const older = await post(s.token, '/credits/holds', { amount: '2000', ttl_seconds: 3600 });
  const newer = await post(s.token, '/credits/holds', { amount: '5000', ttl_seconds: 3600 });
  assert.equal(newer.status, 201);
  // 8,000 balance, 7,000 held: the newer hold reserved 1,000 promotional and 4,000 of the purchase;
  // the dispute freezes the purchase's 1,000 no hold reserved.
  await dispute(co.session_id, 'open');
  assert.deepEqual(await balanceOf(s.token), { balance: '8000', held: '7000', available: '0' });
  assert.deepEqual((await holdsOf(s.id)).map((h) => [h.purpose, h.status, h.amount]), [
    ['user', 'active', 2000],
    ['user', 'active', 5000],
  ]);
  await dispute(co.session_id, 'won');
  const captured = await post(s.token, `/credits/holds/${(newer.body.data as Json).hold_id}/capture`);
  assert.equal(captured.status, 200, captured.text);
  assert.equal((captured.body.data as Json).captured, '5000', 'the hold captures all it reserved');
  assert.equal((older.body.data as Json).amount, '2000');
  assert.deepEqual(await balanceOf(s.token), { balance: '3000', held: '2000', available: '1000' });
  await assertLedgerInvariants();
});

Deno.test("a student cannot release their job's hold; the job completes and is charged once", async () => {
  const s = await student();
  await fund(s.id, '10');
  const created = await post(s.token, '/jobs', {
    type: 'ai_completion',
    input: { model: 'gpt-4o', prompt: 'one two three four', max_tokens: 10 },
  });
  assert.equal(created.status, 202);
  const jobId = (created.body.data as Json).job_id as string;
  const [job] = await testDb`select hold_id from billing.jobs where id = ${jobId}`;
  const r = await post(s.token, `/credits/holds/${job.hold_id}/release`);
  assert.equal(r.status, 403);
  assert.equal((r.body.error as Json).code, 'HOLD_NOT_USER_MANAGED');

  await tick();
  const done = await until('completion', async () => {
    const [j] = await testDb`select status from billing.jobs where id = ${jobId}`;
    return j.status === 'completed' && j;
  });
  assert.ok(done);
  const charges = await testDb`select kind, amount::text from billing.transfers where hold_id = ${job.hold_id}`;
  assert.deepEqual(charges.map((t) => ({ ...t })), [{ kind: 'hold_capture', amount: '0.320000000000000000' }]);
  await assertLedgerInvariants();
});

Deno.test('a job cancelled after a dispute opened returns its reservation to the frozen lot: nothing becomes spendable', async () => {
  const s = await student();
  const co = await buy(s.token, 'mini');
  // A job reserving almost everything, waiting (not due), then the dispute.
  const [job] = await testDb`select id from billing.enqueue_job(${s.id}, 'ai_completion', '{}'::jsonb,
    ${crypto.randomUUID()}, null, 4999)`;
  await testDb`update billing.jobs set run_after = now() + interval '1 hour' where id = ${job.id}`;
  await dispute(co.session_id, 'open');
  await testDb`select billing.release_job_hold(j) from billing.jobs j where j.id = ${job.id}`;
  assert.deepEqual(await balanceOf(s.token), { balance: '5000', held: '0', available: '0' });
  assert.equal((await spend(s.token, 1)).status, 403);
  await dispute(co.session_id, 'lost');
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' });
  await assertLedgerInvariants();
});

Deno.test("a student's capture waits for their dispute, even after another purchase is refunded; lost, what the hold reserved is taken back when it ends", async () => {
  const s = await student();
  const disputed = await buy(s.token, 'mini');
  const refunded = await buy(s.token, 'mini');
  const parked = await post(s.token, '/credits/holds', { amount: '5000', ttl_seconds: 3600 });
  await dispute(disputed.session_id, 'open'); // the hold reserved the first purchase's 5,000
  // The other purchase's 5,000 are free: the refund takes them at once; the hold keeps its own.
  await emulator(`/_emulator/charges/${await chargeOf(refunded.session_id)}/refund`, {});
  assert.deepEqual(await balanceOf(s.token), { balance: '5000', held: '5000', available: '0' });
  const capture = await post(s.token, `/credits/holds/${(parked.body.data as Json).hold_id}/capture`);
  assert.deepEqual([capture.status, (capture.body.error as Json).code], [403, 'ACCOUNT_DISPUTED'], capture.text);
  await dispute(disputed.session_id, 'lost');
  const release = await post(s.token, `/credits/holds/${(parked.body.data as Json).hold_id}/release`);
  assert.equal(release.status, 200, release.text);
  assert.equal((await balanceOf(s.token)).available, '0', 'what the hold returned stays claimed');
  await sweepExpiredHolds();
  assert.equal((await balanceOf(s.token)).balance, '0', 'the lost dispute takes back what the hold returned: no debt');
  await assertLedgerInvariants();
});

Deno.test('a job under way when a dispute opens still pays for its work when a credit of the account expires meanwhile', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini'); // 5,000 paid credits (never expire)
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  await fund(s.id, '1'); // one promotional credit, expiring (spent first: its hold reserves it)
  // A metered job, claimed by a worker (under way): its estimate of 5 held.
  const [{ id: job }] = await testDb`select id from billing.enqueue_job(${s.id}, 'ai_completion',
      ${
    JSON.stringify({ model: 'gpt-4o', prompt: 'one two three four five six seven eight', max_tokens: 100 })
  }::text::jsonb,
      ${crypto.randomUUID()}, null, 5)`;
  await testDb`update billing.jobs set status = 'processing', locked_by = 'w-dispute', attempts = 1,
    locked_until = now() + interval '5 minutes', started_at = now() where id = ${job}`;
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }); // a hold placed before a dispute stays
  const [{ id: promo }] =
    await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
                                      where a.user_id = ${s.id} and l.expires_at is not null`;
  await backdateLot(promo); // time passes: the one promotional credit is due
  const complete = (settle: string | null) =>
    testDb`select (billing.complete_job(${job}, 'w-dispute', '{"ok": true}'::jsonb,
      '{"model": "gpt-4o", "input_tokens": 8, "output_tokens": 8}'::jsonb)).status
      from billing.settle_holder(${settle}::uuid)`;
  // As the worker sends it (finishing): the completion meets the due lot and changes nothing, and
  // sent again behind the settle of its hold's account, completes.
  await assert.rejects(complete(null), /ACCOUNT_FELL_DUE/);
  const [{ hold_id }] = await testDb`select hold_id::text from billing.jobs where id = ${job}`;
  const [done] = await complete(hold_id);
  assert.equal(done.status, 'completed');
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  await assertLedgerInvariants();
  // 8 in × $5/M + 8 out × $15/M, × 4, in credits: 0.64 (the jobs tests' figure). One credit expired:
  // the hold shrinks by its part of it (to 4), and the work is paid from what it still reserves.
  const [paid] = await testDb`select coalesce(sum(t.amount), 0)::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind in ('hold_capture', 'usage')`;
  assert.equal(Number(paid.n), 0.64, `the job's work was not paid: ${JSON.stringify(await balanceOf(s.token))}`);
  assert.equal((await balanceOf(s.token)).balance, '4999.36');
});

Deno.test("credits a refund reaches under a hold stay the hold's until it ends: a job under it completes once, never run again", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'allowance', null);
  const session = await pays(admin.token, { package_id: 'mini', org_id: org });
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '5000' } });
  assert.equal(funded.status, 201, funded.text);
  // A slow provider keeps the job under its hold while the purchase is refunded in full.
  await withGateway({ AI_LOCAL_CHUNK_DELAY_MS: '400' }, async (url) => {
    const job = await startAiJob(url, member.token, 'hello world', 1000);
    await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 500 });
    // The refund took the free credits at once; what is left is what the job's hold reserved.
    const left = await accountOf(org, member.id);
    assert.equal(left.balance, left.held, 'only the reservation is left');
    const { status, attempts } = await finishedJob(job);
    assert.deepEqual({ status, attempts }, { status: 'completed', attempts: 1 }, 'the provider was called once');
  });
  // The job ended: what its hold returned stays reserved for the refund, taken back at the
  // minute's tick (sweepExpiredHolds runs it); what it spent the school owes.
  const ended = await accountOf(org, member.id);
  assert.equal(ended.balance, ended.held, 'what the hold returned is still reserved, never free');
  await sweepExpiredHolds();
  assert.deepEqual(await accountOf(org, member.id), { balance: '0', held: '0' });
  await assertLedgerInvariants();
});
