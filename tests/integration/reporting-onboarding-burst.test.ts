// A school onboarding at once (new students, new accounts and allowance accounts, a wallet grant,
// an allowance each, ten grants per student) is read from what the writer kept: the report right
// after the burst equals the raw rows and equals the same report once rolled up, and grants
// committing while the roll-up runs are counted once. The roll-up runs as the minute job runs it.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { assertLedgerInvariants, env, testDb } from '../support/helpers.ts';
import { fixtures } from '../../bench/fixtures.ts';

const students = 40;

/**
 * GET /admin/metrics's SQL (yesterday to tomorrow, by day) and the same from the raw rows (its total,
 * and its series from the raw parts), in one snapshot: other test files may write meanwhile.
 */
async function report(sql: postgres.Sql) {
  const [row] = await sql.begin('isolation level repeatable read', (tx) =>
    tx`
    with d as (select (now() at time zone 'UTC')::date as today)
    select billing.metrics_report(d.today - 1, d.today + 2, 'day') as report,
      billing.revenue_metrics_live((d.today - 1)::timestamp at time zone 'UTC', (d.today + 2)::timestamp at time zone 'UTC')
        as live,
      billing.series_of(billing.metric_parts((d.today - 1)::timestamp at time zone 'UTC',
        (d.today + 2)::timestamp at time zone 'UTC', false), d.today - 1, d.today + 2, 'day') as live_series,
      (select r.ledger_until from billing.revenue_rollup r where r.day = d.today) as watermark
    from d`);
  return row as {
    report: { total: unknown; series: unknown };
    live: unknown;
    live_series: unknown;
    watermark: Date | null;
  };
}

/**
 * Whether anything but the school's burst wrote money, checkouts or credit transfers since a few
 * seconds before `since` (a transaction is dated by its start): other test files in parallel.
 */
async function othersWrote(sql: postgres.Sql, since: Date, school: { org: string; users: string[] }) {
  const [{ n }] = await sql`
    select (select count(*) from billing.money_transfers t where t.created_at >= ${since}::timestamptz - interval '5 seconds')
      + (select count(*) from billing.purchases p where p.created_at >= ${since}::timestamptz - interval '5 seconds')
      + (select count(*) from billing.transfers t where t.created_at >= ${since}::timestamptz - interval '5 seconds'
           and not exists (select 1 from billing.entries e join billing.accounts a on a.id = e.account_id
                           where e.transfer_id = t.id and (a.user_id = any(${school.users}::uuid[]) or a.org_id = ${school.org}::uuid)))
      as n`;
  return Number(n) > 0;
}

/**
 * The credit ledger rolled up to its horizon, as the minute job leaves it, and today's events half.
 * With `past`, until the watermark passes it: a transaction another file holds open keeps the
 * horizon (and so the watermark) behind it until it ends.
 */
async function rollUp(sql: postgres.Sql, past?: Date) {
  for (;;) {
    const [{ w, h }] =
      await sql`select billing.roll_up_ledger() as w, billing.ledger_horizon() - interval '5 seconds' as h`;
    if (w !== null && w >= h && (!past || w > past)) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  await sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`;
}

/** Each student's ten grants in a transaction of their own, four students at a time. */
async function grantTen(pool: postgres.Sql, users: string[], tag: string) {
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    for (let i = next++; i < users.length; i = next++) {
      await pool`select count(billing.grant_credits(${users[i]}, 10, 'promo_grant', ${`${tag}:${users[i]}:`} || k,
        null, null, null, '{"category": "promotional"}')) from generate_series(1, 10) k`;
    }
  }));
}

Deno.test('a school onboarding at once: the report right after equals the raw rows and the rolled-up report', async () => {
  const side = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  const tag = `onboard-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await rollUp(side);
    // The roll-up held (the minute job's runs return at once) while the school arrives.
    await side`select pg_advisory_lock(hashtext('billing.roll_up_ledger'))`;
    const { orgWithMembers } = fixtures(testDb, tag);
    const school = await orgWithMembers('allowance', students);
    await testDb`select billing.fund_allowances(${school.owner}, ${school.org}, null, 1000, ${`${tag}:allowances`})`;
    await grantTen(testDb, school.users, tag);
    const [{ kept }] = await testDb`select count(*)::int as kept from billing.active_tail x
      where x.account_id in (select a.id from billing.accounts a where a.org_id = ${school.org})`;
    assert.ok(kept >= students, `the writer kept the school's new accounts as active today (${kept})`);
    const right = await report(testDb);
    assert.deepEqual(right.report.total, right.live, 'right after the burst the report equals the raw rows');
    assert.deepEqual(right.report.series, right.live_series, 'and so does each day of it');
    const [{ t0 }] = await testDb`select now() as t0`;
    await side`select pg_advisory_unlock(hashtext('billing.roll_up_ledger'))`;
    await rollUp(side, t0);
    const rolled = await report(testDb);
    assert.ok(rolled.watermark! > right.watermark!, 'the roll-up moved past the burst');
    assert.deepEqual(rolled.report.total, rolled.live, 'rolled up, the report equals the raw rows');
    assert.deepEqual(rolled.report.series, rolled.live_series, 'and so does each day of it');
    // Alone (other test files write purchases and usage beside it when run in parallel), the
    // same figures: the report right after the burst is the report rolled up.
    if (!(await othersWrote(testDb, t0, school))) {
      assert.deepEqual(rolled.report, right.report, 'the report rolled up equals the report right after the burst');
    }
    await assertLedgerInvariants();
  } finally {
    await side.end();
  }
});

Deno.test('grants committing while the roll-up runs are counted once: every report read meanwhile equals the raw rows', async () => {
  const side = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  const tag = `onboard-race-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const { newUsers } = fixtures(testDb, tag);
    const users = await newUsers(students, tag);
    let running = true;
    const wrong: unknown[] = [];
    let reads = 0;
    const watcher = (async () => {
      while (running) {
        await side`select billing.roll_up_ledger()`;
        const r = await report(side);
        reads++;
        if (JSON.stringify(r.report.total) !== JSON.stringify(r.live)) wrong.push(r);
      }
    })();
    await grantTen(testDb, users, tag);
    // Under load (other files in parallel) a report can take as long as the grants: more rounds
    // of grants, until reports were read while some committed.
    for (let round = 1; reads < 2 && round <= 20; round++) await grantTen(testDb, users, `${tag}:r${round}`);
    running = false;
    await watcher;
    assert.ok(reads > 1, `reports were read while the grants committed (${reads})`);
    assert.deepEqual(wrong, [], 'no report read meanwhile differs from the raw rows');
    await rollUp(side);
    const after = await report(side);
    assert.deepEqual(after.report.total, after.live, 'and once rolled up');
  } finally {
    await side.end();
  }
});
