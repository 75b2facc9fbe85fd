// Webhook ingestion: signed `checkout.session.completed` events POSTed at 16 connections to
// the stripe-webhook function on the local stack (signature check, event log, re-fetch of the
// purchase from the Stripe emulator, the crediting transaction). Every event is sent twice
// (Stripe's at-least-once delivery). Baselines in the same run: the gateway's floor (GET
// /health/healthz at 16 connections) and the SQL alone (process_stripe_event with the state
// already in hand, 16 clients). After the run: each purchase credited exactly once.
import postgres from 'postgres';
import { drive, env, printer } from './lib.ts';

const events = Number(Deno.env.get('BENCH_WEBHOOK_EVENTS') ?? 1000);
const connections = 16;
const base = `${env('SUPABASE_URL')}/functions/v1`;
const stripe = env('STRIPE_API_BASE');
const key = env('STRIPE_SECRET_KEY');
const db = postgres(env('SUPABASE_DB_URL'), { max: 16, onnotice: () => {}, prepare: false });
const { lines, say } = printer();

// ---------------------------------------------------------------- fixtures: paid sessions
console.error(`setting up ${events} purchases with paid Checkout Sessions in the emulator …`);
const users: string[] = (await db`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${events}) returning id)
  select id from ins`).map((r) => r.id);
const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
const signed: { payload: string; signature: string }[] = [];
const sqlStates: { id: string; state: string }[] = [];
const run = crypto.randomUUID().slice(0, 8);
await drive(users, connections, async (user) => {
  const [co] = await db`select * from billing.begin_checkout(${user}, 'mini', ${`bench-${run}-${user}`})`;
  const res = await fetch(`${stripe}/v1/checkout/sessions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: form({
      mode: 'payment',
      'line_items[0][quantity]': '1',
      'line_items[0][price_data][currency]': 'usd',
      'line_items[0][price_data][unit_amount]': '500',
      'line_items[0][price_data][product_data][name]': 'Mini',
      'metadata[purchase_id]': co.purchase_id,
    }),
  });
  const session = await res.json();
  await db`select billing.attach_checkout_session(${co.purchase_id}, ${session.id}, ${session.url}, now() + interval '1 hour')`;
  const paid = await fetch(`${stripe}/_emulator/checkout/sessions/${session.id}/pay`, {
    method: 'POST',
    body: JSON.stringify({ deliver: false }),
  });
  const { events: evs } = await paid.json();
  signed.push(evs.find((e: { type: string }) => e.type === 'checkout.session.completed'));
});

// ---------------------------------------------------------------- baselines
const health = await drive(Array.from({ length: events }), connections, async () => {
  const res = await fetch(`${base}/health/healthz`);
  await res.body?.cancel();
});
// The SQL alone, on purchases of its own (the same state shape the webhook builds).
const sqlUsers: string[] = (await db`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${events}) returning id)
  select id from ins`).map((r) => r.id);
for (const user of sqlUsers) {
  const [co] = await db`select * from billing.begin_checkout(${user}, 'mini', ${`bench-sql-${run}-${user}`})`;
  const session = `cs_bench_${run}_${co.purchase_id}`;
  await db`select billing.attach_checkout_session(${co.purchase_id}, ${session}, 'https://x', now() + interval '1 hour')`;
  sqlStates.push({
    id: `evt_bench_${run}_${co.purchase_id}`,
    state: JSON.stringify({
      kind: 'checkout',
      session_id: session,
      session_status: 'complete',
      payment_status: 'paid',
      amount_total: 500,
      currency: 'usd',
      charge_id: `ch_bench_${co.purchase_id}`,
      amount_refunded: 0,
      stripe_fee: 45,
    }),
  });
}
const sqlOnly = await drive(sqlStates, connections, async (s) => {
  await db`select billing.process_stripe_event(${s.id}, 'checkout.session.completed', now(), false, null,
    ${s.state}::text::jsonb)`;
});

// ---------------------------------------------------------------- the run: every event twice
let failures = 0;
const deliveries = [...signed, ...signed].sort(() => Math.random() - 0.5);
const hook = await drive(deliveries, connections, async (e) => {
  const res = await fetch(`${base}/stripe-webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': e.signature },
    body: e.payload,
  });
  await res.body?.cancel();
  if (res.status !== 200) failures++;
});

// ---------------------------------------------------------------- correctness after the load
const [check] = await db`
  select count(*) filter (where p.status = 'paid')::int as paid,
         count(*) filter (where (select count(*) from billing.transfers t
                                 where t.kind = 'purchase' and t.idempotency_key = 'purchase:' || p.id) <> 1)::int as wrong,
         coalesce(sum(a.balance) filter (where a.balance <> p.credits), 0)::text as off_balance
  from billing.purchases p join billing.accounts a on a.user_id = p.user_id
  where p.user_id = any(${users}::uuid[])`;
await db.end();
const ok = check.paid === events && check.wrong === 0 && Number(check.off_balance) === 0 && failures === 0;

say(`\n### 5. Webhook ingestion (${events} signed checkout.session.completed, each delivered twice, 16 connections)\n`);
say('| what | events/s | p50 / p95 / p99 (ms) | webhook ÷ this |');
say('| --- | --- | --- | --- |');
const row = (name: string, r: typeof hook) =>
  say(
    `| ${name} | ${r.rate.toFixed(0)} | ${r.p50.toFixed(1)} / ${r.p95.toFixed(1)} / ${r.p99.toFixed(1)} | ${
      (hook.rate / r.rate).toFixed(2)
    }× |`,
  );
row('baseline: GET /health/healthz', health);
row('baseline: process_stripe_event alone (SQL)', sqlOnly);
row('POST /stripe-webhook (deliveries, half of them repeats)', hook);
say(
  `\nTarget ≥ 1,000 events/s: ${hook.rate >= 1000 ? 'met' : 'MISSED'} (counting deliveries; distinct events: ${
    (hook.rate / 2).toFixed(0)
  }/s); p95 ack ≤ 20 ms: ${
    hook.p95 <= 20 ? 'met' : 'MISSED'
  }. Non-200 answers: ${failures}. After the run: ${check.paid}/${events} purchases paid, ${check.wrong} credited ≠ once, balances ≠ the package's credits summing to ${check.off_balance} → ${
    ok ? 'OK' : 'BROKEN'
  }`,
);
await Deno.mkdir('bench/results', { recursive: true });
await Deno.writeTextFile('bench/results/webhooks-latest.md', lines.join('\n') + '\n');
if (!ok) Deno.exit(1);
