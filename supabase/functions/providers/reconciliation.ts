// The providers' reconciliation in pages, within the edge's limits (2 s CPU, 150 s idle wall,
// 256 MB a request). A run reads one Stripe page at a time (charges, then application fees,
// then the connected accounts a few at a time) and saves it with the run's new position in one
// SQL call, so it holds one page in memory and resumes wherever it stopped. A call pages for
// RECONCILIATION_BUDGET_MS and answers: finished (the result) or still running (202, the
// next call or the schedule resumes it); where the runtime has EdgeRuntime.waitUntil, paging
// goes on after the answer for up to RECONCILIATION_BACKGROUND_MS.
import { z } from 'zod';
import { canOutliveResponse, outliveResponse, settleWithin } from '../_shared/background.ts';
import { call } from '../_shared/adapters/db.ts';
import { lazyEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { balanceItems, chargesPage, feesPage, payoutsPage, type StripeItem } from './stripe-day.ts';

export const ReconciliationEnvSchema = z.object({
  RECONCILIATION_BUDGET_MS: z.coerce.number().int().positive().max(8_000).default(3_000),
  RECONCILIATION_BACKGROUND_MS: z.coerce.number().int().nonnegative().max(120_000).default(60_000),
  RECONCILIATION_LEASE_SECONDS: z.coerce.number().int().positive().default(30),
});
export type ReconciliationEnv = z.infer<typeof ReconciliationEnvSchema>;
const reconciliationEnv = lazyEnv(ReconciliationEnvSchema);

/** How long past its budget a call waits for the page in flight before answering without it. */
export const pageGraceMs = 1_000;
/** Connected accounts read (concurrently) per page of the accounts phase. */
export const accountsPerPage = 8;

/** A run as billing.reconciliation_progress keeps it. */
export interface Run {
  id: string;
  day: string;
  phase: 'charges' | 'fees' | 'accounts' | 'done';
  cursor: string | null;
  pages: number;
  locked_by: string | null;
  started_at: Date;
  updated_at: Date;
  finished_at: Date | null;
}

export type Outcome = { finished: true; result: unknown } | { finished: false; progress: RunProgress };

/** What a 202 says about a run still going. */
export interface RunProgress {
  date: string;
  status: 'running';
  phase: Run['phase'];
  pages: number;
  started_at: string;
  updated_at: string;
}

const progressOf = (run: Run): RunProgress => ({
  date: run.day,
  status: 'running',
  phase: run.phase,
  pages: run.pages,
  started_at: run.started_at.toISOString(),
  updated_at: run.updated_at.toISOString(),
});

// postgres.js reads a date as UTC midnight; a run's day is kept as the calendar day it names.
type RunRow = Omit<Run, 'day'> & { day: Date };
const toRun = (r: RunRow): Run => ({ ...r, day: r.day.toISOString().slice(0, 10) });

/** A worker paging one run: it holds the run's lease and renews it with every page it saves. */
export class RunWorker {
  constructor(readonly worker: string, readonly leaseSeconds: number) {}

  async claim(day: string): Promise<Run> {
    const [run] = await call((sql) =>
      sql<RunRow[]>`select * from billing.claim_reconciliation(${day}::date, ${this.worker}, ${this.leaseSeconds})`
    );
    return toRun(run);
  }

  private async record(run: Run, items: StripeItem[], phase: Run['phase'], cursor: string | null): Promise<Run> {
    const [next] = await call((sql) =>
      sql<RunRow[]>`select * from billing.record_reconciliation_page(${run.id}, ${this.worker},
        ${JSON.stringify(items)}::text::jsonb, ${phase}, ${cursor}, ${this.leaseSeconds})`
    );
    failpoint('reconciliation.after_page');
    return toRun(next);
  }

  /** One account's payouts of the day (pages past the first are saved as they come) and its balance. */
  private async account(run: Run, account: string): Promise<StripeItem[]> {
    let page = await payoutsPage(run.day, account, null);
    while (page.next) {
      await this.record(run, page.items, run.phase, run.cursor); // saved, the position unchanged
      page = await payoutsPage(run.day, account, page.next);
    }
    return [...page.items, ...await balanceItems(account)];
  }

  /** Reads and saves the run's next page; the last step compares and finishes the run. */
  async step(run: Run): Promise<Run> {
    switch (run.phase) {
      case 'charges': {
        const page = await chargesPage(run.day, run.cursor);
        return this.record(run, page.items, page.next ? 'charges' : 'fees', page.next);
      }
      case 'fees': {
        const page = await feesPage(run.day, run.cursor);
        return this.record(run, page.items, page.next ? 'fees' : 'accounts', page.next);
      }
      case 'accounts': {
        const accounts = await call((sql) =>
          sql<{ account: string }[]>`
            select account from billing.list_connected_accounts(${run.cursor ?? ''}, ${accountsPerPage})`
        );
        if (accounts.length === 0) {
          const [done] = await call((sql) =>
            sql<RunRow[]>`select * from billing.finish_reconciliation(${run.id}, ${this.worker})`
          );
          return toRun(done);
        }
        const items = await Promise.all(accounts.map((a) => this.account(run, a.account)));
        return this.record(run, items.flat(), 'accounts', accounts[accounts.length - 1].account);
      }
      default:
        return run;
    }
  }

  /**
   * Pages (at least once) until the run finishes, `deadline` (performance.now()) passes, or
   * another worker takes the run; `latest` always holds the run as last saved.
   */
  async pageUntil(latest: { run: Run }, deadline: number): Promise<Run> {
    try {
      do {
        latest.run = await this.step(latest.run);
      } while (!latest.run.finished_at && performance.now() < deadline);
    } catch (err) {
      if (!(err instanceof AppError && err.code === 'LEASE_LOST')) throw err;
      log.info('reconciliation lease lost', { run: latest.run.id, worker: this.worker });
    }
    return latest.run;
  }

  release(run: Run): Promise<unknown> {
    return call((sql) => sql`select billing.release_reconciliation(${run.id}, ${this.worker})`);
  }
}

const resultOf = async (day: string) => {
  const [{ result }] = await call((sql) => sql`select billing.reconciliation_of(${day}::date) as result`);
  if (!result) throw new AppError('not_found', 'RECONCILIATION_NOT_FOUND', `No reconciliation has run for ${day}.`);
  return result as unknown;
};

/**
 * Advances the reconciliation of `date` (null: the scheduled call, billing.due_reconciliation_day)
 * for up to the budget: the day's result once its run is finished, else the run's progress.
 * @example const outcome = await advanceReconciliation('2026-11-20')
 */
export async function advanceReconciliation(
  date: string | null,
  env: ReconciliationEnv = reconciliationEnv(),
): Promise<Outcome> {
  const started = performance.now();
  const yesterday = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);
  const [{ due }] = date
    ? [{ due: date }]
    : await call((sql) =>
      sql<{ due: string | null }[]>`select billing.due_reconciliation_day(${yesterday}::date)::text as due`
    );
  if (!due) return { finished: true, result: await resultOf(yesterday) };

  const worker = new RunWorker(`reconcile-${crypto.randomUUID()}`, env.RECONCILIATION_LEASE_SECONDS);
  const latest = { run: await worker.claim(due) };
  if (latest.run.locked_by !== worker.worker) return { finished: false, progress: progressOf(latest.run) };

  const paging = worker.pageUntil(latest, started + env.RECONCILIATION_BUDGET_MS);
  const settled = await settleWithin(paging, env.RECONCILIATION_BUDGET_MS + pageGraceMs - (performance.now() - started))
    .catch(async (err) => {
      await worker.release(latest.run).catch(() => {});
      throw err;
    });
  if (settled.done && settled.value.finished_at) return { finished: true, result: await resultOf(due) };

  // Not done: the page in flight (if any) and, where the runtime allows, more pages go on after
  // the answer; the lease is handed back at the end so the next call resumes at once.
  const background = canOutliveResponse() ? env.RECONCILIATION_BACKGROUND_MS : 0;
  const rest = paging
    .then((run) => (run.finished_at || !background ? run : worker.pageUntil(latest, performance.now() + background)))
    .catch((err) => log.error('reconciliation paging failed after the answer', errorSummary(err)))
    .finally(() => worker.release(latest.run).catch(() => {}));
  if (settled.done && !background) await rest;
  else outliveResponse(rest);
  return { finished: false, progress: progressOf(latest.run) };
}
