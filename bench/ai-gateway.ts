// The AI gateway against calling the provider (the local stand-in) directly and against Portkey's
// open-source gateway (a pure relay, bench/baselines/portkey.ts) relaying to the same stand-in,
// in the same run:
//   (a) at 1 and at 16 calls at once, whole answers and streamed: the time to the first answer
//       byte each target adds to calling the provider directly (p50, p99) and calls a second;
//       ours ÷ Portkey. Targets: added at 1 call ≤ Portkey's; calls/s at 16 ≥ 1.0× Portkey's.
//       At 16 the two cores are the limit: CPU ms a call of each process on the path (the relay,
//       the stand-in, Postgres, pgbouncer, the Redis bridge and server; the load generator apart)
//       and calls per CPU-second of the path (per core).
//   (b) a long streamed answer's throughput (bytes of answer a second, one stream at a time):
//       gateway ÷ direct. Target ≥ 0.95×.
//   (c) Postgres CPU for a call's hold and capture (begin_ai_call + finish_ai_call, writing its
//       record as the gateway does: docs/ai-gateway.md § The call log) against one
//       usage request (run_usage_report 'credits.usage'), per call, from /proc. Target ≤ 2×.
// Rounds alternate direct, Portkey and the gateway (BENCH_ROUNDS, default 3); medians across
// rounds. The gateway is a private one with the per-student AI rate limit lifted.
//   BENCH_STREAMS (calls per cell at 16 at once, 400), BENCH_CALLS_ONE (calls per cell one at a
//   time, 100), BENCH_SQL_CALLS (2,000 per round); BENCH_ROUNDS=1 BENCH_STREAMS=64
//   BENCH_CALLS_ONE=20 BENCH_SQL_CALLS=200 is a quick check.
import postgres from 'postgres';
import { startPortkey } from './baselines/portkey.ts';
import { clusterCpu, env, fmt, median, printer } from './lib.ts';
import { cpuSeconds, firstLineNumber } from './request-path/procfs.ts';

const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const streams = Number(Deno.env.get('BENCH_STREAMS') ?? 400);
const callsOne = Number(Deno.env.get('BENCH_CALLS_ONE') ?? 100);
const sqlCalls = Number(Deno.env.get('BENCH_SQL_CALLS') ?? 2000);
const clients = 16;
const { say, lines } = printer();
const db = postgres(env('SUPABASE_DB_URL'), { max: clients, onnotice: () => {}, prepare: true });

// A private gateway: the stack's own keeps its per-student limit (60 calls a minute).
const port = 55800 + Math.floor(Math.random() * 100);
const gateway = new Deno.Command(Deno.execPath(), {
  args: ['run', '-A', 'scripts/local/gateway.ts'],
  env: {
    GATEWAY_PORT: String(port),
    RATE_LIMIT_AI_CHAT_PER_MIN: '100000000',
    RATE_LIMIT_DEFAULT_PER_MIN: '100000000',
    AI_MAX_OUTPUT_TOKENS: '100000',
    SERVER_TIMING: 'true', // each answer's steps, read into "where the added first byte goes"
  },
  stdout: 'null',
  stderr: 'null',
}).spawn();
const functions = `http://127.0.0.1:${port}/functions/v1`;
for (let i = 0;; i++) {
  if (await fetch(`${functions}/health/healthz`).then((r) => r.body?.cancel().then(() => true), () => false)) break;
  if (i > 150) throw new Error('the bench gateway did not start');
  await new Promise((r) => setTimeout(r, 100));
}
const portkey = await startPortkey(env('AI_API_BASE'));

// Students with plenty of credits, one per client, signed like Supabase Auth's tokens.
const { userToken } = await import('../tests/support/helpers.ts');
const students = await Promise.all(Array.from({ length: clients }, async () => {
  const id = crypto.randomUUID();
  await db`insert into auth.users (id) values (${id})`;
  await db`select billing.grant_credits(${id}, 100000000, 'promo_grant', ${`bench-ai-${id}`})`;
  return { id, token: await userToken(id, { ttlSeconds: 7200 }) };
}));

type Target = { name: string; url: string; headers: (i: number) => Record<string, string>; pid: number };
const providerKey = { authorization: `Bearer ${env('AI_API_KEY')}` };
const direct: Target = {
  name: 'direct',
  url: `${env('AI_API_BASE')}/chat/completions`,
  headers: () => providerKey,
  pid: 0,
};
const viaPortkey: Target = {
  name: 'Portkey',
  url: `${portkey.url}/chat/completions`,
  headers: () => ({ ...providerKey, ...portkey.headers }),
  pid: portkey.pid,
};
const viaGateway: Target = {
  name: 'ours',
  url: `${functions}/ai/v1/chat/completions`,
  headers: (i) => ({ authorization: `Bearer ${students[i].token}` }),
  pid: gateway.pid,
};
const targets = [direct, viaPortkey, viaGateway];

/** A Server-Timing header's steps: name → ms. */
const stepsOf = (header: string | null): Record<string, number> =>
  Object.fromEntries(
    (header ?? '').split(', ').filter(Boolean).map((s) => {
      const [name, dur] = s.split(';dur=');
      return [name, Number(dur)];
    }),
  );

/** One call: ms to the first answer byte and to the end, the answer's bytes, our gateway's steps. */
async function call(target: Target, i: number, words: number, streamed = true) {
  const t0 = performance.now();
  const res = await fetch(target.url, {
    method: 'POST',
    headers: { ...target.headers(i), 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `bench #standin words=${words}` }],
      max_tokens: words * 3,
      ...(streamed ? { stream: true, stream_options: { include_usage: true } } : {}),
    }),
  });
  if (!res.ok || !res.body) throw new Error(`${target.url}: ${res.status} ${await res.text()}`);
  const reader = res.body.getReader();
  let first = 0, bytes = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (!first) first = performance.now() - t0;
    bytes += value.length;
  }
  return { ttfb: first, total: performance.now() - t0, bytes, steps: stepsOf(res.headers.get('server-timing')) };
}

const quantile = (xs: number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

// The processes on a call's path whose CPU is read around each cell (the load generator apart).
const [{ pid: backend }] = await db`select pg_backend_pid() as pid`;
const postmaster = Number((await Deno.readTextFile(`/proc/${backend}/stat`)).split(') ')[1].split(' ')[1]);
const [{ data_directory: pgData }] = await db`show data_directory`;
const poolerPid = await firstLineNumber(`${pgData.replace(/\/[^/]+\/?$/, '')}/pgbouncer/pgbouncer.pid`);
const pids = {
  standin: await firstLineNumber('.local/run/ai-standin.pid'),
  bridge: await firstLineNumber('.local/run/redis-bridge.pid'),
  redis: await firstLineNumber('.local/run/redis.pid'),
  pooler: poolerPid,
};
const onPath = ['relay', 'standin', 'postgres', 'pooler', 'bridge', 'redis'] as const;
type Cpu = Record<typeof onPath[number] | 'loadgen', number>;
async function cpuNow(target: Target): Promise<Cpu> {
  const of = (pid: number) => (pid ? cpuSeconds(pid).catch(() => 0) : Promise.resolve(0));
  return {
    relay: await of(target.pid),
    standin: await of(pids.standin),
    postgres: await clusterCpu(postmaster),
    pooler: await of(pids.pooler),
    bridge: await of(pids.bridge),
    redis: await of(pids.redis),
    loadgen: await cpuSeconds(Deno.pid),
  };
}

/** Postgres's own time executing begin_ai_call and finish_ai_call so far (pg_stat_statements, ms). */
async function sqlTimes() {
  const rows = await db`select case when query like '%begin_ai_call(%' then 'begin' else 'finish' end as fn,
      sum(total_exec_time)::float8 as ms from extensions.pg_stat_statements
    where toplevel and (query like '%billing.begin_ai_call(%' or query like '%billing.finish_ai_call(%') group by 1`;
  const of = (fn: string) => Number(rows.find((r) => r.fn === fn)?.ms ?? 0);
  return { begin: of('begin'), finish: of('finish') };
}

/** `n` calls, `at` at once: added-TTFB inputs, calls a second and CPU ms a call per process. */
async function cell(target: Target, at: number, streamed: boolean) {
  const n = at === 1 ? callsOne : streams;
  const ttfb: number[] = [];
  const steps: Record<string, number>[] = [];
  let next = 0;
  const sql0 = await sqlTimes();
  const cpu0 = await cpuNow(target);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: at }, async (_, i) => {
    while (next++ < n) {
      const r = await call(target, i, 20, streamed);
      ttfb.push(r.ttfb);
      steps.push(r.steps);
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  const cpu1 = await cpuNow(target);
  const sql1 = await sqlTimes();
  const sqlMs = { begin: (sql1.begin - sql0.begin) / n, finish: (sql1.finish - sql0.finish) / n };
  const cpu = Object.fromEntries(
    Object.keys(cpu0).map((k) => [k, (cpu1[k as keyof Cpu] - cpu0[k as keyof Cpu]) * 1000 / n]),
  ) as Cpu;
  // Each step's median over the cell's calls, and what the steps leave of the total (routing,
  // the answer's JSON, the response): the gateway's own account of its time.
  const names = Object.keys(steps[0] ?? {});
  const stepMs = Object.fromEntries(names.map((k) => [k, quantile(steps.map((s) => s[k] ?? 0), 0.5)]));
  if (names.length) {
    stepMs.other = quantile(
      steps.map((s) => s.total - names.filter((k) => k !== 'total').reduce((sum, k) => sum + (s[k] ?? 0), 0)),
      0.5,
    );
  }
  return { p50: quantile(ttfb, 0.5), p99: quantile(ttfb, 0.99), rps: n / secs, cpu, sqlMs, stepMs };
}

async function throughput(target: Target) {
  let bytes = 0, ms = 0;
  for (let k = 0; k < 5; k++) {
    const r = await call(target, 0, 20_000);
    bytes += r.bytes;
    ms += r.total;
  }
  return bytes / (ms / 1000);
}

// (c): the same users, SQL only, 8 connections; per call CPU of the whole cluster.
async function cpuPerCall(kind: 'usage' | 'ai') {
  const before = await clusterCpu(postmaster);
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async (_, w) => {
    while (next < sqlCalls) {
      const user = students[next++ % clients].id;
      const key = crypto.randomUUID();
      if (kind === 'usage') {
        await db`select billing.run_usage_report(${user}, 'credits.usage', ${key}, ${'0'.repeat(64)}, ${`bench-${w}`},
          ${db.json({ model: 'gpt-4o-mini', input_tokens: 40, output_tokens: 20 })}, 201)`;
      } else {
        const [{ r }] = await db`select billing.begin_ai_call(${user}, 'gpt-4o-mini', 40, 60, ${key}, ${'0'.repeat(64)},
          600) as r`;
        await db`select billing.finish_ai_call(${r.call_id}, ${
          db.json({ input_tokens: 40, cached_input_tokens: 0, output_tokens: 20, reasoning_tokens: 0 })
        }, 'provider', null, false, ${
          db.json({ upstream_status: 200, first_token_ms: 120, duration_ms: 480, finish_reason: 'stop' })
        })`;
      }
    }
  }));
  await new Promise((r) => setTimeout(r, 200));
  return ((await clusterCpu(postmaster)) - before) * 1000 / sqlCalls;
}

type Cell = Awaited<ReturnType<typeof cell>>;
const shapes = [1, clients].flatMap((at) => [false, true].map((streamed) => ({ at, streamed })));
const shapeName = ({ at, streamed }: { at: number; streamed: boolean }) =>
  `${at} at once, ${streamed ? 'streamed' : 'whole'}`;
const runs: Record<string, Cell[]> = {}; // `${shape} ${target}` → one per round
const other: Record<string, number[]> = { directRate: [], gatewayRate: [], usageCpu: [], aiCpu: [] };
try {
  for (const t of targets) await call(t, 0, 20); // warm: connections, JIT, token cache
  for (let r = 0; r < rounds; r++) {
    for (const shape of shapes) {
      for (const t of targets) {
        console.error(`round ${r + 1}: ${shapeName(shape)}, ${t.name} …`);
        (runs[`${shapeName(shape)} ${t.name}`] ??= []).push(await cell(t, shape.at, shape.streamed));
      }
    }
    other.directRate.push(await throughput(direct)), other.gatewayRate.push(await throughput(viaGateway));
    other.usageCpu.push(await cpuPerCall('usage')), other.aiCpu.push(await cpuPerCall('ai'));
  }
  const m = (k: string) => median(other[k]);
  const med = (shape: string, t: Target, f: (c: Cell) => number) => median(runs[`${shape} ${t.name}`].map(f));
  say(`AI gateway against the provider called directly and against Portkey's gateway (${rounds} rounds, medians;`);
  say(`${callsOne} calls a cell one at a time, ${streams} at ${clients} at once; 20-word answers)\n`);
  say('| calls at once, answer | figure | direct | Portkey | ours | ours ÷ Portkey | target |');
  say('| --- | --- | --- | --- | --- | --- | --- |');
  for (const shape of shapes.map(shapeName)) {
    const added = (t: Target, q: 'p50' | 'p99') => med(shape, t, (c) => c[q]) - med(shape, direct, (c) => c[q]);
    for (const q of ['p50', 'p99'] as const) {
      const [pk, ours] = [added(viaPortkey, q), added(viaGateway, q)];
      const target = shape.startsWith('1 ') && q === 'p50' ? (ours <= pk ? '≤ Portkey: met' : '≤ Portkey: MISSED') : '';
      say(
        `| ${shape} | added first byte ${q} (ms) | ${fmt(med(shape, direct, (c) => c[q]), 2)} (its own) | ${
          fmt(pk, 2)
        } | ${fmt(ours, 2)} | ${fmt(ours / pk, 2)}× | ${target} |`,
      );
    }
    const [pk, ours] = [med(shape, viaPortkey, (c) => c.rps), med(shape, viaGateway, (c) => c.rps)];
    const target = shape.startsWith(`${clients} `) ? (ours >= pk ? '≥ 1.0×: met' : '≥ 1.0×: MISSED') : '';
    say(
      `| ${shape} | calls/s | ${fmt(med(shape, direct, (c) => c.rps))} | ${fmt(pk)} | ${fmt(ours)} | ${
        fmt(ours / pk, 2)
      }× | ${target} |`,
    );
  }
  say('\nOf ours, Postgres executing the hold and the capture (pg_stat_statements, mean ms a call):\n');
  say('| calls at once, answer | begin_ai_call | finish_ai_call | both | ours added p50 (ms) |');
  say('| --- | --- | --- | --- | --- |');
  for (const shape of shapes.map(shapeName)) {
    const [b, f] = [med(shape, viaGateway, (c) => c.sqlMs.begin), med(shape, viaGateway, (c) => c.sqlMs.finish)];
    const added = med(shape, viaGateway, (c) => c.p50) - med(shape, direct, (c) => c.p50);
    say(`| ${shape} | ${fmt(b, 2)} | ${fmt(f, 2)} | ${fmt(b + f, 2)} | ${fmt(added, 2)} |`);
  }
  // Where ours spends a call's time before its answer, by its own Server-Timing (medians over
  // each cell's calls, then over rounds); `other` is what the named steps leave of the total.
  say("\nWhere ours spends a call one at a time, by its Server-Timing (median ms; a stream's header");
  say("leaves before its capture, so its steps end at the provider's headers):\n");
  // The whole answer's steps in its header's order (a stream's are the first of them), then `other` and `total`.
  const named = Object.keys(runs[`${shapeName({ at: 1, streamed: false })} ${viaGateway.name}`][0].stepMs);
  const stepNames = [...named.filter((k) => k !== 'total' && k !== 'other'), 'other', 'total'];
  say(`| answer | ${stepNames.join(' | ')} | direct first byte | ours first byte |`);
  say(`| --- | ${stepNames.map(() => '---').join(' | ')} | --- | --- |`);
  for (const streamed of [false, true]) {
    const shape = shapeName({ at: 1, streamed });
    const step = (k: string) => {
      const v = runs[`${shape} ${viaGateway.name}`].map((c) => c.stepMs[k]).filter((x) => x !== undefined);
      return v.length ? fmt(median(v), 2) : '—';
    };
    say(
      `| ${streamed ? 'streamed' : 'whole'} | ${stepNames.map(step).join(' | ')} | ${
        fmt(med(shape, direct, (c) => c.p50), 2)
      } | ${fmt(med(shape, viaGateway, (c) => c.p50), 2)} |`,
    );
  }
  say(
    `\nAt ${clients} at once, CPU ms a call by process (medians), and calls per CPU-second of the path (per core):\n`,
  );
  say(`| answer, target | ${onPath.join(' | ')} | path | calls per core-second | load generator |`);
  say(`| --- | ${onPath.map(() => '---').join(' | ')} | --- | --- | --- |`);
  for (const streamed of [false, true]) {
    const shape = shapeName({ at: clients, streamed });
    for (const t of targets) {
      const per = onPath.map((k) => med(shape, t, (c) => c.cpu[k]));
      const path = med(shape, t, (c) => onPath.reduce((s, k) => s + c.cpu[k], 0));
      say(
        `| ${streamed ? 'streamed' : 'whole'}, ${t.name} | ${per.map((v) => fmt(v, 3)).join(' | ')} | ${
          fmt(path, 3)
        } | ${fmt(1000 / path)} | ${fmt(med(shape, t, (c) => c.cpu.loadgen), 3)} |`,
      );
    }
  }
  say(
    `\nA long answer's throughput: direct ${fmt(m('directRate') / 1e6, 2)} MB/s, gateway ${
      fmt(m('gatewayRate') / 1e6, 2)
    } MB/s: ${fmt(m('gatewayRate') / m('directRate'), 2)}× (target ≥ 0.95)`,
  );
  say(
    `Postgres CPU a call: usage request ${fmt(m('usageCpu'), 3)} ms, hold + capture ${fmt(m('aiCpu'), 3)} ms: ${
      fmt(m('aiCpu') / m('usageCpu'), 2)
    }× (target ≤ 2)`,
  );
  await Deno.mkdir('bench/results', { recursive: true });
  const stamp = new Date().toISOString().slice(0, 19);
  await Deno.writeTextFile(`bench/results/ai-gateway-${stamp}.txt`, lines.join('\n') + '\n');
  await Deno.writeTextFile(`bench/results/ai-gateway-${stamp}.json`, JSON.stringify({ runs, other }, null, 2));
} finally {
  gateway.kill('SIGKILL');
  await gateway.status;
  await portkey.stop();
  await db.end();
  const { testDb } = await import('../tests/support/helpers.ts');
  await testDb.end();
}
