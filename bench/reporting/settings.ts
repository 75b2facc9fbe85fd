// The reporting benchmark's settings (bench/reporting.ts lists the variables), the dataset's
// shape they imply, and the report being written.
import { printer } from '../lib.ts';

export const transfers = Number(Deno.env.get('BENCH_REPORTING_TRANSFERS') ?? 10_000_000);
export const port = Number(Deno.env.get('BENCH_REPORTING_PORT') ?? 55433);
export const dir = Deno.env.get('BENCH_REPORTING_DIR') ?? '/tmp/scholarlink-reporting-bench';
export const keep = Deno.env.get('BENCH_REPORTING_KEEP') === '1';
export const quick = Deno.env.get('BENCH_REPORTING_QUICK') === '1';
// The busy-hour cell on the local stack (bench/reporting/hour.ts): transfers in the last hour; 0 skips it.
export const hour = Number(Deno.env.get('BENCH_REPORTING_HOUR') ?? 1_000_000);
// Transfers written after the watermark, not rolled up, before the last timing of that cell; 0 skips it.
export const burst = Number(Deno.env.get('BENCH_REPORTING_BURST') ?? 100_000);
export const hourOnly = Deno.env.get('BENCH_REPORTING_HOUR_ONLY') === '1';
export const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
export const closedDays = 180;
export const users = Math.max(1000, Math.round(transfers / 50));
export const perDay = transfers / (closedDays + 1);
// Traffic since the last roll-up (the job runs every 10 minutes and stops 5 minutes short):
// 15 minutes at twice a day's average rate, the worst case a read meets.
export const sinceRollup = Math.round(2 * perDay * 15 / 1440);
export const root = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const report: Record<string, unknown> = {
  date: new Date().toISOString(),
  transfers,
  users,
  closedDays,
  sinceRollup,
};
export const { lines, say } = printer();
export const note = (s: string) => console.error(`[reporting] ${s}`);
