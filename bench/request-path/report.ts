// Step 5: the report: medians per cell, every round, the other processes' CPU, the targets, and
// the ledger after the load.
import { fmt, median } from '../lib.ts';
import type { Cell } from './cells.ts';
import type { LedgerAfter } from './correctness.ts';
import type { Trips } from './counting.ts';
import { countCalls } from './counting.ts';
import type { Measured, UsageCount } from './measure.ts';
import { connections, rounds, say, seconds } from './settings.ts';

/** Prints the report (kept for bench/results/) from the rounds' results. */
export function printReport(
  cells: Cell[],
  results: Measured[][],
  poolerPid: number,
  usage: UsageCount,
  { inv, okAfter }: LedgerAfter,
) {
  const med = (i: number, f: (m: Measured) => number) => median(results[i].map(f));
  const verdict = (ok: boolean, by: string) => (ok ? 'met' : `MISSED by ${by}`);

  say(`\n### Request path (wrk -t2 -c${connections}, ${seconds} s per cell, ${rounds} rounds, median)\n`);
  say(
    '| what | req/s | p50 / p95 / p99 (ms) | req/s ÷ hello-world | server CPU per request (ms) | of which kernel | errors |',
  );
  say('| --- | --- | --- | --- | --- | --- | --- |');
  const ran = (i: number) => results[i].length > 0;
  for (const [i, cell] of cells.entries()) {
    if (!ran(i)) continue;
    say(
      `| ${cell.name} | ${fmt(med(i, (m) => m.rps))} | ${med(i, (m) => m.p50).toFixed(2)} / ${
        med(i, (m) => m.p95).toFixed(2)
      } / ${med(i, (m) => m.p99).toFixed(2)} | ${(med(i, (m) => m.rps) / med(0, (m) => m.rps)).toFixed(3)}× | ${
        med(i, (m) => m.cpuMs).toFixed(3)
      } | ${(100 * med(i, (m) => m.systemShare)).toFixed(0)}% | ${results[i].reduce((n, m) => n + m.errors, 0)} |`,
    );
  }
  say(
    '\nEvery round (req/s, p95 ms, server CPU ms per request, both cores busy; Postgres CPU ms per request, ' +
      'the whole cluster and its sessions):\n',
  );
  say(`| what | ${Array.from({ length: rounds }, (_, r) => `round ${r + 1}`).join(' | ')} |`);
  say(`| --- | ${Array.from({ length: rounds }, () => '---').join(' | ')} |`);
  for (const [i, cell] of cells.entries()) {
    if (!ran(i)) continue;
    say(
      `| ${cell.name} | ${
        results[i].map((m) =>
          `${fmt(m.rps)} req/s, ${m.p95.toFixed(2)} ms, ${m.cpuMs.toFixed(3)} ms, ${(100 * m.machineBusy).toFixed(0)}%${
            i > 0 ? `, Postgres ${m.perProcess.postgres.toFixed(3)} (sessions ${m.postgresSessions.toFixed(3)})` : ''
          }`
        ).join(' | ')
      } |`,
    );
  }
  const processCpu = (k: keyof Measured['perProcess']) => (m: Measured) => m.perProcess[k];
  say(
    "\nThe stack's other processes, CPU ms per request (median). Postgres counts the whole cluster, whose other work " +
      '(autovacuum, cron jobs, other clients) lands in whichever cell runs at the time; its sessions are the TCP ' +
      "backends alive through the run (the pooler's server connections, which the requests run in):\n",
  );
  say(
    `| what | Postgres (all backends) | of which its sessions | pgbouncer${
      poolerPid ? '' : ' (not in use)'
    } | redis-server | Redis REST bridge | the load generator (not the path) |`,
  );
  say('| --- | --- | --- | --- | --- | --- | --- |');
  for (const [i, cell] of cells.entries()) {
    if (i === 0 || !ran(i)) continue;
    say(
      `| ${cell.name} | ${
        [
          processCpu('postgres'),
          (m: Measured) => m.postgresSessions,
          processCpu('pooler'),
          processCpu('redis_server'),
          processCpu('redis_bridge'),
          (m: Measured) => m.loadCpuMs,
        ].map(
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
      `- One account against 256, the SQL alone: ${sqlHotRatio.toFixed(2)}×: run_usage_report holds the account's ` +
        'row lock for its whole run, so the 16 clients queue on it.',
    );
  }
  say(
    `\nAfter the run: ${inv.debits} usage debits for ${usage.answered} 2xx answers (at most ${
      connections * usage.runs
    } more served after wrk stopped reading), balances ≠ Σ entries: ${inv.mismatched}, negative: ${inv.negative} → ${
      okAfter ? 'OK' : 'BROKEN'
    }`,
  );
}

/** Round trips per request of each route (counting.ts), beside its req/s and gateway CPU from the wrk cells. */
export function printRoundTrips(cells: Cell[], results: Measured[][], trips: Record<string, Trips>) {
  say(`\n### Round trips per request (counted at proxies, ${countCalls} requests a route, one at a time)\n`);
  say(
    '| route | Redis: HTTP requests / commands | Postgres: round trips / statements / transactions | JWKS fetches | provider calls | req/s (16 conn.) | gateway CPU ms / req | path CPU ms / req | req/s per core |',
  );
  say('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  const n = (v: number) => v.toFixed(2);
  for (const [route, t] of Object.entries(trips)) {
    const i = cells.findIndex((c) => c.route === route);
    const ran = i >= 0 && results[i].length > 0;
    const rps = ran ? fmt(median(results[i].map((m) => m.rps))) : 'not run';
    const cpu = ran ? median(results[i].map((m) => m.cpuMs)).toFixed(3) : '';
    // The path: the gateway and the stack's processes it waits on (the load generator and the
    // provider stand-in apart); one core carries 1,000 ÷ this many requests a second.
    const path = ran
      ? median(results[i].map((m) => m.cpuMs + Object.values(m.perProcess).reduce((a, b) => a + Math.max(0, b), 0)))
      : 0;
    say(
      `| ${route} | ${n(t.redisRequests)} / ${n(t.redisCommands)} | ${n(t.pgTrips)} / ${n(t.pgStatements)} / ${
        n(t.pgTransactions)
      } | ${n(t.jwks)} | ${n(t.provider)} | ${rps} | ${cpu} | ${ran ? path.toFixed(3) : ''} | ${
        ran ? fmt(1000 / path) : ''
      } |`,
    );
  }
}
