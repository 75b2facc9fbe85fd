// The journal's CSV flavours (docs/accounting.md § CSV): the columns Xero's and QuickBooks
// Online's imports take, their dates, and amounts laid out as given (to the cent, never recomputed).
import assert from 'node:assert/strict';
import { type Journal, journalCsv } from '../../supabase/functions/admin/journal-csv.ts';

const journal: Journal = {
  from: '2026-11-20',
  to: '2026-11-21',
  currency: 'usd',
  reconciliation: [],
  entries: [{
    date: '2026-11-20',
    currency: 'usd',
    reference: 'SL-20261120-USD',
    narration: 'ScholarLink Billing USD journal for 2026-11-20',
    debit_total: '9.99',
    credit_total: '9.99',
    lines: [
      {
        account: 'cash_stripe',
        code: '1210',
        name: 'Cash at Stripe',
        tax_rate: 'Tax Exempt',
        source: 'credit_purchase',
        debit: '9.99',
        credit: null,
      },
      {
        account: 'credit_sales_clearing',
        code: '1290',
        name: '=Clearing, sales',
        tax_rate: 'No GST',
        source: 'credit_purchase',
        debit: null,
        credit: '9.99',
      },
    ],
  }],
};

Deno.test('Xero: one signed Amount (a credit negative), dd mmm yyyy, the account code and tax rate', () => {
  assert.equal(
    journalCsv(journal, 'xero'),
    '*Narration,*Date,Description,*AccountCode,*TaxRate,*Amount,TrackingName1,TrackingOption1,TrackingName2,TrackingOption2\r\n' +
      'ScholarLink Billing USD journal for 2026-11-20,20 Nov 2026,"Credit purchases paid (Checkout, invoices, plans)",1210,Tax Exempt,9.99,,,,\r\n' +
      'ScholarLink Billing USD journal for 2026-11-20,20 Nov 2026,"Credit purchases paid (Checkout, invoices, plans)",1290,No GST,-9.99,,,,\r\n',
  );
});

Deno.test('QuickBooks Online: Journal No., MM/DD/YYYY, the account name, Debits or Credits; a name is never a formula', () => {
  const [header, first, second] = journalCsv(journal, 'qbo').split('\r\n');
  assert.equal(header, 'Journal No.,Journal Date,Account Name,Debits,Credits,Description,Name');
  assert.equal(
    first,
    'SL-20261120-USD,11/20/2026,Cash at Stripe,9.99,,"Credit purchases paid (Checkout, invoices, plans)",',
  );
  assert.equal(
    second,
    `SL-20261120-USD,11/20/2026,"'=Clearing, sales",,9.99,"Credit purchases paid (Checkout, invoices, plans)",`,
  );
});

Deno.test('plain: every column of the journal, one row per line', () => {
  const rows = journalCsv(journal, 'plain').trimEnd().split('\r\n');
  assert.equal(rows[0], 'date,reference,currency,account_code,account_name,account,source,description,debit,credit');
  assert.equal(rows.length, 3);
  assert.match(rows[1], /^2026-11-20,SL-20261120-USD,usd,1210,Cash at Stripe,cash_stripe,credit_purchase,".*",9\.99,$/);
});
