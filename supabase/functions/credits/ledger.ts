// Reading a user's ledger: keyset pages for JSON, and a CSV stream that pages through any
// range without holding it in memory.
import { db } from '../_shared/db.ts';
import { formatCredits } from '../_shared/money.ts';
import type { LedgerEntry, LedgerQuery } from './schemas.ts';

type Row = {
  id: string;
  created_at: Date;
  kind: string;
  amount: string;
  balance_after: string;
  correlation_id: string | null;
  reference: string | null;
};

export async function ledgerPage(
  userId: string,
  q: Pick<LedgerQuery, 'cursor' | 'from' | 'to'>,
  limit: number,
): Promise<{ entries: LedgerEntry[]; next_cursor: string | null }> {
  const rows = await db()<Row[]>`
    select * from billing.get_ledger(${userId}, ${q.cursor ?? null}, ${limit + 1}, ${q.from ?? null}, ${q.to ?? null})`;
  const entries = rows.slice(0, limit).map((r) => ({
    id: String(r.id),
    created_at: r.created_at.toISOString(),
    kind: r.kind,
    amount: formatCredits(r.amount),
    balance_after: formatCredits(r.balance_after),
    correlation_id: r.correlation_id,
    reference: r.reference,
  }));
  return { entries, next_cursor: rows.length > limit ? entries[entries.length - 1].id : null };
}

const csvColumns = ['id', 'created_at', 'kind', 'amount', 'balance_after', 'correlation_id', 'reference'] as const;

function csvField(v: string | null): string {
  if (v === null) return '';
  // Quote when needed; a leading =,+,-,@ is prefixed so spreadsheets never run it as a formula.
  const safe = /^[=+\-@\t\r]/.test(v) && !/^-?[0-9.]+$/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** The ledger as CSV, fetched 1,000 entries at a time as the client reads. */
export function ledgerCsv(userId: string, q: Pick<LedgerQuery, 'cursor' | 'from' | 'to'>): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let cursor = q.cursor;
  let started = false;
  return new ReadableStream({
    async pull(controller) {
      if (!started) {
        started = true;
        controller.enqueue(enc.encode(csvColumns.join(',') + '\r\n'));
        return;
      }
      const page = await ledgerPage(userId, { ...q, cursor }, 1000);
      const lines = page.entries.map((e) => csvColumns.map((k) => csvField(e[k])).join(',') + '\r\n');
      if (lines.length) controller.enqueue(enc.encode(lines.join('')));
      if (!page.next_cursor) controller.close();
      cursor = page.next_cursor ?? undefined;
    },
  });
}
