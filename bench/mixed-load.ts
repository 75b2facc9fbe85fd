// A mixed, open-loop workload on the local stack: balance reads, usage debits, jobs,
// checkouts and signed Stripe webhooks, at a fixed total rate. Reports the error rate (429s
// excluded), latency per route and the ledger's invariants after the run.
//   ./scripts/load [--rate 200] [--seconds 60]      (tests/reliability runs a short version)
import { parseArgs } from 'node:util';
import { api, assertLedgerInvariants, newUser, reportUsage, testDb, userToken } from '../tests/support/helpers.ts';
import { deliver, emulator, startCheckout } from '../tests/support/purchases.ts';

export interface LoadResult {
  sent: number;
  errors: number;
  rateLimited: number;
  errorRate: number;
  routes: Record<string, { count: number; p50: number; p95: number; p99: number; errors: number }>;
  duplicateCredits: number;
}

type Route = 'balance' | 'usage' | 'job' | 'checkout' | 'webhook';
const mix: [Route, number][] = [['balance', 0.5], ['usage', 0.3], ['job', 0.08], ['checkout', 0.07], ['webhook', 0.05]];

export async function mixedLoad(rate: number, seconds: number, log = (_: string) => {}): Promise<LoadResult> {
  const userCount = Math.max(20, Math.min(500, Math.ceil(rate / 4)));
  log(`setting up ${userCount} funded users …`);
  const users = await Promise.all(Array.from({ length: userCount }, () => newUser()));
  await testDb`select billing.grant_credits(u, 1000000, 'adjustment', 'load-fund:' || u) from unnest(${users}::uuid[]) u`;
  const tokens = await Promise.all(users.map((u) => userToken(u)));
  // Webhooks need paid sessions: checkouts made here feed them (a fresh user per checkout, as
  // the checkout velocity rule allows a user only a few an hour).
  const paidQueue: string[] = [];

  const samples: Record<Route, { ms: number[]; errors: number }> = {
    balance: { ms: [], errors: 0 },
    usage: { ms: [], errors: 0 },
    job: { ms: [], errors: 0 },
    checkout: { ms: [], errors: 0 },
    webhook: { ms: [], errors: 0 },
  };
  let rateLimited = 0;
  let sent = 0;
  const token = () => tokens[Math.floor(Math.random() * tokens.length)];
  const post = (path: string, body: unknown, t = token()) =>
    api(path, { token: t, headers: { 'idempotency-key': crypto.randomUUID() }, body });

  async function one(route: Route) {
    const started = performance.now();
    let status = 0;
    try {
      switch (route) {
        case 'balance':
          status = (await api('/credits/balance', { token: token() })).status;
          break;
        case 'usage': // reported by the product's server for a user (the service role, naming them)
          status = (await reportUsage('/credits/usage', {
            token: token(),
            headers: { 'idempotency-key': crypto.randomUUID() },
            body: { model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 },
          })).status;
          break;
        case 'job':
          status = (await post('/jobs', { type: 'ledger_export', input: {} })).status;
          break;
        case 'checkout': {
          const co = await startCheckout(await userToken(await newUser()), 'mini');
          status = 201;
          paidQueue.push(co.session_id);
          break;
        }
        case 'webhook': {
          const session = paidQueue.shift();
          if (!session) return; // nothing to pay yet
          const { events } = await emulator(`/_emulator/checkout/sessions/${session}/pay`, { deliver: false });
          const t0 = performance.now();
          for (const e of events) status = Math.max(status, (await deliver(e)).status);
          samples.webhook.ms.push(performance.now() - t0);
          if (status !== 200) samples.webhook.errors++;
          return;
        }
      }
    } catch {
      status = 0;
    }
    samples[route].ms.push(performance.now() - started);
    if (status === 429) rateLimited++;
    else if (status === 0 || status >= 500) samples[route].errors++;
  }

  log(`running ${rate} req/s for ${seconds} s …`);
  const inflight = new Set<Promise<void>>();
  const started = performance.now();
  const total = rate * seconds;
  let reported = started;
  const errorsSoFar = () => Object.values(samples).reduce((n, s) => n + s.errors, 0);
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((ok) => setTimeout(ok, wait));
    if (performance.now() - reported >= 5000) {
      reported = performance.now();
      const at = Math.round((reported - started) / 1000);
      log(`${at} s: sent ${sent}/${total}, in flight ${inflight.size}, errors ${errorsSoFar()}, 429s ${rateLimited}`);
    }
    let pick = Math.random();
    const route = mix.find(([, share]) => (pick -= share) < 0)?.[0] ?? 'balance';
    const p = one(route).finally(() => inflight.delete(p));
    inflight.add(p);
    sent++;
  }
  log(`all ${sent} sent; waiting for ${inflight.size} in flight, then checking the ledger …`);
  await Promise.all(inflight);

  await assertLedgerInvariants();
  const [dup] = await testDb`select count(*)::int as n from (select idempotency_key, kind from billing.transfers
    group by 1, 2 having count(*) > 1) d`;
  const routes: LoadResult['routes'] = {};
  let errors = 0;
  for (const [name, s] of Object.entries(samples)) {
    const ms = [...s.ms].sort((a, b) => a - b);
    const q = (p: number) => (ms.length ? ms[Math.floor(p * (ms.length - 1))] : 0);
    routes[name] = { count: ms.length, p50: q(0.5), p95: q(0.95), p99: q(0.99), errors: s.errors };
    errors += s.errors;
  }
  return {
    sent,
    errors,
    rateLimited,
    errorRate: errors / Math.max(1, sent - rateLimited),
    routes,
    duplicateCredits: dup.n,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { rate: { type: 'string', default: '200' }, seconds: { type: 'string', default: '60' } },
  });
  const [rate, seconds] = [Number(values.rate), Number(values.seconds)];
  if (!(Number.isInteger(rate) && rate > 0 && Number.isInteger(seconds) && seconds > 0)) {
    console.error('--rate and --seconds must be positive whole numbers (./scripts/load --help)');
    Deno.exit(2);
  }
  const r = await mixedLoad(rate, seconds, (s) => console.error(s));
  console.log(`\n| route | requests | p50 / p95 / p99 (ms) | errors |\n| --- | --- | --- | --- |`);
  for (const [name, s] of Object.entries(r.routes)) {
    console.log(
      `| ${name} | ${s.count} | ${s.p50.toFixed(1)} / ${s.p95.toFixed(1)} / ${s.p99.toFixed(1)} | ${s.errors} |`,
    );
  }
  const p95ok = Object.values(r.routes).every((s) => s.p95 <= 120);
  console.log(
    `\nSent ${r.sent}; error rate ${
      (r.errorRate * 100).toFixed(3)
    }% (429s excluded: ${r.rateLimited}); duplicate effects ${r.duplicateCredits}; invariants held.` +
      `\nTargets: error rate < 0.1% ${r.errorRate < 0.001 ? 'met' : 'MISSED'}; p95 ≤ 120 ms on every route ${
        p95ok ? 'met' : 'MISSED'
      }.`,
  );
  await testDb.end();
  if (r.duplicateCredits > 0 || r.errorRate >= 0.001) Deno.exit(1);
}
