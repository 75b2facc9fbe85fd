// Which Stripe events move a purchase, and where to start re-fetching its state.
import type Stripe from 'stripe';
import type { PurchaseRef } from '../_shared/purchases.ts';
import { isUuid } from '../_shared/validate.ts';

const idOf = (v: string | { id: string } | null) => (typeof v === 'string' ? v : v?.id ?? null);

/** The purchase an event is about, or null for a type we record but do not act on. */
export function purchaseRefOf(event: Stripe.Event): PurchaseRef | null {
  switch (event.type) {
    case 'checkout.session.completed':
    case 'checkout.session.async_payment_succeeded':
    case 'checkout.session.async_payment_failed':
    case 'checkout.session.expired':
      return { session: event.data.object.id };
    case 'payment_intent.payment_failed':
      return { paymentIntent: event.data.object.id };
    case 'charge.refunded':
      return { charge: event.data.object.id };
    case 'charge.dispute.created':
    case 'charge.dispute.closed': {
      const charge = idOf(event.data.object.charge);
      return charge ? { charge } : null;
    }
    default:
      return null;
  }
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
