// Reporting at scale (issue #18): what GET /admin/metrics runs for its default 30 days
// (billing.metrics_report: the range's total and its series by day), on ~10 million
// generated credit transfers, in a private Postgres cluster this script creates and deletes.
//   old:  the pre-#18 functions (bench/reporting-baseline.sql): every period from the raw rows
//   live: billing.revenue_metrics_live, the new code with the roll-up bypassed
//   new:  billing.metrics_report: rolled-up days (today's up to the last roll-up) from
//         billing.revenue_rollup, the minutes since from the rows, once for total and series
// The three answers must be identical (a fast wrong answer fails the run). Then the write-path
// cost of the indexes the reads need: WAL per debit and per paid purchase, and debits/s, with
// and without them, and against a B-tree on created_at. Ratios against same-run baselines.
//
// BENCH_REPORTING_TRANSFERS (default 10,000,000), BENCH_REPORTING_PORT (55433),
// BENCH_REPORTING_DIR (/tmp/scholarlink-reporting-bench), BENCH_REPORTING_KEEP=1 keeps the
// cluster (a later run of the same size reuses its data), BENCH_REPORTING_QUICK=1 times only
// the new way, BENCH_SECONDS (5) per throughput cell.
import postgres from 'postgres';
import { privateCluster } from './private-cluster.ts';
import { median, printer } from './lib.ts';

const transfers = Number(Deno.env.get('BENCH_REPORTING_TRANSFERS') ?? 10_000_000);
const port = Number(Deno.env.get('BENCH_REPORTING_PORT') ?? 55433);
const dir = Deno.env.get('BENCH_REPORTING_DIR') ?? '/tmp/scholarlink-reporting-bench';
const keep = Deno.env.get('BENCH_REPORTING_KEEP') === '1';
const quick = Deno.env.get('BENCH_REPORTING_QUICK') === '1';
const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const closedDays = 180;
const users = Math.max(1000, Math.round(transfers / 50));
const perDay = transfers / (closedDays + 1);
// Traffic since the last roll-up (the job runs every 10 minutes and stops 5 minutes short):
// 15 minutes at twice a day's average rate, the worst case a read meets.
const sinceRollup = Math.round(2 * perDay * 15 / 1440);
const root = new URL('..', import.meta.url).pathname.replace(/\/$/, '');
const report: Record<string, unknown> = { date: new Date().toISOString(), transfers, users, closedDays, sinceRollup };
const { lines, say } = printer();
const note = (s: string) => console.error(`[reporting] ${s}`);

// ---------------------------------------------------------------- the private cluster

// Stock settings but for memory (a mid-size instance) and WAL room for the load.
const cluster = privateCluster({
  dir,
  port,
  keep,
  conf: ['shared_buffers = 1GB', 'maintenance_work_mem = 1GB', 'max_wal_size = 16GB', 'checkpoint_timeout = 30min'],
  log: note,
});

// ---------------------------------------------------------------- the dataset

/** Ids of the platform accounts and rate cards, and where user accounts start. */
async function catalog(sql: postgres.Sql) {
  const ids: Record<string, number> = Object.fromEntries(
    (await sql`select code, id::int from billing.accounts where code is not null`).map((r) => [r.code, r.id]),
  );
  const rateCards: number[] = (await sql`select id::int from billing.rate_cards order by id`).map((r) => r.id);
  const [{ base }] =
    await sql`select coalesce(min(id), 0)::int as base from billing.accounts where user_id is not null`;
  return { ids, rateCards, base: Number(base) };
}

/**
 * Credit transfers g = lo…hi at `at` (an SQL expression of g), each with its two entries, a
 * paid purchase per `purchase` transfer and an abandoned checkout for every second one. Users
 * are skewed (a few heavy, a long tail); kinds: 84% usage over three rate cards, 5% debits, 2%
 * hold captures, 4% purchases, 2% bonus grants, 1% adjustments, 1% refund and 1% dispute
 * reversals. Every grant brings its credit lot and every debit draws from one lot, as the ledger
 * writes them since credit lots (#20), so the lots part of each metric reads as many rows as in
 * production. Balances, lots' remaining and which account a lot belongs to are not kept (no
 * metric reads them).
 */
async function transfersAt(sql: postgres.Sql, lo: number, hi: number, at: string, openedFrom = '-infinity') {
  const { ids, rateCards, base } = await catalog(sql);
  const key = (g: number) => `bench:${String(g).padStart(10, '0')}`;
  const [{ after }] = await sql`select coalesce(max(id), 0)::bigint as after from billing.transfers`;
  await sql.unsafe(`
    with t as (
      insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, rate_card_id, created_at)
      select k.kind, case when k.inbound then k.platform else u.account end, case when k.inbound then u.account else k.platform end,
        k.amount, 'bench:' || lpad(g::text, 10, '0'), k.rate_card, ${at}
      from generate_series(${lo}::bigint, ${hi}::bigint) g
      cross join lateral (select ${base} + floor(${users} * power((hashint8(g) & 1048575) / 1048576.0, 3))::bigint as account) u
      cross join lateral (select (g % 100)::int as m) m
      cross join lateral (select
          (case when m.m < 84 then 'usage' when m.m < 89 then 'debit' when m.m < 91 then 'hold_capture'
                when m.m < 95 then 'purchase' when m.m < 97 then 'promo_grant' when m.m < 98 then 'adjustment'
                when m.m < 99 then 'refund_reversal' else 'dispute_reversal' end)::billing.transfer_kind as kind,
          m.m between 91 and 97 as inbound,
          case when m.m < 91 then ${ids.usage_revenue} when m.m < 95 then ${ids.purchases} when m.m < 97 then ${ids.promotions}
               when m.m < 98 then ${ids.adjustments} when m.m < 99 then ${ids.refunds} else ${ids.disputes} end as platform,
          case when m.m < 91 then ((hashint8(g + 7) & 65535) + 1) / 1000.0
               when m.m < 95 then (array[5000, 9990, 24990, 49990, 99990])[1 + (g / 100) % 5]
               when m.m < 97 then ((g / 100) % 1000 + 1) / 2.0
               when m.m < 98 then 100
               else ((hashint8(g + 3) & 4095) + 1) / 100.0 end as amount,
          case when m.m < 84 then (array[${rateCards.join(',')}])[1 + g % ${rateCards.length}] end as rate_card) k
      order by g
      returning id, from_account_id, to_account_id, amount, created_at)
    insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version, created_at)
    select t.id, s.account_id, s.amount, case when s.account_id >= ${base} then 0 end,
      case when s.account_id >= ${base} then t.id end, t.created_at
    from t cross join lateral (values (t.from_account_id, -t.amount), (t.to_account_id, t.amount)) s(account_id, amount)
    order by t.id`);
  await lotsFor(sql, String(after));
  // A paid purchase per purchase transfer (opened two minutes before it was credited, but not
  // before `openedFrom`: a checkout is a row from the moment it opens), and an abandoned
  // checkout for every second one.
  await sql.unsafe(`
    with t as (
      select t.*, substr(t.idempotency_key, 7)::bigint as g from billing.transfers t
      where t.idempotency_key between '${key(lo)}' and '${key(hi)}' and t.kind = 'purchase')
    insert into billing.purchases (user_id, package_id, request_key, status, price_cents, currency, credits, bonus_credits,
      stripe_session_id, stripe_payment_intent_id, stripe_charge_id, stripe_fee_cents, amount_refunded_cents,
      created_at, paid_at, updated_at)
    select a.user_id, k.id, 'bench:' || t.g, 'paid', k.price_cents, k.currency, k.credits, k.bonus_credits,
      'cs_bench_' || t.g, 'pi_bench_' || t.g, 'ch_bench_' || t.g, 30 + k.price_cents * 29 / 1000,
      case when t.g % 33 = 0 and t.created_at < now() - interval '1 day' then k.price_cents / 2 else 0 end,
      greatest(t.created_at - interval '2 minutes', timestamptz '${openedFrom}'), t.created_at, t.created_at
    from t join billing.accounts a on a.id = t.to_account_id join billing.credit_packages k on k.credits = t.amount
    union all
    select a.user_id, k.id, 'bench-open:' || t.g, case when t.created_at < now() - interval '1 day' then 'expired' else 'pending' end,
      k.price_cents, k.currency, k.credits, k.bonus_credits, 'cs_bench_open_' || t.g, null, null, null, 0, t.created_at, null,
      t.created_at
    from t join billing.accounts a on a.id = t.to_account_id join billing.credit_packages k on k.credits = t.amount
    where t.g % 100 in (91, 92)`);
}

/**
 * The lots of the grants with ids after `after` (paid for purchases at the package's price,
 * promotional otherwise, with the expiry policy's priority and lifetime), then one allocation per
 * debit there, from a lot picked by hashing the transfer (lot ids are dense here: one writer).
 */
async function lotsFor(sql: postgres.Sql, after: string) {
  await sql`
    insert into billing.lots (account_id, grant_transfer_id, category, priority, cost_cents, currency, amount, remaining,
      granted_at, expires_at)
    select t.to_account_id, t.id, c.category, c.priority, coalesce(k.price_cents, 0), coalesce(k.currency, 'usd'), t.amount, 0,
      t.created_at, t.created_at + c.expires_after
    from billing.transfers t
    join billing.credit_expiry_policy c on c.category = case when t.kind = 'purchase' then 'paid' else 'promotional' end
    left join billing.credit_packages k on t.kind = 'purchase' and k.credits = t.amount
    where t.id > ${after}::bigint and t.kind in ('purchase', 'promo_grant', 'adjustment')
    order by t.id`;
  const [{ first, n, dense }] = await sql`
    select min(id)::bigint as first, count(*)::bigint as n, max(id) - min(id) + 1 = count(*) as dense from billing.lots`;
  if (!dense) throw new Error('lot ids are not dense: the hash would miss');
  await sql`
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, created_at)
    select t.id, ${first}::bigint + (hashint8(t.id) & 2147483647) % ${n}::bigint, t.kind, t.amount, t.created_at
    from billing.transfers t
    where t.id > ${after}::bigint and t.kind in ('usage', 'debit', 'hold_capture', 'refund_reversal', 'dispute_reversal')
    order by t.id`;
}

/**
 * Money postings and Stripe events for the purchases paid in [from, to) (~1% of postings
 * recorded a day late, dated by the event; ~1% of events failed), and `providerPayments`
 * provider payments in usd and eur then (3% platform fee; every tenth partly refunded).
 */
async function moneyAt(sql: postgres.Sql, from: string, to: string, providerPayments: number) {
  await sql.unsafe(`
    with m as (
      insert into billing.money_transfers (kind, idempotency_key, currency, stripe_id, occurred_at, created_at)
      select x.kind, x.kind || ':' || p.id, p.currency, p.stripe_charge_id, p.paid_at + x.delay,
        p.paid_at + x.delay + case when abs(hashtext(p.id::text)) % 97 = 0 and p.paid_at < now() - interval '3 days'
          then interval '26 hours' else interval '0' end
      from billing.purchases p
      cross join lateral (values ('credit_purchase', interval '0'), ('stripe_fee', interval '0'), ('credit_refund', interval '3 hours'))
        x(kind, delay)
      where p.status = 'paid' and p.paid_at >= timestamptz '${from}' and p.paid_at < timestamptz '${to}'
        and (x.kind <> 'credit_refund' or p.amount_refunded_cents > 0)
      order by p.paid_at
      returning id, kind, stripe_id, currency, created_at)
    insert into billing.money_entries (transfer_id, account, currency, amount_cents, created_at)
    select m.id, e.account, m.currency, e.cents, m.created_at
    from m join billing.purchases p on p.stripe_charge_id = m.stripe_id
    cross join lateral (values ('credit_purchase', 'payers', -p.price_cents), ('credit_purchase', 'b2c_revenue', p.price_cents),
      ('stripe_fee', 'b2c_revenue', -p.stripe_fee_cents), ('stripe_fee', 'stripe_fees', p.stripe_fee_cents),
      ('credit_refund', 'b2c_revenue', -p.amount_refunded_cents), ('credit_refund', 'payers', p.amount_refunded_cents))
      e(kind, account, cents)
    where e.kind = m.kind`);
  await sql.unsafe(`
    insert into billing.stripe_events (id, type, api_created, livemode, object_id, status, received_at, processed_at)
    select 'evt_bench_' || p.id, 'checkout.session.completed', p.paid_at, false, p.stripe_session_id,
      case when abs(hashtext(p.id::text)) % 101 = 0 then 'failed' else 'processed' end, p.paid_at,
      case when abs(hashtext(p.id::text)) % 101 = 0 then null else p.paid_at end
    from billing.purchases p
    where p.status = 'paid' and p.paid_at >= timestamptz '${from}' and p.paid_at < timestamptz '${to}'`);
  const tag = from.replace(/\D/g, '');
  await sql.unsafe(`
    with src as (
      select g, timestamptz '${from}' + (g - 0.5) / ${providerPayments} * (timestamptz '${to}' - timestamptz '${from}') as at,
        10000 + (g * 7919) % 90000 as cents, case when g % 2 = 0 then 'eur' else 'usd' end as currency
      from generate_series(1, ${providerPayments}) g),
    m as (
      insert into billing.money_transfers (kind, idempotency_key, currency, stripe_id, occurred_at, created_at)
      select x.kind, x.kind || ':bench:${tag}:' || s.g, s.currency, 'ch_bench_pp_${tag}_' || s.g, s.at + x.delay, s.at + x.delay
      from src s cross join lateral (values ('provider_payment', interval '0'), ('provider_refund', interval '1 hour')) x(kind, delay)
      where (x.kind = 'provider_payment' or s.g % 10 = 0) and s.at + x.delay < now()
      order by s.at
      returning id, kind, stripe_id, currency, created_at)
    insert into billing.money_entries (transfer_id, account, currency, amount_cents, created_at)
    select m.id, e.account, m.currency, e.cents, m.created_at
    from m join src s on 'ch_bench_pp_${tag}_' || s.g = m.stripe_id
    cross join lateral (values
        ('provider_payment', 'payers', -s.cents),
        ('provider_payment', 'provider:00000000-0000-4000-8000-000000000001', s.cents - s.cents * 3 / 100),
        ('provider_payment', 'platform_fees', s.cents * 3 / 100),
        ('provider_refund', 'payers', s.cents / 2),
        ('provider_refund', 'provider:00000000-0000-4000-8000-000000000001', -(s.cents / 2 - s.cents * 3 / 200)),
        ('provider_refund', 'platform_fees', -(s.cents * 3 / 200))) e(kind, account, cents)
    where e.kind = m.kind`);
}

/**
 * `transfers` credit transfers over 180 closed UTC days plus today, today holding a full day's
 * volume so far (the roll-up of today is the worst case then), in created_at order as the
 * ledger writes them. The closed days are vacuumed, as autovacuum would have left them; today's
 * rows are not.
 */
async function generate(sql: postgres.Sql) {
  const [{ n }] = await sql`select count(*)::int as n from billing.transfers`;
  if (n !== 0) throw new Error('the private cluster already has transfers');
  await sql`set synchronous_commit = off`;
  const closedN = Math.round(perDay * closedDays);
  const [{ today, start, today_secs }] = await sql`
    select (now() at time zone 'UTC')::date::text as today, ((now() at time zone 'UTC')::date - ${closedDays}::int)::text as start,
           greatest(extract(epoch from now() - (now() at time zone 'UTC')::date::timestamp at time zone 'UTC') - 600, 1)::float8
             as today_secs`;
  note(`${users.toLocaleString()} users`);
  await sql.unsafe(
    `insert into auth.users (id) select md5('bench-user-' || n)::uuid from generate_series(1, ${users}) n`,
  );
  await sql.unsafe(
    `insert into billing.accounts (user_id) select md5('bench-user-' || n)::uuid from generate_series(1, ${users}) n order by n`,
  );
  const closedAt = `timestamptz '${start} 00:00+00' + floor((g - 1) / ${perDay}::float8) * interval '1 day'
    + ((g - 1 - floor((g - 1) / ${perDay}::float8) * ${perDay}::float8) / ${perDay}::float8 * 86400) * interval '1 second'`;
  // Today's volume until ten minutes ago.
  const todayAt = `timestamptz '${today} 00:00+00'
    + ((g - ${closedN} - 1)::float8 / ${transfers - closedN} * ${today_secs}) * interval '1 second'`;
  const step = 1_000_000;
  const t0 = performance.now();
  for (let lo = 1; lo <= closedN; lo += step) {
    const hi = Math.min(lo + step - 1, closedN);
    await transfersAt(sql, lo, hi, closedAt);
    note(`closed days: ${hi.toLocaleString()} / ${closedN.toLocaleString()} transfers (${elapsed(t0)})`);
  }
  const providerPayments = Math.round(transfers / 500);
  await moneyAt(
    sql,
    `${start} 00:00+00`,
    `${today} 00:00+00`,
    Math.round(providerPayments * closedDays / (closedDays + 1)),
  );
  note('vacuum analyze (the closed days)');
  for (
    const t of [
      ...['transfers', 'entries', 'lots', 'lot_allocations', 'purchases'],
      ...['money_transfers', 'money_entries', 'stripe_events', 'accounts'],
    ]
  ) {
    await sql.unsafe(`vacuum (analyze) billing.${t}`);
  }
  for (let lo = closedN + 1; lo <= transfers; lo += step) {
    await transfersAt(sql, lo, Math.min(lo + step - 1, transfers), todayAt);
  }
  await moneyAt(sql, `${today} 00:00+00`, new Date().toISOString(), Math.round(providerPayments / (closedDays + 1)));
  await sql`create table bench_dataset (transfers bigint, generated_at timestamptz default now())`;
  await sql`insert into bench_dataset (transfers) values (${transfers})`;
  const generateS = (performance.now() - t0) / 1000;
  note(`generated in ${generateS.toFixed(0)} s`);
  return generateS;
}

/**
 * The traffic since the last roll-up of today: `sinceRollup` transfers (and their purchases)
 * after it, and checkouts that were open when it ran and are paid since (the money posted by
 * the purchase's own trigger, as a webhook's update would): today's row must stay usable.
 */
async function trafficSinceRollup(sql: postgres.Sql) {
  const [{ from, next }] = await sql`
    select r.covered_until::text as from,
      (select substr(t.idempotency_key, 7)::bigint + 1 from billing.transfers t
       where t.idempotency_key > 'bench:' and t.idempotency_key < 'bench;' order by t.idempotency_key desc limit 1) as next
    from billing.revenue_rollup r where r.day = (now() at time zone 'UTC')::date`;
  const lo = Number(next);
  const hi = lo + sinceRollup - 1;
  await transfersAt(
    sql,
    lo,
    hi,
    `timestamptz '${from}' + (g - ${lo} + 0.5) / ${sinceRollup} * (now() - timestamptz '${from}')`,
    from,
  );
  await moneyAt(sql, from, new Date().toISOString(), Math.max(1, Math.round(sinceRollup / 500)));
  await sql.unsafe(`
    update billing.purchases p set status = 'paid', paid_at = x.at, updated_at = x.at,
      stripe_payment_intent_id = 'pi_bench_late_' || p.id, stripe_charge_id = 'ch_bench_late_' || p.id,
      stripe_fee_cents = 30 + p.price_cents * 29 / 1000
    from (select q.id, timestamptz '${from}' + random() * (now() - timestamptz '${from}') as at from billing.purchases q
          where q.status = 'pending' and q.created_at >= (now() at time zone 'UTC')::date and q.created_at < timestamptz '${from}'
          order by q.created_at desc limit ${Math.max(1, Math.round(sinceRollup / 70))}) x
    where p.id = x.id`);
}

// ---------------------------------------------------------------- measuring

const elapsed = (t0: number) => `${((performance.now() - t0) / 1000).toFixed(0)} s`;
async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}
const fmtMs = (ms: number) => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(1)} ms`);
const mb = (b: number) => `${(b / 1024 / 1024).toFixed(0)} MB`;

// What GET /admin/metrics runs (supabase/functions/admin/index.ts) for the default range; the
// pre-#18 functions answered it with two calls.
const request = (schema: string, granularity: string, range: { from: string; to: string }) =>
  schema === 'billing'
    ? `select r -> 'total' as total, r -> 'series' as series
       from billing.metrics_report('${range.from}'::date, '${range.to}'::date, '${granularity}') r`
    : `select ${schema}.revenue_metrics('${range.from}'::timestamp at time zone 'UTC', '${range.to}'::timestamp at time zone 'UTC') as total,
         ${schema}.metrics_series('${range.from}'::date, '${range.to}'::date, '${granularity}') as series`;

try {
  const reuse = await cluster.start();
  const sql = postgres(cluster.url, { max: 1, onnotice: () => {}, prepare: false });
  const admin = postgres(cluster.adminUrl, { max: 1, onnotice: () => {}, prepare: false });
  // No background jobs here: this script runs the roll-up itself, and nothing else competes.
  await sql`select cron.unschedule(jobid) from cron.job where username = current_user`;
  let generateS: number | null = null;
  const [{ loaded }] = await sql`select to_regclass('public.bench_dataset') is not null as loaded`;
  if (reuse && loaded) {
    const [{ n }] = await sql`select transfers::bigint as n from bench_dataset`;
    if (Number(n) !== transfers) {
      throw new Error(`the kept cluster has ${n} transfers, not ${transfers}: delete ${dir}`);
    }
    note('reusing the kept dataset');
  } else {
    generateS = await generate(sql);
  }
  // The 10-minute job: today up to five minutes ago, and every closed day (all of them at first).
  note('roll-up');
  const [rollupMs, [{ days }]] = await timed(() => sql`select billing.refresh_stale_revenue(1000) as days`);
  const [todayRollupMs] = await timed(() =>
    sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`
  );
  await trafficSinceRollup(sql);
  const [{ range_from, range_to, today, since_rows }] = await sql`
    select ((now() at time zone 'UTC')::date - 29)::text as range_from, ((now() at time zone 'UTC')::date + 1)::text as range_to,
           (now() at time zone 'UTC')::date::text as today,
           (select count(*) from billing.transfers t, billing.revenue_rollup r
            where r.day = (now() at time zone 'UTC')::date and t.created_at >= r.covered_until)::int as since_rows`;
  const range = { from: range_from, to: range_to };
  await sql.unsafe(await Deno.readTextFile(`${root}/bench/reporting-baseline.sql`)).simple().catch((e) => {
    if (!String(e).includes('already exists')) throw e;
  });
  await sql.unsafe(`
    create or replace function bench_old.live_series(p_from date, p_to date, p_granularity text) returns jsonb
    language sql stable set search_path = '' as $$
      select coalesce(jsonb_agg(billing.revenue_metrics_live(
          greatest(s, p_from::timestamp) at time zone 'UTC',
          least(s + ('1 ' || p_granularity)::interval, p_to::timestamp) at time zone 'UTC') order by s), '[]'::jsonb)
      from generate_series(date_trunc(p_granularity, p_from::timestamp), p_to::timestamp - interval '1 microsecond',
        ('1 ' || p_granularity)::interval) s
    $$`);
  const liveRequest = `
    select billing.revenue_metrics_live('${range.from}'::timestamp at time zone 'UTC', '${range.to}'::timestamp at time zone 'UTC') as total,
           bench_old.live_series('${range.from}'::date, '${range.to}'::date, 'day') as series`;

  // ---- sizes
  await sql`analyze billing.revenue_rollup`;
  const sizes = await sql`
    select c.relname as name, pg_total_relation_size(c.oid)::bigint as total, pg_indexes_size(c.oid)::bigint as indexes,
           greatest(c.reltuples, 0)::bigint as rows
    from pg_class c where c.relnamespace = 'billing'::regnamespace and c.relkind = 'r'
      and c.relname in ('transfers', 'entries', 'lots', 'lot_allocations', 'purchases', 'money_transfers', 'money_entries',
                        'stripe_events', 'revenue_rollup', 'accounts')
    order by pg_total_relation_size(c.oid) desc`;
  const newIndexNames = [
    ...[
      'transfers_created_brin',
      'entries_created_brin',
      'purchases_created',
      'purchases_paid',
      'purchases_first_paid',
    ],
    ...['stripe_events_received', 'money_transfers_created', 'stripe_events_processed', 'money_transfers_late'],
    ...['purchases_paid_late', 'stripe_events_finished_late_day', 'purchases_sessionless'],
  ];
  const newIndexes = await sql`
    select c.relname as name, pg_relation_size(c.oid)::bigint as size from pg_class c
    where c.relname = any(${newIndexNames}) order by pg_relation_size(c.oid) desc`;
  const [{ db_size, today_rows }] = await sql`
    select pg_database_size(current_database())::bigint as db_size,
      (select count(*) from billing.transfers where created_at >= ${today}::date::timestamp at time zone 'UTC')::int as today_rows`;

  // ---- the request, three ways
  note('new way: warm-up, then 15 runs');
  for (let i = 0; i < 2; i++) await sql.unsafe(request('billing', 'day', range));
  const newMs: number[] = [];
  let newResult: unknown = null;
  for (let i = 0; i < 15; i++) {
    const [ms, rows] = await timed(() => sql.unsafe(request('billing', 'day', range)));
    newMs.push(ms);
    newResult = rows[0];
  }
  const byGranularity: Record<string, number> = {};
  for (const g of ['week', 'month']) {
    const xs: number[] = [];
    for (let i = 0; i < 6; i++) xs.push((await timed(() => sql.unsafe(request('billing', g, range))))[0]);
    byGranularity[g] = median(xs.slice(1));
  }
  const todayMs: number[] = [];
  for (let i = 0; i < 6; i++) {
    todayMs.push(
      (await timed(() =>
        sql`select billing.revenue_metrics(${today}::date::timestamp at time zone 'UTC', ${range.to}::date::timestamp at time zone 'UTC')`
      ))[0],
    );
  }
  if (quick) {
    say(
      `new: median ${fmtMs(median(newMs))} (${newMs.map((x) => x.toFixed(0)).join(' ')}); week ${
        fmtMs(byGranularity.week)
      }, month ${fmtMs(byGranularity.month)}; today alone ${
        fmtMs(median(todayMs))
      }; ${since_rows} transfers since the roll-up`,
    );
    await sql.end();
    await admin.end();
    await cluster.stop();
    Deno.exit(0);
  }
  note('live (roll-up bypassed): one run');
  const [liveMs, liveRows] = await timed(() => sql.unsafe(liveRequest));
  note('old way (pre-#18 functions): one run, this takes minutes');
  const [oldMs, oldRows] = await timed(() => sql.unsafe(request('bench_old', 'day', range)));
  // The old functions predate credit lots (#20) and organisations (#22): their lines are left
  // out of that comparison.
  const same = (a: unknown, b: unknown, skip: string[] = []) =>
    JSON.stringify(a, (k, v) => skip.includes(k) ? undefined : v) ===
      JSON.stringify(b, (k, v) => skip.includes(k) ? undefined : v);
  const agree = {
    newVsLive: same(newResult, liveRows[0]),
    newVsOld: same(newResult, oldRows[0], ['credit_lots', 'organisations']),
    // Lots lines in the answer, so new = live covers the lots part too (not two empty lists).
    lotsCompared: JSON.stringify(newResult).includes('"paid_granted_cents"'),
  };

  // ---- the write path, on 10M-row tables
  note('write path');
  await sql`set synchronous_commit = on`;
  await sql`select billing.grant_credits(md5('bench-user-' || n)::uuid, 1000000, 'adjustment', 'bench-fund:' || n || ':' || now())
            from generate_series(1, 100) n`;
  let round = 0;
  // WAL of `statement(n)` per row: right after a checkpoint (the first touch of each page writes
  // a full-page image, as the ledger's README figure does) and then in steady state.
  const walOf = async (statement: (n: number) => string, n: number) => {
    const lsnNow = async () => (await sql`select pg_current_wal_insert_lsn()::text as lsn`)[0].lsn as string;
    const since = async (lsn: string) =>
      Number((await sql`select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), ${lsn}::pg_lsn)::bigint as b`)[0].b);
    await admin`checkpoint`;
    let lsn = await lsnNow();
    await sql.unsafe(statement(n));
    const afterCheckpoint = await since(lsn) / n;
    lsn = await lsnNow();
    await sql.unsafe(statement(n * 5));
    return { afterCheckpoint, steady: await since(lsn) / (n * 5) };
  };
  const walPerDebit = () =>
    walOf((n) => {
      const tag = `wal:${++round}:${Date.now()}`;
      return `select billing.debit_credits(md5('bench-user-' || (1 + n % 100))::uuid, 1, '${tag}:' || n)
              from generate_series(1, ${n}) n`;
    }, 200);
  const debitsPerSecond = async () => {
    const tag = `tps:${++round}:${Date.now()}`;
    let done = 0;
    const until = performance.now() + seconds * 1000;
    while (performance.now() < until) {
      await sql.unsafe(
        `select billing.debit_credits(md5('bench-user-' || ${1 + done % 100})::uuid, 1, '${tag}:${done}')`,
      );
      done++;
    }
    return done / seconds;
  };
  // A paid purchase through the webhook's SQL: begin_checkout, attach the session, process the event.
  const walPerPurchase = () =>
    walOf((n) => {
      const tag = `${++round}_${Date.now()}`;
      return `
        with c as (
          select n, billing.attach_checkout_session((billing.begin_checkout(md5('bench-user-' || n)::uuid, 'starter',
            'wal:${tag}:' || n)).purchase_id, 'cs_wal_${tag}_' || n, 'https://checkout.example/' || n, now() + interval '1 hour')
          from generate_series(1, ${n}) n)
        select billing.process_stripe_event('evt_wal_${tag}_' || c.n, 'checkout.session.completed', now(), false,
          'cs_wal_${tag}_' || c.n, jsonb_build_object('kind', 'checkout', 'session_id', 'cs_wal_${tag}_' || c.n,
            'session_status', 'complete', 'payment_status', 'paid', 'amount_total', 999, 'currency', 'usd',
            'payment_intent', 'pi_wal_${tag}_' || c.n, 'payment_intent_status', 'succeeded', 'charge_id', 'ch_wal_${tag}_' || c.n,
            'amount_refunded', 0, 'stripe_fee', 59))
        from c`;
    }, 20);
  const ledgerIndexes = ['transfers_created_brin', 'entries_created_brin'];
  const definitions: Record<string, string> = Object.fromEntries(
    (await sql`select indexname, indexdef from pg_indexes where indexname = any(${newIndexNames})`)
      .map((r) => [r.indexname, r.indexdef]),
  );
  const dropAll = async (names: string[]) => {
    for (const n of names) await sql.unsafe(`drop index if exists billing.${n}`);
  };
  const createAll = async (names: string[]) => {
    for (const n of names) await sql.unsafe(definitions[n]);
  };
  // WAL is deterministic; debits/s on a shared 2-core machine is not: three alternating rounds, medians.
  const shippedWal = await walPerDebit();
  const purchaseShipped = await walPerPurchase();
  const shippedTps: number[] = [];
  const withoutTps: number[] = [];
  let withoutWal = { afterCheckpoint: 0, steady: 0 };
  let purchaseWithout = { afterCheckpoint: 0, steady: 0 };
  for (let r = 0; r < 3; r++) {
    shippedTps.push(await debitsPerSecond());
    await dropAll(newIndexNames);
    if (r === 0) {
      withoutWal = await walPerDebit();
      purchaseWithout = await walPerPurchase();
    }
    withoutTps.push(await debitsPerSecond());
    await createAll(newIndexNames);
  }
  const shipped = { wal: shippedWal, tps: median(shippedTps) };
  const without = { wal: withoutWal, tps: median(withoutTps) };
  note('B-tree on created_at (the alternative to BRIN)');
  await dropAll(ledgerIndexes);
  await sql`create index bench_transfers_created_btree on billing.transfers (created_at)`;
  await sql`create index bench_entries_created_btree on billing.entries (created_at)`;
  const btree = { wal: await walPerDebit(), tps: await debitsPerSecond() };
  const [{ btree_size }] = await sql`
    select (pg_relation_size('billing.bench_transfers_created_btree') + pg_relation_size('billing.bench_entries_created_btree'))::bigint
      as btree_size`;
  await sql`drop index billing.bench_transfers_created_btree, billing.bench_entries_created_btree`;
  await createAll(ledgerIndexes);

  // ---------------------------------------------------------------- report
  const newMedian = median(newMs);
  report.result = {
    db_size,
    generateS,
    rollupMs,
    rollupDays: days,
    todayRollupMs,
    todayRows: today_rows,
    sinceRows: since_rows,
    newMs,
    newMedian,
    byGranularity,
    todayMs,
    liveMs,
    oldMs,
    agree,
    // The answers themselves when they differ, to see where.
    answers: agree.newVsLive && agree.newVsOld ? undefined : { new: newResult, live: liveRows[0], old: oldRows[0] },
    sizes,
    newIndexes,
    write: { shipped, without, btree, shippedTps, withoutTps, btree_size, purchaseShipped, purchaseWithout },
  };
  say(`\n### Reporting at ${transfers.toLocaleString()} transfers\n`);
  say(
    `Dataset: ${transfers.toLocaleString()} credit transfers over ${closedDays} closed days and today (${
      Number(today_rows).toLocaleString()
    } today, a full day's volume), ${users.toLocaleString()} users; database ${mb(Number(db_size))}${
      generateS === null ? '' : `, generated in ${generateS.toFixed(0)} s`
    }. Roll-up of ${days} closed days and today: ${(rollupMs / 1000).toFixed(0)} s (today alone: ${
      fmtMs(todayRollupMs)
    }). Since today's roll-up: ${since_rows} transfers (15 minutes at twice the average rate), read live.\n`,
  );
  say('| what GET /admin/metrics runs (default 30 days, by day) | time | vs new |');
  say('| --- | --- | --- |');
  say(
    `| old: pre-#18 functions, every day from the raw rows (1 run) | ${fmtMs(oldMs)} | ${
      (oldMs / newMedian).toFixed(0)
    }× |`,
  );
  say(`| live: new code, roll-up bypassed (1 run) | ${fmtMs(liveMs)} | ${(liveMs / newMedian).toFixed(0)}× |`);
  say(
    `| **new**: roll-up + the minutes since, live (median of 15; min ${fmtMs(Math.min(...newMs))}, max ${
      fmtMs(Math.max(...newMs))
    }) | **${fmtMs(newMedian)}** | 1× |`,
  );
  say(`| new, by week / by month (median of 5) | ${fmtMs(byGranularity.week)} / ${fmtMs(byGranularity.month)} | |`);
  say(`| of which today alone: revenue_metrics(today, tomorrow) (median of 6) | ${fmtMs(median(todayMs))} | |`);
  say(
    `\nTarget ≤ 100 ms: ${newMedian <= 100 ? 'met' : 'MISSED'}. Same answer (total and series, as JSON): new = live ${
      agree.newVsLive ? 'yes' : 'NO'
    }, new = old ${
      agree.newVsOld ? 'yes' : 'NO'
    } (but for the credit-lots lines the old functions predate); credit-lots lines in the answer: ${
      agree.lotsCompared ? 'yes' : 'NO'
    }.`,
  );
  say('\n| table | rows | total | of which indexes |');
  say('| --- | --- | --- | --- |');
  for (const s of sizes) {
    say(`| ${s.name} | ${Number(s.rows).toLocaleString()} | ${mb(Number(s.total))} | ${mb(Number(s.indexes))} |`);
  }
  say(`\nThe new indexes: ${newIndexes.map((i) => `${i.name} ${(Number(i.size) / 1024).toFixed(0)} kB`).join(', ')}.`);
  say('\n| write path (1 client) | WAL per debit after a checkpoint / steady | debits/s (median of 3) | vs none |');
  say('| --- | --- | --- | --- |');
  type Wal = { afterCheckpoint: number; steady: number };
  const w = (label: string, c: { wal: Wal; tps: number }) =>
    say(
      `| ${label} | ${c.wal.afterCheckpoint.toFixed(0)} B / ${c.wal.steady.toFixed(0)} B | ${c.tps.toFixed(0)} | ${
        (c.tps / without.tps).toFixed(2)
      }× |`,
    );
  w('none of the new indexes', without);
  w('as shipped (BRIN on created_at, the purchase and event B-trees)', shipped);
  w(`B-tree on created_at instead of BRIN (${mb(Number(btree_size))})`, btree);
  say(
    `\nWAL per paid purchase (begin_checkout, attach_checkout_session, process_stripe_event), after a checkpoint / steady: ${
      purchaseShipped.afterCheckpoint.toFixed(0)
    } B / ${purchaseShipped.steady.toFixed(0)} B as shipped, ${purchaseWithout.afterCheckpoint.toFixed(0)} B / ${
      purchaseWithout.steady.toFixed(0)
    } B without the new indexes.`,
  );
  await sql.end();
  await admin.end();
  await Deno.mkdir(`${root}/bench/results`, { recursive: true });
  await Deno.writeTextFile(`${root}/bench/results/reporting-${report.date}.json`, JSON.stringify(report, null, 2));
  await Deno.writeTextFile(`${root}/bench/results/reporting-latest.md`, lines.join('\n') + '\n');
  if (!agree.newVsLive || !agree.newVsOld || !agree.lotsCompared) {
    console.error('the answers differ, or hold no credit-lots lines: see bench/results');
    Deno.exitCode = 1;
  }
} finally {
  await cluster.stop();
}
