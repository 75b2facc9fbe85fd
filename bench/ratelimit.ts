// Benchmark: the latency the rate limiter adds to a trivial route, against the same route
// without it, measured in the same run (ratios hold on noisy machines; absolute numbers
// drift). Then 10× the expected load (1,000 req/s) through the limiter, counting 5xx.
// Run with ./scripts/bench ratelimit. Target: ≤ 1 ms added at p95; zero 5xx.

const seconds = Deno.env.get('BENCH_SECONDS') ?? '10';
const soakSeconds = Deno.env.get('BENCH_SOAK_SECONDS') ?? '60';
const portBase = 54500 + Math.floor(Math.random() * 400);
const envFile = `${Deno.cwd()}/.local/env`;

const server = new Deno.Command(Deno.execPath(), {
  args: ['run', '-A', `--env-file=${envFile}`, 'bench/ratelimit-server.ts'],
  env: {
    BENCH_PORT_BASE: String(portBase),
    // Measure the pass path: limits high enough that no request is refused.
    RATE_LIMIT_DEFAULT_PER_MIN: '1000000000',
    RATE_LIMIT_GLOBAL_PER_MIN: '1000000000',
    RATE_LIMIT_IP_PER_MIN: '1000000000',
  },
  stdout: 'null',
  stderr: 'null',
}).spawn();
for (let up = false; !up;) {
  up = await fetch(`http://127.0.0.1:${portBase + 1}/bench/ping`).then(
    (r) => r.body?.cancel().then(() => r.ok) ?? r.ok,
    () => false,
  );
  if (!up) await new Promise((r) => setTimeout(r, 100));
}

type Result = {
  requests: number;
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  statuses: Record<string, number>;
};
async function load(port: number, args: string[]): Promise<Result> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'bench/load.ts', '--url', `http://127.0.0.1:${port}/bench/ping`, ...args],
    stdout: 'piped',
  }).output();
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const rows: string[] = [];
const report: Record<string, unknown> = { date: new Date().toISOString(), seconds: Number(seconds) };
try {
  // Closed loop at 16 and 64 connections (as fast as the machine goes), and an open loop at
  // 2× the expected 100 req/s, where the machine is not saturated.
  for (const connections of ['16', '64', '200 req/s']) {
    const args = connections.endsWith('req/s')
      ? ['--rate', connections.split(' ')[0], '--seconds', seconds, '--connections', '0']
      : ['--connections', connections, '--seconds', seconds];
    const baseline = await load(portBase, args);
    const limited = await load(portBase + 1, args);
    const added = limited.p95 - baseline.p95;
    report[`c${connections}`] = { baseline, limited };
    rows.push(
      `| ${connections} | ${baseline.p50.toFixed(2)} / ${baseline.p95.toFixed(2)} / ${baseline.p99.toFixed(2)} | ` +
        `${limited.p50.toFixed(2)} / ${limited.p95.toFixed(2)} / ${limited.p99.toFixed(2)} | ${added.toFixed(2)} | ` +
        `${(limited.p95 / baseline.p95).toFixed(2)}× | ${(limited.rps / baseline.rps).toFixed(2)}× |`,
    );
  }
  const soak = await load(portBase + 1, ['--rate', '1000', '--seconds', soakSeconds, '--connections', '0']);
  report.soak = soak;
  const fiveXx = Object.entries(soak.statuses).filter(([s]) => s.startsWith('5') || s === 'error').reduce(
    (n, [, c]) => n + c,
    0,
  );
  console.log(
    '| load | baseline p50 / p95 / p99 (ms) | with limiter p50 / p95 / p99 (ms) | added at p95 (ms) | p95 ratio | throughput ratio |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
  console.log(
    `\n1,000 req/s for ${soakSeconds} s through the limiter: ${soak.requests} requests, ${
      soak.rps.toFixed(0)
    } req/s, ` +
      `p95 ${soak.p95.toFixed(2)} ms, statuses ${JSON.stringify(soak.statuses)}, 5xx/errors: ${fiveXx}`,
  );
  await Deno.mkdir('bench/results', { recursive: true });
  await Deno.writeTextFile(`bench/results/ratelimit-${report.date}.json`, JSON.stringify(report, null, 2));
  if (fiveXx > 0) Deno.exitCode = 1;
} finally {
  server.kill();
  await server.status;
}
