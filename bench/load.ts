// A small HTTP load generator, run as its own process so it does not share an event loop
// with the server. Closed loop (N connections, each sends its next request when the last
// answers) or open loop at a fixed rate (--rate). Prints one JSON line.
//   deno run -A bench/load.ts --url URL --connections 16 --seconds 10 [--rate 1000] [--header k:v]
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  args: Deno.args,
  options: {
    url: { type: 'string' },
    connections: { type: 'string', default: '16' },
    seconds: { type: 'string', default: '10' },
    rate: { type: 'string' },
    warmup: { type: 'string', default: '1' },
    header: { type: 'string', multiple: true, default: [] },
  },
});
if (!values.url) throw new Error('--url is required');
const url = values.url;
const headers = Object.fromEntries(values.header.map((h) => [h.slice(0, h.indexOf(':')), h.slice(h.indexOf(':') + 1)]));
const connections = Number(values.connections);
const seconds = Number(values.seconds);

const latencies: number[] = [];
const statuses: Record<string, number> = {};
let recording = false;

async function once() {
  const started = performance.now();
  let status = 'error';
  try {
    const res = await fetch(url, { headers });
    await res.arrayBuffer();
    status = String(res.status);
  } catch { /* counted as error */ }
  if (recording) {
    latencies.push(performance.now() - started);
    statuses[status] = (statuses[status] ?? 0) + 1;
  }
}

async function closedLoop(untilMs: number) {
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < untilMs) await once();
  }));
}

async function openLoop(untilMs: number, perSecond: number) {
  const inFlight = new Set<Promise<void>>();
  const interval = 1000 / perSecond;
  let next = performance.now();
  while (performance.now() < untilMs) {
    // Send whatever is due, then sleep until the next slot.
    while (next <= performance.now()) {
      const p = once().finally(() => inFlight.delete(p));
      inFlight.add(p);
      next += interval;
    }
    await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
  }
  await Promise.all(inFlight);
}

const run = (ms: number) =>
  values.rate ? openLoop(performance.now() + ms, Number(values.rate)) : closedLoop(performance.now() + ms);
await run(Number(values.warmup) * 1000);
recording = true;
const started = performance.now();
await run(seconds * 1000);
const elapsed = (performance.now() - started) / 1000;

latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? NaN;
console.log(JSON.stringify({
  requests: latencies.length,
  rps: latencies.length / elapsed,
  p50: pct(50),
  p95: pct(95),
  p99: pct(99),
  statuses,
}));
