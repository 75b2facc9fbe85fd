// A capacity model you can run: from the per-request Postgres costs bench/money-path.ts measured
// (its latest bench/results/money-path-*.json), the database machines the mix of ./scripts/load
// needs at 1×, 10×, 100× and 1,000× today's target load (1,000 requests/s), and where one primary
// stops being enough (docs/scale.md reads this table).
//   ./scripts/bench money-path capacity   (capacity alone reuses the latest money-path results)
//   BENCH_CAPACITY_BASE (1000 req/s), BENCH_CAPACITY_UTILISATION (0.6: headroom for spikes, vacuum, failover)
import { fmt, printer } from './lib.ts';

const base = Number(Deno.env.get('BENCH_CAPACITY_BASE') ?? 1000);
const utilisation = Number(Deno.env.get('BENCH_CAPACITY_UTILISATION') ?? 0.6);
const { lines, say } = printer();

const latest = [...Deno.readDirSync('bench/results')].map((e) => e.name).filter((n) => /^money-path-.*\.json$/.test(n))
  .sort()
  .at(-1);
if (!latest) throw new Error('no bench/results/money-path-*.json: run ./scripts/bench money-path first');
const m = JSON.parse(await Deno.readTextFile(`bench/results/${latest}`));
const usage: number = m.cpu_ms_per_usage;
const balance: number = m.cpu_ms_per_balance;
const walPerUsage: number = m.wal_bytes_per_usage;

// The mix of ./scripts/load (bench/mixed-load.ts), each route in usage-request equivalents of
// Postgres work: a balance read as measured; a job reserves a hold, then captures it (two money
// requests); a checkout writes its session and one idempotency record (one); a webhook claims the
// event and grants the purchase with its lot (counted as 1.5: a grant plus the event row).
const mix: [route: string, share: number, cpuMs: number][] = [
  ['balance', 0.5, balance],
  ['usage', 0.3, usage],
  ['job', 0.08, 2 * usage],
  ['checkout', 0.07, usage],
  ['webhook', 0.05, 1.5 * usage],
];
const cpuPerRequest = mix.reduce((s, [, share, ms]) => s + share * ms, 0);
const writesShare = 1 - 0.5;

// The Edge Functions' own CPU per request, from the latest ./scripts/bench request-path (the
// gateway's process, measured from /proc around each wrk run): Supabase runs them on machines
// of its own, so this sizes the functions' bill and limits, not the database.
const latestPath = [...Deno.readDirSync('bench/results')].map((e) => e.name)
  .filter((n) => /^request-path-.*\.json$/.test(n)).sort().at(-1);
type PathRun = { cells: { name: string; runs: { cpuMs: number }[] }[] };
const pathRun: PathRun | null = latestPath ? JSON.parse(await Deno.readTextFile(`bench/results/${latestPath}`)) : null;
const gatewayMs = (prefix: string) => {
  const runs = pathRun?.cells.find((c) => c.name.startsWith(prefix))?.runs ?? [];
  const xs = runs.map((r) => r.cpuMs).sort((a, b) => a - b);
  return xs.length ? xs[Math.floor(xs.length / 2)] : null;
};
const edgeUsage = gatewayMs('POST /credits/usage (');
const edgeBalance = gatewayMs('GET /credits/balance');

// Supabase's dedicated compute sizes (docs: "Compute and Disk"), cores each; the measured costs
// are from x86 cores of this machine, taken as equal to one of those cores (an assumption: the
// first run on a hosted project replaces it, see docs/scale.md).
const sizes: [name: string, cores: number][] = [
  ['Large', 2],
  ['XL', 4],
  ['2XL', 8],
  ['4XL', 16],
  ['8XL', 32],
  ['12XL', 48],
  ['16XL', 64],
];
const biggest = sizes.at(-1)!;

say(`\n## capacity: database machines for the load mix (from ${latest})\n`);
say(
  `Measured Postgres CPU: usage ${usage.toFixed(3)} ms, balance read ${balance.toFixed(3)} ms; the mix ` +
    `${cpuPerRequest.toFixed(3)} ms per request; WAL ${fmt(walPerUsage)} B per usage request. ` +
    `Machines run at ≤ ${Math.round(utilisation * 100)}% CPU.\n`,
);
say(
  edgeUsage === null || edgeBalance === null
    ? 'Edge Function CPU: not measured yet (run ./scripts/bench request-path).\n'
    : `Edge Function CPU (the gateway's process, from ${latestPath}): usage ${edgeUsage.toFixed(3)} ms, balance read ` +
      `${edgeBalance.toFixed(3)} ms per request, beside Postgres's ${usage.toFixed(3)} and ${balance.toFixed(3)} ms.\n`,
);
say('| load | requests/s | Postgres cores needed | one primary | primaries (shards of 16XL) | WAL written |');
say('| --- | --- | --- | --- | --- | --- |');
const rows: Record<string, unknown>[] = [];
for (const times of [1, 10, 100, 1000]) {
  const rate = base * times;
  const cores = (rate * cpuPerRequest) / 1000 / utilisation;
  const fits = sizes.find(([, c]) => c >= cores);
  const shards = Math.ceil(cores / biggest[1]);
  // Writes are the shards' business; reads (half the mix) could go to replicas instead (docs/scale.md).
  const walMBs = (rate * writesShare * walPerUsage) / 1e6;
  rows.push({ times, rate, cores, one_primary: fits?.[0] ?? null, shards, wal_mb_s: walMBs });
  say(
    `| ${times}× | ${fmt(rate)} | ${cores.toFixed(1)} | ${fits ? fits[0] : 'none is enough'} | ${shards} | ${
      walMBs.toFixed(1)
    } MB/s |`,
  );
}

await Deno.writeTextFile('bench/results/capacity-latest.md', lines.join('\n') + '\n');
await Deno.writeTextFile(
  `bench/results/capacity-${new Date().toISOString()}.json`,
  JSON.stringify(
    { from: latest, base, utilisation, cpuPerRequest, edge: { from: latestPath, edgeUsage, edgeBalance }, rows },
    null,
    2,
  ),
);
