// Attack round 16 on d7deab6 (a metered job cancelled while its worker runs it keeps its hold for
// the worker's report) and on bb2caea/da2e095 (a plan invoice's dispute holds what a package's
// does, in two holds). A failing test is a hole: its assertion is the documented rule.
import assert from 'node:assert/strict';
import { api, key, spawnGateway, spend, student, testDb, tick, until } from '../support/helpers.ts';
import { balanceOf, buy, emulator } from '../support/purchases.ts';
import { chargeOfInvoice, renew, subscribeTo } from '../support/plans.ts';
import { voidCharge } from '../support/money.ts';
import {
  claimedJob,
  coreInvariants,
  dispute,
  figures,
  planCharge,
  planDisputeStatus,
  purchaseDisputeStatus,
  spendTry,
} from '../support/disputed.ts';

const jobRow = async (id: string) =>
  (await testDb`select status, attempts, locked_by, locked_until, hold_id::text,
      (select h.status from billing.holds h where h.id = j.hold_id) as hold_status
    from billing.jobs j where j.id = ${id}`)[0];

const createJob = async (base: string, token: string, input: unknown) => {
  const res = await fetch(`${base}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
    body: JSON.stringify({ type: 'ai_completion', input }),
  });
  const body = await res.json();
  assert.equal(res.status, 202, JSON.stringify(body));
  return body.data.job_id as string;
};

const cancel = async (base: string, token: string, id: string) => {
  const r = await fetch(`${base}/jobs/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
  return { status: r.status, body: await r.json() };
};

// ---------------------------------------------------------------------------------------------
// A1. A job whose provider answered 503 waits for its retry: fail_job leaves it `processing` with
//     no lease (locked_by and locked_until null) until run_after. Nobody runs it. DELETE /jobs/:id
//     then must release its hold at once (docs/api.md: only "while a worker runs the job" does the
//     hold wait). cancel_job tests `locked_until > now()`: NULL, so `not (… and NULL)` is NULL and
//     the release is skipped; locked_until stays NULL, so expire_jobs' first loop
//     (`locked_until < now()`) never frees it either, and its second loop deletes the cancelled job
//     without releasing. The student's estimate stays held until the hold's own TTL (an hour).
Deno.test({
  name: 'a job cancelled while it waits for a retry (no worker, no lease) frees its hold at once',
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const s = await student('10');
    const gw = spawnGateway({ AI_PROVIDER: 'openai' });
    try {
      await gw.ready();
      const tag = crypto.randomUUID().replaceAll('-', '');
      const id = await createJob(gw.url, s.token, {
        model: 'gpt-4o',
        prompt: `#standin fail=503 tag=${tag}`,
        max_tokens: 100,
      });
      let nudged = Date.now() + 2_000;
      await until('the first attempt failed, waiting for its retry', async () => {
        const j = await jobRow(id);
        if (j.status === 'queued' && Date.now() > nudged) {
          nudged = Date.now() + 5_000;
          tick(gw.url).catch(() => {});
        }
        return j.status === 'processing' && j.attempts === 1 && j.locked_by === null;
      }, 30_000);
      const held = (await balanceOf(s.token)).held;
      assert.notEqual(held, '0', 'the estimate is held');
      const r = await cancel(gw.url, s.token, id);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.data.status, 'cancelled');
      // The sweep, as pg_cron runs it every five minutes.
      await testDb`select billing.expire_jobs(500)`;
      const j = await jobRow(id);
      const b = await balanceOf(s.token);
      assert.deepEqual({ hold: j.hold_status, held: b.held, available: b.available }, {
        hold: 'released',
        held: '0',
        available: '10',
      });
    } finally {
      await gw.kill();
    }
    await coreInvariants([s.id]);
  },
});

// A2 (probe). The same job cancelled while queued (never claimed): released at once.
Deno.test('probe: a metered job cancelled while queued frees its hold at once', async () => {
  const s = await student('10');
  const id = await testDb.begin(async (sql) => {
    const [j] = await sql`select id from billing.enqueue_job(${s.id}, 'ai_completion',
      ${JSON.stringify({ model: 'gpt-4o', prompt: 'one two', max_tokens: 100 })}::text::jsonb, ${crypto.randomUUID()},
      null, 1.5)`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${j.id}`;
    return j.id as string;
  });
  assert.equal((await balanceOf(s.token)).held, '1.5');
  const r = await api(`/jobs/${id}`, { method: 'DELETE', token: s.token });
  assert.equal(r.status, 200, r.text);
  assert.equal((await balanceOf(s.token)).held, '0');
  await coreInvariants([s.id]);
});

const usage = JSON.stringify({ model: 'gpt-4o', input_tokens: 50, output_tokens: 0 });

// A3 (probe). Cancelled while its worker runs it: the report charges once (a retried report is
// JOB_CANCELLED, the sweep frees nothing more); a report after the sweep charges nothing.
Deno.test('probe: the report of a cancelled job charges once, a retry and the sweep add nothing; a report after the sweep charges nothing', async () => {
  const s = await student('10');
  const id = await claimedJob(s.id, 'w-probe-a', 2);
  const r = await api(`/jobs/${id}`, { method: 'DELETE', token: s.token });
  assert.equal(r.status, 200, r.text);
  assert.equal((await balanceOf(s.token)).held, '2', 'the hold waits for the worker');
  assert.equal(await spendTry(s.token, 9), false, 'the held credits are not spendable meanwhile');
  const [done] =
    await testDb`select status from billing.complete_job(${id}, 'w-probe-a', '{"text":"x"}'::jsonb, ${usage}::text::jsonb)`;
  assert.equal(done.status, 'cancelled');
  const charged = await balanceOf(s.token);
  assert.ok(Number(charged.balance) < 10 && charged.held === '0', JSON.stringify(charged));
  await assert.rejects(
    testDb`select billing.complete_job(${id}, 'w-probe-a', '{"text":"x"}'::jsonb, ${usage}::text::jsonb)`,
    /JOB_CANCELLED/,
  );
  await testDb`select billing.expire_jobs(500)`;
  const left = charged.balance;
  assert.deepEqual(await balanceOf(s.token), { balance: left, held: '0', available: left });
  const [{ result }] = await testDb`select result from billing.jobs where id = ${id}`;
  assert.equal(result, null, 'the result is not kept');

  // The second job: the worker never reports before its lease ends; the sweep frees the hold; its
  // late report is JOB_CANCELLED (nothing charged), and fail_job too.
  const id2 = await claimedJob(s.id, 'w-probe-b', 2, 1);
  assert.equal((await api(`/jobs/${id2}`, { method: 'DELETE', token: s.token })).status, 200);
  await new Promise((r) => setTimeout(r, 1_100));
  await testDb`select billing.expire_jobs(500)`;
  assert.equal((await balanceOf(s.token)).held, '0');
  await assert.rejects(
    testDb`select billing.complete_job(${id2}, 'w-probe-b', '{}'::jsonb, ${usage}::text::jsonb)`,
    /JOB_CANCELLED/,
  );
  await assert.rejects(testDb`select billing.fail_job(${id2}, 'w-probe-b', null, false)`, /JOB_CANCELLED/);
  assert.deepEqual(await balanceOf(s.token), { balance: left, held: '0', available: left });
  await coreInvariants([s.id]);
});

// ---------------------------------------------------------------------------------------------
// B. A void into a disputed grant whose hold the balance had cut short.

const holdsOf = async (userId: string) =>
  (await testDb`select regexp_replace(h.idempotency_key, '^dispute:[^:]+', 'dispute') as key,
      trim_scale(h.amount)::text as amount
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.purpose = 'dispute' and h.status = 'active' order by 1`).map((
    h,
  ) => [h.key, h.amount]);

// B1. A plan's dispute holds what its grant has not had reversed or expired: left in its lots
//     (covered) plus what it spent. Plan 10,000 spent in full, a package of 5,000 of which 3,000
//     spent: the dispute holds what the balance allows, 2,000, under `:spent`. An operator voids
//     the 10,000 charge: the credits return to the plan's frozen lot. The grant is now whole in
//     its lot: the dispute must hold 10,000 (covered), and its spent part is 0; the package's
//     2,000 left are the student's to spend. freeze_voided_credits grows the covered hold by all
//     that came back (10,000) and leaves the `:spent` hold at 2,000: 12,000 held, the package's
//     2,000 frozen until the dispute closes (months).
Deno.test('a void into a disputed plan lot: the dispute holds the grant (10,000), not the grant plus its old spent hold', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 (priority 5: spent first)
  const c = await spend(s.token, 10000);
  const p = await buy(s.token, 'mini'); // 5,000
  await until('package paid', async () => (await balanceOf(s.token)).balance === '5000');
  await spend(s.token, 3000);
  const charge = await planCharge(plan.stripe_subscription);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  await until('plan dispute held', async () => (await figures(s.id)).held === '2000');
  const v = await voidCharge(String((c.body.data as { transfer_id: string }).transfer_id));
  assert.equal(v.status, 200, v.text);
  const f = await figures(s.id);
  const holds = (await holdsOf(s.id)).map(([k, a]) => [k.endsWith(':spent') ? 'spent' : 'covered', a]);
  const r = await spendTry(s.token, 2000);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await until('plan lost', async () => (await planDisputeStatus(charge)) === 'lost');
  const after = await figures(s.id);
  assert.deepEqual({ balance: f.balance, held: f.held, holds, spendable: r, afterLoss: after.balance }, {
    balance: '12000',
    held: '10000',
    holds: [['covered', '10000']], // nothing of the grant is spent any more: no `:spent` hold
    spendable: true, // the package's 2,000: nobody disputes them
    afterLoss: '0', // the plan's 10,000 taken back from its own lot; the package's 2,000 spent
  });
  void p;
  await coreInvariants([s.id]);
});

// B2. The package yardstick of B1: the same over-hold (shared root cause, 53-corrections.sql).
Deno.test('yardstick: a void into a disputed package whose hold the balance cut short: held the package, not more', async () => {
  const s = await student();
  const pa = await buy(s.token, 'mini'); // 5,000, spent first (older)
  await until('A paid', async () => (await balanceOf(s.token)).balance === '5000');
  const c = await spend(s.token, 5000);
  const pb = await buy(s.token, 'mini');
  await until('B paid', async () => (await balanceOf(s.token)).balance === '5000');
  await spend(s.token, 3000);
  await dispute(pa.session_id, 'open');
  await until('A held', async () => (await figures(s.id)).held === '2000');
  const v = await voidCharge(String((c.body.data as { transfer_id: string }).transfer_id));
  assert.equal(v.status, 200, v.text);
  const f = await figures(s.id);
  const r = await spendTry(s.token, 2000);
  await dispute(pa.session_id, 'lost');
  await until('A lost', async () => (await purchaseDisputeStatus(pa.session_id)) === 'lost');
  const after = await figures(s.id);
  assert.deepEqual({ balance: f.balance, held: f.held, spendable: r, afterLoss: after.balance }, {
    balance: '7000',
    held: '5000',
    spendable: true, // B's 2,000
    afterLoss: '0',
  });
  void pb;
  await coreInvariants([s.id]);
});

// B3 (probe). Half the plan invoice refunded, then the charge disputed and lost (Stripe refuses a
// refund of a charge under dispute, `charge_disputed`: the refund comes first). The refund takes
// 5,005 (floor(10,000 × 500 ÷ 999): its lot's 4,000 and 1,005 of the package); the dispute holds
// what is left of the grant (4,995, all spent) as far as the balance (3,995) goes; the loss takes
// it: as a package's would, -1,000 (6,000 spent of 15,000, the plan's 10,000 taken back).
Deno.test('probe: a plan invoice half refunded, then disputed and lost: held the balance, -1,000 after, no hold left', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 999 cents
  await spend(s.token, 6000);
  await buy(s.token, 'mini');
  await until('paid', async () => (await balanceOf(s.token)).balance === '9000');
  const charge = await planCharge(plan.stripe_subscription);
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 });
  await until('refunded', async () => (await figures(s.id)).balance === '3995');
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  await until('open', async () => (await planDisputeStatus(charge)) === 'open');
  const f = await figures(s.id);
  const holds = await holdsOf(s.id);
  const r = await spendTry(s.token, 1);
  await coreInvariants([s.id]);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await until('plan lost', async () => (await planDisputeStatus(charge)) === 'lost');
  const after = await figures(s.id);
  assert.deepEqual({ held: f.held, holds, spendable: r, afterLoss: after.balance, heldAfter: after.held }, {
    held: '3995',
    holds: [['dispute:spent', '3995']],
    spendable: false,
    afterLoss: '-1000',
    heldAfter: '0',
  });
  await coreInvariants([s.id]);
});

// B4 (probe). Two plan invoices of one subscription (the first and its renewal) disputed beside a
// package, the older won first: the renewal's dispute is topped up to the whole of its grant left
// (7,000 covered, 3,000 spent), the package's 2,000 beyond it stay the student's.
Deno.test('probe: a plan and its renewal both disputed, the older won: the renewal dispute holds its grant, the rest spendable', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 10000);
  const charge1 = await planCharge(plan.stripe_subscription);
  const renewed = await renew(plan.stripe_subscription);
  await until('renewal granted', async () => (await balanceOf(s.token)).balance === '10000');
  await buy(s.token, 'mini');
  await until('package paid', async () => (await balanceOf(s.token)).balance === '15000');
  await spend(s.token, 3000); // the renewal's plan lot
  const charge2 = await chargeOfInvoice(String(renewed.invoice));
  await emulator(`/_emulator/charges/${charge1}/dispute`, { outcome: 'open' });
  await until('first held', async () => (await figures(s.id)).held === '10000');
  await emulator(`/_emulator/charges/${charge2}/dispute`, { outcome: 'open' });
  await until('renewal open', async () => (await planDisputeStatus(charge2)) === 'open');
  const both = await figures(s.id);
  await emulator(`/_emulator/charges/${charge1}/dispute`, { outcome: 'won' });
  await until('first won', async () => (await planDisputeStatus(charge1)) === 'won');
  const f = await figures(s.id);
  const holds = (await holdsOf(s.id)).map(([k, a]) => [k.endsWith(':spent') ? 'spent' : 'covered', a]);
  const r = await spendTry(s.token, 2000);
  await emulator(`/_emulator/charges/${charge2}/dispute`, { outcome: 'lost' });
  await until('renewal lost', async () => (await planDisputeStatus(charge2)) === 'lost');
  const after = await figures(s.id);
  assert.deepEqual({
    both: both.held,
    held: f.held,
    holds,
    spendable: r,
    afterLoss: after.balance,
    heldAfter: after.held,
  }, {
    both: '12000',
    held: '10000',
    holds: [['covered', '7000'], ['spent', '3000']],
    spendable: true,
    afterLoss: '0',
    heldAfter: '0',
  });
  await coreInvariants([s.id]);
});
