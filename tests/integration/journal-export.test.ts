// The journal an accountant imports (GET /admin/journal, docs/accounting.md): each day's entry per
// currency balances to the cent, its lines re-derived here from the money ledger and the
// transfers' draws on paid lots match it line for line, it reconciles with revenue_metrics, and
// its CSVs are in the columns Xero and QuickBooks Online import. The chart is the operator's.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  newUser,
  reportUsage,
  spend,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { key } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, deliver, emulator } from '../support/purchases.ts';
import { renew, subscribeTo } from '../support/plans.ts';

type Line = { account: string; code: string; source: string; debit: string | null; credit: string | null };
type Entry = {
  date: string;
  currency: string;
  reference: string;
  debit_total: string;
  credit_total: string;
  lines: Line[];
};
type Journal = {
  entries: Entry[];
  reconciliation: {
    currency: string;
    items: {
      item: string;
      journal: string;
      revenue_report: string | null;
      ledger: string | null;
      difference: string | null;
    }[];
  }[];
};

const today = () => new Date().toISOString().slice(0, 10);
const tomorrow = () => new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
/** A decimal string in a two-place currency as whole cents (exact: no floats). */
const cents = (s: string | null) => (s === null ? 0n : BigInt(s.replace('.', '')));

/** Some of everything the books record: a purchase, Stripe's fee on it, spending, a refund, a paid grant. */
async function activity() {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  const spent = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 123 * 50, output_tokens: 0 },
  });
  assert.equal(spent.status, 201, spent.text);
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 333 });
  const granted = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: {
      user_id: id,
      amount: '77',
      reason: 'journal test',
      kind: 'adjustment',
      lot: { category: 'paid', cost_cents: '7.7' },
    },
  });
  assert.equal(granted.status, 201, granted.text);
}

/** The journal account of a money entry, as docs/accounting.md lists them (written apart from the SQL). */
function moneyAccount(kind: string, account: string): string {
  if (account === 'payers' || account === 'provider_payouts') return 'cash_stripe';
  if (account.startsWith('provider:')) return 'provider_payables';
  if (account !== 'b2c_revenue') return account;
  return ({ credit_purchase: 'credit_sales_clearing', stripe_fee: 'cash_stripe', credit_refund: 'refunds' } as Record<
    string,
    string
  >)[kind] ??
    'disputes';
}

const creditPairs: Record<string, [string, string]> = {
  credits_granted: ['credit_sales_clearing', 'deferred_revenue'],
  debt_settled: ['credit_sales_clearing', 'revenue_usage'],
  credits_used: ['deferred_revenue', 'revenue_usage'],
  credits_expired: ['deferred_revenue', 'revenue_breakage'],
  credits_refunded: ['deferred_revenue', 'refunds'],
  credits_disputed: ['deferred_revenue', 'disputes'],
};

Deno.test("each day's journal balances to the cent, matches its re-derivation from the ledgers and reconciles with revenue_metrics", async () => {
  await activity();
  const day = today();
  // One statement, one snapshot: the journal, the rows it is re-derived from, and the revenue report.
  const [row] = await testDb<
    {
      journal: Journal;
      money: { kind: string; account: string; currency: string; cents: string }[];
      flows: { source: string; currency: string; cents: string }[];
      report: { by_currency: Record<string, unknown>[]; credit_lots: Record<string, unknown>[] };
    }[]
  >`
    with bounds as (select ${day}::date::timestamp at time zone 'UTC' as lo, (${day}::date + 1)::timestamp at time zone 'UTC' as hi)
    select billing.journal(${day}::date, ${day}::date + 1, null) as journal,
      (select coalesce(jsonb_agg(m), '[]') from (
         select t.kind, e.account, e.currency, sum(e.amount_cents)::text as cents
         from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id, bounds b
         where t.occurred_at >= b.lo and t.occurred_at < b.hi group by 1, 2, 3) m) as money,
      (select coalesce(jsonb_agg(f), '[]') from (
       -- Each source's exact parts, rounded once per source and currency (as the journal rounds a day's).
       select p.source, p.currency, round(sum(p.part))::text as cents from (
         -- What each transfer of the day drew from paid lots, at cost, by why it moved ...
         select case when t.kind in ('usage', 'hold_capture', 'void') then 'credits_used'
                  when t.kind = 'expiry' then 'credits_expired' when t.kind = 'refund_reversal' then 'credits_refunded'
                  else 'credits_disputed' end as source, l.currency, l.cost_cents * a.amount / l.amount as part
         from billing.transfers t join billing.lot_allocations a on a.transfer_id = t.id join billing.lots l on l.id = a.lot_id, bounds b
         where t.created_at >= b.lo and t.created_at < b.hi and l.category = 'paid'
           and t.kind in ('usage', 'hold_capture', 'void', 'expiry', 'refund_reversal', 'dispute_reversal')
         union all
         -- ... of what it gave back, the part that paid a debt then: used that day ...
         select 'credits_used', l.currency, l.cost_cents * a.debt_settled / l.amount
         from billing.transfers t join billing.lot_allocations a on a.transfer_id = t.id join billing.lots l on l.id = a.lot_id, bounds b
         where t.created_at >= b.lo and t.created_at < b.hi and l.category = 'paid' and a.debt_settled <> 0
         union all
         -- ... the paid lots granted that day (dated by their grant, as the journal dates them; net of a debt paid, and that debt) ...
         select x.source, l.currency, x.part
         from billing.transfers t join billing.lots l on l.grant_transfer_id = t.id, bounds b,
           lateral (values ('credits_granted', l.cost_cents * (l.amount - l.debt_settled) / l.amount),
                           ('debt_settled', l.cost_cents * l.debt_settled / l.amount)) x(source, part)
         where l.granted_at >= b.lo and l.granted_at < b.hi and l.category = 'paid' and l.moved_from is null
         union all
         -- ... and the part of the paid lots its moving transfers opened that paid a debt: used, out of deferred revenue.
         select 'credits_used', l.currency, l.cost_cents * l.debt_settled / l.amount
         from billing.transfers t join billing.lots l on l.grant_transfer_id = t.id, bounds b
         where l.granted_at >= b.lo and l.granted_at < b.hi and l.category = 'paid' and l.moved_from is not null) p
       group by 1, 2) f) as flows,
      billing.revenue_metrics((select lo from bounds), (select hi from bounds)) as report`;

  // Expected lines: (currency, account, source) → minor units, debit positive.
  const expected = new Map<string, bigint>();
  const add = (currency: string, account: string, source: string, amount: bigint) => {
    const k = `${currency} ${account} ${source}`;
    expected.set(k, (expected.get(k) ?? 0n) + amount);
  };
  for (const m of row.money) {
    const sign = m.kind === 'stripe_fee' ? 1n : -1n; // a fee is Dr Stripe fees, Cr cash; else a gain is a credit
    add(m.currency, moneyAccount(m.kind, m.account), m.kind, sign * BigInt(m.cents));
  }
  for (const f of row.flows) {
    const [dr, cr] = creditPairs[f.source];
    add(f.currency, dr, f.source, BigInt(f.cents));
    add(f.currency, cr, f.source, -BigInt(f.cents));
  }
  for (const [k, v] of [...expected]) if (v === 0n) expected.delete(k);

  const actual = new Map<string, bigint>();
  for (const e of row.journal.entries) {
    assert.equal(e.date, day);
    const dr = e.lines.reduce((s, l) => s + cents(l.debit), 0n);
    const cr = e.lines.reduce((s, l) => s + cents(l.credit), 0n);
    assert.equal(dr, cr, `${e.reference}: debits = credits`);
    assert.equal(dr, cents(e.debit_total));
    assert.equal(cr, cents(e.credit_total));
    for (const l of e.lines) actual.set(`${e.currency} ${l.account} ${l.source}`, cents(l.debit) - cents(l.credit));
  }
  assert.ok(actual.size >= 8, `today's activity is in the journal (${actual.size} lines)`);
  assert.deepEqual(actual, expected, 'every line is its re-derivation from the money entries and the transfers');

  // The reconciliation: over one day, no difference; and its report side is revenue_metrics'.
  for (const r of row.journal.reconciliation) {
    for (const i of r.items) {
      if (i.item === 'deferred_revenue_change_cents') {
        // Held to the ledger: the rounding only, half a cent for each of the 5 sources that move
        // deferred revenue (rounded per day and source) and for the ledger's own (rounded per day).
        assert.equal(i.revenue_report, null);
        assert.ok(i.ledger !== null && Math.abs(Number(i.difference)) <= 3, `${r.currency} ${i.item}: ${i.difference}`);
        continue;
      }
      // A debt paid is not in the revenue report (it counts the grant net of it): no difference to show.
      assert.equal(i.difference, i.item === 'debt_settled_cents' ? null : '0', `${r.currency} ${i.item}`);
    }
    const lots = row.report.credit_lots.find((c) => c.currency === r.currency);
    const get = (item: string) => r.items.find((i) => i.item === item)?.revenue_report;
    if (lots) {
      assert.equal(get('recognised_revenue_cents'), String(lots.recognised_revenue_cents));
      assert.equal(get('breakage_revenue_cents'), String(lots.breakage_revenue_cents));
      assert.equal(get('paid_granted_cents'), String(lots.paid_granted_cents));
    }
    const money = row.report.by_currency.find((c) => c.currency === r.currency)?.b2c_credits as
      | Record<string, number>
      | undefined;
    if (money) {
      assert.equal(get('gmv_cents'), String(money.gmv_cents));
      assert.equal(get('refunds_cents'), String(money.refunds_cents));
      assert.equal(get('stripe_fees_cents'), String(money.stripe_fees_cents));
    }
  }
});

// A closed day stays closed: what happens later is booked on the day it happens. Credits given back
// into a lot granted on an earlier day (a renewal bringing a period's expired credits back from
// breakage, a void) that pay a debt are credits used on the day they are given back; the day of
// the lot's grant keeps the figures it had (docs/accounting.md).
Deno.test("a rollover that pays today's debt out of credits granted on an earlier day leaves that day's journal and report as they were", async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 credits for 999¢; basic rolls up to 2,000
  const mini = await buy(s.token, 'mini');
  const late = await renew(plan.stripe_subscription, 'paid', false); // period 2 charged, its webhooks late
  // Period 1's grant was made on a day of its own, long closed; the period has ended and the sweep expired it.
  const [{ day }] = await testDb`with l as (
      update billing.lots x set granted_at = x.granted_at - ${`${
    200 + Math.floor(Math.random() * 400)
  } days`}::interval,
        expires_at = now() - interval '1 hour'
      from billing.plan_lots pl join billing.accounts a on true
      where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${s.id} and x.open
      returning x.account_id, x.granted_at, x.expires_at)
    update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id
    returning to_char((l.granted_at at time zone 'UTC')::date, 'YYYY-MM-DD') as day`;
  await testDb`select billing.expire_lots(500)`;
  await spend(s.token, 5000);
  await emulator(`/_emulator/charges/${await chargeOf(mini.session_id)}/refund`, {}); // 5,000 spent, refunded: owed
  assert.equal((await balanceOf(s.token)).balance, '-5000');

  const closed = async () =>
    (await testDb<{ journal: Journal; report: { credit_lots: unknown[] } }[]>`
      select billing.journal(${day}::date, ${day}::date + 1, 'usd') as journal,
        billing.revenue_metrics(${day}::date::timestamp at time zone 'UTC', (${day}::date + 1)::timestamp at time zone 'UTC')
          as report`)[0];
  const before = await closed();
  const lines = before.journal.entries.flatMap((e) =>
    e.lines.map((l) => `${l.source} ${l.account} ${l.debit ?? '-' + l.credit}`)
  );
  assert.deepEqual(lines.sort(), [
    'credits_granted credit_sales_clearing 9.99',
    'credits_granted deferred_revenue -9.99',
  ]);

  // The renewal: 2,000 come back from breakage into period 1's lot and pay 2,000 of the debt today.
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  assert.equal((await balanceOf(s.token)).balance, '7000');
  const after = await closed();
  assert.deepEqual(after.journal.entries, before.journal.entries, `${day}'s journal is as it was closed`);
  assert.deepEqual(after.journal.reconciliation, before.journal.reconciliation, `${day}'s reconciliation too`);
  assert.deepEqual(after.report.credit_lots, before.report.credit_lots, `${day}'s revenue report too`);
  for (const r of after.journal.reconciliation) {
    for (const i of r.items) {
      assert.ok(i.difference === null || i.difference === '0', `${day} ${r.currency} ${i.item}: ${i.difference}`);
    }
  }
  // Today's books carry it: the 2,000 (199.8¢) leave breakage and are recognised as used.
  const [{ used }] = await testDb`select coalesce(sum(l.amount), 0)::text as used
    from billing.journal_lines(current_date, current_date + 1, 'usd') l
    where l.account = 'revenue_usage' and l.source = 'credits_used'`;
  assert.ok(Number(used) <= -200, `today's credits used include the debt paid from breakage (${used})`);
  await assertLedgerInvariants();
});

/** A small CSV reader: quoted fields with commas and doubled quotes, CRLF rows. */
function parseCsv(text: string): string[][] {
  return text.trimEnd().split('\r\n').map((line) => {
    const out: string[] = [];
    let cell = '';
    let quoted = false;
    for (let i = 0; i < line.length; i++) {
      const ch = line[i];
      if (quoted && ch === '"' && line[i + 1] === '"') (cell += '"'), i++;
      else if (ch === '"') quoted = !quoted;
      else if (ch === ',' && !quoted) out.push(cell), (cell = '');
      else cell += ch;
    }
    out.push(cell);
    return out;
  });
}

Deno.test('the CSVs are in the columns Xero and QuickBooks Online import, each journal balancing', async () => {
  await activity();
  const admin = await adminToken();
  const range = `from=${today()}&to=${tomorrow()}&currency=usd&format=csv`;

  const xero = await api(`/admin/journal?${range}&flavour=xero`, { token: admin });
  assert.equal(xero.status, 200, xero.text);
  assert.match(xero.headers.get('content-type') ?? '', /^text\/csv/);
  const [xh, ...xrows] = parseCsv(xero.text);
  assert.deepEqual(xh, [
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
  ]);
  assert.ok(xrows.length >= 6);
  const byJournal = new Map<string, bigint>();
  for (const r of xrows) {
    assert.match(r[1], /^\d{2} [A-Z][a-z]{2} \d{4}$/, 'Xero reads dd mmm yyyy');
    assert.match(r[5], /^-?\d+\.\d{2}$/, 'an amount to the cent, negative for a credit');
    assert.equal(r[4], 'Tax Exempt');
    byJournal.set(`${r[0]}|${r[1]}`, (byJournal.get(`${r[0]}|${r[1]}`) ?? 0n) + cents(r[5]));
  }
  for (const [j, sum] of byJournal) assert.equal(sum, 0n, `Xero journal ${j} balances`);

  const qbo = await api(`/admin/journal?${range}&flavour=qbo`, { token: admin });
  const [qh, ...qrows] = parseCsv(qbo.text);
  assert.deepEqual(qh, ['Journal No.', 'Journal Date', 'Account Name', 'Debits', 'Credits', 'Description', 'Name']);
  const qj = new Map<string, bigint>();
  for (const r of qrows) {
    assert.match(r[1], /^\d{2}\/\d{2}\/\d{4}$/, 'QuickBooks Online reads MM/DD/YYYY');
    assert.ok((r[3] === '') !== (r[4] === ''), 'a line is a debit or a credit');
    qj.set(r[0], (qj.get(r[0]) ?? 0n) + cents(r[3] || null) - cents(r[4] || null));
  }
  for (const [j, sum] of qj) assert.equal(sum, 0n, `QuickBooks journal ${j} balances`);

  const plain = await api(`/admin/journal?${range}`, { token: admin });
  assert.equal(
    parseCsv(plain.text)[0].join(','),
    'date,reference,currency,account_code,account_name,account,source,description,debit,credit',
  );
});

Deno.test('the chart is the operator’s: an admin reads and maps it; a student cannot; bad input changes nothing', async () => {
  const admin = await adminToken();
  const chart = await api('/admin/journal/accounts', { token: admin });
  assert.equal(chart.status, 200, chart.text);
  const items = dataOf(chart).items as { key: string; code: string }[];
  assert.equal(items.length, 11);
  const before = items.find((a) => a.key === 'stripe_fees')?.code ?? '';
  assert.match(before, /^\S+$/);

  const student = await userToken(await newUser());
  for (
    const [method, path] of [['GET', '/admin/journal'], ['GET', '/admin/journal/accounts'], [
      'PUT',
      '/admin/journal/accounts',
    ]]
  ) {
    const r = await api(path, {
      method,
      token: student,
      body: method === 'PUT' ? { accounts: [{ key: 'stripe_fees', code: '9' }] } : undefined,
    });
    assert.equal(r.status, 403, `${method} ${path}`);
  }
  for (
    const body of [
      { accounts: [{ key: 'petty_cash', code: '1' }] },
      { accounts: [{ key: 'stripe_fees', code: 'has space' }] },
      { accounts: [{ key: 'stripe_fees', code: '1' }, { key: 'stripe_fees', code: '2' }] },
      { accounts: [] },
    ]
  ) {
    const r = await api('/admin/journal/accounts', { method: 'PUT', token: admin, body });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(codeOf(r), 'VALIDATION_FAILED');
  }
  const unchanged = dataOf(await api('/admin/journal/accounts', { token: admin })).items as {
    key: string;
    code: string;
  }[];
  assert.equal(unchanged.find((a) => a.key === 'stripe_fees')?.code, before, 'a refused change changed nothing');

  try {
    const set = await api('/admin/journal/accounts', {
      method: 'PUT',
      token: admin,
      body: { accounts: [{ key: 'stripe_fees', code: 'SF-99' }] },
    });
    assert.equal(set.status, 200, set.text);
    await activity();
    const j = dataOf(
      await api(`/admin/journal?from=${today()}&to=${tomorrow()}&currency=usd`, { token: admin }),
    ) as unknown as Journal;
    const fees = j.entries.flatMap((e) => e.lines).filter((l) => l.account === 'stripe_fees');
    assert.ok(
      fees.length > 0 && fees.every((l) => l.code === 'SF-99'),
      'the journal posts to the code the operator set',
    );
  } finally {
    await api('/admin/journal/accounts', {
      method: 'PUT',
      token: admin,
      body: { accounts: [{ key: 'stripe_fees', code: before }] },
    });
  }
});

Deno.test('GET /admin/journal refuses a range or format it cannot answer with 400 VALIDATION_FAILED naming the field', async () => {
  const admin = await adminToken();
  for (
    const [query, field] of [
      ['from=2026-11-02&to=2026-11-01', 'from'],
      ['from=2025-01-01&to=2026-11-01', 'to'],
      ['format=json&flavour=xero', 'flavour'],
      ['format=csv&flavour=sage', 'flavour'],
      ['currency=USD', 'currency'],
      ['from=2026-02-30', 'from'],
    ]
  ) {
    const r = await api(`/admin/journal?${query}`, { token: admin });
    assert.equal(r.status, 400, query);
    assert.equal(codeOf(r), 'VALIDATION_FAILED');
    assert.equal((r.body.error as { field?: string }).field, field, query);
  }
});

Deno.test('a chart name, code or tax rate a spreadsheet would run as a formula is printed inert in every CSV flavour', async () => {
  const admin = await adminToken();
  await activity();
  const chart = dataOf(await api('/admin/journal/accounts', { token: admin })).items as {
    key: string;
    code: string;
    name: string;
    tax_rate: string;
  }[];
  const was = chart.find((a) => a.key === 'stripe_fees')!;
  const formulas = { name: '=SUM(1,2)*3', tax_rate: '+SUM(2)', code: '-SF' };
  try {
    const set = await api('/admin/journal/accounts', {
      method: 'PUT',
      token: admin,
      body: { accounts: [{ key: 'stripe_fees', ...formulas }] },
    });
    assert.equal(set.status, 200, set.text);
    for (const flavour of ['plain', 'xero', 'qbo']) {
      const r = await api(
        `/admin/journal?from=${today()}&to=${tomorrow()}&currency=usd&format=csv&flavour=${flavour}`,
        {
          token: admin,
        },
      );
      assert.equal(r.status, 200, r.text);
      const cells = parseCsv(r.text).flat();
      assert.ok(
        cells.some((c) => Object.values(formulas).some((f) => c === `'${f}`)),
        `${flavour}: the account is in it, inert`,
      );
      const live = cells.filter((c) => /^[=+@\t\r]/.test(c) || (/^-/.test(c) && !/^-?[0-9.]+$/.test(c)));
      assert.deepEqual(live, [], `${flavour}: no cell a spreadsheet runs`);
    }
  } finally {
    await api('/admin/journal/accounts', {
      method: 'PUT',
      token: admin,
      body: { accounts: [{ key: 'stripe_fees', name: was.name, tax_rate: was.tax_rate, code: was.code }] },
    });
  }
});

Deno.test('the books refuse a student, an organisation’s owner included, with 403 before reading a parameter, alike for any user', async () => {
  const owner = await userToken(await newUser());
  const created = await api('/orgs', { token: owner, body: { name: 'Books School', funding: 'allowance' } });
  assert.equal(created.status, 201, created.text);
  const someone = await newUser();
  const at = new Date(Date.now() - 60_000).toISOString();
  const answers = new Set<string>();
  for (
    const [method, path] of [
      ['GET', '/admin/journal'],
      ['GET', `/admin/journal?from=${today()}&to=${tomorrow()}&format=csv&flavour=xero`],
      ['GET', '/admin/journal?from=1970-01-01&to=9999-12-31&currency=%00'],
      ['GET', '/admin/journal/accounts'],
      ['PUT', '/admin/journal/accounts'],
      ['GET', `/admin/users/${someone}/balance?at=${at}`],
      ['GET', `/admin/users/${crypto.randomUUID()}/balance?at=${at}`],
      ['GET', `/admin/users/${someone}/lots?at=${at}&limit=200`],
      ['GET', `/admin/users/${crypto.randomUUID()}/lots?at=infinity`],
      ['GET', '/admin/users/not-a-user/balance'],
    ]
  ) {
    const r = await api(path, {
      method,
      token: owner,
      body: method === 'PUT' ? { accounts: [{ key: 'stripe_fees', name: '=1+1' }] } : undefined,
    });
    assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
    assert.equal(r.body.data, undefined);
    answers.add(`${codeOf(r)} ${(r.body.error as { message: string }).message}`);
  }
  assert.equal(answers.size, 1, [...answers].join(' | '));
  const chart = dataOf(await api('/admin/journal/accounts', { token: await adminToken() })).items as { name: string }[];
  assert.ok(chart.every((a) => a.name !== '=1+1'));
});
