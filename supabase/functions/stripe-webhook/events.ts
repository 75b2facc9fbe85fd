// Which Stripe events move money or state here, and the current state to converge on,
// re-fetched from Stripe (an event's payload only says where to look).
import type Stripe from 'stripe';
import { fetchAccountState, fetchPayoutState } from '../_shared/connect.ts';
import { fetchPurchaseState, type PurchaseRef } from '../_shared/purchases.ts';
import { idOf } from '../_shared/stripe.ts';
import { isUuid } from '../_shared/validate.ts';

/** Where an event's state lives: a Checkout payment, a Connect account, or a payout on one. */
export type EventRef = PurchaseRef | { account: string } | { payout: string; account: string };

/** What an event is about, or null for a type we record but do not act on. */
export function refOf(event: Stripe.Event): EventRef | null {
  switch (event.type) {
    case 'checkout.session.completed':
    case 'checkout.session.async_payment_succeeded':
    case 'checkout.session.async_payment_failed':
    case 'checkout.session.expired':
      return { session: event.data.object.id };
    case 'payment_intent.payment_failed':
      return { paymentIntent: event.data.object.id };
    // A Checkout payment's own events say it all; an off-session recharge has only this one.
    case 'payment_intent.succeeded':
      return event.data.object.metadata?.origin === 'auto_recharge' ? { paymentIntent: event.data.object.id } : null;
    case 'charge.refunded':
      return { charge: event.data.object.id };
    case 'application_fee.created':
    case 'application_fee.refunded':
    case 'charge.dispute.created':
    case 'charge.dispute.closed': {
      const charge = idOf(event.data.object.charge);
      return charge ? { charge } : null;
    }
    case 'account.updated':
      return { account: event.data.object.id };
    case 'payout.created':
    case 'payout.paid':
    case 'payout.failed':
    case 'payout.canceled':
      return event.account ? { payout: event.data.object.id, account: event.account } : null;
    default:
      return null;
  }
}

/** The state SQL converges on (billing.process_stripe_event dispatches on its `kind`). */
export function fetchState(ref: EventRef) {
  if ('payout' in ref) return fetchPayoutState(ref.payout, ref.account);
  if ('account' in ref) return fetchAccountState(ref.account);
  return fetchPurchaseState(ref);
}

/** The user whose payment failed (from our own metadata on the intent or session), if any. */
export function failedPaymentUser(event: Stripe.Event): string | null {
  const metadata =
    event.type === 'payment_intent.payment_failed' || event.type === 'checkout.session.async_payment_failed'
      ? event.data.object.metadata
      : null;
  const user = metadata?.user_id;
  return user && isUuid(user) ? user : null;
}
