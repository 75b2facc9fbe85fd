// Step 1: the dataset, ~10 million credit transfers over 180 closed days and today, generated
// in the private cluster (or the kept one reused), rolled up as the 10-minute job does, then the
// traffic that arrives after the roll-up.
import type postgres from 'postgres';
import { elapsed, timed } from '../lib.ts';
import { closedDays, dir, note, perDay, sinceRollup, transfers, users } from './settings.ts';

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
 * are skewed (a few heavy, a long tail); kinds: 84% usage over three rate cards, 7%
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
          (case when m.m < 84 then 'usage' when m.m < 91 then 'hold_capture'
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
      created_at, paid_at, updated_at, package_version)
    select a.user_id, k.id, 'bench:' || t.g, 'paid', k.price_cents, k.currency, k.credits, k.bonus_credits,
      'cs_bench_' || t.g, 'pi_bench_' || t.g, 'ch_bench_' || t.g, 30 + k.price_cents * 29 / 1000,
      case when t.g % 33 = 0 and t.created_at < now() - interval '1 day' then k.price_cents / 2 else 0 end,
      greatest(t.created_at - interval '2 minutes', timestamptz '${openedFrom}'), t.created_at, t.created_at, k.version
    from t join billing.accounts a on a.id = t.to_account_id join billing.credit_packages k on k.credits = t.amount
    union all
    select a.user_id, k.id, 'bench-open:' || t.g, case when t.created_at < now() - interval '1 day' then 'expired' else 'pending' end,
      k.price_cents, k.currency, k.credits, k.bonus_credits, 'cs_bench_open_' || t.g, null, null, null, 0, t.created_at, null,
      t.created_at, k.version
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
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, created_at, cents)
    select t.id, l.id, t.kind, t.amount, t.created_at, l.cost_cents * t.amount / l.amount
    from billing.transfers t
    join billing.lots l on l.id = ${first}::bigint + (hashint8(t.id) & 2147483647) % ${n}::bigint
    where t.id > ${after}::bigint and t.kind in ('usage', 'hold_capture', 'refund_reversal', 'dispute_reversal')
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

/** The dataset of the configured size: the kept one when its size matches, else generated; its generation time in s (null when reused). */
export async function dataset(sql: postgres.Sql, reuse: boolean): Promise<number | null> {
  const [{ loaded }] = await sql`select to_regclass('public.bench_dataset') is not null as loaded`;
  if (reuse && loaded) {
    const [{ n }] = await sql`select transfers::bigint as n from bench_dataset`;
    if (Number(n) !== transfers) {
      throw new Error(`the kept cluster has ${n} transfers, not ${transfers}: delete ${dir}`);
    }
    note('reusing the kept dataset');
  } else {
    return await generate(sql);
  }
  return null;
}

/** The 10-minute job's roll-up (today up to five minutes ago, and every closed day: all of them at first), then the traffic since. */
export async function rollUp(sql: postgres.Sql) {
  note('roll-up');
  const [rollupMs, [{ days }]] = await timed(() => sql`select billing.refresh_stale_revenue(1000) as days`);
  const [todayRollupMs] = await timed(() =>
    sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`
  );
  await trafficSinceRollup(sql);
  return { rollupMs, days: Number(days), todayRollupMs };
}
