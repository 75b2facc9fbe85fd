// The AI gateway against calling the provider (the local stand-in) directly, in the same run:
//   (a) time to the first answer byte at 16 concurrent streams, p50 and p99: gateway − direct.
//       Targets: added ≤ 5 ms p50, ≤ 20 ms p99.
//   (b) a long streamed answer's throughput (bytes of answer a second, one stream at a time):
//       gateway ÷ direct. Target ≥ 0.95×.
//   (c) Postgres CPU for a call's hold and capture (begin_ai_call + finish_ai_call, writing its
//       record as the gateway does: docs/ai-gateway.md § The call log) against one
//       usage request (run_money_request 'credits.usage'), per call, from /proc. Target ≤ 2×.
// Rounds alternate direct and gateway (BENCH_ROUNDS, default 3); medians across rounds. The
// gateway is a private one with the per-student AI rate limit lifted.
//   BENCH_STREAMS (400 per round), BENCH_SQL_CALLS (2,000 per round)
import postgres from 'postgres';
import { clusterCpu, env, fmt, median, printer } from './lib.ts';

const rounds = Number(Deno.env.get('BENCH_ROUNDS') ?? 3);
const streams = Number(Deno.env.get('BENCH_STREAMS') ?? 400);
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

// Students with plenty of credits, one per client, signed like Supabase Auth's tokens.
const { userToken } = await import('../tests/support/helpers.ts');
const students = await Promise.all(Array.from({ length: clients }, async () => {
  const id = crypto.randomUUID();
  await db`insert into auth.users (id) values (${id})`;
  await db`select billing.grant_credits(${id}, 100000000, 'promo_grant', ${`bench-ai-${id}`})`;
  return { id, token: await userToken(id, { ttlSeconds: 7200 }) };
}));

const direct = { url: `${env('AI_API_BASE')}/chat/completions`, key: (_i: number) => env('AI_API_KEY') };
const viaGateway = { url: `${functions}/ai/v1/chat/completions`, key: (i: number) => students[i].token };
type Target = typeof direct;

/** One streamed call: ms to the first answer byte and to the end, and the answer's bytes. */
async function stream(target: Target, i: number, words: number) {
  const t0 = performance.now();
  const res = await fetch(target.url, {
    method: 'POST',
    headers: { authorization: `Bearer ${target.key(i)}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `bench #standin words=${words}` }],
      max_tokens: words * 3,
      stream: true,
      stream_options: { include_usage: true },
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
  return { ttfb: first, total: performance.now() - t0, bytes };
}

const quantile = (xs: number[], q: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

async function firstBytes(target: Target) {
  const ttfb: number[] = [];
  let next = 0;
  await Promise.all(students.map(async (_, i) => {
    while (next++ < streams) ttfb.push((await stream(target, i, 20)).ttfb);
  }));
  return { p50: quantile(ttfb, 0.5), p99: quantile(ttfb, 0.99) };
}

async function throughput(target: Target) {
  let bytes = 0, ms = 0;
  for (let k = 0; k < 5; k++) {
    const r = await stream(target, 0, 20_000);
    bytes += r.bytes;
    ms += r.total;
  }
  return bytes / (ms / 1000);
}

// (c): the same users, SQL only, 8 connections; per call CPU of the whole cluster.
const [{ pid: backend }] = await db`select pg_backend_pid() as pid`;
const postmaster = Number((await Deno.readTextFile(`/proc/${backend}/stat`)).split(') ')[1].split(' ')[1]);
async function cpuPerCall(cell: 'usage' | 'ai') {
  const before = await clusterCpu(postmaster);
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async (_, w) => {
    while (next < sqlCalls) {
      const user = students[next++ % clients].id;
      const key = crypto.randomUUID();
      if (cell === 'usage') {
        await db`select billing.run_money_request(${user}, 'credits.usage', ${key}, ${'0'.repeat(64)}, ${`bench-${w}`},
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

const cells: Record<string, number[]> = {
  directP50: [],
  gatewayP50: [],
  directP99: [],
  gatewayP99: [],
  directRate: [],
  gatewayRate: [],
  usageCpu: [],
  aiCpu: [],
};
try {
  for (let r = 0; r < rounds; r++) {
    const [d, g] = [await firstBytes(direct), await firstBytes(viaGateway)];
    cells.directP50.push(d.p50),
      cells.directP99.push(d.p99),
      cells.gatewayP50.push(g.p50),
      cells.gatewayP99.push(g.p99);
    cells.directRate.push(await throughput(direct)), cells.gatewayRate.push(await throughput(viaGateway));
    cells.usageCpu.push(await cpuPerCall('usage')), cells.aiCpu.push(await cpuPerCall('ai'));
  }
  const m = (k: string) => median(cells[k]);
  say(
    `AI gateway vs the provider called directly (${rounds} rounds, medians; ${streams} streams a round at ${clients} at once)`,
  );
  say(
    `  first byte p50: direct ${fmt(m('directP50'), 2)} ms, gateway ${fmt(m('gatewayP50'), 2)} ms: added ${
      fmt(m('gatewayP50') - m('directP50'), 2)
    } ms (target ≤ 5)`,
  );
  say(
    `  first byte p99: direct ${fmt(m('directP99'), 2)} ms, gateway ${fmt(m('gatewayP99'), 2)} ms: added ${
      fmt(m('gatewayP99') - m('directP99'), 2)
    } ms (target ≤ 20)`,
  );
  say(
    `  a long answer's throughput: direct ${fmt(m('directRate') / 1e6, 2)} MB/s, gateway ${
      fmt(m('gatewayRate') / 1e6, 2)
    } MB/s: ${fmt(m('gatewayRate') / m('directRate'), 2)}× (target ≥ 0.95)`,
  );
  say(
    `  Postgres CPU a call: usage request ${fmt(m('usageCpu'), 3)} ms, hold + capture ${fmt(m('aiCpu'), 3)} ms: ${
      fmt(m('aiCpu') / m('usageCpu'), 2)
    }× (target ≤ 2)`,
  );
  say(`  per round: ${JSON.stringify(cells)}`);
  await Deno.mkdir('bench/results', { recursive: true });
  await Deno.writeTextFile(
    `bench/results/ai-gateway-${new Date().toISOString().slice(0, 19)}.txt`,
    lines.join('\n') + '\n',
  );
} finally {
  gateway.kill('SIGKILL');
  await gateway.status;
  await db.end();
  const { testDb } = await import('../tests/support/helpers.ts');
  await testDb.end();
}
