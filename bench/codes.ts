// What redeeming a code costs against a grant, measured in the same run on the local stack: each
// is the one statement its money route runs (billing.run_code_request; billing.run_money_request
// for the grant: the user's standing, the Idempotency-Key claim, the work, the stored answer), so
// HTTP, JWT and rate limiting (the same for both) are left out. A promo redemption also counts the
// caller's failed guesses, locks the code's row and records the redemption and the attempt.
// Target: a redemption costs ≤ 1.5× a grant (one client, so cost is latency). With several
// clients, redemptions of one code queue on its row lock (that is how its budget holds exactly),
// so they are also measured against codes of their own per client.
//   BENCH_SECONDS (5) per cell, BENCH_ROUNDS (3, cells interleaved, medians), BENCH_CLIENTS (8)
import { createHash } from 'node:crypto';
import postgres from 'postgres';
import { fmt, median, printer } from './lib.ts';

const seconds = Number(Deno.env.get('BENCH_SECONDS') ?? 5);
const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const clients = Number(Deno.env.get('BENCH_CLIENTS') ?? 8);
const db = Deno.env.get('SUPABASE_DB_URL');
if (!db) throw new Error('SUPABASE_DB_URL is not set: run through ./scripts/bench (the local stack)');
const sql = postgres(db, { max: 4, onnotice: () => {} });
const { lines, say } = printer();
const hash = (s: string) => createHash('sha256').update(s).digest('hex');

const [{ admin }] =
  await sql`insert into auth.users (id, raw_app_meta_data) values (gen_random_uuid(), '{"role": "admin"}')
  returning id::text as admin`;

/** Promo codes with room for everything a run can redeem. */
async function promoCodes(n: number): Promise<string[]> {
  const hashes = Array.from({ length: n }, () => hash(`bench:${crypto.randomUUID()}`));
  for (const h of hashes) {
    await sql`select billing.create_promo_code(${admin}, ${h}, '{"credits": "5", "budget": "1000000000"}', ${h})`;
  }
  return hashes;
}

type Cell = 'grant' | 'redeem (a code per client)' | 'redeem (one code)';

/** Operations per second over `seconds`, each for a new user (a code is redeemed once per account). */
async function opsPerSecond(cell: Cell, n: number): Promise<number> {
  const codes = cell === 'grant' ? [] : await promoCodes(cell === 'redeem (one code)' ? 1 : n);
  const pool = postgres(db as string, { max: n, prepare: true, onnotice: () => {} });
  await Promise.all(Array.from({ length: n }, () => pool`select 1`));
  let done = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: n }, async (_, c) => {
    // Users made ahead in batches, outside the timed statements' cost.
    let users: string[] = [];
    while (performance.now() < until) {
      if (users.length === 0) {
        users = (await pool`insert into auth.users (id) select gen_random_uuid() from generate_series(1, 200)
          returning id::text`).map((r) => r.id as string);
      }
      const user = users.pop() as string;
      const key = crypto.randomUUID();
      const [r] = cell === 'grant'
        ? await pool`select (billing.run_grant_request(${admin}, 'credits.grants', ${key}, ${key}, ${key},
            ${pool.json({ user_id: user, amount: '5', kind: 'promo_grant', reason: 'bench' })}, 201, true)).*`
        : await pool`select (billing.run_code_request(${user}, 'credits.codes.redeem', ${key}, ${key}, ${key},
            ${pool.json({ code_hash: codes[c % codes.length], address_hash: null })}, 200)).*`;
      if (r.refusal_token) throw new Error(`${cell}: ${r.refusal_token} ${JSON.stringify(r.refusal_fields)}`);
      done++;
    }
  }));
  await pool.end();
  return done / seconds;
}

try {
  const cells: [Cell, number][] = [
    ['grant', 1],
    ['redeem (a code per client)', 1],
    ['grant', clients],
    ['redeem (a code per client)', clients],
    ['redeem (one code)', clients],
  ];
  const results = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const [cell, n] of cells) {
      const name = `${cell}|${n}`;
      results.set(name, [...results.get(name) ?? [], await opsPerSecond(cell, n)]);
      console.error(
        `[codes] round ${r + 1}/${rounds} ${cell}, ${n} client(s): ${fmt(results.get(name)?.at(-1) ?? 0)}/s`,
      );
    }
  }
  const rate = (cell: Cell, n: number) => median(results.get(`${cell}|${n}`) ?? [0]);
  say(`\n### Codes: a promo redemption against a grant (one statement each, medians of ${rounds} × ${seconds} s)\n`);
  say('| clients | operation | ops/s | cost vs a grant (grant ÷ this) | target |');
  say('| --- | --- | --- | --- | --- |');
  for (const [cell, n] of cells) {
    const cost = rate('grant', n) / rate(cell, n);
    const target = cell === 'grant' ? '' : n === 1 ? (cost <= 1.5 ? '≤ 1.5× ✓' : '≤ 1.5× ✗') : '';
    say(`| ${n} | ${cell} | ${fmt(rate(cell, n))} | ${cell === 'grant' ? '1' : cost.toFixed(2)}× | ${target} |`);
  }
  const [{ check }] = await sql`select billing.check_lots() as check`;
  const bad = ['lots', 'accounts', 'transfers'].filter((k) => (check[k] as unknown[]).length);
  say(`\nLots agree with balances after the run: ${bad.length ? `NO (${bad.join(', ')})` : 'yes'}.`);
  await Deno.mkdir('bench/results', { recursive: true });
  await Deno.writeTextFile(`bench/results/codes-${new Date().toISOString().slice(0, 16)}.md`, lines.join('\n') + '\n');
} finally {
  await sql.end();
}
