// Measurement: how the Redis timeout and circuit breaker behave at realistic edge → Upstash
// latency. For each latency profile a Redis REST bridge of its own adds a delay to every call
// (REDIS_BRIDGE_DELAY_MS, log-normal from a median and a 99th percentile); for each timeout a
// throw-away gateway sends anonymous requests through the rate limiter at 8 connections.
// Reported per cell: the share of requests that ran without limits (timed out or breaker open),
// how often the breaker opened, and request latency. Run with ./scripts/bench redis-latency.
// BENCH_REDIS_REQUESTS (default 400) per cell; BENCH_REDIS_TIMEOUTS, BENCH_REDIS_PROFILES
// (comma-separated) narrow the matrix.
import { printer } from './lib.ts';

const requests = Number(Deno.env.get('BENCH_REDIS_REQUESTS') ?? 400);
const connections = 8;
const profiles = (Deno.env.get('BENCH_REDIS_PROFILES') ?? '0,5:20,25:80,60:200,100:400').split(',');
const timeouts = (Deno.env.get('BENCH_REDIS_TIMEOUTS') ?? '50,150,300,500').split(',').map(Number);
const failures = Deno.env.get('BENCH_REDIS_BREAKER_FAILURES'); // unset: the code's default

const freePort = () => {
  const l = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
};

async function waitFor(url: string) {
  for (let i = 0; i < 150; i++) {
    if (await fetch(url).then((r) => r.body?.cancel().then(() => true) ?? true, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not come up`);
}

function spawn(script: string, extra: Record<string, string>) {
  return new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', script],
    env: extra,
    stdout: 'null',
    stderr: 'null',
  }).spawn();
}

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

const { lines: rows, say } = printer();
say(
  `| Redis latency (p50:p99 ms) | timeout (ms) | requests without limits | breaker opened | request p50 / p99 (ms) |`,
);
say(`| --- | --- | --- | --- | --- |`);

for (const profile of profiles) {
  const bridgePort = freePort();
  const bridge = spawn('scripts/local/redis-bridge.ts', {
    REDIS_REST_PORT: String(bridgePort),
    REDIS_BRIDGE_DELAY_MS: profile,
  });
  await waitFor(`http://127.0.0.1:${bridgePort}/healthz`);
  for (const timeout of timeouts) {
    const port = freePort();
    const gateway = spawn('scripts/local/gateway.ts', {
      GATEWAY_PORT: String(port),
      UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${bridgePort}`,
      REDIS_TIMEOUT_MS: String(timeout),
      ...(failures ? { REDIS_BREAKER_FAILURES: failures } : {}),
      RATE_LIMIT_DEFAULT_PER_MIN: '1000000000',
      RATE_LIMIT_IP_PER_MIN: '1000000000',
      RATE_LIMIT_GLOBAL_PER_MIN: '1000000000',
    });
    const base = `http://127.0.0.1:${port}/functions/v1`;
    try {
      await waitFor(`${base}/health/healthz`);
      await fetch(`${base}/credits/balance`).then((r) => r.body?.cancel()); // load the function
      const latencies: number[] = [];
      let unlimited = 0;
      let next = 0;
      await Promise.all(Array.from({ length: connections }, async () => {
        while (next++ < requests) {
          const t0 = performance.now();
          const res = await fetch(`${base}/credits/balance`);
          await res.body?.cancel();
          latencies.push(performance.now() - t0);
          if (!res.headers.get('x-ratelimit-limit')) unlimited++;
        }
      }));
      const ready = await (await fetch(`${base}/health/readyz`)).json();
      const opened = ready.data.checks.redis.opened;
      latencies.sort((a, b) => a - b);
      say(
        `| ${profile === '0' ? 'none (local)' : profile} | ${timeout} | ${
          (100 * unlimited / requests).toFixed(1)
        }% | ${opened}× | ${pct(latencies, 50).toFixed(0)} / ${pct(latencies, 99).toFixed(0)} |`,
      );
    } finally {
      gateway.kill('SIGKILL');
      await gateway.status;
    }
  }
  bridge.kill('SIGKILL');
  await bridge.status;
}

await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(
  `bench/results/redis-latency-${new Date().toISOString().slice(0, 19)}.md`,
  rows.join('\n') + '\n',
);
