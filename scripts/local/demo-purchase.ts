// The starter purchase end to end, as a student and Stripe would do it, against the local
// stack: checkout → the customer pays on the (emulated) hosted page → signed webhooks →
// credits. Prints what happened at each step.
import Stripe from 'stripe';

/** Cents as people read them: 999 usd → $9.99. */
const money = (cents: number, currency: string) =>
  new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(cents / 100);
/** An exact decimal string with thousands separators, never through a float: 9990 → 9,990. */
const credits = (amount: string) => {
  const [whole, fraction] = amount.replace(/^-/, '').split('.');
  return (amount.startsWith('-') ? '-' : '') + whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',') +
    (fraction ? `.${fraction}` : '');
};

const env = (name: string) => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const functions = `${env('SUPABASE_URL')}/functions/v1`;
const base = new URL(env('STRIPE_API_BASE'));
const stripe = new Stripe(env('STRIPE_SECRET_KEY'), {
  host: base.hostname,
  port: Number(base.port),
  protocol: 'http',
  httpClient: Stripe.createFetchHttpClient(),
});

const user = crypto.randomUUID();
const token = new TextDecoder().decode(
  // Beside this file, so the demo runs from any directory.
  (await new Deno.Command(new URL('../token', import.meta.url), {
    args: ['--user', user, '--email', `demo+${user.slice(0, 8)}@example.com`],
  }).output())
    .stdout,
).trim();

async function call(path: string, init: RequestInit = {}) {
  const res = await fetch(`${functions}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...init.headers },
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`${path}: ${res.status} ${JSON.stringify(body.error)}`);
  return body.data;
}

console.log(`1. A student (${user}) starts a checkout for the starter package ($9.99).`);
const checkout = await call('/checkout/sessions', {
  method: 'POST',
  headers: { 'idempotency-key': crypto.randomUUID() },
  body: JSON.stringify({ package_id: 'starter' }),
});
console.log(`   purchase ${checkout.purchase_id}, Stripe Checkout Session ${checkout.session_id}`);
console.log(`   hosted payment page: ${checkout.url}`);

console.log('2. The student pays on the hosted page; Stripe sends signed webhooks.');
const paid = await fetch(`${base.origin}/_emulator/checkout/sessions/${checkout.session_id}/pay`, {
  method: 'POST',
  body: JSON.stringify({ outcome: 'succeeded' }),
});
for (const e of (await paid.json()).events) console.log(`   delivered ${e.type} (${e.id})`);

const status = await call(`/checkout/sessions/${checkout.session_id}`);
console.log(`3. The purchase is ${status.status}.`);
const session = await stripe.checkout.sessions.retrieve(checkout.session_id);
const pi = await stripe.paymentIntents.retrieve(String(session.payment_intent));
const charge = await stripe.charges.retrieve(String(pi.latest_charge));
const txn = await stripe.balanceTransactions.retrieve(String(charge.balance_transaction));
console.log(
  `   Stripe charge ${charge.id}: ${money(charge.amount, charge.currency)} ${charge.status}, Stripe's fee ${
    money(txn.fee, charge.currency)
  }, net ${money(txn.net, charge.currency)}`,
);

const balance = await call('/credits/balance');
console.log(`4. Balance: ${credits(balance.balance)} credits (available ${credits(balance.available)}).`);
const ledger = await call('/credits/ledger');
console.log('5. Ledger entries:');
for (const e of ledger.items) {
  console.log(
    `   #${e.id} ${e.created_at} ${e.kind.replace(/_/g, ' ')} ${e.amount.startsWith('-') ? '' : '+'}${
      credits(e.amount)
    } credits → ${credits(e.balance_after)} (${e.reference})`,
  );
}
if (balance.balance !== '9990') {
  console.error('expected 9990 credits');
  Deno.exit(1);
}
