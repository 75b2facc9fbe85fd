// Step 3: what the indexes the reads need cost the write path on the 10M-row tables: WAL per
// usage charge (billing.charge_usage, 50 input tokens of gpt-4o: 1 credit) and per paid purchase, charges/s, with and without them, and against a B-tree on created_at.
import type postgres from 'postgres';
import { median } from '../lib.ts';
import { note, seconds } from './settings.ts';

export type Wal = { afterCheckpoint: number; steady: number };

/** The write path with the indexes as shipped, without them, and with B-trees instead of BRIN. */
export async function writePath(sql: postgres.Sql, admin: postgres.Sql, newIndexNames: string[]) {
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
      return `select billing.charge_usage(md5('bench-user-' || (1 + n % 100))::uuid, 'gpt-4o', 50, 0, '${tag}:' || n)
              from generate_series(1, ${n}) n`;
    }, 200);
  const debitsPerSecond = async () => {
    const tag = `tps:${++round}:${Date.now()}`;
    let done = 0;
    const until = performance.now() + seconds * 1000;
    while (performance.now() < until) {
      await sql.unsafe(
        `select billing.charge_usage(md5('bench-user-' || ${1 + done % 100})::uuid, 'gpt-4o', 50, 0, '${tag}:${done}')`,
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
  return { shipped, without, btree, shippedTps, withoutTps, btree_size, purchaseShipped, purchaseWithout };
}
export type WritePath = Awaited<ReturnType<typeof writePath>>;
