// ledger_export: the caller's ledger for a date range as CSV, page by page; the cursor is the
// checkpoint, and each page's CSV is saved with it, so a resumed export neither skips nor
// repeats a line.
import { z } from 'zod';
import { db } from '../../_shared/db.ts';
import { csvHeader, csvLines, ledgerPage } from '../../_shared/ledger.ts';
import type { JobType } from './types.ts';

const Input = z.strictObject({
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
  page_size: z.number().int().min(1).max(1000).default(500),
});

const State = z.object({ cursor: z.string().nullable(), rows: z.number(), total: z.number() });

/** A pause between pages, for demos and crash tests that need an export to be mid-way. */
const pageDelayMs = Number(Deno.env.get('JOBS_EXPORT_PAGE_DELAY_MS') ?? 0);

export const ledgerExport: JobType<typeof Input> = {
  schema: Input,
  async run({ job, input, resumeState, checkpoint }) {
    let state = State.safeParse(resumeState).success ? State.parse(resumeState) : null;
    if (!state) {
      const [{ total }] = await db()`
        select count(*)::int as total from billing.get_ledger(${job.user_id}, null, 2147483647, ${
        input.from ?? null
      }, ${input.to ?? null})`;
      state = { cursor: null, rows: 0, total };
      await checkpoint({ progress: 0, state, label: 'started', chunk: csvHeader });
    }
    for (;;) {
      const page = await ledgerPage(
        job.user_id,
        { cursor: state.cursor ?? undefined, from: input.from, to: input.to },
        input.page_size,
      );
      if (page.entries.length === 0) break;
      state = {
        cursor: page.entries[page.entries.length - 1].id,
        rows: state.rows + page.entries.length,
        total: state.total,
      };
      const progress = state.total ? Math.min(99, Math.floor((state.rows / state.total) * 100)) : 99;
      await checkpoint({ progress, state, label: `page through entry ${state.cursor}`, chunk: csvLines(page.entries) });
      if (!page.next_cursor) break;
      if (pageDelayMs) await new Promise((r) => setTimeout(r, pageDelayMs));
    }
    return { result: { format: 'csv', rows: state.rows } };
  },
};
