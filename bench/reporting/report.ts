// Step 4: the report, printed (and kept for bench/results/reporting-latest.md) and stored in the
// results' JSON.
import { fmtMs, mb, median } from '../lib.ts';
import { closedDays, report, say, transfers, users } from './settings.ts';
import type { LiveAndOld, NewWay, Prepared } from './reads.ts';
import type { WritePath } from './writes.ts';

/** Writes the figures into `report.result` and prints them as markdown tables. */
export function printReport(
  generateS: number | null,
  { rollupMs, days, todayRollupMs }: { rollupMs: number; days: number; todayRollupMs: number },
  { since_rows, sizes, newIndexes, db_size, today_rows }: Prepared,
  { newMs, newResult, byGranularity, todayMs }: NewWay,
  { liveMs, liveRows, oldMs, oldRows, agree }: LiveAndOld,
  write: WritePath,
) {
  const { shipped, without, btree, btree_size, purchaseShipped, purchaseWithout } = write;
  const newMedian = median(newMs);
  report.result = {
    db_size,
    generateS,
    rollupMs,
    rollupDays: days,
    todayRollupMs,
    todayRows: today_rows,
    sinceRows: since_rows,
    newMs,
    newMedian,
    byGranularity,
    todayMs,
    liveMs,
    oldMs,
    agree,
    // The answers themselves when they differ, to see where.
    answers: agree.newVsLive && agree.newVsOld ? undefined : { new: newResult, live: liveRows[0], old: oldRows[0] },
    sizes,
    newIndexes,
    write,
  };
  say(`\n### Reporting at ${transfers.toLocaleString()} transfers\n`);
  say(
    `Dataset: ${transfers.toLocaleString()} credit transfers over ${closedDays} closed days and today (${
      Number(today_rows).toLocaleString()
    } today, a full day's volume), ${users.toLocaleString()} users; database ${mb(Number(db_size))}${
      generateS === null ? '' : `, generated in ${generateS.toFixed(0)} s`
    }. Roll-up of ${days} closed days and today: ${(rollupMs / 1000).toFixed(0)} s (today alone: ${
      fmtMs(todayRollupMs)
    }). Since today's roll-up: ${since_rows} transfers (15 minutes at twice the average rate), read live.\n`,
  );
  say('| what GET /admin/metrics runs (default 30 days, by day) | time | vs new |');
  say('| --- | --- | --- |');
  say(
    `| old: pre-#18 functions, every day from the raw rows (1 run) | ${fmtMs(oldMs)} | ${
      (oldMs / newMedian).toFixed(0)
    }× |`,
  );
  say(`| live: new code, roll-up bypassed (1 run) | ${fmtMs(liveMs)} | ${(liveMs / newMedian).toFixed(0)}× |`);
  say(
    `| **new**: roll-up + the minutes since, live (median of 15; min ${fmtMs(Math.min(...newMs))}, max ${
      fmtMs(Math.max(...newMs))
    }) | **${fmtMs(newMedian)}** | 1× |`,
  );
  say(`| new, by week / by month (median of 5) | ${fmtMs(byGranularity.week)} / ${fmtMs(byGranularity.month)} | |`);
  say(`| of which today alone: revenue_metrics(today, tomorrow) (median of 6) | ${fmtMs(median(todayMs))} | |`);
  say(
    `\nTarget ≤ 100 ms: ${newMedian <= 100 ? 'met' : 'MISSED'}. Same answer (total and series, as JSON): new = live ${
      agree.newVsLive ? 'yes' : 'NO'
    }, new = old ${
      agree.newVsOld ? 'yes' : 'NO'
    } (but for the credit-lots lines the old functions predate); credit-lots lines in the answer: ${
      agree.lotsCompared ? 'yes' : 'NO'
    }.`,
  );
  say('\n| table | rows | total | of which indexes |');
  say('| --- | --- | --- | --- |');
  for (const s of sizes) {
    say(`| ${s.name} | ${Number(s.rows).toLocaleString()} | ${mb(Number(s.total))} | ${mb(Number(s.indexes))} |`);
  }
  say(`\nThe new indexes: ${newIndexes.map((i) => `${i.name} ${(Number(i.size) / 1024).toFixed(0)} kB`).join(', ')}.`);
  say('\n| write path (1 client) | WAL per debit after a checkpoint / steady | debits/s (median of 3) | vs none |');
  say('| --- | --- | --- | --- |');
  type Wal = { afterCheckpoint: number; steady: number };
  const w = (label: string, c: { wal: Wal; tps: number }) =>
    say(
      `| ${label} | ${c.wal.afterCheckpoint.toFixed(0)} B / ${c.wal.steady.toFixed(0)} B | ${c.tps.toFixed(0)} | ${
        (c.tps / without.tps).toFixed(2)
      }× |`,
    );
  w('none of the new indexes', without);
  w('as shipped (BRIN on created_at, the purchase and event B-trees)', shipped);
  w(`B-tree on created_at instead of BRIN (${mb(Number(btree_size))})`, btree);
  say(
    `\nWAL per paid purchase (begin_checkout, attach_checkout_session, process_stripe_event), after a checkpoint / steady: ${
      purchaseShipped.afterCheckpoint.toFixed(0)
    } B / ${purchaseShipped.steady.toFixed(0)} B as shipped, ${purchaseWithout.afterCheckpoint.toFixed(0)} B / ${
      purchaseWithout.steady.toFixed(0)
    } B without the new indexes.`,
  );
}
