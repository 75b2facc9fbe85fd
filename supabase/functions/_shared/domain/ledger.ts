// Reading a user's ledger: keyset pages for JSON, and a CSV stream that pages through any
// range without holding it in memory.
import { sql } from '../adapters/db.ts';
import { formatCredits } from '../values/money.ts';
import { pageOf } from '../values/page.ts';

import type { LedgerEntry, LedgerPage } from '../contract/index.ts';

/** Which entries: older than `cursor` (an entry id, decoded), created in [from, to). */
export interface LedgerRange {
  cursor?: string;
  from?: string;
  to?: string;
}

type Row = {
  id: string;
  created_at: Date;
  kind: string;
  amount: string;
  balance_after: string;
  correlation_id: string | null;
  reference: string | null;
  lots: { lot_id: string; amount: string }[];
  paid_by_org: string | null;
  model: string | null;
};

export async function ledgerPage(
  userId: string,
  q: LedgerRange,
  limit: number,
): Promise<LedgerPage> {
  const rows = await sql<Row[]>`
    select * from billing.get_ledger(${userId}, ${q.cursor ?? null}, ${limit + 1}, ${q.from ?? null}, ${q.to ?? null})`;
  const entries = rows.map((r): LedgerEntry => ({
    id: String(r.id),
    created_at: r.created_at.toISOString(),
    kind: r.kind,
    amount: formatCredits(r.amount),
    balance_after: r.balance_after === null ? null : formatCredits(r.balance_after),
    correlation_id: r.correlation_id,
    reference: r.reference,
    lots: r.lots,
    paid_by: r.paid_by_org ? { org_id: r.paid_by_org } : 'self',
    model: r.model,
  }));
  return pageOf(entries, limit, (e) => e.id);
}

const csvColumns = [
  'id',
  'created_at',
  'kind',
  'amount',
  'balance_after',
  'correlation_id',
  'reference',
  'lots',
  'paid_by',
] as const;
export const csvHeader = csvColumns.join(',') + '\r\n';

/**
 * An entry's field as CSV text; lots read `lot_id:amount` joined by `;` (e.g. `12:5;13:0.5`),
 * paid_by `self` or the paying organisation's id.
 */
function csvText(e: LedgerEntry, k: typeof csvColumns[number]): string | null {
  if (k === 'lots') return e.lots.map((l) => `${l.lot_id}:${l.amount}`).join(';');
  if (k === 'paid_by') return e.paid_by === 'self' ? 'self' : e.paid_by.org_id;
  return e[k];
}

/** One CSV field: quoted when needed, never read by a spreadsheet as a formula. */
export function csvField(v: string | null): string {
  if (v === null) return '';
  // Quote when needed; a leading =,+,-,@ is prefixed so spreadsheets never run it as a formula.
  const safe = /^[=+\-@\t\r]/.test(v) && !/^-?[0-9.]+$/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** Entries as CSV lines. */
export const csvLines = (entries: LedgerEntry[]) =>
  entries.map((e) => csvColumns.map((k) => csvField(csvText(e, k))).join(',') + '\r\n').join('');

/** The ledger as CSV, fetched 1,000 entries at a time as the client reads. */
export function ledgerCsv(userId: string, q: LedgerRange): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let cursor = q.cursor;
  let started = false;
  return new ReadableStream({
    async pull(controller) {
      if (!started) {
        started = true;
        controller.enqueue(enc.encode(csvHeader));
        return;
      }
      const page = await ledgerPage(userId, { ...q, cursor }, 1000);
      if (page.items.length) controller.enqueue(enc.encode(csvLines(page.items)));
      if (!page.next_cursor) controller.close();
      cursor = page.items.at(-1)?.id;
    },
  });
}
