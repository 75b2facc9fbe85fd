// The credit ledger's roll-up (billing.roll_up_ledger, 90-reporting.sql) against the raw rows,
// with writers running: a report read at any moment equals the rows it can see, to the cent,
// however transactions interleave and in whatever order they commit.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { env, newUser, testDb } from '../support/helpers.ts';
import { microCard } from '../support/money.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * In one snapshot: whether GET /admin/metrics's SQL (yesterday to tomorrow, by day) equals the
 * same range computed from the raw rows, and today's roll-up watermark.
 */
async function reportIsRaw(sql: postgres.Sql) {
  const [row] = await sql.begin('isolation level repeatable read', (tx) =>
    tx`
    with d as (select (now() at time zone 'UTC')::date as today)
    select r.report -> 'total' = billing.revenue_metrics_live((today - 1)::timestamp at time zone 'UTC',
             (today + 2)::timestamp at time zone 'UTC') as total_equal,
           r.report -> 'series' = (select jsonb_agg(billing.revenue_metrics_live(x::timestamp at time zone 'UTC',
             (x + 1)::timestamp at time zone 'UTC') order by x) from generate_series(0, 2) k, lateral (select today - 1 + k as x) y) as series_equal,
           (select max(ledger_until) from billing.revenue_rollup) as watermark,
           billing.ledger_tail_readable((select max(ledger_until) from billing.revenue_rollup),
             (today + 1)::timestamp at time zone 'UTC') as tail_kept,
           (select count(*)::int from billing.ledger_tail x where x.at < (select max(ledger_until) from billing.revenue_rollup))
             as kept_behind
    from d, lateral (select billing.metrics_report(today - 1, today + 2, 'day') as report) r`);
  return row as {
    total_equal: boolean;
    series_equal: boolean;
    watermark: Date;
    tail_kept: boolean;
    kept_behind: number;
  };
}

async function fundedUsers(n: number): Promise<string[]> {
  const users = await Promise.all(Array.from({ length: n }, () => newUser()));
  await testDb`select billing.grant_credits(u, 100000, 'promo_grant', 'watermark-fund:' || u)
    from unnest(${users}::uuid[]) u`;
  return users;
}

Deno.test('a ledger transaction that starts before a roll-up and commits after it is counted once', async () => {
  const [user] = await fundedUsers(1);
  const model = await microCard();
  const writer = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  const other = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  let release = () => {};
  const held = new Promise<void>((r) => (release = r));
  try {
    let started: Date | undefined;
    // Starts now, so its transfer is dated now, and commits only after the roll-ups below.
    const slow = writer.begin(async (tx) => {
      [{ started }] = await tx`select now() as started`;
      await held;
      await tx`select billing.charge_usage(${user}, ${model}, 1234567, 0, ${'watermark-slow:' + user})`;
    });
    while (!started) await sleep(20);
    await sleep(1500);
    // A transfer started and committed meanwhile: later in time, earlier in commit order.
    await other`select billing.charge_usage(${user}, ${model}, 2500000, 0, ${'watermark-fast:' + user})`;
    const [{ w }] = await other`select billing.roll_up_ledger('1 day') as w`;
    assert.ok(w < started!, `the roll-up stopped before the open transaction's start (${w} < ${started})`);
    release();
    await slow;
    // The horizon is a second before the oldest open transaction, the watermark on a whole
    // second below it: two seconds after the commit, the roll-up has passed it.
    // Other test files run in parallel may hold a transaction open meanwhile: try again a while.
    await sleep(2100);
    let after: Date | null = null;
    for (let i = 0; i < 150; i++) {
      [{ w: after }] = await other`select billing.roll_up_ledger('1 day') as w`;
      if (after !== null && after > started!) break;
      await sleep(200);
    }
    assert.ok(after !== null && after > started!, 'once it committed, the roll-up passed it');
    const [{ n }] =
      await other`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
      where a.user_id = ${user} and t.kind = 'usage' and t.created_at < ${after}`;
    assert.equal(n, 2, 'both charges are before the watermark: in the rolled-up half');
    const report = await reportIsRaw(other);
    assert.equal(report.total_equal, true, 'the report equals the raw rows');
    assert.equal(report.series_equal, true, 'each day of the series equals its raw rows');
  } finally {
    release(); // a failed assertion must not leave the transaction waiting
    await writer.end({ timeout: 5 });
    await other.end();
  }
});

Deno.test('writers committing out of order while roll-ups run: every report read meanwhile equals the raw rows, to the cent', async () => {
  const users = await fundedUsers(6);
  const model = await microCard();
  const writers = postgres(env('SUPABASE_DB_URL'), { max: 4, onnotice: () => {}, prepare: false });
  const side = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {}, prepare: false });
  const until = performance.now() + 6000;
  let written = 0;
  try {
    // Each transaction takes its start time, waits a random while, then charges usage (or grants), so
    // commits land out of the order of the rows' dates.
    const write = async (w: number) => {
      for (let i = 0; performance.now() < until; i++) {
        const user = users[(w + i) % users.length];
        const tokens = (1 + ((w * 7919 + i * 104729) % 99_999)) * 100; // a charge of up to four decimals (microCard)
        const amount = (tokens / 1_000_000).toFixed(4);
        await writers.begin(async (tx) => {
          await tx`select pg_sleep(${((w * 31 + i * 17) % 200) / 1000})`;
          if (i % 10 === 9) {
            await tx`select billing.grant_credits(${user}, ${amount}, 'promo_grant', ${`watermark-grant:${w}:${i}:${user}`})`;
          } else {
            await tx`select billing.charge_usage(${user}, ${model}, ${tokens}, 0, ${`watermark-usage:${w}:${i}:${user}`})`;
          }
        });
        written++;
      }
    };
    const rollUps = async () => {
      let runs = 0;
      while (performance.now() < until) {
        await side`select billing.roll_up_ledger('1 day')`;
        runs++;
        await sleep(150);
      }
      return runs;
    };
    const reads = async () => {
      const wrong: string[] = [];
      let n = 0;
      while (performance.now() < until) {
        const r = await reportIsRaw(side);
        if (!r.total_equal || !r.series_equal) wrong.push(`read ${n} at watermark ${r.watermark.toISOString()}`);
        n++;
        await sleep(200);
      }
      return { wrong, n };
    };
    const [, , , , runs, { wrong, n }] = await Promise.all([
      write(0),
      write(1),
      write(2),
      write(3),
      rollUps(),
      reads(),
    ]);
    // Correctness first: how many roll-ups and reads the load allowed is checked after.
    assert.deepEqual(wrong, [], 'no report read while writers ran differed from the raw rows');
    assert.ok(runs >= 5 && n >= 1, `roll-ups (${runs}) and reads (${n}) ran while the ${written} writes did`);
    await sleep(2100); // past the horizon and its whole second, as above
    await side`select billing.roll_up_ledger('1 day')`;
    const last = await reportIsRaw(side);
    assert.equal(last.total_equal && last.series_equal, true, 'after the writers, the report equals the raw rows');
    // Today's tail past the watermark was read from what the writer kept (per second, so the
    // watermark is on one), and the roll-up dropped what it had passed.
    assert.equal(last.watermark.getTime() % 1000, 0, 'the watermark is on a whole second');
    assert.equal(last.tail_kept, true, "today's tail is read from what the writer kept");
    assert.equal(last.kept_behind, 0, 'nothing the writer kept is left behind the watermark');
    const [{ rolled, tail }] = await side`
      select count(*) filter (where t.created_at < w.until)::int as rolled, count(*) filter (where t.created_at >= w.until)::int as tail
      from billing.transfers t join billing.accounts a on a.id = t.from_account_id or a.id = t.to_account_id,
        (select max(ledger_until) as until from billing.revenue_rollup) w
      where a.user_id = any(${users}::uuid[]) and t.idempotency_key like 'watermark-%'`;
    assert.ok(
      rolled > written / 2,
      `most of the run's transfers are in the rolled-up half (${rolled} rolled, ${tail} after)`,
    );
  } finally {
    await writers.end();
    await side.end();
  }
});
