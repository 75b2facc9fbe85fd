// fulfillCheckout: one path for every webhook and the success-page poll. It re-fetches the
// current state of a Checkout payment, or of an off-session recharge's payment intent, from
// Stripe (session, payment intent, charge, its application fee, dispute) rather than trusting
// an event's payload or order, and hands it to
// SQL: billing.sync_purchase for credit purchases, billing.sync_provider_payment for payments
// to providers (billing.process_stripe_event tells them apart by session).
import type Stripe from 'stripe';
import { idOf, stripe, stripeCall } from '../adapters/stripe.ts';

export type PurchaseState = {
  kind: 'checkout';
  /** null for an off-session recharge: no session, found by `purchase_id` (our metadata on the intent). */
  session_id: string | null;
  purchase_id: string | null;
  session_status: string | null;
  payment_status: string;
  amount_total: number | null;
  /** The total before tax, and Stripe Tax's amount on top (0 when automatic tax is off). */
  amount_subtotal: number | null;
  amount_tax: number;
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
  /** The card Checkout kept for off-session use (setup_future_usage), and a failed charge's code. */
  customer: string | null;
  payment_method: string | null;
  failure_code: string | null;
};

/** Where to start: a Checkout Session, a payment intent, or a charge. */
export type PurchaseRef = { session: string } | { paymentIntent: string } | { charge: string };

// One round trip to Stripe brings the session with its payment intent, charge, the charge's
// balance transaction (Stripe's fee) and application fee (provider payments).
const expand = ['payment_intent.latest_charge.balance_transaction', 'payment_intent.latest_charge.application_fee'];
/** The same, retrieving a payment intent itself. */
export const paymentIntentExpand = expand.map((e) => e.replace('payment_intent.', ''));
const expanded = <T>(v: string | T | null | undefined): T | null => (v && typeof v === 'object' ? v : null);

/** Stripe's current state of the purchase behind `ref`, or null when no session is behind it. */
export async function fetchPurchaseState(ref: PurchaseRef): Promise<PurchaseState | null> {
  const client = stripe().client;
  let session: Stripe.Checkout.Session | undefined;
  if ('session' in ref) {
    session = await stripeCall(() => client.checkout.sessions.retrieve(ref.session, { expand }));
  } else {
    const paymentIntent = 'charge' in ref
      ? idOf((await stripeCall(() => client.charges.retrieve(ref.charge))).payment_intent)
      : ref.paymentIntent;
    if (!paymentIntent) return null;
    const found = await stripeCall(() =>
      client.checkout.sessions.list({ payment_intent: paymentIntent, limit: 1, expand: expand.map((e) => `data.${e}`) })
    );
    session = found.data[0];
    if (!session) return await fetchRechargeState(paymentIntent);
  }
  if (!session) return null;

  const pi = expanded<Stripe.PaymentIntent>(session.payment_intent);
  return {
    ...await paymentState(pi),
    session_id: session.id,
    purchase_id: session.metadata?.purchase_id ?? null,
    session_status: session.status,
    payment_status: session.payment_status,
    amount_total: session.amount_total,
    amount_subtotal: session.amount_subtotal,
    amount_tax: session.total_details?.amount_tax ?? 0,
    currency: session.currency,
    payment_intent: idOf(session.payment_intent),
    customer: idOf(session.customer),
  };
}

/** An off-session recharge's state: its payment intent (ours only: `origin` in our metadata). */
async function fetchRechargeState(paymentIntent: string): Promise<PurchaseState | null> {
  const pi = await stripeCall(() =>
    stripe().client.paymentIntents.retrieve(paymentIntent, { expand: paymentIntentExpand })
  );
  if (pi.metadata?.origin !== 'auto_recharge') return null;
  return {
    ...await paymentState(pi),
    session_id: null,
    purchase_id: pi.metadata.purchase_id ?? null,
    session_status: null,
    payment_status: pi.status === 'succeeded' ? 'paid' : 'unpaid',
    // A bare payment intent carries no Stripe Tax (docs/plans-and-codes.md, Tax): its amount is the price.
    amount_total: pi.amount,
    amount_subtotal: pi.amount,
    amount_tax: 0,
    currency: pi.currency,
    payment_intent: pi.id,
    customer: idOf(pi.customer),
  };
}

/**
 * What a payment intent (expanded to its charge, fee and balance transaction) says, and its dispute.
 * @example await paymentState(await client.paymentIntents.retrieve(id, { expand: paymentIntentExpand }))
 */
export async function paymentState(pi: Stripe.PaymentIntent | null) {
  const charge = expanded<Stripe.Charge>(pi?.latest_charge);
  const txn = expanded<Stripe.BalanceTransaction>(charge?.balance_transaction);
  const fee = expanded<Stripe.ApplicationFee>(charge?.application_fee);
  let dispute: Stripe.Dispute | null = null;
  if (charge?.disputed) {
    const chargeId = charge.id;
    dispute = (await stripeCall(() => stripe().client.disputes.list({ charge: chargeId, limit: 1 }))).data[0] ?? null;
  }
  return {
    kind: 'checkout' as const,
    payment_intent_status: pi?.status ?? null,
    payment_method: idOf(pi?.payment_method),
    failure_code: pi?.last_payment_error?.code ?? null,
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
