// The journal (billing.journal, supabase/schemas/92-journal.sql) as CSV: plain, or in the columns
// Xero's and QuickBooks Online's manual-journal imports take (docs/accounting.md § CSV). Every
// amount is already to the cent (each day balances after rounding); this only lays it out.
import { csvField } from '../_shared/domain/ledger.ts';

export interface JournalLine {
  account: string;
  code: string;
  name: string;
  tax_rate: string;
  source: string;
  debit: string | null;
  credit: string | null;
}

export interface JournalEntry {
  date: string;
  currency: string;
  reference: string;
  narration: string;
  debit_total: string;
  credit_total: string;
  lines: JournalLine[];
}

export interface Journal {
  from: string;
  to: string;
  currency: string | null;
  entries: JournalEntry[];
  reconciliation: {
    currency: string;
    /**
     * journal − revenue_report, or (deferred_revenue_change_cents) journal − ledger: the ledger's own
     * deferred revenue movement, from the lots and their draws (docs/accounting.md § Reconciliation).
     */
    items: {
      item: string;
      journal: string;
      revenue_report: string | null;
      ledger: string | null;
      difference: string | null;
    }[];
  }[];
}

export type Flavour = 'plain' | 'xero' | 'qbo';

/** What each source of a line is, in words (docs/accounting.md § Lines). */
export const sourceDescriptions: Record<string, string> = {
  credit_purchase: 'Credit purchases paid (Checkout, invoices, plans)',
  stripe_fee: 'Stripe fees on credit purchases',
  credit_refund: 'Credit purchases refunded',
  credit_dispute_lost: 'Credit purchases lost to disputes',
  provider_payment: 'Provider payments (Stripe Connect)',
  fee_adjustment: 'Platform fee adjustments',
  provider_refund: 'Provider payments refunded',
  payout: 'Payouts to providers',
  payout_reversal: 'Payouts to providers failed or cancelled',
  credits_granted: 'Paid credits granted, at cost',
  debt_settled: 'Paid credits that settled a debt, at cost',
  credits_used: 'Paid credits spent, net of voids, at cost',
  credits_expired: 'Paid credits expired (breakage), at cost',
  credits_refunded: 'Paid credits taken back by refunds, at cost',
  credits_disputed: 'Paid credits taken back by lost disputes, at cost',
};

const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const [y, m, d] = [(s: string) => s.slice(0, 4), (s: string) => s.slice(5, 7), (s: string) => s.slice(8, 10)];

/** Xero reads `dd mmm yyyy` whatever the organisation's region; QuickBooks Online (US) `MM/DD/YYYY`. */
const xeroDate = (day: string) => `${d(day)} ${months[Number(m(day)) - 1]} ${y(day)}`;
const qboDate = (day: string) => `${m(day)}/${d(day)}/${y(day)}`;

const columns: Record<Flavour, string[]> = {
  plain: [
    'date',
    'reference',
    'currency',
    'account_code',
    'account_name',
    'account',
    'source',
    'description',
    'debit',
    'credit',
  ],
  xero: [
    '*Narration',
    '*Date',
    'Description',
    '*AccountCode',
    '*TaxRate',
    '*Amount',
    'TrackingName1',
    'TrackingOption1',
    'TrackingName2',
    'TrackingOption2',
  ],
  qbo: ['Journal No.', 'Journal Date', 'Account Name', 'Debits', 'Credits', 'Description', 'Name'],
};

function row(flavour: Flavour, e: JournalEntry, l: JournalLine): (string | null)[] {
  const description = sourceDescriptions[l.source] ?? l.source;
  switch (flavour) {
    case 'plain':
      return [e.date, e.reference, e.currency, l.code, l.name, l.account, l.source, description, l.debit, l.credit];
    case 'xero': // one signed Amount: positive is a debit
      return [
        e.narration,
        xeroDate(e.date),
        description,
        l.code,
        l.tax_rate,
        l.debit ?? `-${l.credit}`,
        '',
        '',
        '',
        '',
      ];
    case 'qbo':
      return [e.reference, qboDate(e.date), l.name, l.debit, l.credit, description, ''];
  }
}

/** The journal's entries as CSV in a flavour's columns, a header first, CRLF line ends. */
export function journalCsv(journal: Journal, flavour: Flavour): string {
  const lines = [columns[flavour].join(',')];
  for (const e of journal.entries) {
    for (const l of e.lines) lines.push(row(flavour, e, l).map(csvField).join(','));
  }
  return lines.join('\r\n') + '\r\n';
}
