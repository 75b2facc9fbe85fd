// GET /credits/usage/summary's SQL for a heavy student (issue #36: ≤ 50 ms over 90 days): one
// account with BENCH_SUMMARY_PER_DAY charges a day over 180 days and today on three models,
// beside a hundred light students who make three quarters of all charges, in a private cluster (the charges are
// backdated there, which the shared database must not see), closed days rolled up as pg_cron
// would. Measured in the same run against a baseline every request already pays: the first
// page of the same account's ledger (50 entries by the account's index).
//   BENCH_SUMMARY_PER_DAY (300), BENCH_SUMMARY_RUNS (30), BENCH_SUMMARY_PORT (55435), BENCH_SUMMARY_KEEP=1
import postgres from 'postgres';
import { fmt, median, printer } from './lib.ts';
import { privateCluster } from './private-cluster.ts';

const perDay = Number(Deno.env.get('BENCH_SUMMARY_PER_DAY') ?? 300);
const runs = Number(Deno.env.get('BENCH_SUMMARY_RUNS') ?? 30);
const days = 180;
const cluster = privateCluster({
  dir: '/tmp/scholarlink-summary-bench',
  port: Number(Deno.env.get('BENCH_SUMMARY_PORT') ?? 55435),
  keep: Deno.env.get('BENCH_SUMMARY_KEEP') === '1',
  log: (s) => console.error(`[usage-summary] ${s}`),
});
await cluster.start();
// As the superuser: backdating the fixture passes the append-only triggers (a bench only).
const sql = postgres(cluster.adminUrl, { max: 2, onnotice: () => {} });
const { lines, say } = printer();

try {
  // The heavy student, and a hundred light ones whose entries interleave with theirs.
  const [{ user }] = await sql`insert into auth.users (id) values (gen_random_uuid()) returning id::text as user`;
  const others = (await sql`insert into auth.users (id) select gen_random_uuid() from generate_series(1, 100)
    returning id::text as id`).map((r) => r.id as string);
  await sql`select billing.grant_credits(u, 1e12, 'adjustment', 'bench-summary:' || u)
    from unnest(${[user, ...others]}::uuid[]) u`;
  console.error(`[usage-summary] charging ${fmt(perDay * 4 * (days + 1))} times over ${days} days and today`);
  for (let d = days; d >= 0; d--) {
    await sql.begin(async (tx) => {
      await tx`select billing.charge_usage(case when n % 4 = 0 then ${user}::uuid else (${others}::uuid[])[1 + n % 100] end,
          (array['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5'])[1 + n % 3], 1000 + n, 200 + n,
          'bench-summary:' || ${d} || ':' || n)
        from generate_series(1, ${perDay * 4}) n`;
      if (d === 0) return; // today's charges stay as written
      // Backdate the day just written, in insertion order (the ledger is dated by insertion).
      await tx`set local session_replication_role = replica`;
      await tx`update billing.transfers set created_at = now() - ${d} * interval '1 day' where idempotency_key like ${`bench-summary:${d}:%`}`;
      await tx`update billing.entries e set created_at = t.created_at from billing.transfers t
        where t.id = e.transfer_id and t.idempotency_key like ${`bench-summary:${d}:%`}`;
    });
  }
  // The roll-up starts at the ledger's first transfer, which here (backdated later) is today's grant.
  await sql`insert into billing.usage_rollup (rolled_through) values (current_date - ${days + 1}::int)
    on conflict (singleton) do update set rolled_through = excluded.rolled_through`;
  const [{ rolled }] = await sql`select billing.roll_up_usage(1000) as rolled`;
  console.error(`[usage-summary] rolled up ${rolled} days`);
  await sql`vacuum analyze billing.entries`;
  await sql`vacuum analyze billing.transfers`;

  const [{ account }] = await sql`select id::text as account from billing.accounts where user_id = ${user}`;
  const cells: Record<string, () => Promise<unknown>> = {
    'ledger page (baseline)': () =>
      sql`select e.id from billing.entries e join billing.transfers t on t.id = e.transfer_id
        where e.account_id = ${account} and e.balance_after is not null order by e.id desc limit 50`,
    '7 days, by day': () => sql`select billing.usage_summary(${user}, current_date - 6, current_date + 1, 'day')`,
    '90 days, by day': () => sql`select billing.usage_summary(${user}, current_date - 89, current_date + 1, 'day')`,
    '90 days, by week': () => sql`select billing.usage_summary(${user}, current_date - 89, current_date + 1, 'week')`,
  };
  const ms: Record<string, number[]> = {};
  for (let r = 0; r < runs; r++) {
    for (const [name, q] of Object.entries(cells)) {
      const t0 = performance.now();
      await q();
      (ms[name] ??= []).push(performance.now() - t0);
    }
  }
  // A fast wrong answer fails the run: the summary counts exactly the account's charges.
  const [{ n, expected }] = await sql`select
    (billing.usage_summary(${user}, current_date - 89, current_date + 1, 'day') -> 'totals' ->> 'requests')::int as n,
    (select count(*)::int from billing.transfers t where t.from_account_id = ${account} and t.kind = 'usage'
      and t.created_at >= current_date - 89) as expected`;
  if (n !== expected) throw new Error(`the 90-day summary counted ${n} charges of ${expected}`);
  const base = median(ms['ledger page (baseline)']);
  say(`\n### Usage summary: a student with ~${fmt(perDay)} charges a day for ${days} days (medians of ${runs})\n`);
  say(`The 90-day summary counts ${fmt(n)} charges.\n`);
  say('| query | ms | vs the ledger page | target |');
  say('| --- | --- | --- | --- |');
  for (const [name, xs] of Object.entries(ms)) {
    const m = median(xs);
    const target = name.startsWith('90 days') ? (m <= 50 ? '≤ 50 ms ✓' : '≤ 50 ms ✗') : '';
    say(`| ${name} | ${m.toFixed(1)} | ${(m / base).toFixed(1)}× | ${target} |`);
  }
  await Deno.mkdir(new URL('./results/', import.meta.url), { recursive: true });
  await Deno.writeTextFile(new URL('./results/usage-summary.md', import.meta.url), lines.join('\n') + '\n');
} finally {
  await sql.end();
  await cluster.stop();
}
