// Reporting at scale (issue #18): what GET /admin/metrics runs for its default 30 days
// (billing.metrics_report: the range's total and its series by day), on ~10 million
// generated credit transfers, in a private Postgres cluster this script creates and deletes.
//   old:  the pre-#18 functions (bench/reporting-baseline.sql): every period from the raw rows
//   live: billing.revenue_metrics_live, the new code with the roll-up bypassed
//   new:  billing.metrics_report: rolled-up days (today's up to the last roll-up) from
//         billing.revenue_rollup, the minutes since from the rows, once for total and series
// The three answers must be identical (a fast wrong answer fails the run). Then the write-path
// cost of the indexes the reads need: WAL per debit and per paid purchase, and debits/s, with
// and without them, and against a B-tree on created_at. Ratios against same-run baselines.
//
// First, on the local stack (bench/reporting/hour.ts): GET /admin/metrics over HTTP with
// BENCH_REPORTING_HOUR (default 1,000,000; 0 skips it) transfers written in the last hour, the
// credit ledger rolled up from its watermark as the minute job does, against the same request
// before that hour; BENCH_REPORTING_HOUR_ONLY=1 runs only that cell.
//
// BENCH_REPORTING_TRANSFERS (default 10,000,000), BENCH_REPORTING_PORT (55433),
// BENCH_REPORTING_DIR (/tmp/scholarlink-reporting-bench), BENCH_REPORTING_KEEP=1 keeps the
// cluster (a later run of the same size reuses its data), BENCH_REPORTING_QUICK=1 times only
// the new way, BENCH_SECONDS (5) per throughput cell.
//
// The steps, one file each in bench/reporting/: dataset.ts (generate, roll up), reads.ts (the
// request three ways), writes.ts (the write path), report.ts; settings.ts holds the variables.
import postgres from 'postgres';
import { privateCluster } from './private-cluster.ts';
import { fmtMs, median } from './lib.ts';
import { dataset, rollUp } from './reporting/dataset.ts';
import { prepare, timeLiveAndOld, timeNew } from './reporting/reads.ts';
import { printReport } from './reporting/report.ts';
import { busyHour } from './reporting/hour.ts';
import { dir, hour, hourOnly, keep, lines, note, port, quick, report, root, say } from './reporting/settings.ts';
import { writePath } from './reporting/writes.ts';

// ---------------------------------------------------------------- the busy hour, local stack

if (hour > 0) await busyHour();
if (hourOnly) {
  await Deno.mkdir(`${root}/bench/results`, { recursive: true });
  await Deno.writeTextFile(`${root}/bench/results/reporting-hour-latest.md`, lines.join('\n') + '\n');
  Deno.exit(0);
}

// ---------------------------------------------------------------- the private cluster

// Stock settings but for memory (a mid-size instance) and WAL room for the load.
const cluster = privateCluster({
  dir,
  port,
  keep,
  conf: ['shared_buffers = 1GB', 'maintenance_work_mem = 1GB', 'max_wal_size = 16GB', 'checkpoint_timeout = 30min'],
  log: note,
});

try {
  const reuse = await cluster.start();
  const sql = postgres(cluster.url, { max: 1, onnotice: () => {}, prepare: false });
  const admin = postgres(cluster.adminUrl, { max: 1, onnotice: () => {}, prepare: false });
  // No background jobs here: this script runs the roll-up itself, and nothing else competes.
  await sql`select cron.unschedule(jobid) from cron.job where username = current_user`;
  const generateS = await dataset(sql, reuse);
  const rollup = await rollUp(sql);
  const prepared = await prepare(sql);
  const newWay = await timeNew(sql, prepared);
  if (quick) {
    const { newMs, byGranularity, todayMs } = newWay;
    say(
      `new: median ${fmtMs(median(newMs))} (${newMs.map((x) => x.toFixed(0)).join(' ')}); week ${
        fmtMs(byGranularity.week)
      }, month ${fmtMs(byGranularity.month)}; today alone ${
        fmtMs(median(todayMs))
      }; ${prepared.since_rows} transfers since the roll-up`,
    );
    await sql.end();
    await admin.end();
    await cluster.stop();
    Deno.exit(0);
  }
  const liveAndOld = await timeLiveAndOld(sql, prepared, newWay.newResult);
  const write = await writePath(sql, admin, prepared.newIndexNames);
  printReport(generateS, rollup, prepared, newWay, liveAndOld, write);
  await sql.end();
  await admin.end();
  await Deno.mkdir(`${root}/bench/results`, { recursive: true });
  await Deno.writeTextFile(`${root}/bench/results/reporting-${report.date}.json`, JSON.stringify(report, null, 2));
  await Deno.writeTextFile(`${root}/bench/results/reporting-latest.md`, lines.join('\n') + '\n');
  if (!liveAndOld.agree.newVsLive || !liveAndOld.agree.newVsOld || !liveAndOld.agree.lotsCompared) {
    console.error('the answers differ, or hold no credit-lots lines: see bench/results');
    Deno.exitCode = 1;
  }
} finally {
  await cluster.stop();
}
