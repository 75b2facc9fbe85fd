// Helpers for plan tests: subscribe through the real API and the emulator's hosted Checkout,
// move a subscription through its periods with the emulator's test controls.
import { api, key, testDb } from './helpers.ts';
import { emulator, type SignedEvent, stripeApi } from './purchases.ts';

export type Plan = { subscription_id: string; session_id: string; url: string; status: string };

/** Starts a plan's Checkout (no payment yet). */
export async function startPlan(token: string, planId: string, key = crypto.randomUUID()): Promise<Plan> {
  const r = await api('/checkout/subscriptions', {
    token,
    headers: { 'idempotency-key': key },
    body: { plan_id: planId },
  });
  if (r.status !== 201 && r.status !== 200) throw new Error(`subscribe failed: ${r.status} ${r.text}`);
  return r.body.data as Plan;
}

/** Subscribes end to end (Checkout paid, webhooks delivered); returns the Stripe subscription id too. */
export async function subscribeTo(token: string, planId: string) {
  const plan = await startPlan(token, planId);
  await emulator(`/_emulator/checkout/sessions/${plan.session_id}/pay`, { outcome: 'succeeded' });
  const session = await stripeApi(`/v1/checkout/sessions/${plan.session_id}`);
  return { ...plan, stripe_subscription: String(session.subscription) };
}

/** POST /checkout/subscription/change to `plan_id` (a fresh Idempotency-Key unless given). */
export const change = (token: string, plan_id: string, headers: Record<string, string> = key()) =>
  api('/checkout/subscription/change', { token, headers, body: { plan_id } });

/** The period ends: the renewal invoice is paid or fails (events delivered unless told not to). */
export function renew(sub: string, outcome: 'paid' | 'failed' = 'paid', deliver = true) {
  return emulator(`/_emulator/subscriptions/${sub}/renew`, { outcome, deliver }) as Promise<
    { invoice: string | null; events: SignedEvent[] }
  >;
}

/** The plan lots of a user, oldest first: amount, remaining, whether rolled over. */
export async function planLots(userId: string) {
  return await testDb<{ id: string; amount: string; remaining: string; moved_from: string | null; expired: boolean }[]>`
    select l.id::text, trim_scale(l.amount)::text as amount, trim_scale(l.remaining)::text as remaining,
      l.moved_from::text, l.expires_at <= now() as expired
    from billing.plan_lots pl join billing.lots l on l.id = pl.lot_id
    join billing.accounts a on a.id = l.account_id where a.user_id = ${userId} order by l.id`;
}

/** The charge that paid an invoice, as Stripe has it (through its invoice payment). */
export async function chargeOfInvoice(invoice: string): Promise<string> {
  const list = await stripeApi(`/v1/invoice_payments?invoice=${invoice}`) as {
    data: { payment: { payment_intent: string } }[];
  };
  const pi = await stripeApi(`/v1/payment_intents/${list.data[0].payment.payment_intent}`);
  return String(pi.latest_charge);
}

/** Net credits that left the user's lots as breakage (an un-expiry counts back). */
export async function breakage(userId: string): Promise<string> {
  const [r] = await testDb`select trim_scale(coalesce(sum(a.amount), 0))::text as n from billing.lot_allocations a
    join billing.lots l on l.id = a.lot_id join billing.accounts x on x.id = l.account_id
    where x.user_id = ${userId} and a.kind = 'expiry'`;
  return r.n;
}

/** Time passes: the user's open plan lots are `ago` past their expiry (the period ended), not yet swept. */
export async function planPeriodEnded(userId: string, ago: '1 second' | '1 hour'): Promise<void> {
  await testDb`with l as (update billing.lots x set expires_at = now() - ${ago}::interval
                          from billing.plan_lots pl join billing.accounts a on true
                          where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${userId} and x.open
                          returning x.account_id, x.expires_at)
               update billing.accounts a set next_expiry = (select min(expires_at) from l) from l where a.id = l.account_id`;
}
