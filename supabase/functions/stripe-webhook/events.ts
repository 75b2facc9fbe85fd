// The Stripe events this service subscribes to, each with where its state lives. These maps
// are the one list: refOf dispatches on them, ./scripts/stripe-webhook-endpoint gives Stripe
// exactly their keys as an endpoint's `enabled_events`, and the local emulator's default
// endpoints are made from them. A type left out here is never delivered (as on Stripe).
import type Stripe from 'stripe';
import type { PurchaseRef } from '../_shared/domain/purchases.ts';
import { isOrgInvoice, type OrgInvoiceRef } from '../_shared/domain/org-invoices.ts';
import { idOf } from '../_shared/adapters/stripe.ts';
import type { PlanRef } from './plans.ts';

/** Where an event's state lives: a Checkout payment, a plan, an org invoice, a Connect account, or a payout on one. */
export type EventRef =
  | PurchaseRef
  | PlanRef
  | OrgInvoiceRef
  | { account: string }
  | { payout: string; account: string };

type Handler<T extends Stripe.Event.Type> = (event: Extract<Stripe.Event, { type: T }>) => EventRef | null;
type Handlers = { [T in Stripe.Event.Type]?: Handler<T> };

type About<O> = { account?: string; data: { object: O } };
const session = (e: About<{ id: string }>) => ({ session: e.data.object.id });
const chargeOf = (e: About<{ charge: string | Stripe.Charge | null }>) => {
  const charge = idOf(e.data.object.charge);
  return charge ? { charge } : null;
};
const payout = (e: About<{ id: string }>) => e.account ? { payout: e.data.object.id, account: e.account } : null;
/** Recorded and answered, nothing converged: `charge_failure_rate` divides failures by these. */
const recordOnly = () => null;
// An invoice event is an organisation's invoice (our metadata kind, no subscription) or a plan's;
// some only matter for the former (a plan's invoice is finalized and paid automatically).
type InvoiceAbout = About<Stripe.Invoice>;
const invoiceRef = (e: InvoiceAbout) =>
  isOrgInvoice(e.data.object) ? { orgInvoice: e.data.object.id } : { invoice: e.data.object.id };
const orgInvoiceOnly = (e: InvoiceAbout) => isOrgInvoice(e.data.object) ? { orgInvoice: e.data.object.id } : null;

/** Events on the platform's own account: its endpoint listens to "Your account". */
export const platformHandlers = {
  'checkout.session.completed': session,
  'checkout.session.async_payment_succeeded': session,
  'checkout.session.async_payment_failed': session,
  'checkout.session.expired': session,
  'payment_intent.payment_failed': (e) => ({ paymentIntent: e.data.object.id }),
  // A Checkout payment's own events say it all; an off-session recharge has only this one,
  // and it is what credits the recharge (jobs/recharges.ts never does).
  'payment_intent.succeeded': (e) =>
    e.data.object.metadata?.origin === 'auto_recharge' ? { paymentIntent: e.data.object.id } : null,
  'charge.succeeded': recordOnly,
  'charge.refunded': (e) => ({ charge: e.data.object.id }),
  'charge.dispute.created': chargeOf,
  'charge.dispute.closed': chargeOf,
  // Provider payments are destination charges on the platform: their fees are platform events.
  'application_fee.created': chargeOf,
  'application_fee.refunded': chargeOf,
  // Plans: credits from invoice.paid only; a failed renewal emails the student.
  'customer.subscription.created': (e) => ({ subscription: e.data.object.id }),
  'customer.subscription.updated': (e) => ({ subscription: e.data.object.id }),
  'customer.subscription.deleted': (e) => ({ subscription: e.data.object.id }),
  'invoice.paid': invoiceRef,
  'invoice.payment_failed': (e) => ({ invoice: e.data.object.id }),
  'invoice.voided': invoiceRef,
  // Organisations' invoices: finalized opens one (if the request died before recording it),
  // paid credits the wallet, voided and uncollectible credit nothing.
  'invoice.finalized': orgInvoiceOnly,
  'invoice.sent': orgInvoiceOnly,
  'invoice.marked_uncollectible': orgInvoiceOnly,
} satisfies Handlers;

/** Events on connected accounts (providers' Express accounts): the Connect endpoint's. */
export const connectHandlers = {
  'account.updated': (e) => ({ account: e.data.object.id }),
  'payout.created': payout,
  'payout.paid': payout,
  'payout.failed': payout,
  'payout.canceled': payout,
} satisfies Handlers;

export type PlatformEvent = keyof typeof platformHandlers;
export type ConnectEvent = keyof typeof connectHandlers;
/** The `enabled_events` of the platform endpoint. */
export const platformEvents = Object.keys(platformHandlers) as PlatformEvent[];
/** The `enabled_events` of the Connect endpoint. */
export const connectEvents = Object.keys(connectHandlers) as ConnectEvent[];

// Each handler reads only its own type's payload: refOf hands it only events of that type.
const handlers = { ...platformHandlers, ...connectHandlers } as unknown as Record<
  string,
  (event: Stripe.Event) => EventRef | null
>;

/**
 * What an event is about, or null for a type we record but do not act on.
 * @example refOf(event) // { session: 'cs_test_…' }
 */
export function refOf(event: Stripe.Event): EventRef | null {
  return Object.hasOwn(handlers, event.type) ? handlers[event.type](event) : null;
}
