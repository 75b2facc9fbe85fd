// What is measured: the cells (hello-world, the gateway's floor, balance, usage spread and on one
// account, and the SQL alone), each driven by wrk or, for the SQL alone, a closed loop here.
import postgres from 'postgres';
import type { Fixtures } from './fixtures.ts';
import { cpuSeconds } from './procfs.ts';
import type { Servers } from './servers.ts';
import { batchSize, connections, env, runId, spreadAccounts } from './settings.ts';

/** wrk's figures for one run (bench/request-path.lua prints them as JSON). */
export type Wrk = {
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
  /** wrk's own CPU seconds (user + system): the load generator's share of the two cores. */
  cpu_s: number;
};

/** Seconds in bash's `times` form (`1m2.345s`). */
const timesSeconds = (t: string) => {
  const m = /^(\d+)m([\d.]+)s$/.exec(t);
  return m ? 60 * Number(m[1]) + Number(m[2]) : NaN;
};

export async function wrk(url: string, args: string[], secs: number): Promise<Wrk> {
  // Through bash, whose `times` then prints wrk's CPU (its children's line) on stderr.
  const out = await new Deno.Command('bash', {
    args: [
      '-c',
      'wrk "$@" && times >&2',
      'wrk',
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
    // request-path.lua reports usage as the server does, with the service role key.
    env: { SUPABASE_SERVICE_ROLE_KEY: env('SUPABASE_SERVICE_ROLE_KEY') },
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const json = text.split('\n').find((l) => l.startsWith('{"requests"'));
  const errors = new TextDecoder().decode(out.stderr);
  if (!out.success || !json) throw new Error(`wrk failed: ${text}${errors}`);
  const [user, system] = (errors.trim().split('\n').at(-1) ?? '').split(' ').map(timesSeconds);
  return { ...JSON.parse(json), cpu_s: user + system };
}

export interface Cell {
  name: string;
  url: string;
  args: string[];
  pid: number;
  usage?: boolean;
  /** The route's name in the round-trip count (counting.ts), when it is one of those. */
  route?: string;
  /** A cell without HTTP: this one SQL call per request, from this process (postgres.js, as the gateway). */
  sql?: (sql: postgres.Sql, i: number) => Promise<unknown>;
}

/** The cells, hello-world first (every ratio is against it). */
export function cellsFor(
  { functions, helloPort, hello, gateway, spreadTokens, spreadUserIds, hotUserIds, otherTokens, otherUserIds }: Servers,
  f: Fixtures,
): Cell[] {
  const { hotUser, spreadUsers } = f;
  return [
    { name: 'hello-world Deno.serve', url: `http://127.0.0.1:${helloPort}/`, args: ['plain', '-'], pid: hello.pid },
    {
      name: 'GET /health/healthz',
      url: `${functions}/health/healthz`,
      args: ['plain', '-'],
      pid: gateway.pid,
      route: 'GET /health/healthz',
    },
    {
      name: 'GET /credits/balance',
      url: `${functions}/credits/balance`,
      args: ['balance', spreadTokens],
      pid: gateway.pid,
      route: 'GET /credits/balance',
    },
    {
      name: `POST /credits/usage (${spreadAccounts} accounts)`,
      url: `${functions}/credits/usage`,
      args: ['usage', spreadUserIds], // reported by the server (service role) for each user
      pid: gateway.pid,
      usage: true,
      route: 'POST /credits/usage',
    },
    {
      name: 'POST /credits/usage (one account)',
      url: `${functions}/credits/usage`,
      args: ['usage', hotUserIds],
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
      name: 'SQL alone: run_usage_report (usage)',
      url: '',
      args: [],
      pid: Deno.pid,
      usage: true,
      sql: (sql, i) => moneyRequestSql(sql, spreadUsers[i % spreadAccounts], i),
    },
    {
      name: 'SQL alone: run_usage_report (one account)',
      url: '',
      args: [],
      pid: Deno.pid,
      usage: true,
      sql: (sql, i) => moneyRequestSql(sql, hotUser, i),
    },
    // The other routes of #56, on accounts of their own (fixtures.ts), each after the ones above
    // (report.ts reads those by position).
    ...([
      [`POST /credits/usage/batch (${batchSize} events)`, '/credits/usage/batch', 'batch', otherUserIds],
      ['POST /credits/holds', '/credits/holds', 'hold', otherTokens],
      ['POST /ai/v1/chat/completions', '/ai/v1/chat/completions', 'chat', otherTokens],
      ['POST /ai/v1/chat/completions (streamed)', '/ai/v1/chat/completions', 'chat-stream', otherTokens],
      ['POST /ai/v1/responses', '/ai/v1/responses', 'responses', otherTokens],
      ['POST /ai/v1/messages', '/ai/v1/messages', 'messages', otherTokens],
    ] as const).map(([name, path, mode, file]) => ({
      name,
      url: `${functions}${path}`,
      args: [mode, file],
      pid: gateway.pid,
      route: name,
    })),
  ];
}
/** What POST /credits/usage sends (idempotent with inSql, idempotency.ts), with a fresh key. */
export const moneyRequestSql = (sql: postgres.Sql, user: string, i: number) =>
  sql`select * from billing.run_usage_report(${user}, 'credits.usage', ${`${runId}-sql-${i}`}, ${'0'.repeat(64)},
    ${`${runId}-sql-${i}`}, ${usageArgs}::text::jsonb, 201, false)`;
export const usageArgs = JSON.stringify({ model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 });

/** A closed loop of `connections` clients making `cell.sql` calls for `secs` against `dbUrl`; wrk's figures. */
export async function sqlLoop(cell: Cell, secs: number, dbUrl: string): Promise<Wrk> {
  const pool = postgres(dbUrl, { max: connections, prepare: false, onnotice: () => {} });
  await Promise.all(Array.from({ length: connections }, () => pool`select 1`));
  const latencies: number[] = [];
  let next = sqlCalls;
  const cpu0 = await cpuSeconds(Deno.pid); // the load generator is this process here
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
  const cpu = (await cpuSeconds(Deno.pid)) - cpu0;
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
    cpu_s: cpu,
  };
}
let sqlCalls = 0;
