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
// connections on one account; the SQL alone; then usage batches of 10 events, holds and the AI
// routes (chat whole and streamed, responses, messages). Every usage request carries a fresh
// Idempotency-Key. Before the load, counting.ts counts each route's round trips (Redis, Postgres,
// JWKS, provider) at proxies in front of a gateway of its own (BENCH_COUNT_CALLS a route, 40);
// the report sets them beside the route's req/s.
//
// The steps, one file each in bench/request-path/: fixtures.ts (funded accounts, the stack's
// pids), servers.ts (hello-world and the gateway), measure.ts (the rounds over cells.ts's cells),
// correctness.ts (the ledger after the load), report.ts; settings.ts holds the variables.
import { cellsFor } from './request-path/cells.ts';
import { countRoundTrips } from './request-path/counting.ts';
import { ledgerAfter } from './request-path/correctness.ts';
import { fixtures } from './request-path/fixtures.ts';
import { runRounds } from './request-path/measure.ts';
import { printReport, printRoundTrips } from './request-path/report.ts';
import { startServers } from './request-path/servers.ts';
import { lines, rounds, seconds } from './request-path/settings.ts';

if (!(await new Deno.Command('sh', { args: ['-c', 'command -v wrk'] }).output()).success) {
  throw new Error('wrk is not installed: apt-get install wrk (./scripts/bench installs it)');
}

const f = await fixtures();
console.error('counting round trips per route …');
const trips = await countRoundTrips(f);
const servers = await startServers(f);
const cells = cellsFor(servers, f);
let run;
try {
  run = await runRounds(cells, servers, f);
} finally {
  await servers.stop();
}
const { results, usage } = run;
const after = await ledgerAfter(f.db, f.users, usage);
await f.db.end();
printReport(cells, results, f.poolerPid, usage, after);
printRoundTrips(cells, results, trips);

await Deno.mkdir('bench/results', { recursive: true });
const stamp = new Date().toISOString().slice(0, 19);
await Deno.writeTextFile(`bench/results/request-path-${stamp}.md`, lines.join('\n') + '\n');
await Deno.writeTextFile(
  `bench/results/request-path-${stamp}.json`,
  JSON.stringify({ seconds, rounds, trips, cells: cells.map((c, i) => ({ name: c.name, runs: results[i] })) }, null, 2),
);
if (!after.okAfter) Deno.exit(1);
