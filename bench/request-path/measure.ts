// Step 3: every cell for BENCH_ROUNDS rounds (a warm-up first in round 1): its rate, latency and
// the CPU per request of its server and of the stack's other processes.
import type { Cell } from './cells.ts';
import { sqlLoop, wrk } from './cells.ts';
import type { Fixtures } from './fixtures.ts';
import { cpuOf, cpuSeconds, machineTicks, postgresProcesses, sessionsCpu, systemSeconds } from './procfs.ts';
import type { Servers } from './servers.ts';
import { env, only, rounds, runId, seconds, warmupSeconds } from './settings.ts';

export interface Measured {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  cpuMs: number; // CPU per request of the cell's server process
  systemShare: number; // of which in the kernel (stime): system calls, loopback TCP to the pooler and the bridge
  machineBusy: number; // share of both cores busy during the run
  perProcess: Record<string, number>; // CPU ms per request: postgres, redis-server, bridge
  /** Of perProcess.postgres, the TCP sessions' share (procfs.ts sessionsCpu); the rest is the cluster's other work. */
  postgresSessions: number;
  loadCpuMs: number; // the load generator's (wrk's, or this process's for the SQL cells) CPU per request: not the path's
  errors: number;
  requests: number;
}

/** Usage answers over every wrk run, warm-ups included (the debits the ledger must then hold). */
export interface UsageCount {
  answered: number;
  runs: number;
}

export async function measure(cell: Cell, tag: string, f: Fixtures, usage: UsageCount): Promise<Measured> {
  const { bridgePid, poolerPid, postmasterPid, redisPid } = f;
  const cpu0 = await cpuSeconds(cell.pid);
  const sys0 = await systemSeconds(cell.pid);
  const m0 = await machineTicks();
  const others0 = { postgres: await cpuOf('postgres', postmasterPid), redis: await cpuOf('redis-server', redisPid) };
  const pg0 = await postgresProcesses(postmasterPid);
  const bridge0 = bridgePid ? await cpuSeconds(bridgePid).catch(() => 0) : 0;
  const pooler0 = poolerPid ? await cpuSeconds(poolerPid).catch(() => 0) : 0;
  const r = cell.sql
    ? await sqlLoop(cell, seconds, f.functionsDbUrl)
    : await wrk(cell.url, [...cell.args, `${runId}-${tag}`], seconds);
  const cpu1 = await cpuSeconds(cell.pid);
  const sys1 = await systemSeconds(cell.pid);
  const m1 = await machineTicks();
  const bridge1 = bridgePid ? await cpuSeconds(bridgePid).catch(() => 0) : 0;
  const pooler1 = poolerPid ? await cpuSeconds(poolerPid).catch(() => 0) : 0;
  const pg1 = await postgresProcesses(postmasterPid);
  const perReq = (s: number) => (1000 * s) / r.requests;
  if (cell.usage) usage.answered += r.requests - r.non2xx;
  return {
    rps: r.requests / (r.duration_us / 1e6),
    p50: r.p50_us / 1000,
    p95: r.p95_us / 1000,
    p99: r.p99_us / 1000,
    cpuMs: perReq(cpu1 - cpu0),
    systemShare: cpu1 > cpu0 ? (sys1 - sys0) / (cpu1 - cpu0) : 0,
    machineBusy: (m1.busy - m0.busy) / (m1.total - m0.total),
    perProcess: {
      postgres: perReq((await cpuOf('postgres', postmasterPid)) - others0.postgres),
      redis_server: perReq((await cpuOf('redis-server', redisPid)) - others0.redis),
      redis_bridge: perReq(bridge1 - bridge0),
      pooler: perReq(pooler1 - pooler0),
    },
    postgresSessions: perReq(sessionsCpu(pg0, pg1)),
    loadCpuMs: perReq(r.cpu_s),
    errors: r.non2xx + r.connect_errors + r.read_errors + r.write_errors + r.timeouts,
    requests: r.requests,
  };
}

/** The probe (every limiter layer answered), then the rounds: `results[i]` holds cell i's runs. */
export async function runRounds(cells: Cell[], { functions }: Servers, f: Fixtures) {
  const usage: UsageCount = { answered: 0, runs: 0 };
  const results: Measured[][] = cells.map(() => []);
  // Every limiter layer ran: the answer carries the tightest layer's headers.
  // Usage is reported by the server (the service role key), naming the user.
  const probe = await fetch(`${functions}/credits/usage`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}`,
      'idempotency-key': `${runId}-probe`,
      'content-type': 'application/json',
    },
    body: JSON.stringify({ user_id: f.hotUser, model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 }),
  });
  await probe.body?.cancel();
  if (probe.status !== 201 || !probe.headers.get('x-ratelimit-limit')) {
    throw new Error(`the probe answered ${probe.status} without rate-limit headers: is the limiter on?`);
  }
  usage.answered++;

  for (let round = 1; round <= rounds; round++) {
    for (const [i, cell] of cells.entries()) {
      if (only && i > 0 && !new RegExp(only).test(cell.name)) continue;
      console.error(`round ${round}: ${cell.name} …`);
      if (round === 1 && warmupSeconds > 0) {
        const w = cell.sql
          ? await sqlLoop(cell, warmupSeconds, f.functionsDbUrl)
          : await wrk(cell.url, [...cell.args, `${runId}-w${i}`], warmupSeconds);
        if (cell.usage) {
          usage.answered += w.requests - w.non2xx;
          usage.runs++;
        }
      }
      results[i].push(await measure(cell, `r${round}c${i}`, f, usage));
      if (cell.usage) usage.runs++;
    }
  }
  return { results, usage };
}
