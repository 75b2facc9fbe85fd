// Benchmarks of the ledger's hot paths, each against a baseline measured in the same run:
//   1. SQL usage charge (billing.charge_usage, as POST /credits/usage's general path: priced from
//      the rate card, idempotent, entries, balance and lot) vs a bare guarded UPDATE, at 1/16/64
//      clients, spread over 1,000 accounts and on one hot account; bytes per charge.
//      Then at 16 clients, 1,000 accounts, against a transfer built to pgledger's design
//      (pgledger-design.sql). BENCH_LEDGER_SQL_ONLY=1 stops after this section.
//   2. Batched ingestion over HTTP at batch sizes 1, 100, 1,000 over 10,000 users.
//   3. HTTP usage charge (reported with the service role key + rate limit + idempotency) at 16 and 64
//      connections vs (1).
//   4. Cold start of the functions gateway to a first 200, and its peak RSS under (3).
// Every run ends by checking the ledger's invariants; a fast wrong answer fails the run.
import postgres from 'postgres';
import { env, median, printer } from './lib.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const dbUrl = env('SUPABASE_DB_URL');
const admin = postgres(dbUrl, { max: 2, onnotice: () => {} });
const report: Record<string, unknown> = { date: new Date().toISOString(), seconds };
const { lines, say } = printer();

// ---------------------------------------------------------------- fixtures

const accountCount = 1000;
console.error('setting up 1,000 funded accounts and a baseline table …');
const users: string[] = (await admin`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${accountCount}) returning id)
  select id from ins`).map((r) => r.id);
await admin`select billing.grant_credits(u, 1000000000, 'adjustment', 'bench-fund:' || u) from unnest(${users}::uuid[]) u`;
await admin`create schema if not exists bench`;
await admin`drop table if exists bench.accounts`;
await admin`create table bench.accounts (id integer primary key, balance numeric(38, 18) not null)`;
await admin`insert into bench.accounts select g, 1000000000 from generate_series(1, ${accountCount}) g`;

async function timed(clients: number, op: (sql: postgres.Sql, i: number) => Promise<void>) {
  const pool = postgres(dbUrl, { max: clients, prepare: false, onnotice: () => {} });
  await Promise.all(Array.from({ length: clients }, () => pool`select 1`)); // open every connection first
  let done = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    let i = c;
    while (performance.now() < until) {
      await op(pool, i);
      i += clients;
      done++;
    }
  }));
  await pool.end();
  return done / seconds;
}

// ---------------------------------------------------------------- 1. SQL usage charge

// The real usage charge: 10 input tokens of gpt-4o-mini (0.006 credits), as section 2 and 3's model.
const charge = (sql: postgres.Sql, user: string, key: string) =>
  sql`select billing.charge_usage(${user}, 'gpt-4o-mini', 10, 0, ${key})`;

say('\n### 1. SQL usage charge vs bare guarded UPDATE (ops/s)\n');
say('| clients | accounts | baseline | charge_usage | ratio | target |');
say('| --- | --- | --- | --- | --- | --- |');
const [{ before }] =
  await admin`select (pg_total_relation_size('billing.transfers') + pg_total_relation_size('billing.entries'))::bigint as before`;
let charges = 0;
const sql1: Record<string, unknown> = {};
for (const clients of [1, 16, 64]) {
  for (const hot of [false, true]) {
    const pick = (i: number) => (hot ? 0 : i % accountCount);
    const baseline = await timed(clients, async (sql, i) => {
      await sql`update bench.accounts set balance = balance - 1 where id = ${pick(i) + 1} and balance >= 1`;
    });
    const run = crypto.randomUUID().slice(0, 8);
    const ledger = await timed(clients, async (sql, i) => {
      await charge(sql, users[pick(i)], `bench:${run}:${i}`);
      charges++;
    });
    const target = hot ? 0.8 : 0.6;
    const ratio = ledger / baseline;
    sql1[`c${clients}${hot ? '_hot' : ''}`] = { baseline, ledger, ratio };
    say(
      `| ${clients} | ${hot ? '1 (hot)' : '1,000'} | ${baseline.toFixed(0)} | ${ledger.toFixed(0)} | ${
        ratio.toFixed(2)
      }× | ≥ ${target}× ${ratio >= target ? 'met' : 'MISSED'} |`,
    );
  }
}
const [{ after }] =
  await admin`select (pg_total_relation_size('billing.transfers') + pg_total_relation_size('billing.entries'))::bigint as after`;
const bytesPerCharge = (Number(after) - Number(before)) / charges;
say(
  `\nBytes per charge (transfers + entries, tables and indexes): ${
    bytesPerCharge.toFixed(0)
  } B (target ≤ 800 B) over ${charges} charges.`,
);
report.sql_charge = { ...sql1, bytesPerCharge };
const perEventSql = (sql1.c16 as { ledger: number }).ledger;

// Against pgledger's transfer (its design, bench/pgledger-design.sql): both tracked sides locked in
// id order, updated with their versions, the transfer and two entries with balances after.
await admin.unsafe(await Deno.readTextFile(new URL('./pgledger-design.sql', import.meta.url)));
await admin`select pgledger_bench.reset(${accountCount})`;
const pgledgerRun = crypto.randomUUID().slice(0, 8);
const cells: Record<string, number[]> = { charge: [], pgledger: [] };
for (let round = 0; round < 3; round++) { // interleaved: the machine's drift falls on both alike
  cells.pgledger.push(
    await timed(16, async (sql, i) => {
      await sql`select pgledger_bench.transfer(${(i % accountCount) + 1}, ${((i + 500) % accountCount) + 1}, 1)`;
    }),
  );
  cells.charge.push(
    await timed(16, async (sql, i) => {
      await charge(sql, users[i % accountCount], `bench:${pgledgerRun}:${round}:${i}`);
    }),
  );
}
const versus = median(cells.charge) / median(cells.pgledger);
say(
  `\nSQL usage charge against pgledger's transfer (16 clients, 1,000 accounts, medians of 3 interleaved): ` +
    `${median(cells.charge).toFixed(0)} vs ${median(cells.pgledger).toFixed(0)} ops/s: ${versus.toFixed(2)}× ` +
    `(target ≥ 1.5× ${versus >= 1.5 ? 'met' : 'MISSED'}).`,
);
report.versus_pgledger = { ...cells, ratio: versus };

// Credits for some models (docs/credit-lots.md): a usage charge on accounts without restricted lots
// (the path every account takes unless it has some) against accounts that also hold credits for
// another model, whose charges draw only the free credits that may pay for theirs.
const restricted: string[] = (await admin`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${accountCount}) returning id)
  select id from ins`).map((r) => r.id);
await admin`select billing.grant_credits(u, 1000000000, 'adjustment', 'bench-fund:' || u) from unnest(${restricted}::uuid[]) u`;
await admin`select billing.grant_credits(u, 1000, 'promo_grant', 'bench-claude:' || u, null, null, null,
  '{"applies_to": ["claude*"]}') from unnest(${restricted}::uuid[]) u`;
// A crowded plan: 6 lists for some models (and credits for any), and 100 live holds of the account's own,
// on 100 of them; the restricted cell charges the other 900 (one list, no holds), so neither mixes in the other.
const crowded = restricted.slice(0, 100);
const oneList = restricted.slice(crowded.length);
await admin`select billing.grant_credits(u, 1, 'promo_grant', 'bench-list:' || m || ':' || u, null, null, null,
  jsonb_build_object('applies_to', jsonb_build_array(m)))
  from unnest(${crowded}::uuid[]) u, unnest(array['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5', 'gpt-4o*', 'gpt-4o-mini*',
    'claude*']) m`;
await admin`select billing.reserve_credits(u, 0.000001, 'bench-dust:' || g || ':' || u, 86400)
  from unnest(${crowded}::uuid[]) u, generate_series(1, 100) g`;
// Many lists: 30 more accounts' worth of lists (every list a set of the catalogue's names and
// families) and a gateway call's hold for each of four models, on 100 of the one-list accounts:
// every charge draws around what those holds reserved.
const many = oneList.slice(0, 100);
const restOfOneList = oneList.slice(many.length);
await admin`select billing.grant_credits(u, 1, 'promo_grant', 'bench-many:' || n || ':' || u, null, null, null,
  jsonb_build_object('applies_to', array(
    select m from unnest(array['claude-haiku-4-5', 'gpt-4o', 'gpt-4o-mini', 'text-embedding-3-small', 'claude*', 'gpt-4o*',
      'gpt-4o-mini*', 'text-embedding*']) with ordinality x(m, i) where n & (1 << (i::int - 1)) <> 0)))
  from unnest(${many}::uuid[]) u, generate_series(1, 30) n`;
await admin`select billing.reserve_hold(u, 0.5, 'bench-many-hold:' || m || ':' || u, 86400, 'ai', null,
  jsonb_build_object('model', m))
  from unnest(${many}::uuid[]) u, unnest(array['claude-haiku-4-5', 'gpt-4o', 'gpt-4o-mini', 'text-embedding-3-small']) m`;
const usage = { plain: [] as number[], restricted: [] as number[], crowded: [] as number[], many: [] as number[] };
for (let round = 0; round < 3; round++) {
  for (
    const [cell, who] of [['plain', users], ['restricted', restOfOneList], ['crowded', crowded], [
      'many',
      many,
    ]] as const
  ) {
    usage[cell].push(
      await timed(16, async (sql, i) => {
        await sql`select billing.charge_usage(${who[i % who.length]}, 'gpt-4o-mini', 10, 0,
          ${`bench-usage:${pgledgerRun}:${cell}:${round}:${i}`})`;
      }),
    );
  }
}
say(
  `\nUsage charge, 16 clients, medians of 3 interleaved: ${median(usage.plain).toFixed(0)} ops/s on accounts ` +
    `without restricted lots, ${median(usage.restricted).toFixed(0)} on accounts that also hold credits for another ` +
    `model (planned): ${(median(usage.restricted) / median(usage.plain)).toFixed(2)}×; ` +
    `${median(usage.crowded).toFixed(0)} on 100 accounts with 6 lists for some models and 100 live holds each: ` +
    `${(median(usage.crowded) / median(usage.plain)).toFixed(2)}×; ${median(usage.many).toFixed(0)} on 100 ` +
    `accounts with 30 lists and four gateway holds each: ${(median(usage.many) / median(usage.plain)).toFixed(2)}×. ` +
    `Unused, the feature costs ` +
    `the hot path one boolean of the row it already locks.`,
);
report.restricted_lots = {
  ...usage,
  ratio: median(usage.restricted) / median(usage.plain),
  crowded_ratio: median(usage.crowded) / median(usage.plain),
  many_lists_ratio: median(usage.many) / median(usage.plain),
};
if (Deno.env.get('BENCH_LEDGER_SQL_ONLY') === '1') {
  await admin.end();
  Deno.exit(0);
}

// ---------------------------------------------------------------- gateway for the HTTP benches

const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
const port = (probe.addr as Deno.NetAddr).port;
probe.close();
const started = performance.now();
const gateway = new Deno.Command(Deno.execPath(), {
  args: ['run', '-A', `--env-file=${Deno.cwd()}/.local/env`, 'scripts/local/gateway.ts'],
  env: {
    GATEWAY_PORT: String(port),
    RATE_LIMIT_CREDITS_USAGE_PER_MIN: '100000000',
    RATE_LIMIT_USAGE_BATCH_PER_MIN: '100000000',
    RATE_LIMIT_GLOBAL_PER_MIN: '100000000',
    DB_POOL_MAX: '20',
  },
  stdout: 'null',
  stderr: 'null',
}).spawn();
const base = `http://127.0.0.1:${port}/functions/v1`;
for (;;) {
  const up = await fetch(`${base}/health/healthz`).then((r) => r.body?.cancel().then(() => r.ok) ?? r.ok, () => false);
  if (up) break;
  await new Promise((r) => setTimeout(r, 5));
}
const coldMs = performance.now() - started;
const peakRss = async () => {
  const status = await Deno.readTextFile(`/proc/${gateway.pid}/status`);
  return Number(status.match(/VmHWM:\s+(\d+)/)?.[1] ?? 0) / 1024;
};

try {
  // ---------------------------------------------------------------- 2. batched ingestion
  say('\n### 2. Batched ingestion over HTTP (events/s)\n');
  const batchUsers: string[] = (await admin`
    with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, 10000) returning id) select id from ins`)
    .map((r) => r.id);
  await admin`select billing.grant_credits(u, 1000000, 'adjustment', 'bench-fund:' || u) from unnest(${batchUsers}::uuid[]) u`;
  const service = env('SUPABASE_SERVICE_ROLE_KEY');
  say('| batch size | events/s | vs SQL charge per event (16 clients) | target |');
  say('| --- | --- | --- | --- |');
  const batchReport: Record<string, number> = {};
  for (const size of [1, 100, 1000]) {
    let events = 0;
    const until = performance.now() + seconds * 1000;
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (performance.now() < until) {
        const batch = Array.from({ length: size }, () => ({
          event_id: crypto.randomUUID(),
          user_id: batchUsers[Math.floor(Math.random() * batchUsers.length)],
          model: 'gpt-4o-mini',
          input_tokens: 1000,
          output_tokens: 100,
          occurred_at: new Date().toISOString(),
        }));
        const res = await fetch(`${base}/credits/usage/batch`, {
          method: 'POST',
          headers: { authorization: `Bearer ${service}`, 'content-type': 'application/json' },
          body: JSON.stringify({ events: batch }),
        });
        await res.body?.cancel();
        if (res.status !== 200) throw new Error(`batch answered ${res.status}`);
        events += size;
      }
    }));
    const rate = events / seconds;
    batchReport[`b${size}`] = rate;
    say(
      `| ${size} | ${rate.toFixed(0)} | ${(rate / perEventSql).toFixed(2)}× | ${
        size === 1000 ? `≥ 20,000/s ${rate >= 20000 ? 'met' : 'MISSED'}` : ''
      } |`,
    );
  }
  report.batch = batchReport;

  // ---------------------------------------------------------------- 3. HTTP usage charge
  // Reported by the product's server (the service role key), naming the user: a user token is refused.
  say('\n### 3. HTTP usage charge (POST /credits/usage: server key + rate limit + idempotency)\n');
  const reportedFor = users.slice(0, 64);
  say('| connections | req/s | p50 / p95 / p99 (ms) | vs SQL charge (same clients) | target |');
  say('| --- | --- | --- | --- | --- |');
  const httpReport: Record<string, unknown> = {};
  for (const connections of [16, 64]) {
    const latencies: number[] = [];
    let errors = 0;
    const until = performance.now() + seconds * 1000;
    await Promise.all(Array.from({ length: connections }, async (_, c) => {
      while (performance.now() < until) {
        const t0 = performance.now();
        const res = await fetch(`${base}/credits/usage`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${service}`,
            'idempotency-key': crypto.randomUUID(),
            'content-type': 'application/json',
          },
          body: JSON.stringify({ user_id: reportedFor[c], model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 }),
        });
        await res.body?.cancel();
        latencies.push(performance.now() - t0);
        if (res.status !== 201) errors++;
      }
    }));
    latencies.sort((a, b) => a - b);
    const q = (p: number) => latencies[Math.floor(p * (latencies.length - 1))];
    const rps = latencies.length / seconds;
    const sqlRate = (sql1[`c${connections}`] as { ledger: number }).ledger;
    httpReport[`c${connections}`] = { rps, p50: q(0.5), p95: q(0.95), p99: q(0.99), errors };
    const target = connections === 16
      ? ` p95 ≤ 5 ms ${q(0.95) <= 5 ? 'met' : 'MISSED'}, ≥ 2,000 req/s ${rps >= 2000 ? 'met' : 'MISSED'}`
      : '';
    say(
      `| ${connections} | ${rps.toFixed(0)} | ${q(0.5).toFixed(1)} / ${q(0.95).toFixed(1)} / ${q(0.99).toFixed(1)} | ${
        (rps / sqlRate).toFixed(2)
      }× | ${target} (non-201: ${errors}) |`,
    );
  }
  report.http_usage = httpReport;

  // ---------------------------------------------------------------- 4. cold start and memory
  const rss = await peakRss();
  report.cold_start_ms = coldMs;
  report.peak_rss_mb = rss;
  say(`\n### 4. Cold start and memory\n`);
  say(
    `Gateway process start to first 200: ${coldMs.toFixed(0)} ms (target ≤ 150 ms). Peak RSS after (2) and (3): ${
      rss.toFixed(0)
    } MB (target ≤ 200 MB).`,
  );
} finally {
  gateway.kill();
  await gateway.status;
}

// ---------------------------------------------------------------- correctness after the load

const [inv] = await admin`
  -- Money is conserved: tracked balances plus the platform balances derived from the transfers.
  select ((select coalesce(sum(balance), 0) from billing.accounts where code is null)
          + (select coalesce(sum(balance), 0) from billing.platform_balances))::text as total,
         (select count(*) from billing.accounts a
            left join (select account_id, sum(amount) as total from billing.entries group by account_id) s on s.account_id = a.id
            where a.user_id is not null and a.balance <> coalesce(s.total, 0))::int as mismatched,
         -- Debt is allowed only after a reversal or what a provider billed past a hold (the one
         -- debt: the excess charge records what its hold reserved); the test suite leaves some.
         (select count(*) from billing.accounts a where a.balance < 0 and not exists (
            select 1 from billing.transfers t where t.from_account_id = a.id
              and (t.kind in ('refund_reversal', 'dispute_reversal')
                   or (t.kind = 'usage' and t.metadata ? 'reserved'))))::int as negative,
         (select count(*) from (select idempotency_key, kind from billing.transfers group by 1, 2 having count(*) > 1) d)::int as dup`;
await admin`drop schema bench cascade`;
await admin.end();
const okAfter = Number(inv.total) === 0 && inv.mismatched === 0 && inv.negative === 0 && inv.dup === 0;
say(
  `\nInvariants after the load: Σ of all balances = ${inv.total}, balances ≠ Σ entries: ${inv.mismatched}, unexplained debt: ${inv.negative}, duplicate effects: ${inv.dup} → ${
    okAfter ? 'OK' : 'BROKEN'
  }`,
);
report.invariants = inv;
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(`bench/results/ledger-${report.date}.json`, JSON.stringify(report, null, 2));
await Deno.writeTextFile('bench/results/ledger-latest.md', lines.join('\n') + '\n');
if (!okAfter) Deno.exit(1);
