// fulfillCheckout: one path for every webhook and the success-page poll. It re-fetches the
// current state of a Checkout payment from Stripe (session, payment intent, charge, its
// application fee, dispute) rather than trusting an event's payload or order, and hands it to
// SQL: billing.sync_purchase for credit purchases, billing.sync_provider_payment for payments
// to providers (billing.process_stripe_event tells them apart by session).
import type Stripe from 'stripe';
import { stripe, stripeCall } from './stripe.ts';

export type PurchaseState = {
  kind: 'checkout';
  session_id: string;
  session_status: string | null;
  payment_status: string;
  amount_total: number | null;
  currency: string | null;
  payment_intent: string | null;
  payment_intent_status: string | null;
  charge_id: string | null;
  charge_created: number | null;
  /** Stripe's processing fee on the charge, from its balance transaction. */
  stripe_fee: number | null;
  amount_refunded: number;
  dispute_id: string | null;
  dispute_status: string | null;
  /** Destination charges (provider payments) only: the connected account and the platform's fee. */
  destination: string | null;
  application_fee_id: string | null;
  application_fee_amount: number | null;
  application_fee_refunded: number;
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
  let fee: Stripe.ApplicationFee | null = null;
  let txn: Stripe.BalanceTransaction | null = null;
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
      const txnId = idOf(charge.balance_transaction);
      if (txnId) txn = await stripeCall(() => client.balanceTransactions.retrieve(txnId));
      const feeId = idOf(charge.application_fee);
      if (feeId) fee = await stripeCall(() => client.applicationFees.retrieve(feeId));
    }
  }
  return {
    kind: 'checkout',
    session_id: session.id,
    session_status: session.status,
    payment_status: session.payment_status,
    amount_total: session.amount_total,
    currency: session.currency,
    payment_intent: paymentIntentId,
    payment_intent_status: pi?.status ?? null,
    charge_id: charge?.id ?? null,
    charge_created: charge?.created ?? null,
    stripe_fee: txn?.fee ?? null,
    amount_refunded: charge?.amount_refunded ?? 0,
    dispute_id: dispute?.id ?? null,
    dispute_status: dispute?.status ?? null,
    destination: idOf(charge?.transfer_data?.destination),
    application_fee_id: fee?.id ?? null,
    application_fee_amount: fee?.amount ?? null,
    application_fee_refunded: fee?.amount_refunded ?? 0,
  };
}
