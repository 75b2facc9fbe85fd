// Rate cards by token kind and the dry run (issue #36), in a private cluster:
//   1. pricing a usage event by its six kinds (price_usage, and the whole SQL charge) against
//      today's two-kind pricing, kept here as it was before #36 (target ≤ 1.05×);
//   2. the dry run of a draft over BENCH_PRICING_CHARGES past charges (target ≤ 2 s for a
//      million), against a plain scan of the same range (count and sum of the charges).
// Rounds alternate the two sides of each ratio so drift hits both alike.
//   BENCH_PRICING_CHARGES (1,000,000), BENCH_PRICING_CALLS (20,000), BENCH_PRICING_ROUNDS (7),
//   BENCH_PRICING_PORT (55436), BENCH_PRICING_KEEP=1
import postgres from 'postgres';
import { fmt, median, printer, timed } from './lib.ts';
import { privateCluster } from './private-cluster.ts';

const charges = Number(Deno.env.get('BENCH_PRICING_CHARGES') ?? 1_000_000);
const calls = Number(Deno.env.get('BENCH_PRICING_CALLS') ?? 20_000);
const rounds = Number(Deno.env.get('BENCH_PRICING_ROUNDS') ?? 7);
const port = Number(Deno.env.get('BENCH_PRICING_PORT') ?? 55436);
const cluster = privateCluster({
  dir: `/tmp/scholarlink-pricing-bench-${port}`, // per port: two worktrees may run it at once
  port,
  keep: Deno.env.get('BENCH_PRICING_KEEP') === '1',
  log: (s) => console.error(`[pricing] ${s}`),
});

// Today's pricing before #36, verbatim but for the names: input and output only.
const before36 = `
create or replace function billing.price_usage_v1(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  out rate_card_id bigint, out rate_card_version integer, out amount numeric)
language plpgsql stable set search_path = '' as $$
begin
  if p_input_tokens is null or p_output_tokens is null or p_input_tokens < 0 or p_output_tokens < 0 then
    perform billing.raise_error('INVALID_TOKENS', jsonb_build_object('rule', 'non-negative integers'));
  end if;
  select r.id, r.version,
    round((p_input_tokens * r.usd_per_million_input + p_output_tokens * r.usd_per_million_output) * r.markup / 1000, 18)::numeric(38, 18)
  into rate_card_id, rate_card_version, amount
  from billing.rate_cards r
  where r.model = p_model and r.effective_from <= now()
  order by r.effective_from desc, r.version desc limit 1;
  if not found then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('model', p_model));
  end if;
end;
$$;
create or replace function billing.charge_usage_v1(p_user uuid, p_model text, p_input_tokens bigint,
  p_output_tokens bigint, p_idempotency_key text) returns billing.usage_result
language plpgsql security definer set search_path = '' as $$
declare
  v_price record;
  v_result billing.transfer_result;
begin
  v_price := billing.price_usage_v1(p_model, p_input_tokens, p_output_tokens);
  v_result := billing.post_user_transfer(p_user, -1, 'spend', v_price.amount, 'usage', 'usage_revenue',
    p_idempotency_key, null, null,
    '{}'::jsonb || jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens, 'output_tokens', p_output_tokens),
    v_price.rate_card_id);
  return (v_result.transfer_id, v_result.amount, v_price.rate_card_version, v_result.balance, v_result.held,
          v_result.available, v_result.replayed)::billing.usage_result;
end;
$$;`;

await cluster.start();
const sql = postgres(cluster.adminUrl, { max: 1, onnotice: () => {} });
const { lines, say } = printer();
try {
  await sql.unsafe(before36);
  // A card with every kind priced, so the six-kind side prices each of them.
  await sql`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second)
    values ('bench-kinds', 1, 2.5, 10, 4, now() - interval '1 day', 1.25, 12, 0.04, 0.006)`;
  // A fresh, funded student for each charge cell of each round: the same account history for both sides.
  const fresh = async () => {
    const [{ user }] = await sql`insert into auth.users (id) values (gen_random_uuid()) returning id::text as user`;
    await sql`select billing.grant_credits(${user}, 1e15, 'adjustment', 'bench-pricing:' || ${user})`;
    return user as string;
  };

  // ------------------------------------------------------------ 1. pricing by kind
  const cells: Record<string, (user: string) => Promise<unknown>> = {
    'price_usage, input and output (before #36)': () =>
      sql`select count((billing.price_usage_v1('bench-kinds', 1000 + g, 500 + g)).amount) from generate_series(1, ${calls}) g`,
    'price_usage, input and output (now)': () =>
      sql`select count((billing.price_usage('bench-kinds', 1000 + g, 500 + g)).amount) from generate_series(1, ${calls}) g`,
    'price_usage, six kinds': () =>
      sql`select count((billing.price_usage('bench-kinds', 1000 + g, 500 + g, g, g, 1, 1)).amount)
        from generate_series(1, ${calls}) g`,
    'charge_usage, input and output (before #36)': (user) =>
      sql`select count(billing.charge_usage_v1(${user}, 'bench-kinds', 1000 + g, 500 + g, 'bench-v1:' || ${user} || g))
        from generate_series(1, ${calls / 20}) g`,
    'charge_usage, six kinds': (user) =>
      sql`select count(billing.charge_usage(${user}, 'bench-kinds', 1000 + g, 500 + g, 'bench-v2:' || ${user} || g,
          null, null, g, g, 1, 1)) from generate_series(1, ${calls / 20}) g`,
  };
  // Wall time, and the backend's own CPU time (/proc/<pid>/schedstat, the cluster is local):
  // on a machine shared with other workers the second ratio holds where the first swings ±15%.
  const [{ pid }] = await sql`select pg_backend_pid() as pid`;
  const cpuMs = async () => Number((await Deno.readTextFile(`/proc/${pid}/schedstat`)).split(' ')[0]) / 1e6;
  const ms: Record<string, number[]> = {}, cpu: Record<string, number[]> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, q] of Object.entries(cells)) {
      const user = await fresh();
      const c0 = await cpuMs();
      (ms[name] ??= []).push((await timed(() => q(user)))[0]);
      (cpu[name] ??= []).push((await cpuMs()) - c0);
    }
  }
  const perCall = (name: string, n: number, of = ms) => (median(of[name]) * 1000) / n;
  say(`\n### Pricing a usage event by token kind (medians of ${rounds} rounds)\n`);
  say('| call | µs per event | vs before #36 | CPU µs per event | vs before #36 | target |');
  say('| --- | --- | --- | --- | --- | --- |');
  for (
    const [base, kinds, n] of [
      ['price_usage, input and output (before #36)', 'price_usage, input and output (now)', calls],
      ['price_usage, input and output (before #36)', 'price_usage, six kinds', calls],
      ['charge_usage, input and output (before #36)', 'charge_usage, six kinds', calls / 20],
    ] as const
  ) {
    const ratio = perCall(kinds, n) / perCall(base, n), cpuRatio = perCall(kinds, n, cpu) / perCall(base, n, cpu);
    say(`| ${base} | ${perCall(base, n).toFixed(1)} | 1.00× | ${perCall(base, n, cpu).toFixed(1)} | 1.00× | |`);
    say(
      `| ${kinds} | ${perCall(kinds, n).toFixed(1)} | ${ratio.toFixed(2)}× | ${perCall(kinds, n, cpu).toFixed(1)} | ${
        cpuRatio.toFixed(2)
      }× | ≤ 1.05× ${ratio <= 1.05 ? '✓' : '✗'} wall, ${cpuRatio <= 1.05 ? '✓' : '✗'} CPU |`,
    );
  }

  // ------------------------------------------------------------ 2. the dry run
  console.error(`[pricing] writing ${fmt(charges)} past charges of gpt-4o`);
  await sql`insert into auth.users (id) select gen_random_uuid() from generate_series(1, 10000)`;
  await sql`select billing.ensure_user_account(u.id) from auth.users u`;
  // Written directly (a bench only: no lots, no entries; the dry run reads transfers), over 30 days.
  await sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`;
    await tx`insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, rate_card_id,
        metadata, created_at)
      select 'usage', a.ids[1 + g % array_length(a.ids, 1)], billing.platform_account_id('usage_revenue'),
        round(((1000 + g % 5000) * 5 + (g % 300) * 5 + (200 + g % 1000) * 15) * 4 / 1000.0, 18),
        'bench-dry:' || g, c.id,
        jsonb_build_object('model', 'gpt-4o', 'input_tokens', 1000 + g % 5000, 'output_tokens', 200 + g % 1000,
          'cached_input_tokens', g % 300, 'reasoning_tokens', 0, 'images', 0, 'audio_seconds', 0),
        now() - interval '30 days' + g * (interval '30 days' / ${charges})
      from generate_series(1, ${charges}) g,
        (select array_agg(id) as ids from billing.accounts where user_id is not null) a,
        (select id from billing.rate_cards where model = 'gpt-4o' and version = 1) c`;
  });
  await sql`vacuum analyze billing.transfers`;
  const [{ draft }] = await sql`select billing.draft_rate_card(gen_random_uuid(),
    '{"model": "gpt-4o", "usd_per_million_input": "4", "usd_per_million_cached_input": "1",
      "usd_per_million_output": "16", "markup": "4"}', 'bench') ->> 'id' as draft`;
  const dry: number[] = [], scan: number[] = [];
  let answer: { totals: { charges: number } } | undefined;
  for (let r = 0; r < Math.min(rounds, 5); r++) {
    scan.push(
      (await timed(() =>
        sql`select count(*), sum(t.amount) from billing.transfers t where t.kind = 'usage'
        and t.created_at >= now() - interval '31 days' and t.created_at < now() + interval '1 minute'`
      ))[0],
    );
    const [t, rows] = await timed(() =>
      sql`select billing.simulate_rate_card(${draft}::uuid, now() - interval '31 days', now() + interval '1 minute') as s`
    );
    dry.push(t);
    answer = rows[0].s;
  }
  // A fast wrong answer fails the run: every charge of the range was re-priced.
  if (answer?.totals.charges !== charges) {
    throw new Error(`the dry run re-priced ${answer?.totals.charges} of ${charges}`);
  }
  say(`\n### The dry run over ${fmt(charges)} past charges (medians of ${dry.length})\n`);
  say('| query | ms | vs the scan | target |');
  say('| --- | --- | --- | --- |');
  say(`| count and sum of the range (baseline) | ${median(scan).toFixed(0)} | 1.0× | |`);
  const m = median(dry);
  say(
    `| simulate_rate_card | ${m.toFixed(0)} | ${(m / median(scan)).toFixed(1)}× | ≤ 2,000 ms ${
      m <= 2000 ? '✓' : '✗'
    } |`,
  );
  await Deno.mkdir(new URL('./results/', import.meta.url), { recursive: true });
  await Deno.writeTextFile(new URL('./results/pricing.md', import.meta.url), lines.join('\n') + '\n');
} finally {
  await sql.end();
  await cluster.stop();
}
