-- The books: one balanced journal entry per UTC day and currency (GET /admin/journal), in the
-- operator's chart of accounts, for an accountant to import (docs/accounting.md). Two sources,
-- each dated as the revenue report dates it, so a day's journal and revenue_metrics of that day
-- are built from the same rows:
--   money     every money_entries row (billing.post_money), by its transfer's occurred_at: cash at
--             Stripe, Stripe's fees, tax, refunds and lost disputes, provider payables, platform
--             fees. A money transfer sums to zero, so its lines balance.
--   credits   paid lots at their cost basis: granted (by granted_at; moves excluded), and what
--             spending, expiry, refunds and disputes drew from them (lot_allocations, by
--             created_at). Each is a pair of lines of one amount, so it balances after rounding.
--             A move between accounts posts nothing (its cost basis moves with it), except the
--             part of a moved lot that paid a debt on arrival (debt_settled): those credits leave
--             deferred revenue for credits already used, so they count with the credits used.
--             So does the part of credits given back to a lot (a void, a rollover's return from
--             breakage) that paid a debt, on the day it was given back (its allocation's
--             debt_settled). Every row is dated once and never changes after, so a closed day's
--             lines never do.
-- The credit side of a credit purchase is Credit sales clearing: the cash side credits it with the
-- price, the lots granted debit it at cost, so it stays at zero unless paid credits were granted
-- without a Stripe payment (an admin's paid grant) or a sale and its lots fall on two days.

-- ============================================================ tables

create table billing.journal_accounts (
  key text primary key,
  code text not null,                             -- Xero's AccountCode (and the account number in QuickBooks)
  name text not null,                             -- QuickBooks Online's Account Name, exactly as in its chart
  tax_rate text not null default 'Tax Exempt',    -- Xero's TaxRate: the tax rate's name in the Xero organisation
  updated_at timestamptz not null default now(),
  updated_by uuid,                                -- the admin who last changed it; null for the seeded default
  constraint journal_accounts_key check (key in ('cash_stripe', 'stripe_fees', 'credit_sales_clearing', 'deferred_revenue',
    'revenue_usage', 'revenue_breakage', 'tax_payable', 'provider_payables', 'platform_fees', 'refunds', 'disputes')),
  constraint journal_accounts_code check (code ~ '^[A-Za-z0-9._-]{1,10}$'),
  constraint journal_accounts_name check (length(name) >= 1 and length(name) <= 100 and name !~ '[[:cntrl:]]'),
  constraint journal_accounts_tax_rate check (length(tax_rate) >= 1 and length(tax_rate) <= 50 and tax_rate !~ '[[:cntrl:]]')
);
comment on table billing.journal_accounts is 'The operator''s chart of accounts for the journal export: each account the journal posts to (by key), mapped to a code, a name and Xero''s tax rate.';
alter table billing.journal_accounts enable row level security;
grant select on table billing.journal_accounts to service_role;

-- ============================================================ functions

-- Digits after the point in a currency's major unit, as Stripe counts its minor units.
create or replace function billing.currency_exponent(p_currency text) returns integer
language plpgsql immutable
set search_path = ''
as $$
begin
  return case
    when p_currency in ('bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd', 'vuv', 'xaf',
      'xof', 'xpf') then 0
    when p_currency in ('bhd', 'jod', 'kwd', 'omr', 'tnd') then 3
    else 2 end;
end
$$;
comment on function billing.currency_exponent(p_currency text) is 'Internal: digits after the point of a currency''s major unit (Stripe''s zero- and three-decimal currencies, else 2).';
revoke execute on function billing.currency_exponent(p_currency text) from public;

-- A minor-unit amount as a decimal string in the currency's major unit ('1234', 'usd' → '12.34').
create or replace function billing.major_units(p_minor numeric, p_currency text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  return round(p_minor / power(10::numeric, billing.currency_exponent(p_currency)), billing.currency_exponent(p_currency))::text;
end
$$;
comment on function billing.major_units(p_minor numeric, p_currency text) is 'Internal: minor units as a decimal string in the currency''s major unit, every place written (12.30).';
revoke execute on function billing.major_units(p_minor numeric, p_currency text) from public;

-- The journal account a money entry posts to, and its sign: a money entry is positive when its
-- account gains, which for every kind but a Stripe fee is a credit (payers −X: the cash came in).
-- A Stripe fee moves b2c_revenue to stripe_fees in the money ledger; in the books it is an
-- expense paid out of the Stripe balance: Dr Stripe fees, Cr cash.
create or replace function billing.journal_money_account(p_kind text, p_account text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  return case
    when p_account in ('payers', 'provider_payouts') then 'cash_stripe'
    when p_account like 'provider:%' then 'provider_payables'
    when p_account = 'b2c_revenue' then case p_kind when 'credit_purchase' then 'credit_sales_clearing'
      when 'stripe_fee' then 'cash_stripe' when 'credit_refund' then 'refunds' when 'credit_dispute_lost' then 'disputes' end
    else p_account end;                           -- stripe_fees, tax_payable, platform_fees
end
$$;
comment on function billing.journal_money_account(p_kind text, p_account text) is 'Internal: the journal account (billing.journal_accounts key) a money entry of a kind posts to.';
revoke execute on function billing.journal_money_account(p_kind text, p_account text) from public;

-- Every line of [p_from, p_to) (UTC days), one per day, currency, account and source, in minor
-- units, debit positive. Credit lines come in pairs of one amount, rounded (half away from zero)
-- once per day, currency and source, as revenue_metrics rounds a day's credit_lots.
create or replace function billing.journal_lines(p_from date, p_to date, p_currency text)
returns table (day date, currency text, account text, source text, amount numeric)
language plpgsql stable
set search_path = ''
as $$
declare
  v_from timestamptz := p_from::timestamp at time zone 'UTC';
  v_to timestamptz := p_to::timestamp at time zone 'UTC';
begin
  return query
  with money as (
    select (t.occurred_at at time zone 'UTC')::date as day, e.currency, billing.journal_money_account(t.kind, e.account) as account,
      t.kind as source, sum(case when t.kind = 'stripe_fee' then e.amount_cents else -e.amount_cents end)::numeric as amount
    from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
    where t.occurred_at >= v_from and t.occurred_at < v_to and (p_currency is null or e.currency = p_currency)
    group by 1, 2, 3, 4
  ), flows as (
    -- Paid credits granted, net of a debt they paid on arrival (as revenue_metrics counts them) ...
    select (l.granted_at at time zone 'UTC')::date as day, l.currency, 'credits_granted' as source,
      sum(l.cost_cents * (l.amount - l.debt_settled) / l.amount) as cents
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is null
      and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... the debt they paid: credits spent before, taken back by a refund or dispute, paid now ...
    select (l.granted_at at time zone 'UTC')::date, l.currency, 'debt_settled', sum(l.cost_cents * l.debt_settled / l.amount)
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is null and l.debt_settled > 0
      and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... moved credits (a gift, an allowance swept back, a rollover) that paid a debt on arrival:
    -- already in deferred revenue, now spent on what the debt was for ...
    select (l.granted_at at time zone 'UTC')::date, l.currency, 'credits_used', sum(l.cost_cents * l.debt_settled / l.amount)
    from billing.lots l
    where l.granted_at >= v_from and l.granted_at < v_to and l.category = 'paid' and l.moved_from is not null
      and l.debt_settled > 0 and (p_currency is null or l.currency = p_currency)
    group by 1, 2
    union all
    -- ... and what each kind of transfer drew from them (a void's draw is negative: it gives back;
    -- so is a rollover's return from breakage), and of what was given back, the part that paid a
    -- debt then: credits used that day.
    select (a.created_at at time zone 'UTC')::date, l.currency, x.source, sum(l.cost_cents * x.credits / l.amount)
    from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
    cross join lateral (values
      (case when a.kind in ('usage', 'hold_capture', 'void') then 'credits_used' when a.kind = 'expiry' then 'credits_expired'
         when a.kind = 'refund_reversal' then 'credits_refunded' else 'credits_disputed' end, a.amount),
      ('credits_used', a.debt_settled)) x(source, credits)
    where a.created_at >= v_from and a.created_at < v_to and l.category = 'paid'
      and a.kind in ('usage', 'hold_capture', 'void', 'expiry', 'refund_reversal', 'dispute_reversal')
      and x.credits <> 0 and (p_currency is null or l.currency = p_currency)
    group by 1, 2, 3
  ), pairs as (
    select f.day, f.currency, f.source, round(sum(f.cents)) as cents from flows f group by 1, 2, 3
  )
  select m.day, m.currency, m.account, m.source, m.amount from money m where m.amount <> 0
  union all
  select p.day, p.currency, x.account, p.source, x.sign * p.cents
  from pairs p
  cross join lateral (values
    (case p.source when 'credits_granted' then 'credit_sales_clearing' when 'debt_settled' then 'credit_sales_clearing'
       else 'deferred_revenue' end, 1),
    (case p.source when 'credits_granted' then 'deferred_revenue' when 'debt_settled' then 'revenue_usage'
       when 'credits_used' then 'revenue_usage' when 'credits_expired' then 'revenue_breakage'
       when 'credits_refunded' then 'refunds' else 'disputes' end, -1)) x(account, sign)
  where p.cents <> 0;
end;
$$;
comment on function billing.journal_lines(p_from date, p_to date, p_currency text) is 'Internal: the journal''s lines over [from, to) by UTC day, currency, account and source, in minor units (debit positive).';
revoke execute on function billing.journal_lines(p_from date, p_to date, p_currency text) from public;

-- The ledger's own deferred revenue movement over [p_from, p_to) per currency, read apart from the
-- journal's sources: every paid lot opened (granted or moved in, net of the debt it paid on
-- arrival) less everything drawn from paid lots (spent, expired, reversed, moved out; given back
-- counts as drawn back, less the part that paid a debt then), at cost,
-- rounded once per UTC day. No kind or moved_from decides what counts, so a row the journal's
-- sources miss or count twice shows as a difference in the journal's reconciliation.
create or replace function billing.ledger_deferred_revenue_change(p_from date, p_to date, p_currency text)
returns table (currency text, cents numeric)
language sql stable
set search_path = ''
as $$
  select d.currency, sum(d.cents) from (
    select f.day, f.currency, round(sum(f.cents)) as cents from (
      select (l.granted_at at time zone 'UTC')::date as day, l.currency, l.cost_cents * (l.amount - l.debt_settled) / l.amount as cents
      from billing.lots l
      where l.granted_at >= p_from::timestamp at time zone 'UTC' and l.granted_at < p_to::timestamp at time zone 'UTC'
        and l.category = 'paid' and (p_currency is null or l.currency = p_currency)
      union all
      select (a.created_at at time zone 'UTC')::date, l.currency, -l.cost_cents * (a.amount + a.debt_settled) / l.amount
      from billing.lot_allocations a join billing.lots l on l.id = a.lot_id
      where a.created_at >= p_from::timestamp at time zone 'UTC' and a.created_at < p_to::timestamp at time zone 'UTC'
        and l.category = 'paid' and (p_currency is null or l.currency = p_currency)) f
    group by 1, 2) d
  group by 1
$$;
comment on function billing.ledger_deferred_revenue_change(p_from date, p_to date, p_currency text) is 'Internal: per currency, how much deferred revenue (paid credits unspent, at cost) grew over [from, to) by UTC day, from the lots and their draws alone (moves included), in minor units.';
revoke execute on function billing.ledger_deferred_revenue_change(p_from date, p_to date, p_currency text) from public;

-- The chart as the API answers it.
create or replace function billing.journal_chart() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('key', a.key, 'code', a.code, 'name', a.name, 'tax_rate', a.tax_rate,
      'updated_at', billing.json_time(a.updated_at), 'updated_by', a.updated_by) order by a.code, a.key), '[]'::jsonb)
  from billing.journal_accounts a
$$;
comment on function billing.journal_chart() is 'The journal''s chart of accounts: each account key with its code, name and Xero tax rate.';
revoke execute on function billing.journal_chart() from public;
grant execute on function billing.journal_chart() to service_role;

-- Changes some accounts' code, name or tax rate (null: unchanged); answers the whole chart. Two
-- accounts may share a code (an operator may post clearing to cash, say): the journal still
-- balances, its lines then meet on one account.
create or replace function billing.set_journal_accounts(p_admin uuid, p_accounts jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- The route refuses a key not in the chart (docs/api.md); here one would change nothing.
  update billing.journal_accounts a set code = coalesce(x.code, a.code), name = coalesce(x.name, a.name),
    tax_rate = coalesce(x.tax_rate, a.tax_rate), updated_at = now(), updated_by = p_admin
  from jsonb_to_recordset(p_accounts) x(key text, code text, name text, tax_rate text)
  where a.key = x.key;
  return billing.journal_chart();
end;
$$;
comment on function billing.set_journal_accounts(p_admin uuid, p_accounts jsonb) is 'Maps journal accounts to the operator''s codes, names and Xero tax rates (PUT /admin/journal/accounts); answers the chart.';
revoke execute on function billing.set_journal_accounts(p_admin uuid, p_accounts jsonb) from public;
grant execute on function billing.set_journal_accounts(p_admin uuid, p_accounts jsonb) to service_role;

-- GET /admin/journal: each day's entry per currency (lines in major units, as decimal strings),
-- and per currency a reconciliation of the journal's totals against revenue_metrics over the
-- same range. Money lines match it exactly; credit lines are rounded per day here and once over
-- the range there, so over several days they may differ by the rounding only. One item is held
-- to the ledger instead: deferred revenue's movement, which the lots and their draws give
-- whatever moved them (billing.ledger_deferred_revenue_change), rounded per day rather than per
-- day and source, so it may differ by that rounding (half a cent per day and source) only.
create or replace function billing.journal(p_from date, p_to date, p_currency text) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_report jsonb := billing.revenue_metrics(p_from::timestamp at time zone 'UTC', p_to::timestamp at time zone 'UTC');
begin
  return (
    with lines as (select l.* from billing.journal_lines(p_from, p_to, p_currency) l),
    entries as (
      select m.day, m.currency,
        jsonb_agg(jsonb_build_object('account', m.account, 'code', a.code, 'name', a.name, 'tax_rate', a.tax_rate, 'source', m.source,
            'debit', case when m.amount > 0 then billing.major_units(m.amount, m.currency) end,
            'credit', case when m.amount < 0 then billing.major_units(-m.amount, m.currency) end)
          order by m.amount < 0, a.code, m.source) as lines,
        coalesce(sum(m.amount) filter (where m.amount > 0), 0) as debits,
        coalesce(-sum(m.amount) filter (where m.amount < 0), 0) as credits
      from lines m join billing.journal_accounts a on a.key = m.account
      group by m.day, m.currency
    ),
    totals as (
      -- Per currency, the journal's side of each reconciled figure, in minor units.
      select l.currency,
        -sum(l.amount) filter (where l.source = 'credit_purchase' and l.account = 'credit_sales_clearing') as gmv,
        sum(l.amount) filter (where l.account = 'refunds' and l.source = 'credit_refund') as refunds,
        sum(l.amount) filter (where l.account = 'disputes' and l.source = 'credit_dispute_lost') as disputes_lost,
        sum(l.amount) filter (where l.account = 'stripe_fees') as stripe_fees,
        -sum(l.amount) filter (where l.account = 'tax_payable') as tax,
        -sum(l.amount) filter (where l.account = 'platform_fees') as platform_fees,
        -sum(l.amount) filter (where l.account = 'deferred_revenue' and l.source = 'credits_granted') as paid_granted,
        -sum(l.amount) filter (where l.account = 'revenue_usage' and l.source = 'credits_used') as recognised,
        -sum(l.amount) filter (where l.account = 'revenue_breakage') as breakage,
        sum(l.amount) filter (where l.account = 'deferred_revenue' and l.source in ('credits_refunded', 'credits_disputed')) as reversed,
        -sum(l.amount) filter (where l.source = 'debt_settled' and l.account = 'revenue_usage') as debt_settled,
        -sum(l.amount) filter (where l.account = 'deferred_revenue') as deferred
      from lines l group by l.currency
    ),
    ledger as (select d.currency, d.cents as deferred from billing.ledger_deferred_revenue_change(p_from, p_to, p_currency) d),
    report as (
      select c ->> 'currency' as currency,
        (c -> 'b2c_credits' ->> 'gmv_cents')::numeric as gmv, (c -> 'b2c_credits' ->> 'refunds_cents')::numeric as refunds,
        (c -> 'b2c_credits' ->> 'disputes_lost_cents')::numeric as disputes_lost,
        (c -> 'b2c_credits' ->> 'stripe_fees_cents')::numeric as stripe_fees,
        (c -> 'b2c_credits' ->> 'tax_collected_cents')::numeric - (c -> 'b2c_credits' ->> 'tax_returned_cents')::numeric as tax,
        (c -> 'b2b_provider_fees' ->> 'platform_fees_cents')::numeric - (c -> 'b2b_provider_fees' ->> 'fee_refunds_cents')::numeric
          as platform_fees
      from jsonb_array_elements(v_report -> 'by_currency') c
    ),
    report_lots as (
      select c ->> 'currency' as currency, (c ->> 'paid_granted_cents')::numeric as paid_granted,
        (c ->> 'recognised_revenue_cents')::numeric as recognised, (c ->> 'breakage_revenue_cents')::numeric as breakage,
        (c ->> 'paid_reversed_cents')::numeric as reversed
      from jsonb_array_elements(v_report -> 'credit_lots') c
    ),
    reconciliation as (
      select cur.currency, jsonb_agg(jsonb_build_object('item', i.item, 'journal', i.journal::text, 'revenue_report', i.report::text,
          'ledger', i.ledger::text, 'difference', (i.journal - coalesce(i.report, i.ledger))::text) order by i.n) as items
      from (select t.currency from totals t union select r.currency from report r where p_currency is null or r.currency = p_currency
            union select r.currency from report_lots r where p_currency is null or r.currency = p_currency
            union select g.currency from ledger g) cur
      left join totals t on t.currency = cur.currency
      left join report r on r.currency = cur.currency
      left join report_lots rl on rl.currency = cur.currency
      left join ledger g on g.currency = cur.currency
      cross join lateral (values
        (1, 'gmv_cents', coalesce(t.gmv, 0), coalesce(r.gmv, 0), null::numeric),
        (2, 'refunds_cents', coalesce(t.refunds, 0), coalesce(r.refunds, 0), null),
        (3, 'disputes_lost_cents', coalesce(t.disputes_lost, 0), coalesce(r.disputes_lost, 0), null),
        (4, 'stripe_fees_cents', coalesce(t.stripe_fees, 0), coalesce(r.stripe_fees, 0), null),
        (5, 'tax_payable_cents', coalesce(t.tax, 0), coalesce(r.tax, 0), null),
        (6, 'platform_fees_cents', coalesce(t.platform_fees, 0), coalesce(r.platform_fees, 0), null),
        (7, 'paid_granted_cents', coalesce(t.paid_granted, 0), coalesce(rl.paid_granted, 0), null),
        (8, 'recognised_revenue_cents', coalesce(t.recognised, 0), coalesce(rl.recognised, 0), null),
        (9, 'breakage_revenue_cents', coalesce(t.breakage, 0), coalesce(rl.breakage, 0), null),
        (10, 'paid_reversed_cents', coalesce(t.reversed, 0), coalesce(rl.reversed, 0), null),
        -- Not in the revenue report (it counts a grant net of the debt it paid): nothing to compare.
        (11, 'debt_settled_cents', coalesce(t.debt_settled, 0), null::numeric, null),
        -- Against the ledger, not the report (which reads the same sources as the journal): what the
        -- journal's lines moved deferred revenue by, and what the lots and their draws did.
        (12, 'deferred_revenue_change_cents', coalesce(t.deferred, 0), null, coalesce(g.deferred, 0))) i(n, item, journal, report, ledger)
      group by cur.currency
    )
    select jsonb_build_object('from', p_from, 'to', p_to, 'currency', p_currency,
      'entries', coalesce((select jsonb_agg(jsonb_build_object('date', e.day, 'currency', e.currency,
          'reference', 'SL-' || to_char(e.day, 'YYYYMMDD') || '-' || upper(e.currency),
          'narration', 'ScholarLink Billing ' || upper(e.currency) || ' journal for ' || e.day,
          'debit_total', billing.major_units(e.debits, e.currency), 'credit_total', billing.major_units(e.credits, e.currency),
          'lines', e.lines) order by e.day, e.currency) from entries e), '[]'::jsonb),
      'reconciliation', coalesce((select jsonb_agg(jsonb_build_object('currency', r.currency, 'items', r.items) order by r.currency)
        from reconciliation r), '[]'::jsonb))
  );
end;
$$;
comment on function billing.journal(p_from date, p_to date, p_currency text) is 'GET /admin/journal: one balanced entry per UTC day and currency over [from, to), in the chart of accounts, with a reconciliation against revenue_metrics and the ledger''s deferred revenue.';
revoke execute on function billing.journal(p_from date, p_to date, p_currency text) from public;
grant execute on function billing.journal(p_from date, p_to date, p_currency text) to service_role;

-- ============================================================ reference rows

insert into billing.journal_accounts (key, code, name) values
  ('cash_stripe', '1210', 'Cash at Stripe'),
  ('credit_sales_clearing', '1290', 'Credit sales clearing'),
  ('tax_payable', '2210', 'Sales tax payable'),
  ('deferred_revenue', '2400', 'Deferred revenue (unspent credits)'),
  ('provider_payables', '2410', 'Provider payables'),
  ('revenue_usage', '4000', 'Revenue recognised on use'),
  ('revenue_breakage', '4010', 'Breakage revenue (expired credits)'),
  ('platform_fees', '4100', 'Platform fees'),
  ('refunds', '4900', 'Refunds'),
  ('disputes', '4910', 'Disputes lost'),
  ('stripe_fees', '6100', 'Stripe fees');
