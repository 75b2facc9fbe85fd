// Auto-recharges (SQL queues them in the posting transaction): charge each due recharge's saved
// card off-session through Stripe and record what Stripe answered. Credits come only from the
// payment's webhook (billing.sync_purchase), never from here.
import Stripe from 'stripe';
import { sql } from '../_shared/adapters/db.ts';
import { runAccountWatch } from '../_shared/domain/account-watch.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { stripe } from '../_shared/adapters/stripe.ts';

type DueRecharge = {
  recharge_id: string;
  purchase_id: string;
  user_id: string;
  amount_cents: number;
  currency: string;
  customer_id: string;
  payment_method_id: string;
};

/** Charges up to `limit` due recharges; returns how many were tried. */
export async function runRecharges(limit = 10): Promise<number> {
  // Postings queue their accounts; the alerts and recharges they set off are decided here first.
  await runAccountWatch();
  const due = await sql<DueRecharge[]>`select * from billing.claim_recharges(${limit})`;
  for (const r of due) {
    let paymentIntent: string | null = null;
    let failure: string | null = null;
    try {
      // Stripe's idempotency key is the recharge's: a worker that dies here is replaced by one
      // that reaches the same payment intent, never a second charge. A bare payment intent gets
      // no Stripe Tax even with STRIPE_AUTOMATIC_TAX on: a recharge charges the price alone
      // (docs/plans-and-codes.md, Tax, says why and what taxing it would take).
      const intent = await stripe().client.paymentIntents.create({
        amount: r.amount_cents,
        currency: r.currency,
        customer: r.customer_id,
        payment_method: r.payment_method_id,
        off_session: true,
        confirm: true,
        metadata: {
          purchase_id: r.purchase_id,
          user_id: r.user_id,
          recharge_id: r.recharge_id,
          origin: 'auto_recharge',
        },
      }, { idempotencyKey: `recharge:${r.recharge_id}` });
      paymentIntent = intent.id;
    } catch (err) {
      if (!(err instanceof Stripe.errors.StripeCardError)) {
        // Stripe unreachable or failing: the claim lapses and a later tick tries again.
        log.warn('recharge not submitted', { rechargeId: r.recharge_id, ...errorSummary(err) });
        continue;
      }
      failure = err.code ?? 'card_declined'; // card_declined, authentication_required, …
      paymentIntent = err.payment_intent?.id ?? null;
    }
    await sql`select billing.record_recharge(${r.recharge_id}, ${paymentIntent}, ${failure})`;
  }
  return due.length;
}
