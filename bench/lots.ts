// What credit lots (issue #20), and spend caps with alerts (#21), cost a debit: a usage charge's
// road after pricing (billing.post_user_transfer, kind usage, as billing.charge_usage calls it)
// on accounts with 1, 5 and 50 open lots, and with 1 lot plus a cap, cap alerts and a low-balance
// alert, against the debit without lots, in the same run, in a private cluster (the
// baseline leaves its accounts' lots behind their balances, which the shared database must not
// see). The baseline is the live post_user_transfer calling the live writer with its lot steps
// cut out, read from the database, so it is exactly the debit as it would be without lots. Targets: 1 lot ≤ 1.2× the baseline's
// cost; caps and alerts on ≤ 1.2× the debit without them (the 1-lot row).
//   BENCH_SECONDS (5) per cell, BENCH_ROUNDS (3, cells interleaved, medians reported), BENCH_LOTS_KEEP=1,
//   BENCH_CLIENTS (16), BENCH_LOTS_PORT (55434)
import postgres from 'postgres';
import { privateCluster } from './private-cluster.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const clients = Number(Deno.env.get('BENCH_CLIENTS') ?? 16);
const accounts = 1000;
const cluster = privateCluster({
  dir: '/tmp/scholarlink-lots-bench',
  port: Number(Deno.env.get('BENCH_LOTS_PORT') ?? 55434),
  conf: ['shared_buffers = 512MB', 'max_wal_size = 4GB'],
  keep: Deno.env.get('BENCH_LOTS_KEEP') === '1', // keep the cluster to look inside afterwards
  log: (s) => console.error(`[lots] ${s}`),
});
await cluster.start();
const sql = postgres(cluster.url, { max: 4, onnotice: () => {} });

// ------------------------------------------------------------ fixtures
/** 1,000 users, each with `lots` open lots (promotional, no expiry) holding plenty. */
async function usersWithLots(lots: number): Promise<string[]> {
  const users = (await sql`
    with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${accounts}) returning id)
    select id::text from ins`).map((r) => r.id as string);
  await sql`select billing.grant_credits(u, 1000000000, 'adjustment', 'bench-lot:' || u || ':' || n,
      null, null, null, '{"category": "promotional"}') from unnest(${users}::uuid[]) u, generate_series(1, ${lots}) n`;
  return users;
}

// ------------------------------------------------------------ measuring
async function opsPerSecond(users: string[], baseline: boolean) {
  const pool = postgres(cluster.url, { max: clients, prepare: true, onnotice: () => {} });
  await Promise.all(Array.from({ length: clients }, () => pool`select 1`));
  let done = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = c; performance.now() < until; i += clients, done++) {
      const user = users[i % users.length];
      const key = `bench:${crypto.randomUUID()}`;
      if (baseline) {
        await pool`select bench.post_user_transfer_without_lots(${user}, -1, 'spend', 1, 'usage', 'usage_revenue', ${key})`;
      } else await pool`select billing.post_user_transfer(${user}, -1, 'spend', 1, 'usage', 'usage_revenue', ${key})`;
    }
  }));
  await pool.end();
  return done / seconds;
}

try {
  console.error('[lots] fixtures: 5 × 1,000 users with 1, 1, 5, 50 and 1 lot(s), the last with a cap and alerts');
  const fixtures = {
    baseline: await usersWithLots(1),
    '1 lot': await usersWithLots(1),
    '5 lots': await usersWithLots(5),
    '50 lots': await usersWithLots(50),
    '1 lot, cap + alerts': await usersWithLots(1),
  };
  // A daily cap that never binds, its 50/80/100% alerts, and a low-balance alert: every check runs.
  await sql`select billing.set_spend_cap(u, 'day', 'UTC', null, 1e15, u, 'self'), billing.set_cap_alerts(u, 'day', null, '{50,80,100}'),
      billing.set_low_balance_alert(u, 1) from unnest(${fixtures['1 lot, cap + alerts']}::uuid[]) u`;
  // Today's debit without lots: the ledger's writer without its lot steps, called by a copy of
  // post_user_transfer.
  const [{ writer, debit }] = await sql`select pg_get_functiondef('billing.post_transfers'::regproc) as writer,
    pg_get_functiondef('billing.post_user_transfer'::regproc) as debit`;
  // From the debits' draw to the end of the credits' lots.
  const lotSteps =
    /\n {4}-- Debits draw from lots\.[\s\S]*?\n {4}-- Credits: into lots\.\n {4}if 0 < any\(v_delta\) then\n[\s\S]*?\n {4}end if;\n/;
  if (!lotSteps.test(writer)) throw new Error('the lot steps of post_transfers were not found: update bench/lots.ts');
  if (!debit.includes('billing.post_transfers(')) throw new Error('post_user_transfer no longer calls post_transfers');
  await sql`create schema if not exists bench`;
  await sql.unsafe(
    writer.replace(lotSteps, '\n').replace(
      'FUNCTION billing.post_transfers(',
      'FUNCTION bench.post_transfers_without_lots(',
    ),
  );
  await sql.unsafe(
    debit.replace('billing.post_transfers(', 'bench.post_transfers_without_lots(').replace(
      'FUNCTION billing.post_user_transfer(',
      'FUNCTION bench.post_user_transfer_without_lots(',
    ),
  );

  const results: Record<string, number[]> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, users] of Object.entries(fixtures)) {
      (results[name] ??= []).push(await opsPerSecond(users, name === 'baseline'));
      console.error(`[lots] round ${r + 1}/${rounds} ${name}: ${results[name].at(-1)?.toFixed(0)} debits/s`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const base = median(results.baseline);
  console.log(
    `\n### Credit lots: debit cost by open lots (${clients} clients, ${accounts} accounts, medians of ${rounds})\n`,
  );
  console.log('| debit | debits/s | cost vs today (baseline ÷ this) | target |');
  console.log('| --- | --- | --- | --- |');
  for (const [name, xs] of Object.entries(results)) {
    const cost = base / median(xs);
    const vsOneLot = median(results['1 lot']) / median(xs);
    const target = name === '1 lot'
      ? (cost <= 1.2 ? '≤ 1.2× ✓' : '≤ 1.2× ✗')
      : name.includes('cap')
      ? `${vsOneLot.toFixed(2)}× the 1-lot debit: ${vsOneLot <= 1.2 ? '≤ 1.2× ✓' : '≤ 1.2× ✗'}`
      : '';
    console.log(
      `| ${name === 'baseline' ? 'today (no lots)' : name} | ${median(xs).toFixed(0)} | ${
        cost.toFixed(2)
      }× | ${target} |`,
    );
  }

  // A fast wrong answer fails the run: every account that uses lots still agrees with them.
  const [{ check }] = await sql`select billing.check_lots() as check`;
  const baselineAccounts = new Set((await sql`select a.id::text from billing.accounts a
    where a.user_id = any(${fixtures.baseline}::uuid[])`).map((r) => r.id as string));
  const wrong = (check.accounts as number[]).filter((id) => !baselineAccounts.has(String(id)));
  if (wrong.length || check.lots.length || check.transfers.length) {
    throw new Error(`lots disagree with the ledger after the run: ${JSON.stringify(check).slice(0, 500)}`);
  }
  console.log('\nlots agree with balances and allocations after the run (baseline accounts excepted, by design)');
} finally {
  await sql.end();
  await cluster.stop();
}
