// The watch queue (billing.account_watch, drained by billing.run_account_watch) under students'
// tokens on the real stack: refunds and spends between two ticks, ticks racing postings
// and each other, the tick stopped while available goes down, up and down, a cap's alert reached
// just before its period ends, and one student's account that the tick cannot look at. The rules
// (docs/spend-controls.md § Alerts, § Auto-recharge): a refund never starts a recharge by itself,
// a spend after it may; one recharge and one alert per crossing; the watch moves no money; what
// a student can spend never depends on when the tick runs; one account never stops the others.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import {
  api,
  assertLedgerInvariants,
  env,
  functionsUrl,
  fund,
  holdsLapse,
  key,
  newUser,
  spend,
  testDb,
  tick,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { batch, dataOf, usageEvent } from '../support/money.ts';
import { chargeOf, emulator, rechargingBuyer } from '../support/purchases.ts';

type Res = Awaited<ReturnType<typeof api>>;

/** A student granted `credits`. */
async function funded(credits: string) {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}

const recharges = async (user: string) =>
  (await testDb`select status from billing.recharges where user_id = ${user} order by created_at`).map((r) => r.status);
const lowAlerts = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.notification_outbox
    where user_id = ${user} and template = 'balance_alert' and payload ->> 'kind' = 'balance_below'`)[0].n as number;
const capAlerts = async (user: string) =>
  (await testDb`select (payload ->> 'percent')::int as pct from billing.notification_outbox
    where user_id = ${user} and template = 'balance_alert' and payload ->> 'kind' = 'cap_used' order by id`)
    .map((r) => r.pct as number);
const transfersOf = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id in (t.from_account_id, t.to_account_id) where a.user_id = ${user}`)[0].n as number;
const refund = async (session: string, cents: number) =>
  emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: cents });

const hold = (token: string, amount: string, ttl = 600) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: ttl } });
const act = (token: string, id: unknown, action: 'capture' | 'release', body: Record<string, unknown> = {}) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: key(), body });
const holdIdOf = (r: Res) => {
  assert.equal(r.status, 201, r.text);
  return dataOf(r).hold_id as string;
};
/** Time passes for a hold: its TTL is over. */
const overdue = (id: string) => holdsLapse(testDb`h.id = ${id}`);

// ============================================================ a refund never starts a recharge by itself

// Only a posting that is not a refund and leaves available below the threshold may set off a
// recharge: a spend that left 9,980 (no crossing) and a refund to 980 reach the tick as one
// queued row, and the refund's crossing charges no card until the student spends again.
Deno.test('a refund after a spend that stayed above the threshold charges no card until the student spends again', async () => {
  const s = await rechargingBuyer('1000');
  await watchTick();
  await spend(s.token, 10); // 9,980: above 1,000, no crossing
  await refund(s.session, 900); // 9,000 credits back: 980 available, the refund's crossing
  await watchTick();
  assert.deepEqual(await recharges(s.id), [], 'the refund crossed: no recharge by itself');
  assert.equal(await lowAlerts(s.id), 0, 'no low-balance alert was asked for');
  await spend(s.token, 1); // a spend after it may
  await watchTick();
  assert.deepEqual(await recharges(s.id), ['queued']);
  await assertLedgerInvariants();
});

// A refund settles the buyer's account first (take_back_lots → settled →
// expire_overdue_holds): the hold past its TTL that ends there leaves available above the
// threshold, so it sets off nothing, and the refund's own crossing charges no card.
Deno.test('a refund that ends a hold past its TTL charges no card by itself', async () => {
  const s = await rechargingBuyer('1000');
  const h = holdIdOf(await hold(s.token, '500'));
  await watchTick(); // 9,490: above, nothing
  await overdue(h);
  await refund(s.session, 900); // the hold ends (9,990), then 9,000 back: 990 available
  await watchTick();
  assert.deepEqual(await recharges(s.id), [], 'nothing but the refund moved: no recharge');
  await assertLedgerInvariants();
});

Deno.test('a refund through the threshold, then a spend: one recharge, from the spend', async () => {
  const s = await rechargingBuyer('1000');
  await watchTick();
  await refund(s.session, 900); // 990 available
  await watchTick();
  assert.deepEqual(await recharges(s.id), [], 'the refund alone: none');
  await spend(s.token, 1);
  await spend(s.token, 1);
  await watchTick();
  await watchTick();
  assert.deepEqual(await recharges(s.id), ['queued'], 'the spend after it: one');
  await assertLedgerInvariants();
});

// ============================================================ ticks racing postings and each other

Deno.test('spends, holds and captures through the threshold while eight ticks run at once: one recharge, one alert', async () => {
  const s = await rechargingBuyer('6000');
  const lb = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '6000' } });
  assert.equal(lb.status, 200, lb.text);
  await watchTick();
  const db = postgres(env('SUPABASE_DB_URL'), { max: 8, onnotice: () => {}, prepare: false });
  let posting = true;
  const ticker = async () => {
    let n = 0;
    while (posting) {
      await db`select billing.run_account_watch(100000)`;
      n++;
    }
    return n;
  };
  try {
    const ticks = Array.from({ length: 8 }, ticker);
    // Available only falls (a capture of all of a hold leaves it as it was): one crossing.
    const holds = await Promise.all(Array.from({ length: 6 }, () => hold(s.token, '300')));
    const posts = await Promise.all([
      ...Array.from({ length: 20 }, () => spend(s.token, 150)),
      ...holds.map((h) => act(s.token, holdIdOf(h), 'capture')),
    ]);
    posting = false;
    assert.ok((await Promise.all(ticks)).every((n) => n > 0));
    for (const p of posts) assert.ok(p.status === 200 || p.status === 201, p.text);
    await watchTick();
    assert.deepEqual(await recharges(s.id), ['queued'], 'one recharge for the one crossing');
    assert.equal(await lowAlerts(s.id), 1, 'one alert for the one crossing');
    const [a] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
      from billing.accounts where user_id = ${s.id}`;
    assert.deepEqual({ ...a }, { balance: '5190', held: '0' }, '9,990 − 20 × 150 − 6 × 300');
  } finally {
    posting = false;
    await db.end();
  }
  await assertLedgerInvariants();
});

Deno.test('usage batches over six students, locked in id order, beside six ticks: no deadlock, one alert each', async () => {
  const students = await Promise.all(Array.from({ length: 6 }, () => funded('100')));
  for (const st of students) {
    const r = await api('/credits/alerts/low-balance', { method: 'PUT', token: st.token, body: { threshold: '50' } });
    assert.equal(r.status, 200, r.text);
  }
  const db = postgres(env('SUPABASE_DB_URL'), { max: 6, onnotice: () => {}, prepare: false });
  let posting = true;
  const ticker = async () => {
    while (posting) await db`select billing.run_account_watch(100000)`;
  };
  try {
    const ticks = Array.from({ length: 6 }, ticker);
    // Each batch names the students in another order; 4 batches × 3 events × 5 credits = 60 each.
    const batches = Array.from({ length: 4 }, (_, b) =>
      batch(
        students.flatMap((st) => Array.from({ length: 3 }, () => usageEvent(st.id, crypto.randomUUID(), 5)))
          .sort(() => (b % 2 ? 1 : -1) * (Math.random() - 0.3)),
      ));
    const answers = await Promise.all(batches);
    posting = false;
    await Promise.all(ticks);
    for (const r of answers) assert.equal(r.status, 200, r.text);
  } finally {
    posting = false;
    await db.end();
  }
  await watchTick();
  for (const st of students) {
    const [a] =
      await testDb`select trim_scale(balance)::text as balance from billing.accounts where user_id = ${st.id}`;
    assert.equal(a.balance, '40');
    assert.equal(await lowAlerts(st.id), 1, 'one crossing, one alert');
  }
  await assertLedgerInvariants();
});

// ============================================================ the tick stopped a while

Deno.test('the tick stopped while available went down, up and down: one recharge per look, within the monthly limit, no money moved by the watch', async () => {
  const s = await rechargingBuyer('9000', 2);
  const lb = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '9000' } });
  assert.equal(lb.status, 200, lb.text);
  await watchTick();
  const cycles = async () => {
    for (let i = 0; i < 3; i++) {
      await spend(s.token, 2000); // below 9,000
      await fund(s.id, '2000'); // back above
    }
    await spend(s.token, 2000); // below again
  };
  await cycles();
  let before = await transfersOf(s.id);
  await watchTick();
  await watchTick();
  assert.equal(await transfersOf(s.id), before, 'the watch itself moves no credits');
  assert.deepEqual(await recharges(s.id), ['queued'], 'one look, one recharge');
  assert.equal(await lowAlerts(s.id), 1);
  await tick(); // charged, credited by the webhook: 7,990 + 5,000
  assert.deepEqual(await recharges(s.id), ['succeeded']);
  await spend(s.token, 5000); // 7,990: below again, a new crossing
  await cycles();
  before = await transfersOf(s.id);
  await watchTick();
  assert.equal(await transfersOf(s.id), before);
  assert.deepEqual(await recharges(s.id), ['succeeded', 'queued']);
  await tick();
  await spend(s.token, 5000);
  await cycles();
  await watchTick();
  assert.deepEqual(await recharges(s.id), ['succeeded', 'succeeded'], 'two a month is the limit');
  assert.equal(await lowAlerts(s.id), 3, 'one alert per look that found a new crossing');
  await assertLedgerInvariants();
});

// ============================================================ caps: exact without the tick, alerts once

/** A student granted `credits`, with a day cap of 100 and alerts at `percents` of it. */
async function cappedAt100(credits: number, percents: number[]) {
  const s = await funded(String(credits));
  const cap = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '100' } });
  assert.equal(cap.status, 200, cap.text);
  const al = await api('/credits/alerts/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', model: null, percents },
  });
  assert.equal(al.status, 200, al.text);
  return s;
}

Deno.test('a cap refuses at its limit before any tick, and its percent alerts fire once each when the tick looks', async () => {
  const s = await cappedAt100(1000, [50, 100]);
  await Promise.all([...Array.from({ length: 10 }, () => spend(s.token, 10)), watchTick(), watchTick()]);
  const over = await api('/credits/usage', {
    token: env('SUPABASE_SERVICE_ROLE_KEY'),
    headers: key(),
    body: { user_id: s.id, model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
  });
  assert.equal(over.status, 402, over.text);
  await Promise.all([watchTick(), watchTick(), watchTick()]);
  assert.deepEqual((await capAlerts(s.id)).sort((a, b) => a - b), [50, 100]);
  await assertLedgerInvariants();
});

// The tick reads a cap's alerts in the period its spending was counted in: 100% of a day cap
// reached in its last seconds still fires when the tick looks after midnight. (The cap's
// period_start is moved back one day: the state the ledger is in when the tick runs then.)
Deno.test('a cap percent reached just before the period ends still fires when the tick looks after it', async () => {
  const s = await cappedAt100(1000, [100]);
  await watchTick();
  await spend(s.token, 100); // 100% of the day, at 23:59:59
  // Midnight passes before the tick looks.
  await testDb`update billing.spend_caps c set period_start = c.period_start - interval '1 day'
    from billing.accounts a where a.id = c.account_id and a.user_id = ${s.id}`;
  await watchTick();
  assert.deepEqual(await capAlerts(s.id), [100], 'the crossing happened: its alert is sent');
});

// ============================================================ one account never stops the others

// One account never stops the tick for the others (the dispatcher and the jobs tick run it
// first). A student whose last 7 days' spending is a capture of 0.000000000000000001 credits has
// a pace that rounds to 0: the low-balance alert then has no runway, and fires like any other.
Deno.test('a student whose pace rounds to nothing gets their alert, and the tick goes on for everyone', async () => {
  const s = await funded('100');
  const other = await funded('100');
  const lb = await api('/credits/alerts/low-balance', { method: 'PUT', token: other.token, body: { threshold: '50' } });
  assert.equal(lb.status, 200, lb.text);
  await spend(other.token, 60); // another student's crossing, queued
  const tiny = holdIdOf(await hold(s.token, '0.000000000000000001'));
  const c = await act(s.token, tiny, 'capture');
  assert.equal(c.status, 200, c.text);
  const put = await api('/credits/alerts/low-balance', { method: 'PUT', token: s.token, body: { threshold: '50' } });
  assert.equal(put.status, 200, put.text);
  try {
    holdIdOf(await hold(s.token, '60')); // 40 available: below 50, queued for the tick
    let error: unknown = null;
    await watchTick().catch((e) => error = e);
    const dispatch = await fetch(`${functionsUrl}/notify/dispatch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
    });
    await dispatch.body?.cancel();
    assert.equal(dispatch.status, 200, `the dispatcher runs for everyone (the tick: ${error})`);
    assert.equal(error, null, `the tick failed: ${error}`);
    assert.equal(await lowAlerts(other.id), 1, "the other student's alert is sent");
    assert.equal(await lowAlerts(s.id), 1, 'and theirs, without a runway');
  } finally {
    // Leave the shared stack's tick working for everyone else.
    await testDb`delete from billing.account_watch w using billing.accounts a
      where a.id = w.account_id and a.user_id = ${s.id}`;
    await testDb`update billing.accounts set low_balance_threshold = null where user_id = ${s.id}`;
  }
});
