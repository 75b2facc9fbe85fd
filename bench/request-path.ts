// Benchmark: the cost of one request through the functions gateway, driven by wrk (a native
// load generator, so it does not share the JS thread it measures) with a hello-world Deno.serve
// measured in the same run as the ceiling. A gateway process of its own, every limiter layer
// on (global, IP, user × route) with limits high enough not to throttle the run, and its CPU
// per request read from /proc/<pid>/stat (utime + stime) around each wrk run.
//   ./scripts/bench request-path        BENCH_SECONDS (default 10), BENCH_ROUNDS (default 2),
//                                      BENCH_CPU_PROF=<dir>: write the gateway's V8 CPU profile
//                                      (summarise it with bench/cpu-profile.ts); BENCH_ONLY=<regex>
//                                      runs only the matching cells (hello-world always runs);
//                                      BENCH_GATEWAY_SCRIPT: another gateway (a patched copy, for what-ifs)
//                                      BENCH_DB_DELAY_MS: the gateway reaches the database through a
//                                      proxy that holds every packet this long each way (hosted: an
//                                      edge region to the database's region)
// Cells, each at 16 connections: hello-world; GET /health/healthz (the gateway's floor);
// GET /credits/balance; POST /credits/usage over 256 accounts; POST /credits/usage with all 16
// connections on one account. Every usage request carries a fresh Idempotency-Key.
import { importJWK, SignJWT } from 'jose';
import postgres from 'postgres';
import { fmt, median, printer } from './lib.ts';

const env = (k: string) => {
  const v = Deno.env.get(k);
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 10);
const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 2);
const warmupSeconds = Number(Deno.env.get('BENCH_WARMUP_SECONDS') ?? 3);
const cpuProfDir = Deno.env.get('BENCH_CPU_PROF');
const only = Deno.env.get('BENCH_ONLY'); // a regex on cell names, for profiling one route
const gatewayScript = Deno.env.get('BENCH_GATEWAY_SCRIPT') ?? 'scripts/local/gateway.ts'; // what-if copies
const connections = 16;
const spreadAccounts = 256;
const clockTicks = 100; // CLK_TCK on Linux x86-64: /proc/<pid>/stat counts CPU time in 1/100 s
const runId = crypto.randomUUID().slice(0, 8);
const { lines, say } = printer();

if (!(await new Deno.Command('sh', { args: ['-c', 'command -v wrk'] }).output()).success) {
  throw new Error('wrk is not installed: apt-get install wrk (./scripts/bench installs it)');
}

const freePort = () => {
  const l = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
};

async function waitFor(url: string) {
  for (let i = 0; i < 300; i++) {
    if (await fetch(url).then((r) => r.body?.cancel().then(() => r.ok) ?? r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} did not come up`);
}

/** CPU seconds (user + system, every thread) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  return (Number(fields[11]) + Number(fields[12])) / clockTicks; // 14 utime, 15 stime
}

/** Busy and total jiffies of the whole machine, for how saturated it was during a run. */
async function machineTicks(): Promise<{ busy: number; total: number }> {
  const [cpu] = (await Deno.readTextFile('/proc/stat')).split('\n');
  const n = cpu.split(/\s+/).slice(1).map(Number);
  const total = n.reduce((a, b) => a + b, 0);
  return { busy: total - n[3] - n[4], total }; // idle and iowait are not busy
}

/**
 * CPU seconds of the processes named `comm` that are `root` or its children (one Postgres
 * cluster: the postmaster and its backends; an exited backend's time moves to the postmaster's
 * reaped-children fields, which are counted). With no root known, every process so named.
 */
async function cpuOf(comm: string, root: number): Promise<number> {
  let sum = 0;
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== comm) continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (root && Number(e.name) !== root && Number(f[1]) !== root) continue; // f[1]: the parent
      sum += (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / clockTicks;
    } catch { /* exited meanwhile */ }
  }
  return sum;
}
/** The redis-server listening on `port`: its process title names the address. */
async function redisServerOn(port: string): Promise<number> {
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue;
    const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`).catch(() => '');
    if (cmd.includes('redis-server') && cmd.includes(`:${port}`)) return Number(e.name);
  }
  return 0;
}
const firstLineNumber = (path: string) => Deno.readTextFile(path).then((t) => Number(t.split('\n')[0]) || 0, () => 0);

// ---------------------------------------------------------------- fixtures

const db = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {}, prepare: false });
console.error(`setting up ${spreadAccounts + 1} funded accounts …`);
const users: string[] = (await db`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${spreadAccounts + 1})
  returning id) select id from ins`).map((r) => r.id);
await db`select billing.grant_credits(u, 1000000000, 'adjustment', 'bench-fund:' || u) from unnest(${users}::uuid[]) u`;
const [hotUser, ...spreadUsers] = users;
// The stack's own Postgres and Redis, not other clusters on the machine (other benchmarks start some).
const [{ data_directory: pgData }] = await db`show data_directory`;
const postmasterPid = await firstLineNumber(`${pgData}/postmaster.pid`);
const redisPort = new URL(env('REDIS_URL')).port;
// The functions' own way to the database (db.ts): the pooler when DB_POOLER_URL is set.
const functionsDbUrl = Deno.env.get('DB_POOLER_URL') || env('SUPABASE_DB_URL');
const poolerPid = Deno.env.get('DB_POOLER_URL')
  ? await firstLineNumber(`${pgData.replace(/\/[^/]+\/?$/, '')}/pgbouncer/pgbouncer.pid`) // lib.sh's POOLER_HOME
  : 0;
const redisPid = await firstLineNumber('.local/run/redis.pid') || await redisServerOn(redisPort);

/** A TCP proxy to `upstream` that delivers each packet `ms` after it arrived, in order, both ways. */
function delayingProxy(upstream: URL, ms: number) {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const conns = new Set<Deno.Conn>();
  const delayed = () =>
    new TransformStream<Uint8Array, Uint8Array>({
      transform: (chunk, out) => new Promise((r) => setTimeout(() => r(out.enqueue(chunk)), ms)),
    });
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: upstream.hostname, port: Number(upstream.port) });
      conns.add(client).add(server);
      client.readable.pipeThrough(delayed()).pipeTo(server.writable).catch(() => {});
      server.readable.pipeThrough(delayed()).pipeTo(client.writable).catch(() => {});
    }
  })().catch(() => {});
  const url = new URL(upstream.href);
  url.hostname = '127.0.0.1';
  url.port = String((listener.addr as Deno.NetAddr).port);
  const close = () => {
    listener.close();
    for (const c of conns) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  };
  return { url: url.href, close };
}
const dbDelayMs = Number(Deno.env.get('BENCH_DB_DELAY_MS') ?? 0);
const dbProxy = dbDelayMs > 0 ? delayingProxy(new URL(functionsDbUrl), dbDelayMs) : undefined;

const gatewayPort = Number(Deno.env.get('BENCH_GATEWAY_PORT') ?? freePort());
const helloPort = Number(Deno.env.get('BENCH_HELLO_PORT') ?? freePort());
const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const signingKey = await importJWK(jwk, 'ES256');
const tokenFor = (sub: string) =>
  new SignJWT({ role: 'authenticated', aud: 'authenticated', iss: `${gatewayUrl}/auth/v1`, app_metadata: {} })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' }).setSubject(sub).setIssuedAt()
    .setExpirationTime('1h').sign(signingKey);
const tmp = await Deno.makeTempDir({ prefix: 'bench-request-path-' });
const spreadTokens = `${tmp}/spread.tokens`;
const hotTokens = `${tmp}/hot.tokens`;
await Deno.writeTextFile(spreadTokens, (await Promise.all(spreadUsers.map(tokenFor))).join('\n') + '\n');
await Deno.writeTextFile(hotTokens, (await tokenFor(hotUser)) + '\n');

// ---------------------------------------------------------------- servers

const hello = new Deno.Command(Deno.execPath(), {
  args: ['run', '-A', 'bench/hello-server.ts'],
  env: { HELLO_PORT: String(helloPort) },
  stdout: 'null',
  stderr: 'null',
}).spawn();
const gateway = new Deno.Command(Deno.execPath(), {
  args: [
    'run',
    '-A',
    ...(cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : []),
    `--env-file=${Deno.cwd()}/.local/env`,
    cpuProfDir ? 'bench/profiled-gateway.ts' : gatewayScript,
  ],
  env: {
    GATEWAY_PORT: String(gatewayPort),
    SUPABASE_URL: gatewayUrl, // tokens name this gateway as issuer; it serves its own JWKS
    // Every layer stays on; the limits are set so that the run itself is never refused. A
    // changed limit starts fresh windows (the limit is part of the Redis key).
    RATE_LIMIT_ENABLED: 'true',
    RATE_LIMIT_GLOBAL_PER_MIN: '50000000',
    RATE_LIMIT_IP_PER_MIN: '50000000',
    RATE_LIMIT_DEFAULT_PER_MIN: '50000000',
    RATE_LIMIT_CREDITS_USAGE_PER_MIN: '50000000',
    ...(dbProxy ? { DB_POOLER_URL: dbProxy.url } : {}),
  },
  stdout: 'null',
  stderr: 'null',
}).spawn();

type Wrk = {
  requests: number;
  duration_us: number;
  p50_us: number;
  p95_us: number;
  p99_us: number;
  max_us: number;
  non2xx: number;
  connect_errors: number;
  read_errors: number;
  write_errors: number;
  timeouts: number;
};

async function wrk(url: string, args: string[], secs: number): Promise<Wrk> {
  const out = await new Deno.Command('wrk', {
    args: [
      '-t2',
      `-c${connections}`,
      `-d${secs}s`,
      '--timeout',
      '5s',
      '-s',
      'bench/request-path.lua',
      url,
      '--',
      ...args,
    ],
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const json = text.split('\n').find((l) => l.startsWith('{"requests"'));
  if (!out.success || !json) throw new Error(`wrk failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(json);
}

interface Cell {
  name: string;
  url: string;
  args: string[];
  pid: number;
  usage?: boolean;
  /** A cell without HTTP: this one SQL call per request, from this process (postgres.js, as the gateway). */
  sql?: (sql: postgres.Sql, i: number) => Promise<unknown>;
}
const functions = `${gatewayUrl}/functions/v1`;
const cells: Cell[] = [
  { name: 'hello-world Deno.serve', url: `http://127.0.0.1:${helloPort}/`, args: ['plain', '-'], pid: hello.pid },
  { name: 'GET /health/healthz', url: `${functions}/health/healthz`, args: ['plain', '-'], pid: gateway.pid },
  {
    name: 'GET /credits/balance',
    url: `${functions}/credits/balance`,
    args: ['balance', spreadTokens],
    pid: gateway.pid,
  },
  {
    name: `POST /credits/usage (${spreadAccounts} accounts)`,
    url: `${functions}/credits/usage`,
    args: ['usage', spreadTokens],
    pid: gateway.pid,
    usage: true,
  },
  {
    name: 'POST /credits/usage (one account)',
    url: `${functions}/credits/usage`,
    args: ['usage', hotTokens],
    pid: gateway.pid,
    usage: true,
  },
  // The SQL each route makes, alone, 16 clients: the ceiling the HTTP path can approach.
  {
    name: 'SQL alone: get_balance',
    url: '',
    args: [],
    pid: Deno.pid,
    sql: (sql, i) => sql`select * from billing.get_balance(${spreadUsers[i % spreadAccounts]})`,
  },
  {
    name: 'SQL alone: run_money_request (usage)',
    url: '',
    args: [],
    pid: Deno.pid,
    usage: true,
    sql: (sql, i) => moneyRequestSql(sql, spreadUsers[i % spreadAccounts], i),
  },
  {
    name: 'SQL alone: run_money_request (one account)',
    url: '',
    args: [],
    pid: Deno.pid,
    usage: true,
    sql: (sql, i) => moneyRequestSql(sql, hotUser, i),
  },
];
/** What moneyRequest sends for POST /credits/usage (idempotency.ts), with a fresh key. */
const moneyRequestSql = (sql: postgres.Sql, user: string, i: number) =>
  sql`select * from billing.run_money_request(${user}, 'credits.usage', ${`${runId}-sql-${i}`}, ${'0'.repeat(64)},
    ${`${runId}-sql-${i}`}, ${usageArgs}::text::jsonb, 201, false)`;
const usageArgs = JSON.stringify({ model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 });

/** A closed loop of `connections` clients making `cell.sql` calls for `secs`; wrk's figures. */
async function sqlLoop(cell: Cell, secs: number): Promise<Wrk> {
  const pool = postgres(functionsDbUrl, { max: connections, prepare: false, onnotice: () => {} });
  await Promise.all(Array.from({ length: connections }, () => pool`select 1`));
  const latencies: number[] = [];
  let next = sqlCalls;
  const started = performance.now();
  const until = started + secs * 1000;
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < until) {
      const t0 = performance.now();
      await (cell.sql as NonNullable<Cell['sql']>)(pool, next++);
      latencies.push(performance.now() - t0);
    }
  }));
  const duration = performance.now() - started;
  sqlCalls = next;
  await pool.end();
  latencies.sort((a, b) => a - b);
  const q = (p: number) => Math.round(1000 * latencies[Math.floor(p * (latencies.length - 1))]);
  return {
    requests: latencies.length,
    duration_us: duration * 1000,
    p50_us: q(0.5),
    p95_us: q(0.95),
    p99_us: q(0.99),
    max_us: q(1),
    non2xx: 0,
    connect_errors: 0,
    read_errors: 0,
    write_errors: 0,
    timeouts: 0,
  };
}
let sqlCalls = 0;

interface Measured {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  cpuMs: number; // CPU per request of the cell's server process
  machineBusy: number; // share of both cores busy during the run
  perProcess: Record<string, number>; // CPU ms per request: postgres, redis-server, bridge
  errors: number;
  requests: number;
}

const bridgePid = Number(await Deno.readTextFile('.local/run/redis-bridge.pid').catch(() => '0')) || 0;
async function measure(cell: Cell, tag: string): Promise<Measured> {
  const cpu0 = await cpuSeconds(cell.pid);
  const m0 = await machineTicks();
  const others0 = { postgres: await cpuOf('postgres', postmasterPid), redis: await cpuOf('redis-server', redisPid) };
  const bridge0 = bridgePid ? await cpuSeconds(bridgePid).catch(() => 0) : 0;
  const pooler0 = poolerPid ? await cpuSeconds(poolerPid).catch(() => 0) : 0;
  const r = cell.sql ? await sqlLoop(cell, seconds) : await wrk(cell.url, [...cell.args, `${runId}-${tag}`], seconds);
  const cpu1 = await cpuSeconds(cell.pid);
  const m1 = await machineTicks();
  const bridge1 = bridgePid ? await cpuSeconds(bridgePid).catch(() => 0) : 0;
  const pooler1 = poolerPid ? await cpuSeconds(poolerPid).catch(() => 0) : 0;
  const perReq = (s: number) => (1000 * s) / r.requests;
  if (cell.usage) usageAnswered += r.requests - r.non2xx;
  return {
    rps: r.requests / (r.duration_us / 1e6),
    p50: r.p50_us / 1000,
    p95: r.p95_us / 1000,
    p99: r.p99_us / 1000,
    cpuMs: perReq(cpu1 - cpu0),
    machineBusy: (m1.busy - m0.busy) / (m1.total - m0.total),
    perProcess: {
      postgres: perReq((await cpuOf('postgres', postmasterPid)) - others0.postgres),
      redis_server: perReq((await cpuOf('redis-server', redisPid)) - others0.redis),
      redis_bridge: perReq(bridge1 - bridge0),
      pooler: perReq(pooler1 - pooler0),
    },
    errors: r.non2xx + r.connect_errors + r.read_errors + r.write_errors + r.timeouts,
    requests: r.requests,
  };
}

let usageAnswered = 0; // 2xx usage answers over every wrk run, warm-ups included
let usageRuns = 0;
const results: Measured[][] = cells.map(() => []);
try {
  await waitFor(`http://127.0.0.1:${helloPort}/`);
  await waitFor(`${functions}/health/healthz`);

  // Every limiter layer ran: the answer carries the tightest layer's headers.
  const probe = await fetch(`${functions}/credits/usage`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${(await Deno.readTextFile(hotTokens)).trim()}`,
      'idempotency-key': `${runId}-probe`,
      'content-type': 'application/json',
    },
    body: '{"model":"gpt-4o-mini","input_tokens":100,"output_tokens":10}',
  });
  await probe.body?.cancel();
  if (probe.status !== 201 || !probe.headers.get('x-ratelimit-limit')) {
    throw new Error(`the probe answered ${probe.status} without rate-limit headers: is the limiter on?`);
  }
  usageAnswered++;

  for (let round = 1; round <= rounds; round++) {
    for (const [i, cell] of cells.entries()) {
      if (only && i > 0 && !new RegExp(only).test(cell.name)) continue;
      console.error(`round ${round}: ${cell.name} …`);
      if (round === 1 && warmupSeconds > 0) {
        const w = cell.sql
          ? await sqlLoop(cell, warmupSeconds)
          : await wrk(cell.url, [...cell.args, `${runId}-w${i}`], warmupSeconds);
        if (cell.usage) {
          usageAnswered += w.requests - w.non2xx;
          usageRuns++;
        }
      }
      results[i].push(await measure(cell, `r${round}c${i}`));
      if (cell.usage) usageRuns++;
    }
  }
} finally {
  gateway.kill('SIGTERM');
  hello.kill('SIGKILL');
  await Promise.all([gateway.status, hello.status]);
  await Deno.remove(tmp, { recursive: true });
}

// ---------------------------------------------------------------- correctness after the load

const [inv] = await db`
  with acct as (select id, balance from billing.accounts where user_id = any(${users}::uuid[])),
       sums as (select e.account_id, sum(e.amount) as total from billing.entries e join acct a on a.id = e.account_id
                group by e.account_id)
  select (select count(*) from billing.transfers t join acct a on t.from_account_id = a.id where t.kind = 'usage')::int
           as debits,
         (select count(*) from acct a left join sums s on s.account_id = a.id
            where a.balance <> coalesce(s.total, 0))::int as mismatched,
         (select count(*) from acct where balance < 0)::int as negative`;
await db.end();
// wrk counts only answers it read: up to one request per connection may be served after it stops.
const debitsOk = inv.debits >= usageAnswered && inv.debits <= usageAnswered + connections * usageRuns;
const okAfter = debitsOk && inv.mismatched === 0 && inv.negative === 0;

// ---------------------------------------------------------------- report

const med = (i: number, f: (m: Measured) => number) => median(results[i].map(f));
const verdict = (ok: boolean, by: string) => (ok ? 'met' : `MISSED by ${by}`);

say(`\n### Request path (wrk -t2 -c${connections}, ${seconds} s per cell, ${rounds} rounds, median)\n`);
say('| what | req/s | p50 / p95 / p99 (ms) | req/s ÷ hello-world | server CPU per request (ms) | errors |');
say('| --- | --- | --- | --- | --- | --- |');
const ran = (i: number) => results[i].length > 0;
for (const [i, cell] of cells.entries()) {
  if (!ran(i)) continue;
  say(
    `| ${cell.name} | ${fmt(med(i, (m) => m.rps))} | ${med(i, (m) => m.p50).toFixed(2)} / ${
      med(i, (m) => m.p95).toFixed(2)
    } / ${med(i, (m) => m.p99).toFixed(2)} | ${(med(i, (m) => m.rps) / med(0, (m) => m.rps)).toFixed(3)}× | ${
      med(i, (m) => m.cpuMs).toFixed(3)
    } | ${results[i].reduce((n, m) => n + m.errors, 0)} |`,
  );
}
say('\nEvery round (req/s, p95 ms, server CPU ms per request, both cores busy):\n');
say(`| what | ${Array.from({ length: rounds }, (_, r) => `round ${r + 1}`).join(' | ')} |`);
say(`| --- | ${Array.from({ length: rounds }, () => '---').join(' | ')} |`);
for (const [i, cell] of cells.entries()) {
  if (!ran(i)) continue;
  say(
    `| ${cell.name} | ${
      results[i].map((m) =>
        `${fmt(m.rps)} req/s, ${m.p95.toFixed(2)} ms, ${m.cpuMs.toFixed(3)} ms, ${(100 * m.machineBusy).toFixed(0)}%`
      ).join(' | ')
    } |`,
  );
}
const processCpu = (k: keyof Measured['perProcess']) => (m: Measured) => m.perProcess[k];
say("\nThe stack's other processes, CPU ms per request (median; the shared Postgres also serves other work):\n");
say(
  `| what | Postgres (all backends) | pgbouncer${
    poolerPid ? '' : ' (not in use)'
  } | redis-server | Redis REST bridge |`,
);
say('| --- | --- | --- | --- | --- |');
for (const [i, cell] of cells.entries()) {
  if (i === 0 || !ran(i)) continue;
  say(
    `| ${cell.name} | ${
      [processCpu('postgres'), processCpu('pooler'), processCpu('redis_server'), processCpu('redis_bridge')].map(
        (f) => {
          const v = med(i, f);
          return v >= 0 ? v.toFixed(3) : 'n/a'; // n/a: the process restarted during the run
        },
      ).join(' | ')
    } |`,
  );
}

if (cells.every((_, i) => ran(i))) {
  const usageRps = med(3, (m) => m.rps);
  const usageP95 = med(3, (m) => m.p95);
  const hotRatio = median(results[4].map((m, r) => m.rps / results[3][r].rps));
  const balanceRps = med(2, (m) => m.rps);
  const balanceP95 = med(2, (m) => m.p95);
  const usageCpu = med(3, (m) => m.cpuMs);
  const sqlBalance = med(5, (m) => m.rps);
  const sqlUsage = med(6, (m) => m.rps);
  const sqlHotRatio = median(results[7].map((m, r) => m.rps / results[6][r].rps));
  say('\nTargets (median of the rounds):\n');
  say(
    `- POST /credits/usage, 16 connections, every limiter layer on: ${fmt(usageRps)} req/s, ≥ 2,000 ${
      verdict(usageRps >= 2000, `${fmt(2000 - usageRps)} req/s (${(usageRps / 2000).toFixed(2)}×)`)
    }; p95 ${usageP95.toFixed(2)} ms, ≤ 10 ms ${verdict(usageP95 <= 10, `${(usageP95 - 10).toFixed(2)} ms`)}.`,
  );
  say(
    `- All 16 connections on one account: ${hotRatio.toFixed(2)}× the spread figure, ≥ 0.8× ${
      verdict(hotRatio >= 0.8, `${(0.8 - hotRatio).toFixed(2)}×`)
    }.`,
  );
  say(
    `- GET /credits/balance: ${fmt(balanceRps)} req/s, ≥ 4,000 ${
      verdict(balanceRps >= 4000, `${fmt(4000 - balanceRps)} req/s (${(balanceRps / 4000).toFixed(2)}×)`)
    }; p95 ${balanceP95.toFixed(2)} ms, ≤ 5 ms ${verdict(balanceP95 <= 5, `${(balanceP95 - 5).toFixed(2)} ms`)}.`,
  );
  say(
    `- Gateway CPU per usage request: ${usageCpu.toFixed(3)} ms, ≤ 0.3 ms ${
      verdict(usageCpu <= 0.3, `${(usageCpu - 0.3).toFixed(3)} ms`)
    } (hello-world: ${med(0, (m) => m.cpuMs).toFixed(3)} ms).`,
  );
  say(
    `- Against the SQL alone (same 16 clients, same driver, no HTTP): usage ${(usageRps / sqlUsage).toFixed(2)}× of ${
      fmt(sqlUsage)
    }/s, balance ${(balanceRps / sqlBalance).toFixed(2)}× of ${
      fmt(sqlBalance)
    }/s. The SQL-alone rows' server CPU is the ` +
      'bench process (the postgres.js client side alone).',
  );
  say(
    `- One account against 256, the SQL alone: ${sqlHotRatio.toFixed(2)}×: run_money_request holds the account's ` +
      'row lock for its whole run, so the 16 clients queue on it.',
  );
}
say(
  `\nAfter the run: ${inv.debits} usage debits for ${usageAnswered} 2xx answers (at most ${
    connections * usageRuns
  } more served after wrk stopped reading), balances ≠ Σ entries: ${inv.mismatched}, negative: ${inv.negative} → ${
    okAfter ? 'OK' : 'BROKEN'
  }`,
);

dbProxy?.close();
await Deno.mkdir('bench/results', { recursive: true });
const stamp = new Date().toISOString().slice(0, 19);
await Deno.writeTextFile(`bench/results/request-path-${stamp}.md`, lines.join('\n') + '\n');
await Deno.writeTextFile(
  `bench/results/request-path-${stamp}.json`,
  JSON.stringify({ seconds, rounds, cells: cells.map((c, i) => ({ name: c.name, runs: results[i] })) }, null, 2),
);
if (!okAfter) Deno.exit(1);
