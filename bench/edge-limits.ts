// Edge limits (2 s CPU, 150 s idle wall, 256 MB a request): the process CPU of one jobs tick and
// of one reconciliation page, measured in-process around the very code the functions run
// (runWorker; RunWorker.step against the Stripe emulator) with process.cpuUsage(). Baseline in
// the same run: the CPU of one SQL round trip on the same pool. Printed: CPU per tick and per
// page in ms, × that baseline, and as a share of the 2 s limit; beside them, what the old way
// (a whole export, a whole day in one request) cost. Nothing is asserted. Run with
// ./scripts/bench edge-limits. BENCH_EDGE_JOBS exports due at once (default 6), each of
// BENCH_EDGE_ROWS ledger rows (default 1,500) in pages of 500.
//
// The ticks claim any due job, as the schedule's do: due jobs other runs left are drained first.
import process from 'node:process';
import { db } from '../supabase/functions/_shared/adapters/db.ts';
import { runWorker } from '../supabase/functions/jobs/worker.ts';
import { RunWorker } from '../supabase/functions/providers/reconciliation.ts';
import { printer } from './lib.ts';

const jobs = Number(Deno.env.get('BENCH_EDGE_JOBS') ?? 6);
const rows = Number(Deno.env.get('BENCH_EDGE_ROWS') ?? 1_500);
const pageSize = 500;
const cpuLimitMs = 2_000;

const { lines, say } = printer();

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** The process CPU and wall time `fn` took, and the largest RSS seen right after. */
async function measure<T>(fn: () => Promise<T>): Promise<{ value: T; cpu: number; wall: number; rss: number }> {
  const c0 = cpuMs();
  const t0 = performance.now();
  const value = await fn();
  return { value, cpu: cpuMs() - c0, wall: performance.now() - t0, rss: Deno.memoryUsage().rss };
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const ms = (x: number) => x.toFixed(1);
const share = (x: number) => `${((100 * x) / cpuLimitMs).toFixed(1)}%`;
const tick = () => runWorker({ workerId: `bench-${crypto.randomUUID()}`, budgetMs: 3_000 });

// ---------------------------------------------------------------- baseline: one SQL round trip
const sql = db();
await sql`select 1`;
const roundTrips = 300;
const base = await measure(async () => {
  for (let i = 0; i < roundTrips; i++) await sql`select 1`;
});
const baselineCpu = base.cpu / roundTrips;

// ---------------------------------------------------------------- jobs: ticks over due exports
console.error('draining due jobs other runs left …');
for (let i = 0; i < 100 && await tick() > 0; i++);
console.error(`setting up ${jobs} users × ${rows} ledger rows …`);
const ids: string[] = [];
for (let j = 0; j < jobs; j++) {
  const [{ id }] = await sql`insert into auth.users (id) values (gen_random_uuid()) returning id`;
  await sql`select billing.grant_credits(${id}, 1, 'promo_grant', ${`bench-edge-${id}-`} || i)
    from generate_series(1, ${rows}) i`;
  const [job] = await sql`select id from billing.enqueue_job(${id}, 'ledger_export',
    ${JSON.stringify({ page_size: pageSize })}::text::jsonb, ${crypto.randomUUID()})`;
  ids.push(job.id);
}
const ticks: { slices: number; cpu: number; wall: number; rss: number }[] = [];
for (let i = 0; i < 100; i++) {
  const t = await measure(tick);
  if (t.value === 0) break;
  ticks.push({ slices: t.value, cpu: t.cpu, wall: t.wall, rss: t.rss });
}
const [{ done }] = await sql`select count(*)::int as done from billing.jobs where id = any(${ids}::uuid[])
  and status = 'completed'`;
const slices = sum(ticks.map((t) => t.slices));
const tickCpu = ticks.map((t) => t.cpu);
const perSlice = sum(tickCpu) / slices;

say(`## edge-limits (${new Date().toISOString().slice(0, 10)})`);
say('');
say(
  `Baseline: one SQL round trip (\`select 1\`, same pool) = ${
    baselineCpu.toFixed(3)
  } ms CPU. The limit: ${cpuLimitMs} ms CPU a request.`,
);
say('');
say(`### jobs tick: ${jobs} ledger_export jobs due, ${rows} rows each, pages of ${pageSize}`);
say('');
say('| what | CPU ms | × baseline | of the 2 s limit | wall ms |');
say('| --- | --- | --- | --- | --- |');
say(
  `| one tick (mean of ${ticks.length}; ${(slices / ticks.length).toFixed(1)} slices each) | ${
    ms(sum(tickCpu) / ticks.length)
  } | ${(sum(tickCpu) / ticks.length / baselineCpu).toFixed(0)}× | ${share(sum(tickCpu) / ticks.length)} | ${
    ms(sum(ticks.map((t) => t.wall)) / ticks.length)
  } |`,
);
say(
  `| the largest tick | ${ms(Math.max(...tickCpu))} | ${(Math.max(...tickCpu) / baselineCpu).toFixed(0)}× | ${
    share(Math.max(...tickCpu))
  } | ${ms(Math.max(...ticks.map((t) => t.wall)))} |`,
);
say(
  `| one slice (one page of ${pageSize} rows, checkpointed) | ${ms(perSlice)} | ${
    (perSlice / baselineCpu).toFixed(0)
  }× | ${share(perSlice)} | |`,
);
say(
  `| a whole export in one request (before: ${Math.ceil(rows / pageSize)} pages) | ${ms(sum(tickCpu) / jobs)} | ${
    (sum(tickCpu) / jobs / baselineCpu).toFixed(0)
  }× | ${share(sum(tickCpu) / jobs)} | |`,
);
say('');
say(`${done}/${jobs} exports completed over ${ticks.length} ticks (${slices} slices).`);

// ---------------------------------------------------------------- reconciliation: one page at a time
const day = new Date().toISOString().slice(0, 10);
const worker = new RunWorker(`bench-reconcile-${crypto.randomUUID()}`, 30);
const latest = { run: await worker.claim(day) };
const pages: { phase: string; cpu: number; wall: number; rss: number }[] = [];
if (latest.run.locked_by !== worker.worker) {
  say('');
  say(`Reconciliation of ${day} skipped: another worker is paging it.`);
} else {
  while (!latest.run.finished_at) {
    const phase = latest.run.phase;
    const p = await measure(() => worker.step(latest.run));
    latest.run = p.value;
    pages.push({ phase: latest.run.finished_at ? 'compare and finish' : phase, cpu: p.cpu, wall: p.wall, rss: p.rss });
  }
  const [{ result }] = await sql`select billing.reconciliation_of(${day}::date) as result`;
  say('');
  say(
    `### reconciliation of ${day}: ${result.stripe_charges} provider charges, ${result.stripe_payouts} payouts, ${pages.length} steps`,
  );
  say('');
  say('| step | pages | CPU ms per page (mean / max) | × baseline (max) | of the 2 s limit (max) | wall ms (max) |');
  say('| --- | --- | --- | --- | --- | --- |');
  for (const phase of ['charges', 'fees', 'accounts', 'compare and finish']) {
    const of = pages.filter((p) => p.phase === phase);
    if (!of.length) continue;
    const max = Math.max(...of.map((p) => p.cpu));
    const label = phase === 'accounts'
      ? 'accounts (8 at a time)'
      : phase === 'charges' || phase === 'fees'
      ? `${phase} (100 a page)`
      : phase;
    say(
      `| ${label} | ${of.length} | ${ms(sum(of.map((p) => p.cpu)) / of.length)} / ${ms(max)} | ${
        (max / baselineCpu).toFixed(0)
      }× | ${share(max)} | ${ms(Math.max(...of.map((p) => p.wall)))} |`,
    );
  }
  const whole = sum(pages.map((p) => p.cpu));
  say(
    `| the whole day in one request (before) | ${pages.length} | ${ms(whole)} in all | ${
      (whole / baselineCpu).toFixed(0)
    }× | ${share(whole)} | ${ms(sum(pages.map((p) => p.wall)))} in all |`,
  );
}
say('');
say(
  `Process RSS after the largest step: ${
    (Math.max(...[...ticks, ...pages].map((p) => p.rss)) / 2 ** 20).toFixed(0)
  } MB.`,
);

await sql.end();
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile(
  `bench/results/edge-limits-${new Date().toISOString().slice(0, 19)}.md`,
  lines.join('\n') + '\n',
);
