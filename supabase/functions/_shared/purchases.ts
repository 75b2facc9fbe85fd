// fulfillCheckout: one path for every webhook and the success-page poll. It re-fetches the
// purchase's current state from Stripe (session, payment intent, charge, dispute) rather
// than trusting an event's payload or order, and hands it to billing.sync_purchase.
import type Stripe from 'stripe';
import { stripe, stripeCall } from './stripe.ts';

export type PurchaseState = {
  session_id: string;
  session_status: string | null;
  payment_status: string;
  amount_total: number | null;
  currency: string | null;
  payment_intent: string | null;
  payment_intent_status: string | null;
  charge_id: string | null;
  amount_refunded: number;
  dispute_id: string | null;
  dispute_status: string | null;
};

const idOf = (v: string | { id: string } | null | undefined) => (typeof v === 'string' ? v : v?.id ?? null);

/** Where to start: a Checkout Session, a payment intent, or a charge. */
export type PurchaseRef = { session: string } | { paymentIntent: string } | { charge: string };

/** Stripe's current state of the purchase behind `ref`, or null when no session is behind it. */
export async function fetchPurchaseState(ref: PurchaseRef): Promise<PurchaseState | null> {
  const client = stripe().client;
  let paymentIntentId: string | null = null;
  let session: Stripe.Checkout.Session | undefined;
  if ('session' in ref) {
    session = await stripeCall(() => client.checkout.sessions.retrieve(ref.session));
    paymentIntentId = idOf(session.payment_intent);
  } else {
    if ('charge' in ref) {
      const charge = await stripeCall(() => client.charges.retrieve(ref.charge));
      paymentIntentId = idOf(charge.payment_intent);
    } else {
      paymentIntentId = ref.paymentIntent;
    }
    if (!paymentIntentId) return null;
    const found = await stripeCall(() =>
      client.checkout.sessions.list({ payment_intent: paymentIntentId ?? undefined, limit: 1 })
    );
    session = found.data[0];
  }
  if (!session) return null;

  let pi: Stripe.PaymentIntent | null = null;
  let charge: Stripe.Charge | null = null;
  let dispute: Stripe.Dispute | null = null;
  if (paymentIntentId) {
    const id = paymentIntentId;
    pi = await stripeCall(() => client.paymentIntents.retrieve(id));
    const chargeId = idOf(pi.latest_charge);
    if (chargeId) {
      charge = await stripeCall(() => client.charges.retrieve(chargeId));
      if (charge.disputed) {
        const disputes = await stripeCall(() => client.disputes.list({ charge: chargeId, limit: 1 }));
        dispute = disputes.data[0] ?? null;
      }
    }
  }
  return {
    session_id: session.id,
    session_status: session.status,
    payment_status: session.payment_status,
    amount_total: session.amount_total,
    currency: session.currency,
    payment_intent: paymentIntentId,
    payment_intent_status: pi?.status ?? null,
    charge_id: charge?.id ?? null,
    amount_refunded: charge?.amount_refunded ?? 0,
    dispute_id: dispute?.id ?? null,
    dispute_status: dispute?.status ?? null,
  };
}
