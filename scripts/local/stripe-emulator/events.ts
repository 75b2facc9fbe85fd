// Events: recorded in order, signed as Stripe signs them, delivered to each webhook endpoint
// that listens to them (endpoints.ts).
import type Stripe from 'stripe';
import { receivers } from './endpoints.ts';
import { config, newId, now, store } from './state.ts';
import { deliver, type SignedEvent, signEvent } from './webhooks.ts';

const base = () => ({
  id: newId('evt'),
  object: 'event' as const,
  api_version: '2026-10-28.endive',
  created: now(),
  livemode: false,
  pending_webhooks: 1,
  request: { id: null, idempotency_key: null },
});

// Each event carries a snapshot of its object as it was when the event happened.
const snapshot = <T>(o: T): T => structuredClone(o);

export const sessionEvent = (
  type:
    | 'checkout.session.completed'
    | 'checkout.session.async_payment_succeeded'
    | 'checkout.session.async_payment_failed'
    | 'checkout.session.expired',
  session: Stripe.Checkout.Session,
): Stripe.Event => ({ ...base(), type, data: { object: snapshot(session) } });

export const paymentIntentEvent = (
  type: 'payment_intent.succeeded' | 'payment_intent.payment_failed',
  pi: Stripe.PaymentIntent,
): Stripe.Event => ({ ...base(), type, data: { object: snapshot(pi) } });

export const chargeEvent = (type: 'charge.succeeded' | 'charge.refunded', ch: Stripe.Charge): Stripe.Event => ({
  ...base(),
  type,
  data: { object: snapshot(ch) },
});

export const refundEvent = (refund: Stripe.Refund): Stripe.Event => ({
  ...base(),
  type: 'refund.created',
  data: { object: snapshot(refund) },
});

export const disputeEvent = (
  type: 'charge.dispute.created' | 'charge.dispute.closed',
  dp: Stripe.Dispute,
): Stripe.Event => ({
  ...base(),
  type,
  data: { object: snapshot(dp) },
});

export const applicationFeeEvent = (
  type: 'application_fee.created' | 'application_fee.refunded',
  fee: Stripe.ApplicationFee,
): Stripe.Event => ({ ...base(), type, data: { object: snapshot(fee) } });

export const subscriptionEvent = (
  type: 'customer.subscription.created' | 'customer.subscription.updated' | 'customer.subscription.deleted',
  sub: Stripe.Subscription,
): Stripe.Event => ({ ...base(), type, data: { object: snapshot(sub) } });

export const invoiceEvent = (
  type:
    | 'invoice.paid'
    | 'invoice.payment_failed'
    | 'invoice.voided'
    | 'invoice.finalized'
    | 'invoice.sent'
    | 'invoice.marked_uncollectible',
  inv: Stripe.Invoice,
): Stripe.Event => ({ ...base(), type, data: { object: snapshot(inv) } });

/** Connect events happen on a connected account and say which one in `account`. */
export const accountEvent = (account: Stripe.Account): Stripe.Event => ({
  ...base(),
  account: account.id,
  type: 'account.updated',
  data: { object: snapshot(account) },
});

export const payoutEvent = (
  type: 'payout.created' | 'payout.paid' | 'payout.failed',
  account: string,
  payout: Stripe.Payout,
): Stripe.Event => ({ ...base(), account, type, data: { object: snapshot(payout) } });

/**
 * Records events, signs them and, when asked, delivers them in order to every endpoint that
 * listens to each (with Stripe-like retries; an event no endpoint lists goes nowhere). Returns
 * each event's bytes with the signature the stack's configured secret makes (the default
 * endpoints'), so tests can replay, duplicate or reorder them.
 */
export async function emit(events: Stripe.Event[], shouldDeliver: boolean): Promise<{ events: SignedEvent[] }> {
  store.events.push(...events);
  const secretOf = (e: Stripe.Event) =>
    (e.account && config.connectWebhookSecret) || config.webhookSecret || receivers(e)[0]?.secret || 'whsec_none';
  const signed = await Promise.all(events.map((e) => signEvent(e, secretOf(e))));
  if (shouldDeliver) {
    for (const e of events) {
      for (const { endpoint, secret } of receivers(e)) {
        await deliver(await signEvent(e, secret), {
          url: endpoint.url,
          attempts: config.deliveryAttempts,
          backoffMs: config.deliveryBackoffMs,
        });
      }
    }
  }
  return { events: signed };
}
