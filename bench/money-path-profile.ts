// Where a usage request's time goes (#43), the profile behind money-path's figures:
//   (a) by process, at 16 clients under pgbench: the backends that run the requests against
//       the WAL writer, checkpointer, background writer and the rest (CPU from /proc);
//   (b) inside one request, one client, one session: the client's wall time per request, the
//       time inside `billing.run_usage_report` (pg_stat_statements, top level), each nested
//       statement (`track = all`), and every PL/pgSQL line of the functions it runs
//       (plpgsql_check's profiler), so what the statements leave is PL/pgSQL's own work.
// The profiler costs time of its own: (b) takes the wall time from pgbench, nothing instrumented.
//   (c) an AI call (#55): the gateway's hold and capture (begin_ai_call + finish_ai_call) against
//       one usage request: Postgres CPU of the whole cluster a call at 8 connections, the account
//       writes each phase makes, and each nested statement's executor time at one session.
//   (d) the same call against its own row writes alone, as bare statements on copies of the
//       ledger's tables (bench/ai-call-floor.sql): the floor of today's data model.
//   (e) a usage request against its own row writes alone, the same way.
//   (f) what a PL/pgSQL statement, a call and a one-row read cost a transaction, against (b)'s counts.
//   BENCH_SECONDS (5) for (a), BENCH_PROFILE_REQUESTS (3000) for (b), BENCH_AI_CALLS (2000) for (c),
//   BENCH_FLOOR_CALLS (1000) for (d) and (e)
import postgres from 'postgres';
import { fixtures } from './fixtures.ts';
import { clusterCpu, fmt, pgbench, printer } from './lib.ts';
import { cpuSeconds } from './request-path/procfs.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const requests = Number(Deno.env.get('BENCH_PROFILE_REQUESTS') ?? 3000);
const aiCalls = Number(Deno.env.get('BENCH_AI_CALLS') ?? 2000);
const floorCalls = Number(Deno.env.get('BENCH_FLOOR_CALLS') ?? 1000);
const dbUrl = Deno.env.get('SUPABASE_DB_URL') ?? '';
if (!dbUrl) throw new Error('SUPABASE_DB_URL is not set');
// The profiler and `track = all` are the superuser's settings (locally supabase_admin).
const superUrl = dbUrl.replace(/\/\/[^:@]+(:[^@]*)?@/, `//${Deno.env.get('PG_SUPERUSER') ?? 'supabase_admin'}$1@`);
const admin = postgres(dbUrl, { max: 2, onnotice: () => {} });
const run = crypto.randomUUID().slice(0, 8);
const tag = `bench-profile-${run}`;
const { lines, say } = printer();
const log = (s: string) => console.error(`[money-path-profile] ${s}`);
const usageArgs = { model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 20 };

log(`run ${run}: fixtures (1,000 funded users)`);
const { newUsers, fundUsers } = fixtures(admin, tag);
const users = await newUsers(1000, 'profile');
await fundUsers(users);

// ------------------------------------------------------------ (a) by process, 16 clients
type Proc = { title: string; ticks: number };
const hz = 100; // USER_HZ
async function processes(postmaster: number): Promise<Map<number, Proc>> {
  const out = new Map<number, Proc>();
  const read = async (pid: number) => {
    const stat = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(') ')[1].split(' ');
    const title = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).replaceAll('\0', ' ').trim();
    return { stat, title };
  };
  const own = await read(postmaster);
  // Exited children (the benchmark's backends once pgbench disconnects) land in cutime/cstime.
  out.set(postmaster, { title: 'exited backends', ticks: Number(own.stat[13]) + Number(own.stat[14]) });
  const children = (await Deno.readTextFile(`/proc/${postmaster}/task/${postmaster}/children`)).trim().split(/\s+/);
  for (const pid of children.filter(Boolean).map(Number)) {
    const p = await read(pid).catch(() => null);
    if (p) out.set(pid, { title: p.title, ticks: Number(p.stat[11]) + Number(p.stat[12]) });
  }
  return out;
}
/** A process's role from its title: `postgres: walwriter`, `postgres: supabase_admin postgres …`. */
function role(title: string): string {
  const t = title.replace(/^postgres: /, '');
  for (
    const aux of ['walwriter', 'checkpointer', 'background writer', 'autovacuum', 'pg_cron', 'logical replication']
  ) {
    if (t.startsWith(aux)) return aux;
  }
  return t === 'exited backends' ? "backends (exited: the benchmark's sessions)" : 'backends (live)';
}

const [{ pid: backend }] = await admin`select pg_backend_pid() as pid`;
const postmaster = Number((await Deno.readTextFile(`/proc/${backend}/stat`)).split(') ')[1].split(' ')[1]);
const dir = await Deno.makeTempDir({ prefix: 'money-path-profile-' });
await admin`create schema if not exists bench`;
await admin`create table if not exists bench.money_users (fixture text, n integer, id uuid, primary key (fixture, n))`;
await admin`insert into bench.money_users select ${run}, n, u from unnest(${users}::uuid[]) with ordinality x(u, n)`;
await Deno.writeTextFile(
  `${dir}/usage.sql`,
  `\\set n random(1, 1000)
select billing.run_usage_report(u.id, 'credits.usage', gen_random_uuid()::text, repeat('0', 64), '${tag}',
  '${
    JSON.stringify(usageArgs).replaceAll(':', ': ')
  }'::jsonb, 200) from bench.money_users u where u.fixture = '${run}' and u.n = :n;
`,
);
const runUsage = (clients: number) => pgbench(dbUrl, `${dir}/usage.sql`, clients, seconds);
/** pgbench's average latency in µs: a request's wall time at the client, nothing instrumented. */
const pgbenchLatencyUs = async (clients: number) =>
  Number((await runUsage(clients)).match(/latency average = ([\d.]+) ms/)?.[1]) * 1000;

log(`(a) pgbench, 16 clients, ${seconds} s`);
const before = await processes(postmaster);
const text = await runUsage(16);
await new Promise((r) => setTimeout(r, 200)); // the postmaster reaps the closed backends
const after = await processes(postmaster);
const done = Number(text.match(/number of transactions actually processed: (\d+)/)?.[1]);
const byRole = new Map<string, number>();
for (const [pid, p] of after) {
  const ticks = p.ticks - (before.get(pid)?.ticks ?? 0);
  if (ticks > 0) byRole.set(role(p.title), (byRole.get(role(p.title)) ?? 0) + ticks);
}
const totalMs = ([...byRole.values()].reduce((a, b) => a + b, 0) / hz) * 1000;
say(`### (a) Postgres CPU per usage request by process (16 clients, ${fmt(done / seconds)} requests/s)\n`);
say('| process | µs per request | share |');
say('| --- | --- | --- |');
for (const [r, ticks] of [...byRole].sort((a, b) => b[1] - a[1])) {
  const ms = (ticks / hz) * 1000;
  say(`| ${r} | ${fmt((ms * 1000) / done)} | ${((100 * ms) / totalMs).toFixed(0)} % |`);
}
say(`| all | ${fmt((totalMs * 1000) / done)} | 100 % |`);

// ------------------------------------------------------------ (b) inside one request, 1 client
const one = postgres(superUrl, { max: 1, onnotice: () => {} });
const [{ schema, had }] = await one`
  select coalesce((select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace
                   where e.extname = 'plpgsql_check'), 'extensions') as schema,
    exists (select 1 from pg_extension e where e.extname = 'plpgsql_check') as had`;
await one`create extension if not exists plpgsql_check with schema extensions`;
const userAt = (i: number) => users[i % users.length];
/** A usage request's answer (billing.request_answer, as text) must be a charge: a refusal measures another path.
 * (Until 2026-11-25 the arguments went as a JSON string, `${JSON.stringify(…)}::jsonb`: every request in
 * (b) and (c) was refused INVALID_TOKENS.) */
function charged(answer: string) {
  if (!/^\(20[01],.*transfer_id/.test(answer)) throw new Error(`a usage request was not charged: ${answer}`);
}
async function drive(n: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const [{ r }] = await one`select billing.run_usage_report(${userAt(i)}, 'credits.usage', ${crypto.randomUUID()},
      ${'0'.repeat(64)}, ${tag}, ${one.json(usageArgs)}, 200) as r`;
    charged(r);
  }
  return ((performance.now() - t0) * 1000) / n;
}
log(`(b) pgbench, 1 client, ${seconds} s; then ${requests} requests on one session with the profiler on`);
const wallOff = await pgbenchLatencyUs(1);
await drive(200); // warm: plans cached, pages in memory
await one`load 'plpgsql_check'`;
await one`select set_config('plpgsql_check.profiler', 'on', false), set_config('pg_stat_statements.track', 'all', false)`;
await one`select ${one(schema)}.plpgsql_profiler_reset_all()`;
await one`select extensions.pg_stat_statements_reset()`;
const wallOn = await drive(requests);
await one`select set_config('plpgsql_check.profiler', 'off', false), set_config('pg_stat_statements.track', 'top', false)`;

const statements = await one<{ query: string; toplevel: boolean; calls: number; us: number }[]>`
  select regexp_replace(left(query, 110), '[[:space:]]+', ' ', 'g') as query, toplevel, calls::int,
         total_exec_time * 1000 / ${requests} as us
  from extensions.pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) and calls >= ${requests / 2}
  order by toplevel desc, total_exec_time desc`;
const top = statements.find((s) => s.toplevel && /run_usage_report/.test(s.query));
const nested = statements.filter((s) => !s.toplevel);
const nestedUs = nested.reduce((a, s) => a + s.us, 0);
say(`\n### (b) One usage request, one client (${fmt(requests)} requests, one session)\n`);
if (!top) throw new Error('pg_stat_statements did not record run_usage_report');
say(
  `A request's wall time at pgbench's client: ${wallOff.toFixed(0)} µs, nothing instrumented. In the ` +
    `profiled session (Deno's client, ${wallOn.toFixed(0)} µs a request at the client): the statement ` +
    `\`select billing.run_usage_report(…)\` ${top.us.toFixed(0)} µs in the executor, of which its nested ` +
    `statements ${nestedUs.toFixed(0)} µs and PL/pgSQL (assignments, conditions, building the ` +
    `arguments and the answer) ${(top.us - nestedUs).toFixed(0)} µs; the rest of pgbench's wall time ` +
    `(${
      (wallOff - top.us).toFixed(0)
    } µs) is the protocol, parse/bind, transaction start and the commit's WAL flush.\n`,
);
say('| nested statement (per request) | µs | calls per request |');
say('| --- | --- | --- |');
for (const s of nested) {
  say(`| \`${s.query.replaceAll('|', '\\|')}\` | ${s.us.toFixed(1)} | ${(s.calls / requests).toFixed(2)} |`);
}

const fns = await one<{ oid: number; name: string }[]>`
  select p.oid::int, p.proname as name from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'billing' and p.prolang = (select oid from pg_language where lanname = 'plpgsql')`;
say('\n| PL/pgSQL line (per request, inclusive of what it calls) | µs | runs per request |');
say('| --- | --- | --- |');
type Line = { fn: string; lineno: number; source: string; us: number; runs: number };
const rows: Line[] = [];
for (const f of fns) {
  const profile = await one<
    { lineno: number; source: string | null; total_time: number | null; exec_stmts: number | null }[]
  >`
    select lineno, source, total_time, exec_stmts from ${one(schema)}.plpgsql_profiler_function_tb(${f.oid}::oid)
    where exec_stmts > 0`.catch(() => []);
  for (const l of profile) {
    // total_time is in milliseconds over every run in this session.
    rows.push({
      fn: f.name,
      lineno: l.lineno,
      source: (l.source ?? '').trim().slice(0, 80),
      us: (Number(l.total_time) * 1000) / requests,
      runs: Number(l.exec_stmts) / requests,
    });
  }
}
for (const l of rows.filter((l) => l.us >= 1).sort((a, b) => b.us - a.us)) {
  say(`| ${l.fn}:${l.lineno} \`${l.source.replaceAll('|', '\\|')}\` | ${l.us.toFixed(1)} | ${l.runs.toFixed(2)} |`);
}

// ------------------------------------------------------------ (c) an AI call against a usage request
const aiUsage = { input_tokens: 40, cached_input_tokens: 0, output_tokens: 20, reasoning_tokens: 0 };
const aiReport = { upstream_status: 200, first_token_ms: 120, duration_ms: 480, finish_reason: 'stop' };
async function aiCall(sql: postgres.Sql, user: string) {
  const [{ r }] = await sql`select billing.begin_ai_call(${user}, 'gpt-4o-mini', 40, 60, ${crypto.randomUUID()},
    ${'0'.repeat(64)}, 600) as r`;
  if (r.state !== 'held') throw new Error(`begin_ai_call: ${r.state}`);
  await sql`select billing.finish_ai_call(${r.call_id}, ${sql.json(aiUsage)}, 'provider', null, false, ${
    sql.json(aiReport)
  })`;
}
async function usageRequest(sql: postgres.Sql, user: string) {
  const [{ r }] = await sql`select billing.run_usage_report(${user}, 'credits.usage', ${crypto.randomUUID()},
    ${'0'.repeat(64)}, ${tag}, ${sql.json({ model: 'gpt-4o-mini', input_tokens: 40, output_tokens: 20 })}, 201) as r`;
  charged(r);
}
/**
 * CPU (ms) a call of `op` over 8 connections: of the 8 backends that ran the calls (their own
 * /proc counters, read while connected), and of the whole cluster (which also counts whatever
 * else ran meanwhile: autovacuum on the fixtures' fresh tables, pg_cron; bench/README.md).
 */
async function cpuPerCall(
  op: (sql: postgres.Sql, user: string) => Promise<void>,
): Promise<{ sessions: number; cluster: number }> {
  const pool = postgres(dbUrl, { max: 8, onnotice: () => {} });
  const conns = await Promise.all(Array.from({ length: 8 }, () => pool.reserve()));
  const pids = await Promise.all(conns.map(async (c) => (await c`select pg_backend_pid() as pid`)[0].pid as number));
  for (const c of conns) await op(c, users[0]);
  const cpu = async () => (await Promise.all(pids.map(cpuSeconds))).reduce((a, b) => a + b, 0);
  const [s0, t0] = [await cpu(), await clusterCpu(postmaster)];
  let next = 0;
  await Promise.all(conns.map(async (c) => {
    while (next < aiCalls) await op(c, userAt(next++));
  }));
  const [s1, t1] = [await cpu(), await clusterCpu(postmaster)];
  for (const c of conns) c.release();
  await pool.end();
  return { sessions: (s1 - s0) * 1000 / aiCalls, cluster: (t1 - t0) * 1000 / aiCalls };
}
log(`(c) ${aiCalls} AI calls and ${aiCalls} usage requests at 8 connections, then 300 AI calls on one session`);
const usageCpu = await cpuPerCall(usageRequest);
const aiCpu = await cpuPerCall(aiCall);
// This session's counts reach the statistics when it goes idle after a forced flush.
const writes = async () => {
  await one`select pg_stat_force_next_flush()`;
  const [{ n }] = await one`select n_tup_upd as n from pg_stat_user_tables where relid = 'billing.accounts'::regclass`;
  return Number(n);
};
await one`select set_config('pg_stat_statements.track', 'all', false)`;
await one`select extensions.pg_stat_statements_reset()`;
const w0 = await writes();
for (let i = 0; i < 300; i++) await aiCall(one, userAt(i));
const accountWrites = (await writes() - w0) / 300;
await one`select set_config('pg_stat_statements.track', 'top', false)`;
// Statements that lock an account row (FOR UPDATE on billing.accounts), a call (#55: one a phase).
const [{ locks }] = await one<{ locks: number }[]>`
  select coalesce(sum(calls), 0)::float / 300 as locks from extensions.pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) and not toplevel
    and query ~* 'from billing\.accounts[^;]*for update'`;
const aiStatements = await one<{ query: string; toplevel: boolean; calls: number; us: number }[]>`
  select regexp_replace(left(query, 110), '[[:space:]]+', ' ', 'g') as query, toplevel, calls::int,
         total_exec_time * 1000 / 300 as us
  from extensions.pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) and calls >= 150
  order by toplevel desc, total_exec_time desc`;
say(`\n### (c) An AI call's hold and capture against a usage request\n`);
say(
  `Postgres CPU a call, 8 connections, of the backends that ran them: AI call (begin_ai_call + finish_ai_call) ` +
    `${aiCpu.sessions.toFixed(2)} ms, usage request ${usageCpu.sessions.toFixed(2)} ms: ` +
    `${(aiCpu.sessions / usageCpu.sessions).toFixed(2)}× (#55 target: an AI call ≤ 1.0 ms); of the whole cluster ` +
    `${aiCpu.cluster.toFixed(2)} and ${usageCpu.cluster.toFixed(2)} ms. Account writes a call: ${
      accountWrites.toFixed(2)
    } ` +
    `(the hold's, the capture's); statements locking an account a call: ${
      locks.toFixed(2)
    } (#55 target: one a phase).\n`,
);
say('| statement of an AI call (executor, per call; nested times are inside their callers) | µs | calls per call |');
say('| --- | --- | --- |');
for (const s of aiStatements.filter((s) => s.us >= 5)) {
  say(
    `| ${s.toplevel ? '**top** ' : ''}\`${s.query.replaceAll('|', '\\|')}\` | ${s.us.toFixed(1)} | ${
      (s.calls / 300).toFixed(2)
    } |`,
  );
}

// ------------------------------------------------------------ (d) an AI call against its own row writes alone
// The same rows written as bare statements on copies of the tables (bench/ai-call-floor.sql):
// what today's data model costs at least, and so how much of a call is everything else.
log(`(d) ${floorCalls} AI calls and as many of their row writes alone, alternating on one session`);
await one.file('bench/ai-call-floor.sql');
await one`select bench_floor.fill(${users}::uuid[])`;
const floorCall = async (user: string) => {
  const [{ id }] = await one`select bench_floor.begin_call(${user}, 0.000054) as id`;
  await one`select bench_floor.finish_call(${id}, 0.000021)`;
};
for (let i = 0; i < 50; i++) await floorCall(userAt(i)); // warm: plans made, pages read
await one`select extensions.pg_stat_statements_reset()`;
for (let i = 0; i < floorCalls; i++) {
  await aiCall(one, userAt(i));
  await floorCall(userAt(i));
}
const phases = await one<{ phase: string; us: number }[]>`
  select case when query like '%begin_ai_call%' then 'begin' when query like '%finish_ai_call%' then 'finish'
              when query like '%begin_call%' then 'floor begin' else 'floor finish' end as phase,
    sum(total_exec_time) * 1000 / ${floorCalls} as us
  from extensions.pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) and toplevel
    and query ~ '(begin_ai_call|finish_ai_call|bench_floor\.(begin|finish)_call)'
  group by 1`;
const us = (p: string) => phases.find((x) => x.phase === p)?.us ?? NaN;
say(`\n### (d) An AI call against its own row writes alone\n`);
say(
  `Executor time a call, one session, ${floorCalls} calls each, alternating: the call (begin_ai_call + ` +
    `finish_ai_call) ${fmt(us('begin'))} + ${fmt(us('finish'))} µs; the same rows written as bare statements ` +
    `on copies of the tables (bench/ai-call-floor.sql) ${fmt(us('floor begin'))} + ${fmt(us('floor finish'))} µs: ` +
    `the call is ${((us('begin') + us('finish')) / (us('floor begin') + us('floor finish'))).toFixed(2)}× its row ` +
    `writes (begin ${(us('begin') / us('floor begin')).toFixed(2)}×, finish ${
      (us('finish') / us('floor finish')).toFixed(2)
    }×).\n`,
);

// ------------------------------------------------------------ (e) a usage request against its own row writes alone
log(`(e) ${floorCalls} usage requests and as many of their row writes alone, alternating on one session`);
for (let i = 0; i < 50; i++) await one`select bench_floor.usage_charge(${userAt(i)}, 0.000021)`;
await one`select extensions.pg_stat_statements_reset()`;
for (let i = 0; i < floorCalls; i++) {
  await usageRequest(one, userAt(i));
  await one`select bench_floor.usage_charge(${userAt(i)}, 0.000021)`;
}
const usagePhases = await one<{ phase: string; us: number }[]>`
  select case when query like '%run_usage_report%' then 'request' else 'floor' end as phase,
    sum(total_exec_time) * 1000 / ${floorCalls} as us
  from extensions.pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) and toplevel
    and query ~ '(run_usage_report|bench_floor\.usage_charge)'
  group by 1`;
const usageUs = (p: string) => usagePhases.find((x) => x.phase === p)?.us ?? NaN;
say(`\n### (e) A usage request against its own row writes alone\n`);
say(
  `Executor time a request, one session, ${floorCalls} each, alternating: \`POST /credits/usage\`'s SQL ` +
    `(run_usage_report) ${fmt(usageUs('request'))} µs; the same rows written as bare statements ` +
    `(bench/ai-call-floor.sql) ${fmt(usageUs('floor'))} µs: the request is ` +
    `${(usageUs('request') / usageUs('floor')).toFixed(2)}× its row writes.\n`,
);

// ------------------------------------------------------------ (f) what a statement costs a request
// Each request is its own transaction, and PL/pgSQL sets up each statement it runs once a
// transaction (an expression's state, a query's executor): a path costs by how many statements
// and calls it runs, not only by what they write. Measured with pgbench, one client, a transaction
// each, against an empty function: 100 distinct assignments (plain, and reading a field of an
// array of movements, as the writer does), 20 calls handing on the writer's record, 20 one-row
// reads by key. The counts are (b)'s.
log(`(f) pgbench, 1 client, ${seconds} s each: what a statement, a call and a read cost a transaction`);
const repeated = (n: number, line: (i: number) => string) => Array.from({ length: n }, (_, i) => line(i)).join('\n');
await one.unsafe(`
  create function bench_floor.calib_empty(p billing.transfer_spec[], p_account bigint) returns numeric
  language plpgsql as $f$ begin return 0; end $f$;
  create function bench_floor.calib_plain(p billing.transfer_spec[], p_account bigint) returns numeric
  language plpgsql as $f$ declare x numeric := 0; begin ${repeated(100, (i) => `x := x + ${i + 1};`)} return x; end $f$;
  create function bench_floor.calib_fields(p billing.transfer_spec[], p_account bigint) returns numeric
  language plpgsql as $f$ declare x numeric := 0;
  begin ${repeated(100, (i) => `x := x + (p[1]).amount * ${i + 1};`)} return x; end $f$;
  create function bench_floor.calib_callee(q billing.posting) returns numeric
  language plpgsql set search_path = '' as $f$ begin return 1; end $f$;
  create function bench_floor.calib_calls(p billing.transfer_spec[], p_account bigint) returns numeric
  language plpgsql as $f$ declare x numeric := 0; q billing.posting := row(p, null, null, null, null, false, null);
  begin ${repeated(20, (i) => `x := x + bench_floor.calib_callee(q) * ${i + 1};`)} return x; end $f$;
  create function bench_floor.calib_reads(p billing.transfer_spec[], p_account bigint) returns numeric
  language plpgsql as $f$ declare x numeric := 0;
  begin ${
  repeated(20, (i) => `select a.balance + ${i} into x from billing.accounts a where a.id = p_account;`)
} return x; end $f$;`);
const [{ account }] = await one`select a.id as account from billing.accounts a where a.user_id = ${users[0]}`;
const movement = `array[('usage', ${account}, ${account}, 0.5, 'k', 'c', null, '${
  JSON.stringify({ ...usageArgs, request_hash: '0'.repeat(64) })
}'::jsonb, null, null, null, null)::billing.transfer_spec]`;
const latencyUs = async (name: string) => {
  await Deno.writeTextFile(`${dir}/calib-${name}.sql`, `select bench_floor.calib_${name}(${movement}, ${account});\n`);
  const out = await pgbench(superUrl, `${dir}/calib-${name}.sql`, 1, seconds);
  return Number(out.match(/latency average = ([\d.]+) ms/)?.[1]) * 1000;
};
const emptyUs = await latencyUs('empty');
const plainUs = ((await latencyUs('plain')) - emptyUs) / 100;
const fieldUs = ((await latencyUs('fields')) - emptyUs) / 100;
const callUs = ((await latencyUs('calls')) - emptyUs) / 20;
const readUs = ((await latencyUs('reads')) - emptyUs) / 20;
const calls = rows.filter((l) => /^begin\b/i.test(l.source)).reduce((a, l) => a + l.runs, 0);
const plpgsqlRuns = rows.reduce((a, l) => a + l.runs, 0) - calls;
const sqlRuns = nested.reduce((a, s) => a + s.calls, 0) / requests;
const low = calls * callUs + plpgsqlRuns * plainUs + sqlRuns * readUs;
const high = calls * callUs + plpgsqlRuns * fieldUs + sqlRuns * readUs;
say(`\n### (f) What a statement costs a request\n`);
say(
  `One a transaction, against an empty function: a PL/pgSQL assignment ${plainUs.toFixed(2)} µs, one reading a ` +
    `field of an array of movements ${fieldUs.toFixed(2)} µs, a call handing on the writer's record ` +
    `${callUs.toFixed(1)} µs, a one-row read by key ${readUs.toFixed(1)} µs. A usage request makes ` +
    `${calls.toFixed(0)} PL/pgSQL calls, runs ${plpgsqlRuns.toFixed(0)} other PL/pgSQL statements and ` +
    `${sqlRuns.toFixed(0)} nested SQL statements ((b)): at those costs ${fmt(low)}–${fmt(high)} µs, of the ` +
    `${fmt(usageUs('request') - usageUs('floor'))} µs the request spends past its row writes ((e)).\n`,
);
await one`drop schema bench_floor cascade`;
// Left as found: `supabase db lint` (./scripts/test) installs plpgsql_check where it calls it from.
if (!had) await one`drop extension plpgsql_check`;
await one.end();

const [{ invariants }] = await admin`select billing.check_lots() as invariants`;
for (const list of ['lots', 'accounts', 'transfers', 'expiry'] as const) {
  if (invariants[list].length) throw new Error(`lots disagree with the ledger after the run (${list})`);
}
await admin.end();
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(`bench/results/money-path-profile-${run}.md`, lines.join('\n') + '\n');
