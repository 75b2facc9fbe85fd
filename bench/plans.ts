// A plan renewal's webhook against a package purchase's: signed `invoice.paid` events for
// renewals (re-fetch of the invoice and subscription from the Stripe emulator, the grant, the
// rollover of the ending period, the expiry of its rest) and signed `checkout.session.completed`
// events for package purchases, each POSTed at 16 connections to the stripe-webhook function of
// the local stack, in the same run. The target (#35): renewal ≤ 1.2× purchase (events/s ratio).
//   set -a; source .local/env; set +a; deno run -A bench/plans.ts   (BENCH_PLAN_EVENTS, default 300)
import postgres from 'postgres';
import { drive, env, printer } from './lib.ts';

const n = Number(Deno.env.get('BENCH_PLAN_EVENTS') ?? 300);
const connections = 16;
const base = `${env('SUPABASE_URL')}/functions/v1`;
const stripe = env('STRIPE_API_BASE');
const key = env('STRIPE_SECRET_KEY');
const db = postgres(env('SUPABASE_DB_URL'), { max: 16, onnotice: () => {}, prepare: false });
const { lines, say } = printer();
type Signed = { type: string; payload: string; signature: string };

const api = async (path: string, body: Record<string, string>) => {
  const res = await fetch(`${stripe}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(body).toString(),
  });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return await res.json();
};
const control = async (path: string, body: unknown) => {
  const res = await fetch(`${stripe}${path}`, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return await res.json() as { events: Signed[] };
};
const deliver = async (e: Signed) => {
  const res = await fetch(`${base}/stripe-webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': e.signature },
    body: e.payload,
  });
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`webhook answered ${res.status}`);
};

console.error(`setting up ${n} package purchases and ${n} plans one renewal away …`);
const users: string[] = (await db`
  with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${n * 2}) returning id)
  select id from ins`).map((r) => r.id);
const run = crypto.randomUUID().slice(0, 8);
const purchases: Signed[] = [];
const renewals: Signed[] = [];
await drive(users.slice(0, n), connections, async (user) => {
  const [co] = await db`select * from billing.begin_checkout(${user}, 'mini', ${`bench-${run}-${user}`})`;
  const s = await api('/v1/checkout/sessions', {
    mode: 'payment',
    'line_items[0][quantity]': '1',
    'line_items[0][price_data][currency]': 'usd',
    'line_items[0][price_data][unit_amount]': String(co.price_cents),
    'line_items[0][price_data][product_data][name]': 'mini',
    'metadata[purchase_id]': co.purchase_id,
  });
  await db`select billing.attach_checkout_session(${co.purchase_id}, ${s.id}, ${s.url}, now() + interval '30 minutes')`;
  const paid = await control(`/_emulator/checkout/sessions/${s.id}/pay`, { deliver: false });
  purchases.push(paid.events.find((e) => e.type === 'checkout.session.completed') as Signed);
});
await drive(users.slice(n), connections, async (user) => {
  const [sub] = await db`select * from billing.begin_subscription(${user}, 'basic_monthly', ${`bench-${run}-${user}`})`;
  const meta = { 'subscription_data[metadata][subscription_id]': sub.id, 'subscription_data[metadata][user_id]': user };
  const s = await api('/v1/checkout/sessions', {
    mode: 'subscription',
    'line_items[0][quantity]': '1',
    'line_items[0][price_data][currency]': 'usd',
    'line_items[0][price_data][unit_amount]': '999',
    'line_items[0][price_data][recurring][interval]': 'month',
    'line_items[0][price_data][product_data][name]': 'basic',
    ...meta,
    'subscription_data[metadata][plan_id]': 'basic_monthly',
  });
  await db`select billing.attach_subscription_session(${sub.id}, ${s.id}, ${s.url}, now() + interval '30 minutes')`;
  await control(`/_emulator/checkout/sessions/${s.id}/pay`, { deliver: true });
  const session = await (await fetch(`${stripe}/v1/checkout/sessions/${s.id}`, {
    headers: { authorization: `Bearer ${key}` },
  })).json();
  const renewed = await control(`/_emulator/subscriptions/${session.subscription}/renew`, { deliver: false });
  renewals.push(renewed.events.find((e) => e.type === 'invoice.paid') as Signed);
});

// Alternated twice, so neither side gets only the warm or the cold half.
const half = Math.floor(n / 2);
const p1 = await drive(purchases.slice(0, half), connections, deliver);
const r1 = await drive(renewals.slice(0, half), connections, deliver);
const p2 = await drive(purchases.slice(half), connections, deliver);
const r2 = await drive(renewals.slice(half), connections, deliver);
const purchaseRate = (p1.rate + p2.rate) / 2;
const renewalRate = (r1.rate + r2.rate) / 2;
const [{ granted }] = await db`select count(*)::int as granted from billing.plan_grants g
  join billing.subscriptions s on s.id = g.subscription_id where s.request_key like ${`bench-${run}-%`} and g.credits > 0`;
say(
  `package purchase webhook: ${purchaseRate.toFixed(0)} events/s (p50 ${p1.p50.toFixed(1)} ms, p95 ${
    p1.p95.toFixed(1)
  } ms)`,
);
say(
  `plan renewal webhook:     ${renewalRate.toFixed(0)} events/s (p50 ${r1.p50.toFixed(1)} ms, p95 ${
    r1.p95.toFixed(1)
  } ms)`,
);
say(`renewal cost ÷ purchase cost: ${(purchaseRate / renewalRate).toFixed(2)}× (target ≤ 1.2×)`);
say(`plan grants with credits: ${granted} (${n} first periods + ${n} renewals expected)`);
await db.end();
void lines;
