// The request-path benchmark's settings (bench/request-path.ts lists the variables) and the
// report being written.
import { printer } from '../lib.ts';

export { env } from '../lib.ts';
export const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 10);
export const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 2);
export const warmupSeconds = Number(Deno.env.get('BENCH_WARMUP_SECONDS') ?? 3);
export const cpuProfDir = Deno.env.get('BENCH_CPU_PROF');
export const only = Deno.env.get('BENCH_ONLY'); // a regex on cell names, for profiling one route
export const gatewayScript = Deno.env.get('BENCH_GATEWAY_SCRIPT') ?? 'scripts/local/gateway.ts'; // what-if copies
export const connections = 16;
export const spreadAccounts = 256;
export const otherAccounts = 64; // the AI, hold and batch cells' accounts
export const batchSize = 10; // events in each POST /credits/usage/batch
export const runId = crypto.randomUUID().slice(0, 8);
export const { lines, say } = printer();
export const dbDelayMs = Number(Deno.env.get('BENCH_DB_DELAY_MS') ?? 0);
