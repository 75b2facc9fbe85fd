// The books for accountants and auditors (docs/accounting.md): the journal of every day and
// currency in the operator's chart of accounts (JSON or a CSV Xero or QuickBooks Online imports),
// the chart itself, and any user's balance and lots as they stood at an instant. Admin only.
import type { Hono } from 'hono';
import type { AppEnv } from '../_shared/app-env.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { balanceAsOf, lotsAsOf } from '../_shared/domain/as-of.ts';
import { isUuid } from '../_shared/values/query.ts';
import { whole } from '../_shared/values/page.ts';
import { type Journal, journalCsv, sourceDescriptions } from './journal-csv.ts';
import { JournalAccountsSchema, JournalQuerySchema, UserBalanceAsOfSchema, UserLotsAsOfSchema } from './schemas.ts';

/** A user id from the path; anything else cannot name a user. */
function userId(raw: string): string {
  if (!isUuid(raw)) {
    throw new AppError('validation', 'VALIDATION_FAILED', 'user_id must be a UUID.', { field: 'user_id' });
  }
  return raw;
}

/** Adds the books' routes to the admin app (relative to /admin). */
export function bookRoutes(app: Hono<AppEnv>): void {
  app.get('/journal', requireAdmin, async (c) => {
    const q = readQuery(c, JournalQuerySchema);
    const [{ journal }] = await sql<{ journal: Journal }[]>`select billing.journal(${q.from}::date, ${q.to}::date, ${
      q.currency ?? null
    }) as journal`;
    if (q.format === 'csv') {
      const flavour = q.flavour ?? 'plain';
      return c.body(journalCsv(journal, flavour), 200, {
        'content-type': 'text/csv; charset=utf-8',
        'content-disposition': `attachment; filename="journal-${q.from}-${q.to}-${flavour}.csv"`,
      });
    }
    const entries = journal.entries.map((e) => ({
      ...e,
      lines: e.lines.map((l) => ({ ...l, description: sourceDescriptions[l.source] ?? l.source })),
    }));
    return ok(c, { ...journal, entries });
  });

  app.get('/journal/accounts', requireAdmin, async (c) => {
    const [{ chart }] = await sql`select billing.journal_chart() as chart`;
    return ok(c, whole(chart));
  });

  app.put('/journal/accounts', requireAdmin, async (c) => {
    const { accounts } = await readJson(c, JournalAccountsSchema);
    const [{ chart }] = await sql`select billing.set_journal_accounts(${currentUser(c).id}, ${
      jsonb(accounts)
    }) as chart`;
    return ok(c, whole(chart));
  });

  // Auditors, disputes, "what did they have on the 3rd?" (docs/credit-lots.md § As of).
  app.get('/users/:user_id/balance', requireAdmin, async (c) => {
    const { at } = readQuery(c, UserBalanceAsOfSchema);
    return ok(c, await balanceAsOf(userId(c.req.param('user_id')), at));
  });

  app.get('/users/:user_id/lots', requireAdmin, async (c) => {
    const q = readQuery(c, UserLotsAsOfSchema);
    return ok(c, await lotsAsOf(userId(c.req.param('user_id')), q.at, q));
  });
}
