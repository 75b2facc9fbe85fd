// Step 2: GET /admin/metrics's request three ways: new (the roll-up), live (roll-up bypassed) and
// old (the pre-#18 functions, bench/reporting-baseline.sql), with the tables' sizes; the three
// answers must agree.
import type postgres from 'postgres';
import { median, timed } from '../lib.ts';
import { note, root } from './settings.ts';

// What GET /admin/metrics runs (supabase/functions/admin/index.ts) for the default range; the
// pre-#18 functions answered it with two calls.
const request = (schema: string, granularity: string, range: { from: string; to: string }) =>
  schema === 'billing'
    ? `select r -> 'total' as total, r -> 'series' as series
       from billing.metrics_report('${range.from}'::date, '${range.to}'::date, '${granularity}') r`
    : `select ${schema}.revenue_metrics('${range.from}'::timestamp at time zone 'UTC', '${range.to}'::timestamp at time zone 'UTC') as total,
         ${schema}.metrics_series('${range.from}'::date, '${range.to}'::date, '${granularity}') as series`;

/** The range (the default 30 days), the old functions loaded beside the new, and the sizes. */
export async function prepare(sql: postgres.Sql) {
  const [{ range_from, range_to, today, since_rows }] = await sql`
    select ((now() at time zone 'UTC')::date - 29)::text as range_from, ((now() at time zone 'UTC')::date + 1)::text as range_to,
           (now() at time zone 'UTC')::date::text as today,
           (select count(*) from billing.transfers t, billing.revenue_rollup r
            where r.day = (now() at time zone 'UTC')::date and t.created_at >= r.covered_until)::int as since_rows`;
  const range = { from: range_from, to: range_to };
  await sql.unsafe(await Deno.readTextFile(`${root}/bench/reporting-baseline.sql`)).simple().catch((e) => {
    if (!String(e).includes('already exists')) throw e;
  });
  await sql.unsafe(`
    create or replace function bench_old.live_series(p_from date, p_to date, p_granularity text) returns jsonb
    language sql stable set search_path = '' as $$
      select coalesce(jsonb_agg(billing.revenue_metrics_live(
          greatest(s, p_from::timestamp) at time zone 'UTC',
          least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC') order by s), '[]'::jsonb)
      from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
        ('1 ' || p_granularity)::interval) s
    $$`);
  const liveRequest = `
    select billing.revenue_metrics_live('${range.from}'::timestamp at time zone 'UTC', '${range.to}'::timestamp at time zone 'UTC') as total,
           bench_old.live_series('${range.from}'::date, '${range.to}'::date, 'day') as series`;

  // ---- sizes
  await sql`analyze billing.revenue_rollup`;
  const sizes = await sql`
    select c.relname as name, pg_total_relation_size(c.oid)::bigint as total, pg_indexes_size(c.oid)::bigint as indexes,
           greatest(c.reltuples, 0)::bigint as rows
    from pg_class c where c.relnamespace = 'billing'::regnamespace and c.relkind = 'r'
      and c.relname in ('transfers', 'entries', 'lots', 'lot_allocations', 'purchases', 'money_transfers', 'money_entries',
                        'stripe_events', 'revenue_rollup', 'accounts')
    order by pg_total_relation_size(c.oid) desc`;
  const newIndexNames = [
    ...[
      'transfers_created_brin',
      'entries_created_brin',
      'purchases_created',
      'purchases_paid',
      'purchases_first_paid',
    ],
    ...['stripe_events_received', 'money_transfers_created', 'stripe_events_processed', 'money_transfers_late'],
    ...['purchases_paid_late', 'stripe_events_finished_late_day', 'purchases_sessionless'],
  ];
  const newIndexes = await sql`
    select c.relname as name, pg_relation_size(c.oid)::bigint as size from pg_class c
    where c.relname = any(${newIndexNames}) order by pg_relation_size(c.oid) desc`;
  const [{ db_size, today_rows }] = await sql`
    select pg_database_size(current_database())::bigint as db_size,
      (select count(*) from billing.transfers where created_at >= ${today}::date::timestamp at time zone 'UTC')::int as today_rows`;
  return { range, today, since_rows, liveRequest, sizes, newIndexNames, newIndexes, db_size, today_rows };
}
export type Prepared = Awaited<ReturnType<typeof prepare>>;

/** The new way: 15 runs by day after a warm-up, 5 by week and by month, and today's part alone. */
export async function timeNew(sql: postgres.Sql, { range, today }: Prepared) {
  note('new way: warm-up, then 15 runs');
  for (let i = 0; i < 2; i++) await sql.unsafe(request('billing', 'day', range));
  const newMs: number[] = [];
  let newResult: unknown = null;
  for (let i = 0; i < 15; i++) {
    const [ms, rows] = await timed(() => sql.unsafe(request('billing', 'day', range)));
    newMs.push(ms);
    newResult = rows[0];
  }
  const byGranularity: Record<string, number> = {};
  for (const g of ['week', 'month']) {
    const xs: number[] = [];
    for (let i = 0; i < 6; i++) xs.push((await timed(() => sql.unsafe(request('billing', g, range))))[0]);
    byGranularity[g] = median(xs.slice(1));
  }
  const todayMs: number[] = [];
  for (let i = 0; i < 6; i++) {
    todayMs.push(
      (await timed(() =>
        sql`select billing.revenue_metrics(${today}::date::timestamp at time zone 'UTC', ${range.to}::date::timestamp at time zone 'UTC')`
      ))[0],
    );
  }
  return { newMs, newResult, byGranularity, todayMs };
}
export type NewWay = Awaited<ReturnType<typeof timeNew>>;

/** One run each of the live and the old way, and whether the three answers agree. */
export async function timeLiveAndOld(sql: postgres.Sql, { range, liveRequest }: Prepared, newResult: unknown) {
  note('live (roll-up bypassed): one run');
  const [liveMs, liveRows] = await timed(() => sql.unsafe(liveRequest));
  note('old way (pre-#18 functions): one run, this takes minutes');
  const [oldMs, oldRows] = await timed(() => sql.unsafe(request('bench_old', 'day', range)));
  // The old functions predate credit lots (#20) and organisations (#22): their lines are left
  // out of that comparison.
  const same = (a: unknown, b: unknown, skip: string[] = []) =>
    JSON.stringify(a, (k, v) => skip.includes(k) ? undefined : v) ===
      JSON.stringify(b, (k, v) => skip.includes(k) ? undefined : v);
  const agree = {
    newVsLive: same(newResult, liveRows[0]),
    newVsOld: same(newResult, oldRows[0], ['credit_lots', 'organisations']),
    // Lots lines in the answer, so new = live covers the lots part too (not two empty lists).
    lotsCompared: JSON.stringify(newResult).includes('"paid_granted_cents"'),
  };
  return { liveMs, liveRows, oldMs, oldRows, agree };
}
export type LiveAndOld = Awaited<ReturnType<typeof timeLiveAndOld>>;
