// School wallets (issue #22): what a member's debit costs, and whether pooled spending
// serialises worse than one hot account, each against a baseline measured in the same run on
// the local stack's database (the real usage charge, billing.charge_usage: 50 input tokens of
// gpt-4o, 1 credit at the seed's card, an idempotency key per charge):
//   (a) 1,000 members of one organisation funded by allowances, each debiting their allowance,
//       vs 1,000 funded plain users, at 1 and 16 clients. Target: the member's debit costs
//       ≤ 1.2× the plain one (plain debits/s ÷ member debits/s).
//   (b) 50 members of one pooled organisation, each with a day cap that never binds, spending
//       from its wallet on 16 clients, vs 16 clients debiting one plain user (the hot account
//       of bench/ledger.ts). Target: pooled ≥ 1.0× the hot account's debits/s. The same pair at
//       1 client (no target) separates the work a pooled debit adds from the waiting.
// Cells run interleaved, BENCH_ROUNDS times: medians of the rates, and of each round's ratio (its
// two cells ran back to back); during each cell, pg_stat_activity is sampled for how many of its
// connections wait on a lock. Members join through answer_invitation, as in the product, to
// invitations written as invite_member writes them (which sends at most 20 a day per inviter;
// no email is queued), the run's data under its own key prefix. The run fails if an allowance
// funded from never-expiring credits was given an expiry, or the ledger, the lots or the caps of
// its own accounts disagree afterwards, or a debit was paid from the wrong wallet.
//   BENCH_SECONDS (10) per cell, BENCH_ROUNDS (3)
import postgres from 'postgres';
import { fixtures } from './fixtures.ts';
import { median as medianOf, printer } from './lib.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 10);
const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const dbUrl = Deno.env.get('SUPABASE_DB_URL') ?? '';
if (!dbUrl) throw new Error('SUPABASE_DB_URL is not set');
const admin = postgres(dbUrl, { max: 2, onnotice: () => {} });
const run = crypto.randomUUID().slice(0, 8);
const tag = `bench-orgs:${run}`; // every key, token and name this run writes starts with it
const { lines, say } = printer();
const log = (s: string) => console.error(`[orgs] ${s}`);

// ------------------------------------------------------------ fixtures
const { newUsers, fundUsers, orgWithMembers } = fixtures(admin, tag);

// ------------------------------------------------------------ measuring

type Cell = { ops: number; waiting: number };

/** Debits/s of `clients` connections each looping charge_usage over `users`, and the mean number of them waiting on a lock. */
async function measure(name: string, round: number, clients: number, users: string[]): Promise<Cell> {
  const app = `${tag}:${name}`;
  const pool = postgres(dbUrl, {
    max: clients,
    prepare: false,
    onnotice: () => {},
    connection: { application_name: app },
  });
  await Promise.all(Array.from({ length: clients }, () => pool`select 1`)); // open every connection first
  let done = 0;
  let waiting = 0;
  let samples = 0;
  const until = performance.now() + seconds * 1000;
  const sampler = (async () => {
    while (performance.now() < until) {
      const [s] = await admin`select count(*) filter (where wait_event_type = 'Lock')::int as n
        from pg_stat_activity where application_name = ${app}`;
      waiting += s.n;
      samples++;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = c; performance.now() < until; i += clients, done++) {
      await pool`select billing.charge_usage(${
        users[i % users.length]
      }, 'gpt-4o', 50, 0, ${`${tag}:${name}:${round}:${i}`})`;
    }
  }));
  await sampler;
  await pool.end();
  return { ops: done / seconds, waiting: samples ? waiting / samples : 0 };
}

const started = new Date();
log(`run ${run}: fixtures (1,001 plain users; 1,000 members with allowances; 50 pooled members with day caps)`);
const plain = await newUsers(1000, 'plain');
await fundUsers(plain);
const [hot] = await newUsers(1, 'hot');
await fundUsers([hot]);
const allowance = await orgWithMembers('allowance', 1000);
await admin`select billing.fund_allowances(${allowance.owner}, ${allowance.org}, null, 1000000, ${`${tag}:allowance`})`;
// The wallet's credits never expire, so neither may the allowances funded from them (an expiry
// here would let pg_cron's expire_lots empty the members' allowances mid-run).
const [{ expiring }] = await admin`
  select count(*)::int as expiring from billing.lots l join billing.accounts a on a.id = l.account_id
  where a.org_id = ${allowance.org} and a.member_id is not null and l.expires_at is not null`;
if (expiring > 0) throw new Error(`${expiring} allowances funded from never-expiring credits were given an expiry`);
const pooled = await orgWithMembers('pool', 50);
// A day cap per member that never binds: every debit still counts against it, under the wallet's lock.
await admin`select billing.set_member_cap(${pooled.owner}, ${pooled.org}, u, 'day', 1e15) from unnest(${pooled.users}::uuid[]) u`;

const cells: [name: string, clients: number, users: string[]][] = [
  ['plain-1', 1, plain],
  ['member-1', 1, allowance.users],
  ['plain-16', 16, plain],
  ['member-16', 16, allowance.users],
  ['hot-16', 16, [hot]],
  ['pool-16', 16, pooled.users],
  ['hot-1', 1, [hot]],
  ['pool-1', 1, pooled.users],
];
const results: Record<string, Cell[]> = {};
for (let r = 0; r < rounds; r++) {
  for (const [name, clients, users] of cells) {
    const cell = await measure(name, r, clients, users);
    (results[name] ??= []).push(cell);
    log(
      `round ${r + 1}/${rounds} ${name}: ${cell.ops.toFixed(0)} debits/s, ${cell.waiting.toFixed(1)} waiting on a lock`,
    );
  }
}
const median = (name: string, k: keyof Cell) => medianOf(results[name].map((c) => c[k]));
const ops = (name: string) => median(name, 'ops').toFixed(0);
const wait = (name: string) => median(name, 'waiting').toFixed(1);
/** a ÷ b within each round (the two cells ran back to back), as the median and the range over rounds. */
const ratio = (a: string, b: string) => {
  const xs = results[a].map((c, r) => c.ops / results[b][r].ops);
  const range = rounds > 1 ? ` (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})` : '';
  return { value: medianOf(xs), text: `${medianOf(xs).toFixed(2)}×${range}` };
};
const report: Record<string, unknown> = {
  date: started.toISOString(),
  run,
  seconds,
  rounds,
  results,
};

say(`\n### (a) A member's debit from an allowance vs a plain debit (debits/s, medians of ${rounds} × ${seconds} s)\n`);
say(
  '| clients | plain (1,000 users) | member (1,000 allowances, 1 org) | cost (plain ÷ member, range) | waiting on a lock (plain / member) | target |',
);
say('| --- | --- | --- | --- | --- | --- |');
for (const clients of [1, 16]) {
  const cost = ratio(`plain-${clients}`, `member-${clients}`);
  report[`allowance_cost_c${clients}`] = cost.value;
  say(
    `| ${clients} | ${ops(`plain-${clients}`)} | ${ops(`member-${clients}`)} | ${cost.text} | ${
      wait(`plain-${clients}`)
    } / ${wait(`member-${clients}`)} | ≤ 1.2× ${cost.value <= 1.2 ? 'met' : 'MISSED'} |`,
  );
}
say(`\n### (b) Pooled spending vs the hot account (debits/s, medians of ${rounds} × ${seconds} s)\n`);
say(
  '| clients | hot account (1 user) | pooled (50 members, 1 wallet) | pooled ÷ hot (range) | waiting on a lock (hot / pooled) | target |',
);
say('| --- | --- | --- | --- | --- | --- |');
for (const clients of [16, 1]) {
  const pooledVsHot = ratio(`pool-${clients}`, `hot-${clients}`);
  report[`pool_vs_hot_c${clients}`] = pooledVsHot.value;
  say(
    `| ${clients} | ${ops(`hot-${clients}`)} | ${ops(`pool-${clients}`)} | ${pooledVsHot.text} | ${
      wait(`hot-${clients}`)
    } / ${wait(`pool-${clients}`)} | ${
      clients === 16 ? `≥ 1.0× ${pooledVsHot.value >= 1 ? 'met' : 'MISSED'}` : '(the work alone, no target)'
    } |`,
  );
}
// Serialisation proper: what 16 clients get over 1 on the same path (1.0× = one debit at a time).
const hotScaling = ratio('hot-16', 'hot-1');
const poolScaling = ratio('pool-16', 'pool-1');
report.scaling_1_to_16 = { hot: hotScaling.value, pool: poolScaling.value };
say(`\n16 clients ÷ 1 client on the same path: hot account ${hotScaling.text}, pooled ${poolScaling.text}.`);

// ------------------------------------------------------------ correctness after the load
// Only this run's accounts: the shared database holds other work in any state.

const everyUser = [...plain, hot, allowance.owner, ...allowance.users, pooled.owner, ...pooled.users];
const orgs = [allowance.org, pooled.org];
// One pass over each table (entries has no index on every row's account), then per account.
const [check] = await admin`
  with mine as (
    select a.id, a.balance from billing.accounts a where a.user_id = any(${everyUser}::uuid[]) or a.org_id = any(${orgs}::uuid[])
  ), entries as (
    select e.account_id, sum(e.amount) as total from billing.entries e where e.account_id in (select id from mine) group by 1
  ), lots as (
    select l.account_id, sum(l.remaining) as total from billing.lots l where l.account_id in (select id from mine) group by 1
  ), debits as (
    select split_part(t.idempotency_key, ':', 3) like 'pool-%' as pooled, t.member_id, a.org_id, a.member_id as allowance_of,
      t.amount
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where t.idempotency_key like ${`${tag}:%`} and t.kind = 'usage'
      and split_part(t.idempotency_key, ':', 3) similar to '(member|pool)-%'
  )
  select
    (select count(*) from mine a left join entries e on e.account_id = a.id where a.balance <> coalesce(e.total, 0))::int
      as ledger_mismatch,
    (select count(*) from mine a where a.balance < 0)::int as negative,
    (select count(*) from mine a left join lots l on l.account_id = a.id
      where coalesce(l.total, 0) <> greatest(a.balance, 0))::int as lots_mismatch,
    -- Every member debit was paid by that member's allowance, every pooled one by the wallet.
    (select count(*) from debits d where not d.pooled
      and (d.org_id is distinct from ${allowance.org}::uuid or d.allowance_of is distinct from d.member_id))::int
      as member_misrouted,
    (select count(*) from debits d where d.pooled
      and (d.org_id is distinct from ${pooled.org}::uuid or d.allowance_of is not null or d.member_id is null))::int
      as pool_misrouted,
    (select count(*) from debits d where not d.pooled)::int as member_debits,
    (select count(*) from debits d where d.pooled)::int as pool_debits,
    (select coalesce(sum(c.spent), 0) from billing.spend_caps c join billing.accounts a on a.id = c.account_id
      where a.org_id = ${pooled.org}::uuid and c.member_id is not null)::numeric::text as pool_cap_spent,
    (select coalesce(sum(d.amount), 0) from debits d where d.pooled)::numeric::text as pool_spent`;
// A run that crosses midnight UTC starts the day caps again, so their sum counts only today's.
const sameDay = started.toISOString().slice(0, 10) === new Date().toISOString().slice(0, 10);
const capsOk = !sameDay || Number(check.pool_cap_spent) === Number(check.pool_spent);
const ok = check.ledger_mismatch === 0 && check.negative === 0 && check.lots_mismatch === 0 &&
  check.member_misrouted === 0 && check.pool_misrouted === 0 && check.member_debits > 0 && check.pool_debits > 0 &&
  capsOk;
say(
  `\nAfter the load, this run's accounts: balances ≠ Σ entries: ${check.ledger_mismatch}, negative: ${check.negative}, lots ≠ balance: ${check.lots_mismatch}; member debits not from their allowance: ${check.member_misrouted} of ${check.member_debits}, pooled debits not from the wallet: ${check.pool_misrouted} of ${check.pool_debits}; day caps counted ${
    Number(check.pool_cap_spent)
  } of the ${Number(check.pool_spent)} credits of ${check.pool_debits} pooled debits${
    sameDay ? '' : ' (crossed midnight UTC: not compared)'
  } → ${ok ? 'OK' : 'BROKEN'}`,
);
report.checks = check;
await admin.end();
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(`bench/results/orgs-${report.date}.json`, JSON.stringify(report, null, 2));
await Deno.writeTextFile('bench/results/orgs-latest.md', lines.join('\n') + '\n');
if (!ok) Deno.exit(1);
