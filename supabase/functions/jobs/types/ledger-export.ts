// ledger_export: the caller's ledger for a date range as CSV, one page per slice (one slice per
// tick). The cursor is the checkpoint, and each page's CSV is saved with it in one transaction,
// so a resumed export neither skips nor repeats a line, whenever the worker dies.
import { z } from 'zod';
import { sql } from '../../_shared/adapters/db.ts';
import { failpoint } from '../../_shared/failpoint.ts';
import { csvHeader, csvLines, ledgerPage } from '../../_shared/domain/ledger.ts';
import { pgInt } from '../../_shared/values/pg-values.ts';
import { InstantSchema } from '../../_shared/values/query.ts';
import type { JobType } from './types.ts';

const Input = z.strictObject({
  from: InstantSchema.optional(),
  to: InstantSchema.optional(),
  page_size: pgInt(1, 1000).default(500),
});

const State = z.object({ cursor: z.string().nullable(), rows: z.number(), total: z.number() });

/** A pause inside each page, before its checkpoint: for demos and crash tests that need a worker mid-page. */
const pageDelayMs = Number(Deno.env.get('JOBS_EXPORT_PAGE_DELAY_MS') ?? 0);

export const ledgerExport: JobType<typeof Input> = {
  schema: Input,
  async run({ job, input, resumeState, checkpoint }) {
    const saved = State.safeParse(resumeState);
    let state = saved.success ? saved.data : null;
    if (!state) {
      const [{ total }] = await sql`
        select count(*)::int as total from billing.get_ledger(${job.user_id}, null, 2147483647, ${
        input.from ?? null
      }, ${input.to ?? null})`;
      state = { cursor: null, rows: 0, total };
      await checkpoint({ progress: 0, state, label: 'started', chunk: csvHeader });
    }
    const page = await ledgerPage(
      job.user_id,
      { cursor: state.cursor ?? undefined, from: input.from, to: input.to },
      input.page_size,
    );
    if (pageDelayMs) await new Promise((r) => setTimeout(r, pageDelayMs));
    failpoint('ledger_export.before_checkpoint');
    if (page.items.length === 0) return { result: { format: 'csv', rows: state.rows } };
    state = {
      cursor: page.items[page.items.length - 1].id,
      rows: state.rows + page.items.length,
      total: state.total,
    };
    const progress = state.total ? Math.min(99, Math.floor((state.rows / state.total) * 100)) : 99;
    await checkpoint({ progress, state, label: `page through entry ${state.cursor}`, chunk: csvLines(page.items) });
    failpoint('ledger_export.after_checkpoint');
    return page.next_cursor ? { more: true } : { result: { format: 'csv', rows: state.rows } };
  },
};
