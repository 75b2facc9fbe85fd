// Today's tail read from what the writer keeps (billing.ledger_tail, lots_tail, active_tail) under
// students' own traffic: every road a student or a school member can take into the ledger over
// HTTP, many requests of one student at once on different backends (through the pooler),
// replays, refusals, holds captured and released, a school's wallet, allowances and sponsor
// codes, a gift, a lost dispute, a member's removal, while roll-ups run and a long transaction
// holds the horizon. Every report read meanwhile equals the raw rows in its snapshot, and so do
// today's tail parts read from the summary and from the rows. Students' tokens act; the
// operator's side only reads, runs the roll-up as the cron job does, and pays through the Stripe
// emulator as the students' banks would.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { api, assertLedgerInvariants, env, key, testDb, tick } from '../support/helpers.ts';
import { batch, dataOf, outcomesOf, usageEvent } from '../support/money.ts';
import { join, person } from '../support/orgs.ts';
import { chargeOf, deliver, emulator, pays, startCheckout } from '../support/purchases.ts';
import { gatewayUrl } from '../support/ai.ts';
import { renew, subscribeTo } from '../support/plans.ts';
import { buyGift } from '../support/codes.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * In one snapshot: GET /admin/metrics's SQL (yesterday to tomorrow, by day) against the raw rows,
 * and today's tail from the watermark read from what the writer kept against the same read from
 * the rows (credits by kind and model, the liability's change, and today's active accounts once
 * united with the rolled-up bitmap).
 */
async function tailIsRaw(sql: postgres.Sql) {
  const [row] = await sql.begin('isolation level repeatable read', (tx) =>
    tx`
    with d as (select (now() at time zone 'UTC')::date as today),
    w as (select d.today, (d.today + 1)::timestamp at time zone 'UTC' as day_end, r.active_accounts as bitmap,
            coalesce(r.ledger_until, d.today::timestamp at time zone 'UTC') as w
          from d left join billing.revenue_rollup r on r.day = d.today and r.ledger_until > d.today::timestamp at time zone 'UTC'),
    k as (select w.*, p.credits as kept_credits, p.user_credit_change as kept_change, p.active_accounts as kept_active,
            q.credits as raw_credits, q.user_credit_change as raw_change, q.active_accounts as raw_active,
            p.lots as kept_lots, q.lots as raw_lots
          from w, billing.ledger_parts(w.w, w.day_end, true) p, billing.ledger_parts(w.w, w.day_end, false) q),
    norm as (select (select coalesce(jsonb_agg(x order by x::text), '[]') from jsonb_array_elements(k.kept_credits) x) as kept,
               (select coalesce(jsonb_agg(x order by x::text), '[]') from jsonb_array_elements(k.raw_credits) x) as raw,
               billing.sum_lots(k.kept_lots, '[]') as kept_lots, billing.sum_lots(k.raw_lots, '[]') as raw_lots from k)
    select r.report -> 'total' = billing.revenue_metrics_live((k.today - 1)::timestamp at time zone 'UTC',
             (k.today + 2)::timestamp at time zone 'UTC') as total_equal,
           r.report -> 'series' = (select jsonb_agg(billing.revenue_metrics_live(x::timestamp at time zone 'UTC',
             (x + 1)::timestamp at time zone 'UTC') order by x) from generate_series(-1, 1) n, lateral (select k.today + n as x) y)
             as series_equal,
           norm.kept = norm.raw as credits_equal, k.kept_change = k.raw_change as change_equal,
           (select coalesce(jsonb_agg(x order by x::text), '[]') from jsonb_array_elements(norm.kept_lots) x)
             = (select coalesce(jsonb_agg(x order by x::text), '[]') from jsonb_array_elements(norm.raw_lots) x) as lots_equal,
           billing.count_accounts(array[coalesce(k.bitmap, B'')], k.kept_active)
             = billing.count_accounts(array[coalesce(k.bitmap, B'')], k.raw_active) as active_equal,
           billing.ledger_tail_readable(k.w, k.day_end) as kept, k.w as watermark,
           norm.kept::text as kept_credits, norm.raw::text as raw_credits,
           (select count(*)::int from (select 1 from billing.ledger_tail x where x.at >= k.w group by x.at, x.kind
              having count(distinct x.backend) > 1) s) as shared_seconds
    from k, norm, lateral (select billing.metrics_report(k.today - 1, k.today + 2, 'day') as report) r`);
  return row as {
    total_equal: boolean;
    series_equal: boolean;
    credits_equal: boolean;
    change_equal: boolean;
    lots_equal: boolean;
    active_equal: boolean;
    kept: boolean;
    watermark: Date;
    kept_credits: string;
    raw_credits: string;
    shared_seconds: number;
  };
}

const equal = (r: Awaited<ReturnType<typeof tailIsRaw>>) =>
  r.total_equal && r.series_equal && r.credits_equal && r.change_equal && r.lots_equal && r.active_equal;

const hold = (token: string, amount: string, k = crypto.randomUUID()) =>
  api('/credits/holds', { token, headers: { 'idempotency-key': k }, body: { amount, ttl_seconds: 600 } });
const holdAction = (token: string, id: unknown, action: 'capture' | 'release', body = {}, k = crypto.randomUUID()) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: { 'idempotency-key': k }, body });
/** One chat completion through the metered gateway, under `k` (a retry sends the same key). */
const chat = (token: string, k: string, model = 'gpt-4o-mini') =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': k },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hello #standin words=12' }], max_tokens: 64 }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));
const redeem = (token: string, code: string, k = crypto.randomUUID()) =>
  api('/credits/codes/redeem', { token, body: { code }, headers: { 'idempotency-key': k } });

/** Both of `fn`'s answers for one key sent twice at once: a retry racing the first try. */
const twice = <T>(fn: () => Promise<T>) => Promise.all([fn(), fn()]);

Deno.test("students' money on every road, many at once: every report equals the raw rows, today's tail read from what the writer kept", async () => {
  const side = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {}, prepare: false });
  const horizon = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  try {
    // Today rolled up past the instant the writer began keeping the tail, so it is read from it.
    const [{ since }] = await side`select since from billing.ledger_tail_kept`;
    await sleep(Math.max(0, since.getTime() + 2100 - Date.now()));
    await side`select billing.roll_up_ledger('1 day')`;
    assert.equal((await tailIsRaw(side)).kept, true, "today's tail is read from what the writer kept");

    const [owner, m1, m2, buyer, subscriber, steadyOne] = await Promise.all(
      ['owner', 'member1', 'member2', 'buyer', 'subscriber', 'steady'].map(person),
    );
    const created = await api('/orgs', { token: owner.token, body: { name: 'Tail School', funding: 'allowance' } });
    assert.equal(created.status, 201, created.text);
    const org = (created.body.data as { id: string }).id;
    await join(owner.token, org, m1);
    await join(owner.token, org, m2);
    // Paid for as students pay: the school's wallet by its owner, the students' own accounts.
    await Promise.all([
      pays(owner.token, { package_id: 'plus', org_id: org }),
      pays(owner.token, { package_id: 'mini' }),
      pays(m1.token, { package_id: 'mini' }),
      pays(steadyOne.token, { package_id: 'mini' }),
    ]);
    const refunded = await pays(owner.token, { package_id: 'mini' });
    const disputed = await pays(buyer.token, { package_id: 'mini' });
    await pays(buyer.token, { package_id: 'starter' });
    const plan = await subscribeTo(subscriber.token, 'basic_monthly');

    // While the students act: roll-ups as the minute job runs them, and reports read, each
    // compared with the raw rows in its snapshot.
    const wrong: unknown[] = [];
    let checks = 0, keptChecks = 0, shared = 0, running = true;
    const watermarks = new Set<number>();
    const watcher = (async () => {
      while (running) {
        await side`select billing.roll_up_ledger('1 day')`;
        const r = await tailIsRaw(side);
        checks++;
        if (r.kept) keptChecks++;
        shared = Math.max(shared, r.shared_seconds);
        watermarks.add(r.watermark.getTime());
        if (!equal(r)) wrong.push(r);
        await sleep(50);
      }
    })();
    // A long transaction (started now, idle) holds the roll-up's horizon for a while.
    // The gate exists before the transaction starts: under load the release below may come first.
    let letGo = () => {};
    const gate = new Promise<void>((r) => (letGo = r));
    const held = horizon.begin(async (tx) => {
      await tx`select now()`;
      await gate;
    });
    const released = sleep(800).then(() => letGo());

    const results: { what: string; status: number; text: string }[] = [];
    const note = (what: string) => <R extends { status: number; text: string }>(r: R): R => {
      results.push({ what, status: r.status, text: r.text });
      return r;
    };

    // A student spending steadily (within the gateway's 60 calls a minute), one call after
    // another, while the rest runs and for a while after, so roll-ups pass seconds in which
    // writes go on; slower and longer while fewer than five reports were read (each read's raw
    // side grows with the day's rows: late in a full suite, a read takes seconds).
    let until = Infinity;
    const steady = (async () => {
      for (let n = 0; n < 50 && (Date.now() < until || checks < 5); n++) {
        note('steady chat')(await chat(steadyOne.token, crypto.randomUUID()));
        await sleep(Date.now() < until ? 80 : 700);
      }
    })();
    await Promise.all([
      // The school: allowances funded (a retry racing it), members spending them through the
      // gateway (each call retried at once under its key), a sponsor code redeemed twice at once
      // and one revoked, then a member removed (the allowance swept back to the wallet).
      (async () => {
        const k = crypto.randomUUID();
        for (
          const r of await twice(() =>
            api(`/orgs/${org}/allowances`, {
              token: owner.token,
              headers: { 'idempotency-key': k },
              body: { amount: '300' },
            })
          )
        ) note('allowances')(r);
        await Promise.all([m1, m2].flatMap((m) =>
          Array.from({ length: 6 }, () => {
            const k = crypto.randomUUID();
            return twice(() => chat(m.token, k)).then((rs) => rs.map(note('member chat')));
          })
        ));
        const sp = note('sponsor code')(
          await api(`/orgs/${org}/sponsor-codes`, {
            token: owner.token,
            headers: key(),
            body: { credits: '25', user_id: m1.id },
          }),
        );
        const code = dataOf(sp).code as string;
        const rk = crypto.randomUUID();
        await Promise.all(
          [redeem(m1.token, code, rk), redeem(m1.token, code, rk), redeem(m1.token, code)].map((p) =>
            p.then(note('sponsor redeem'))
          ),
        );
        const sp2 = note('sponsor code 2')(
          await api(`/orgs/${org}/sponsor-codes`, {
            token: owner.token,
            headers: key(),
            body: { credits: '10', user_id: m2.id },
          }),
        );
        await twice(() => api(`/orgs/${org}/sponsor-codes/${dataOf(sp2).id}`, { token: owner.token, method: 'DELETE' }))
          .then((rs) => rs.map(note('sponsor revoke')));
        note('remove member')(await api(`/orgs/${org}/members/${m2.id}`, { method: 'DELETE', token: owner.token }));
      })(),
      // One student, many requests at once: holds (one beyond what they have), each captured in
      // part or released with a retry racing it under the same key, gateway calls retried at once.
      (async () => {
        const holds = await Promise.all(
          Array.from(
            { length: 12 },
            (_, i) => hold(buyer.token, i === 0 ? '1000000' : String(10 + i)).then(note('hold')),
          ),
        );
        await Promise.all(
          holds.filter((h) => h.status === 201).map((h, i) => {
            const k = crypto.randomUUID();
            const id = dataOf(h).hold_id;
            return twice(() =>
              i % 3 === 2
                ? holdAction(buyer.token, id, 'release', {}, k)
                : holdAction(buyer.token, id, 'capture', i % 3 ? {} : { amount: '3.5' }, k)
            ).then((rs) => rs.map(note('hold end')));
          }),
        );
        await Promise.all(Array.from({ length: 10 }, () => {
          const k = crypto.randomUUID();
          return twice(() => chat(buyer.token, k, 'gpt-4o')).then((rs) => rs.map(note('buyer chat')));
        }));
        // The first card payment disputed and lost: its credits taken back, partly spent (a debt).
        await emulator(`/_emulator/charges/${await chargeOf(disputed)}/dispute`, { outcome: 'lost' });
      })(),
      // The owner's own account spends while the school's moves run; part of its payment refunded.
      (async () => {
        await Promise.all(
          Array.from({ length: 8 }, () => chat(owner.token, crypto.randomUUID()).then(note('owner chat'))),
        );
        await emulator(`/_emulator/charges/${await chargeOf(refunded)}/refund`, { amount: 200 });
      })(),
      // The product's server reports the students' usage in batches (sent twice at once, as a
      // retry would): an event repeated within the batch, refusals (too dear, unknown model), a
      // member's events charged alone in the batch's transaction (a school pays).
      (async () => {
        const events = [
          ...Array.from({ length: 150 }, (_, i) => usageEvent(owner.id, `o${i}`, 1)),
          ...Array.from({ length: 40 }, (_, i) => usageEvent(m1.id, `m${i}`, 1)),
          usageEvent(owner.id, 'o7', 1),
          usageEvent(owner.id, 'too-dear', 100000),
          { ...usageEvent(m1.id, 'unknown', 1), model: 'no-such-model' },
        ];
        for (const r of await twice(() => batch(events))) {
          note('usage batch')(r);
          if (r.status === 200) {
            const seen = new Set(outcomesOf(r).map((o) => o.status));
            assert.ok(seen.has('applied') || seen.has('duplicate'), r.text.slice(0, 300));
          }
        }
      })(),
      // A plan's period ends while its credits are being spent: renewed, what is left rolls over
      // (and the rest expires); a job reserves and is captured by the worker.
      (async () => {
        await Promise.all(
          Array.from({ length: 4 }, () => chat(subscriber.token, crypto.randomUUID()).then(note('plan chat'))),
        );
        await renew(plan.stripe_subscription);
        note('job')(
          await api('/jobs', {
            token: subscriber.token,
            headers: key(),
            body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'one two three', max_tokens: 50 } },
          }),
        );
        await tick();
      })(),
      // A gift bought by one student and redeemed by another (escrow to student), twice at once.
      (async () => {
        const gift = await buyGift(buyer.token, 'mini');
        await Promise.all(
          [redeem(m2.token, gift.code), redeem(m2.token, gift.code)].map((p) => p.then(note('gift redeem'))),
        );
      })(),
      // A payment fulfilled by the student's own polling racing Stripe's events, each delivered
      // twice at once.
      (async () => {
        const co = await startCheckout(buyer.token, 'mini');
        const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
        await Promise.all([
          ...Array.from(
            { length: 4 },
            () => api(`/checkout/sessions/${co.purchase_id}`, { token: buyer.token }).then(note('poll')),
          ),
          ...events.flatMap((e) => [deliver(e), deliver(e)]).map((p) =>
            p.then((r) => note('webhook')({ status: r.status, text: JSON.stringify(r.body) }))
          ),
        ]);
      })(),
      // Holds that expire unused: the minute job ends them, and a capture after it is refused.
      (async () => {
        const short = await Promise.all(
          Array.from(
            { length: 3 },
            () =>
              api('/credits/holds', { token: m1.token, headers: key(), body: { amount: '2', ttl_seconds: 1 } }).then(
                note('short hold'),
              ),
          ),
        );
        await sleep(1200);
        await testDb`select billing.release_expired_holds(100000)`;
        for (const h of short) note('capture expired')(await holdAction(m1.token, dataOf(h).hold_id, 'capture'));
      })(),
    ]);
    until = Date.now() + 2500;
    await steady;
    await released;
    await held;
    running = false;
    await watcher;

    // Nothing a student sent failed but what should: the hold beyond their credits, a retry
    // racing its first try, a capture after the hold expired.
    const expected = (r: (typeof results)[number]) =>
      (r.what === 'hold' && r.status === 402) || (r.what === 'capture expired' && r.status === 409) ||
      (r.what.endsWith('chat') && r.status === 409 && r.text.includes('IDEMPOTENCY_KEY_IN_USE'));
    assert.deepEqual(results.filter((r) => r.status >= 400 && !expected(r)), [], 'no student request failed otherwise');
    assert.ok(results.some((r) => r.what === 'hold' && r.status === 402), 'the hold beyond the balance was refused');
    // Correctness first: how many reads the load allowed is checked after.
    assert.deepEqual(wrong, [], 'no report read while students acted differed from the raw rows');
    assert.ok(
      checks >= 5 && keptChecks === checks,
      `reports read while students acted (${checks}), each from the tail`,
    );
    assert.ok(watermarks.size >= 2, `the roll-up moved while they did (${watermarks.size} watermarks)`);
    assert.ok(shared >= 1, "some second was written by two backends at once (one student's requests on the pooler)");

    await sleep(2100); // past the horizon and its whole second
    await side`select billing.roll_up_ledger('1 day')`;
    const last = await tailIsRaw(side);
    assert.equal(equal(last), true, `after the students, the report equals the raw rows: ${JSON.stringify(last)}`);
    assert.equal(last.kept, true, "today's tail is read from what the writer kept");
    await assertLedgerInvariants();
  } finally {
    await side.end();
    await horizon.end();
  }
});
