// Plan renewal (invoice.paid for a new period): one pass that grants the period, rolls over what
// the rule allows and expires the rest, whatever else queues for the account meanwhile (disputes,
// refunds, holds, job reservations, spending, a package lot due at the same time). The emulator's
// test controls stand in for Stripe and the card holder.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  key,
  reportUsage,
  spend,
  student,
  sweepExpiredHolds,
  testDb,
} from '../support/helpers.ts';
import { balanceOf, buy, deliver, emulator, type SignedEvent, stripeApi } from '../support/purchases.ts';
import { breakage, chargeOfInvoice, planLots, renew, subscribeTo } from '../support/plans.ts';

/** Once at least `n` transactions wait on a lock (webhooks queued behind ours), and `settle` ms
 * later (the others of a batch arrive), how many do. */
async function lockWaiters(n: number, settle: number): Promise<number> {
  const waiting = async () =>
    (await testDb`select count(*)::int as n from pg_stat_activity
      where wait_event_type = 'Lock' and datname = current_database()`)[0].n as number;
  for (let i = 0; i < 200; i++) {
    if (await waiting() >= n) {
      await new Promise((r) => setTimeout(r, settle));
      return await waiting();
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`fewer than ${n} transactions came to wait on the account`);
}

/**
 * The account is busy (our transaction stands in for a slow spend): the renewal's webhooks queue
 * for it first, `then` second; all run as soon as it is free, in that order, and answer 200.
 */
async function queuedBehindRenewal(userId: string, renewal: SignedEvent[], then: SignedEvent[]): Promise<void> {
  let inFlight: Promise<{ status: number }>[] = [];
  await testDb.begin(async (tx) => {
    await tx`select 1 from billing.accounts a where a.user_id = ${userId} for update`;
    inFlight = renewal.map((e) => deliver(e));
    const queued = await lockWaiters(1, 500);
    inFlight.push(...then.map((e) => deliver(e)));
    await lockWaiters(queued + 1, 500);
  });
  const statuses = (await Promise.all(inFlight)).map((r) => r.status);
  assert.deepEqual(statuses.filter((x) => x !== 200), [], statuses.join(','));
  for (const e of [...renewal, ...then]) assert.equal((await deliver(e)).status, 200);
}

/** What is frozen in the user's open lots, in credits. */
async function frozenLeft(userId: string): Promise<string> {
  const [{ left }] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as left from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${userId} and l.open and l.frozen`;
  return left;
}

// A dispute waits for the account before it reads the grant's lots, so the lot the renewal rolled
// the credits into is frozen too: nothing of it can be spent meanwhile.
Deno.test('a dispute opened while the renewal holds the account freezes what rolled over', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000; basic rolls up to 2,000
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  await spend(s.token, 6000);
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const dispute = await emulator(`/_emulator/charges/${await chargeOfInvoice(invoice)}/dispute`, {
    outcome: 'open',
    deliver: false,
  });
  await queuedBehindRenewal(s.id, late.events, dispute.events);
  await assertLedgerInvariants();
  // As when the dispute comes after the renewal: the 2,000 rolled over are frozen (nothing is
  // held: what the grant spent is owed only if the dispute is lost).
  assert.equal((await balanceOf(s.token)).balance, '12000', JSON.stringify(await planLots(s.id)));
  assert.equal(await frozenLeft(s.id), '2000', JSON.stringify(await planLots(s.id)));
  assert.equal((await balanceOf(s.token)).held, '0');
  const [{ frozen }] = await testDb`select bool_and(l.frozen) as frozen from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id} and l.moved_from is not null`;
  assert.equal(frozen, true, 'the rolled-over lot is frozen with its grant');
});

// A refund queued behind the renewal reads the grant's lots after the renewal rolled them, so it
// reaches what rolled over instead of forgiving it as expired.
Deno.test('a partial refund queued behind the renewal takes back what rolled over before forgiving what expired', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  await spend(s.token, 6000); // 4,000 left: 2,000 will roll, 2,000 expire
  const late = await renew(plan.stripe_subscription, 'paid', false);
  const refund = await emulator(`/_emulator/charges/${await chargeOfInvoice(invoice)}/refund`, {
    amount: 300, // of 999: floor(10,000 × 300 / 999) = 3,003 credits back
    deliver: false,
  });
  await queuedBehindRenewal(s.id, late.events, refund.events);
  await assertLedgerInvariants();
  // As in order: the 2,000 rolled over are taken, and 1,003 of the 2,000 expired are forgiven.
  assert.equal((await balanceOf(s.token)).balance, '10000', JSON.stringify(await planLots(s.id)));
});

async function hold(token: string, amount: string): Promise<void> {
  const h = await api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 3600 } });
  assert.equal(h.status, 201, h.text);
}

Deno.test('a hold and a job reservation on plan credits at an on-time renewal give way newest first to what expires, never to what rolls', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000); // 4,000 left: 2,000 will roll, 2,000 expire
  await hold(s.token, '1000');
  // A job waiting to run, its 2,500 reserved (enqueued as POST /jobs does, set to wait an hour).
  await testDb.begin(async (sql) => {
    const [job] = await sql`select id from billing.enqueue_job(${s.id}, 'ledger_export', '{}'::jsonb,
      ${crypto.randomUUID()}, null, 2500)`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${job.id}`;
  });
  await renew(plan.stripe_subscription);
  await assertLedgerInvariants();
  const holds = await testDb`select h.purpose, trim_scale(h.amount)::text as amount, h.status from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id} order by h.created_at`;
  // 3,500 held on 2,000 left after the expiry: the newer (the job's) gives 1,500, before the new grant.
  assert.deepEqual(holds.map((h) => [h.purpose, h.amount, h.status]), [['user', '1000', 'active'], [
    'job',
    '1000',
    'active',
  ]]);
  assert.deepEqual(await balanceOf(s.token), { balance: '12000', held: '2000', available: '10000' });
});

Deno.test('a renewal with a package lot due at the same time expires each once and re-arms the low-balance alert', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  await buy(s.token, 'mini'); // 5,000 package credits
  // The package's expiry has come and the sweep has not reached it; the student watches 3,000.
  await testDb`update billing.lots l set expires_at = now() - interval '1 minute'
    from billing.accounts a where a.id = l.account_id and a.user_id = ${s.id} and l.priority <> 5`;
  await testDb`update billing.accounts a set next_expiry = now() - interval '1 minute', low_balance_threshold = 3000
    where a.user_id = ${s.id}`;
  await renew(plan.stripe_subscription);
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '12000', JSON.stringify(await planLots(s.id)));
  assert.equal(await breakage(s.id), '7000', 'the package 5,000 and the plan 2,000 over the cap, once each');
  const [a] = await testDb`select a.low_balance_fired, a.next_expiry > now() as next_expiry_ahead
    from billing.accounts a where a.user_id = ${s.id}`;
  assert.deepEqual(a, { low_balance_fired: false, next_expiry_ahead: true });
  await testDb`select billing.expire_lots(500)`;
  assert.equal(await breakage(s.id), '7000', 'the sweep after finds nothing more');
});

Deno.test('twenty spends at once during an on-time renewal: what was left when it ran rolls, nothing is created', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 6000);
  const spends = Array.from({ length: 20 }, () =>
    reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 700 * 50, output_tokens: 0 },
    }));
  const [results] = await Promise.all([Promise.all(spends), renew(plan.stripe_subscription)]);
  await assertLedgerInvariants();
  assert.ok(results.every((r) => r.status === 201 || r.status === 402), results.map((r) => r.status).join(','));
  const ok = results.filter((r) => r.status === 201).length;
  // The spends committed before the renewal's rollover drew on the 4,000 left; the rest on the new period.
  const [{ before }] = await testDb`select count(*)::int as before from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${s.id} and t.kind = 'usage' and t.id < (select min(r.id) from billing.transfers r
      where r.from_account_id = a.id and r.kind in ('plan_rollover', 'expiry'))`;
  const left = 4000 - 700 * (before - 1); // the first spend of 6,000 is one of them
  const expected = Math.min(2000, left) + 10000 - 700 * (ok - (before - 1));
  assert.equal((await balanceOf(s.token)).balance, String(expected), `${ok} spends, ${before - 1} before the renewal`);
  assert.equal(await breakage(s.id), String(Math.max(left - 2000, 0)));
});

Deno.test('a renewal that rolls every credit left tells the low-balance alert nothing (the balance never dipped)', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  await spend(s.token, 8000); // 2,000 left: basic rolls all of them
  await testDb`update billing.accounts a set low_balance_threshold = 1000 where a.user_id = ${s.id}`;
  await renew(plan.stripe_subscription);
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '12000');
  assert.equal(await breakage(s.id), '0');
  const [{ alerts }] = await testDb`select count(*)::int as alerts from billing.notification_outbox o
    where o.user_id = ${s.id} and o.template = 'balance_alert'`;
  assert.equal(alerts, 0, 'moving 2,000 out and in is no crossing of 1,000');
});

Deno.test('a dispute after the renewal freezes what rolled over too; parked in a hold first, it is taken back after the hold ends', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly');
  const invoice = String((await stripeApi(`/v1/subscriptions/${plan.stripe_subscription}`)).latest_invoice);
  await spend(s.token, 6000);
  await renew(plan.stripe_subscription); // 2,000 roll over, + 10,000 for period 2
  const parked = await api('/credits/holds', {
    token: s.token,
    headers: key(),
    body: { amount: '12000', ttl_seconds: 3600 },
  });
  assert.equal(parked.status, 201, parked.text);
  const charge = await chargeOfInvoice(invoice);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  // The hold reserved the rolled-over 2,000 (they expire first) and 10,000 of period 2: the
  // rolled-over lot freezes under it, the hold keeps it.
  assert.deepEqual(await balanceOf(s.token), { balance: '12000', held: '12000', available: '0' });
  assert.equal(await frozenLeft(s.id), '2000');
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  // 10,000 to take back: the rolled-over 2,000 are reserved (taken back when the hold ends), 2,000
  // expired (forgiven), 6,000 spent owed: her own credits pay it, and the hold reserved them all,
  // so they are claimed from what it returns (never a debt beside credits it gives back).
  assert.deepEqual(await balanceOf(s.token), { balance: '12000', held: '12000', available: '0' });
  const r = await api(`/credits/holds/${(parked.body.data as { hold_id: string }).hold_id}/release`, {
    token: s.token,
    headers: key(),
    body: {},
  });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await balanceOf(s.token), { balance: '12000', held: '8000', available: '4000' }, 'claimed: kept');
  await sweepExpiredHolds(); // the minute's tick
  assert.equal(
    (await balanceOf(s.token)).balance,
    '4000',
    'the 2,000 it returned of the rolled-over lot are taken back',
  );
  await assertLedgerInvariants();
});
