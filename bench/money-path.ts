// The whole money request against a bare guarded UPDATE, under pgbench (issues #34, #43):
//   (a) billing.run_usage_report('credits.usage'): what POST /credits/usage costs Postgres (the
//       standing check, pricing, the key's lookups, the transfer with the request's record, its
//       entry, the lot), against `update … set balance = balance - 1 where id = $1 and balance >= 1`
//       on a table of 1,000 rows, at 16 and 1 clients. Targets ≥ 0.25× and ≥ 0.35×.
//   (b) Postgres CPU per usage request (every process of the cluster: backends, WAL writer,
//       checkpointer, autovacuum), from /proc, over the 16-client cell. Target ≤ 0.5 ms; WAL ≤ 1,000 B.
//   (c) A configured cap, low-balance alert, five lots, or an organisation allowance against the
//       plain usage request at 16 clients. Target each ≤ 1.1× (plain ÷ configured).
// Cells run interleaved, BENCH_ROUNDS times; medians. A cell counts only answers that debited:
// the run fails if any request of a cell was refused. Writes bench/results/money-path-*.json,
// which `./scripts/bench capacity` reads.
//   BENCH_SECONDS (5) per cell, BENCH_ROUNDS (3)
import postgres from 'postgres';
import { fixtures } from './fixtures.ts';
import { clusterCpu, fmt, median, pgbench, printer } from './lib.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const dbUrl = Deno.env.get('SUPABASE_DB_URL') ?? '';
if (!dbUrl) throw new Error('SUPABASE_DB_URL is not set');
const admin = postgres(dbUrl, { max: 2, onnotice: () => {} });
const run = crypto.randomUUID().slice(0, 8);
const tag = `bench-money-${run}`; // no colon: pgbench would read `:word` as a variable
const { lines, say } = printer();
const log = (s: string) => console.error(`[money-path] ${s}`);
const dir = await Deno.makeTempDir({ prefix: 'money-path-' });
const { newUsers, fundUsers, orgWithMembers } = fixtures(admin, tag);

// ------------------------------------------------------------ fixtures
log(`run ${run}: fixtures (4 × 1,000 users, 1 organisation of 1,000 members)`);
const plain = await newUsers(1000, 'plain');
await fundUsers(plain);
const capped = await newUsers(1000, 'cap');
await fundUsers(capped);
await admin`select billing.set_spend_cap(u, 'day', 'UTC', null, 1e15, u, 'self') from unnest(${capped}::uuid[]) u`;
const alerted = await newUsers(1000, 'alert');
await fundUsers(alerted);
await admin`select billing.set_low_balance_alert(u, 1) from unnest(${alerted}::uuid[]) u`;
const fiveLots = await newUsers(1000, 'lots');
await fundUsers(fiveLots, 5);
const org = await orgWithMembers('allowance', 1000);
await admin`select billing.fund_allowances(${org.owner}, ${org.org}, null, 1000000, ${`${tag}:allowance`})`;
await admin`create schema if not exists bench`;
await admin`create table if not exists bench.money_users (fixture text, n integer, id uuid, primary key (fixture, n))`;
await admin`create table if not exists bench.accounts (id integer primary key, balance numeric(38, 18) not null)`;
await admin`insert into bench.accounts select g, 1e15 from generate_series(1, 1000) g on conflict (id) do update set balance = 1e15`;
const sets: Record<string, string[]> = { plain, cap: capped, alert: alerted, lots5: fiveLots, org: org.users };
for (const [name, users] of Object.entries(sets)) {
  await admin`insert into bench.money_users select ${`${run}-${name}`}, n, u from unnest(${users}::uuid[]) with ordinality x(u, n)`;
}

// ------------------------------------------------------------ measuring
// A space after each colon: pgbench reads `:word` as one of its variables.
const usageArgs = '{"model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 20}';
function script(cell: string): string {
  if (cell === 'baseline') {
    return '\\set n random(1, 1000)\nupdate bench.accounts set balance = balance - 1 where id = :n and balance >= 1;\n';
  }
  if (cell === 'balance') { // what GET /credits/balance costs Postgres
    return `\\set n random(1, 1000)\nselect * from bench.money_users u, billing.get_balance(u.id) where u.fixture = '${run}-plain' and u.n = :n;\n`;
  }
  return `\\set n random(1, 1000)
select billing.run_usage_report(u.id, 'credits.usage', gen_random_uuid()::text, repeat('0', 64), '${tag}-${cell}',
  '${usageArgs}'::jsonb, 200) from bench.money_users u where u.fixture = '${run}-${cell}' and u.n = :n;
`;
}

const [{ pid: backend }] = await admin`select pg_backend_pid() as pid`;
const postmaster = Number((await Deno.readTextFile(`/proc/${backend}/stat`)).split(') ')[1].split(' ')[1]);

type Cell = { tps: number; cpuMs: number; walBytes: number };
const walNow = async () => Number((await admin`select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') as b`)[0].b);
async function measure(cell: string, clients: number): Promise<Cell> {
  const file = `${dir}/${cell}.sql`;
  await Deno.writeTextFile(file, script(cell));
  const [{ started }] = await admin`select clock_timestamp() as started`;
  const before = await clusterCpu(postmaster);
  const walBefore = await walNow();
  const text = await pgbench(dbUrl, file, clients, seconds);
  await new Promise((r) => setTimeout(r, 200)); // the postmaster reaps the closed backends (their CPU moves to it)
  const cpu = (await clusterCpu(postmaster)) - before;
  const wal = (await walNow()) - walBefore;
  const done = Number(text.match(/number of transactions actually processed: (\d+)/)?.[1]);
  if (cell !== 'baseline' && cell !== 'balance') {
    // A debit's record: its transfer on the usage path's common road (run_usage_request), its
    // stored answer on the general one (a cap, an organisation).
    const [{ debited, refused }] = await admin`
      select count(*) filter (where response_status = 200)::int
          + (select count(*)::int from billing.transfers t where t.created_at >= ${started}
             and t.kind = 'usage' and t.metadata ->> 'request_id' = ${`${tag}-${cell}`}) as debited,
        count(*) filter (where refusal_token is not null)::int as refused
      from billing.idempotency_keys where request_id = ${`${tag}-${cell}`}`;
    if (refused > 0 || debited < done) throw new Error(`${cell}: ${refused} refused, ${debited} of ${done} debited`);
    await admin`delete from billing.idempotency_keys where request_id = ${`${tag}-${cell}`}`; // the next round counts afresh
  }
  return { tps: done / seconds, cpuMs: (cpu * 1000) / done, walBytes: wal / done };
}

const cells: [string, number][] = [
  ['baseline', 16],
  ['plain', 16],
  ['cap', 16],
  ['alert', 16],
  ['lots5', 16],
  ['org', 16],
  ['balance', 16],
  ['baseline', 1],
  ['plain', 1],
];
const results: Record<string, Cell[]> = {};
for (let r = 0; r < rounds; r++) {
  for (const [cell, clients] of cells) {
    const c = await measure(cell, clients);
    (results[`${cell}-${clients}`] ??= []).push(c);
    log(`round ${r + 1}/${rounds} ${cell} × ${clients}: ${c.tps.toFixed(0)}/s, ${c.cpuMs.toFixed(3)} ms CPU each`);
  }
}
const tps = (k: string) => median(results[k].map((c) => c.tps));
const cpu = (k: string) => median(results[k].map((c) => c.cpuMs));
const verdict = (ok: boolean) => (ok ? 'met' : 'MISSED');

say(`\n### (a) The money request against a bare guarded UPDATE (per second, medians of ${rounds} × ${seconds} s)\n`);
say('| clients | bare UPDATE | run_usage_report (usage) | ratio | target |');
say('| --- | --- | --- | --- | --- |');
const ratios: Record<string, number> = {};
for (const [clients, target] of [[16, 0.25], [1, 0.35]]) {
  const ratio = (ratios[`c${clients}`] = tps(`plain-${clients}`) / tps(`baseline-${clients}`));
  say(
    `| ${clients} | ${fmt(tps(`baseline-${clients}`))} | ${fmt(tps(`plain-${clients}`))} | ${
      ratio.toFixed(2)
    }× | ≥ ${target}× ${verdict(ratio >= target)} |`,
  );
}
const cpuPerUsage = cpu('plain-16');
const wal = (k: string) => median(results[k].map((c) => c.walBytes));
say(
  `\n### (b) Postgres CPU per usage request: ${cpuPerUsage.toFixed(3)} ms (bare UPDATE: ${
    cpu('baseline-16').toFixed(3)
  } ms); ` +
    `target ≤ 0.5 ms ${verdict(cpuPerUsage <= 0.5)}\n`,
);
say(
  `WAL per usage request ${fmt(wal('plain-16'))} B (bare UPDATE ${fmt(wal('baseline-16'))} B; target ≤ 1,000 B ${
    verdict(wal('plain-16') <= 1000)
  }). ` +
    `GET /credits/balance's SQL (billing.get_balance): ${fmt(tps('balance-16'))}/s, ${
      cpu('balance-16').toFixed(3)
    } ms CPU each.\n`,
);
say('### (c) What a configured feature costs the usage request (16 clients)\n');
say('| configured | requests/s | cost (plain ÷ configured) | CPU per request | target |');
say('| --- | --- | --- | --- | --- |');
const costs: Record<string, number> = {};
for (
  const [cell, label] of [['cap', 'a day cap'], ['alert', 'a low-balance alert'], ['lots5', 'five lots'], [
    'org',
    'an organisation allowance',
  ]]
) {
  const cost = (costs[cell] = tps('plain-16') / tps(`${cell}-16`));
  say(
    `| ${label} | ${fmt(tps(`${cell}-16`))} | ${cost.toFixed(2)}× | ${cpu(`${cell}-16`).toFixed(3)} ms | ≤ 1.1× ${
      verdict(cost <= 1.1)
    } |`,
  );
}

const [{ invariants }] = await admin`select billing.check_lots() as invariants`;
for (const list of ['lots', 'accounts', 'transfers', 'expiry'] as const) {
  if (invariants[list].length) throw new Error(`lots disagree with the ledger after the run (${list})`);
}
const report = {
  date: new Date().toISOString(),
  run,
  seconds,
  rounds,
  results,
  ratios,
  cpu_ms_per_usage: cpuPerUsage,
  cpu_ms_per_bare_update: cpu('baseline-16'),
  cpu_ms_per_balance: cpu('balance-16'),
  wal_bytes_per_usage: wal('plain-16'),
  costs,
};
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(`bench/results/money-path-${report.date}.json`, JSON.stringify(report, null, 2));
await Deno.writeTextFile('bench/results/money-path-latest.md', lines.join('\n') + '\n');
await Deno.remove(dir, { recursive: true });
await admin.end();
