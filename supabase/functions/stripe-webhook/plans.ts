// A plan's state, re-fetched from Stripe: the subscription (status, current period, plan in
// its metadata, cancellation) and, for an invoice event, the invoice (status, amount, reason,
// the period its line is for, and the plan it billed: the subscription's metadata as it was
// when the invoice was made). billing.sync_subscription converges on it.
import type Stripe from 'stripe';
import { idOf, stripe, stripeCall } from '../_shared/adapters/stripe.ts';

export type PlanRef = { subscription: string } | { invoice: string };

export type SubscriptionState = {
  kind: 'subscription';
  subscription: {
    id: string;
    status: string;
    customer: string | null;
    cancel_at_period_end: boolean;
    current_period_start: number;
    current_period_end: number;
    metadata: Record<string, string>;
  };
  invoice: {
    id: string;
    status: string | null;
    billing_reason: string | null;
    amount_paid: number;
    amount_due: number;
    /** Before tax, and Stripe Tax's total on top (the invoice's total_taxes; 0 with automatic tax off). */
    subtotal: number;
    tax: number;
    currency: string;
    attempted: boolean;
    period_start: number;
    period_end: number;
    plan_id: string | null;
    // An upgrade's proration: the price of its charged line (the new plan), which says what was
    // bought whatever the metadata says.
    price: { id: string; unit_amount: number | null; currency: string; interval: string | null } | null;
  } | null;
};

/** The price a proration invoice charged for: its positive subscription line's (the new plan). */
async function chargedPrice(inv: Stripe.Invoice): Promise<NonNullable<SubscriptionState['invoice']>['price']> {
  if (inv.billing_reason !== 'subscription_update') return null;
  const line = inv.lines.data.find((l) => l.parent?.type === 'subscription_item_details' && l.amount > 0);
  const id = idOf(line?.pricing?.price_details?.price);
  if (!id) return null;
  const price = await stripeCall(() => stripe().client.prices.retrieve(id));
  return {
    id: price.id,
    unit_amount: price.unit_amount,
    currency: price.currency,
    interval: price.recurring?.interval ?? null,
  };
}

async function invoiceState(inv: Stripe.Invoice): Promise<NonNullable<SubscriptionState['invoice']>> {
  // The subscription line's period (the invoice's own period_* is the one billed before it).
  const line = inv.lines.data.find((l) => l.parent?.type === 'subscription_item_details') ?? inv.lines.data[0];
  return {
    id: inv.id,
    status: inv.status,
    billing_reason: inv.billing_reason,
    amount_paid: inv.amount_paid,
    amount_due: inv.amount_due,
    subtotal: inv.subtotal,
    tax: (inv.total_taxes ?? []).reduce((sum, t) => sum + t.amount, 0),
    currency: inv.currency,
    attempted: inv.attempted,
    period_start: line?.period.start ?? inv.period_start,
    period_end: line?.period.end ?? inv.period_end,
    plan_id: inv.parent?.subscription_details?.metadata?.plan_id ?? null,
    price: await chargedPrice(inv),
  };
}

/** Stripe's current state of the plan behind a subscription or invoice event; null when not a plan's. */
export async function fetchSubscriptionState(ref: PlanRef): Promise<SubscriptionState | null> {
  const client = stripe().client;
  let invoice: Stripe.Invoice | null = null;
  let sub: Stripe.Subscription | null = null;
  if ('invoice' in ref) {
    // One round trip: the invoice with its subscription expanded.
    invoice = await stripeCall(() =>
      client.invoices.retrieve(ref.invoice, { expand: ['parent.subscription_details.subscription'] })
    );
    const expanded = invoice.parent?.subscription_details?.subscription;
    sub = expanded && typeof expanded === 'object' ? expanded : null;
  } else {
    const id = ref.subscription;
    sub = await stripeCall(() => client.subscriptions.retrieve(id));
  }
  if (!sub) return null;
  const item = sub.items.data[0];
  if (!item || !sub.metadata?.subscription_id) return null; // not one of our plans
  return {
    kind: 'subscription',
    subscription: {
      id: sub.id,
      status: sub.status,
      customer: idOf(sub.customer),
      cancel_at_period_end: sub.cancel_at_period_end,
      current_period_start: item.current_period_start,
      current_period_end: item.current_period_end,
      metadata: sub.metadata,
    },
    invoice: invoice ? await invoiceState(invoice) : null,
  };
}

export type PlanChargeState = {
  kind: 'plan_charge';
  invoice_id: string;
  // Whether the invoice is one of our plans' before its grant exists: Stripe's subscription id,
  // and ours from the metadata we gave Checkout (an invoice's first event may not have come yet).
  subscription_id: string | null;
  plan_subscription_id: string | null;
  charge_id: string;
  amount_refunded: number;
  dispute_id: string | null;
  dispute_status: string | null;
};

/**
 * A refund or dispute of a charge that paid a plan's invoice (found through Stripe's invoice
 * payments), or null when the charge paid no invoice.
 */
export async function fetchPlanChargeState(chargeId: string): Promise<PlanChargeState | null> {
  const client = stripe().client;
  const charge = await stripeCall(() => client.charges.retrieve(chargeId));
  const paymentIntent = idOf(charge.payment_intent);
  if (!paymentIntent) return null;
  const payments = await stripeCall(() =>
    client.invoicePayments.list({ payment: { type: 'payment_intent', payment_intent: paymentIntent }, limit: 1 })
  );
  const invoice = idOf(payments.data[0]?.invoice);
  if (!invoice) return null;
  const inv = await stripeCall(() => client.invoices.retrieve(invoice));
  const dispute = charge.disputed
    ? (await stripeCall(() => client.disputes.list({ charge: chargeId, limit: 1 }))).data[0] ?? null
    : null;
  return {
    kind: 'plan_charge',
    invoice_id: invoice,
    subscription_id: idOf(inv.parent?.subscription_details?.subscription ?? null),
    plan_subscription_id: inv.parent?.subscription_details?.metadata?.subscription_id ?? null,
    charge_id: charge.id,
    amount_refunded: charge.amount_refunded,
    dispute_id: dispute?.id ?? null,
    dispute_status: dispute?.status ?? null,
  };
}

/**
 * A second plan paid while another was live (two Checkouts raced): billing.sync_subscription
 * recorded it as refused; here it is cancelled at Stripe and its paid invoice refunded. Safe to
 * repeat: every event of that subscription comes back here until it is cancelled and refunded.
 */
export async function refuseSubscription(state: SubscriptionState): Promise<void> {
  const id = state.subscription.id;
  if (state.subscription.status !== 'canceled') {
    await stripeCall(() => stripe().client.subscriptions.cancel(id, {}, { idempotencyKey: `plan-refused:${id}` }));
  }
  if (state.invoice) {
    await refundInvoice(state.invoice, 'duplicate', `plan-refused-refund:${state.invoice.id}`, { refused_plan: id });
  }
}

/**
 * A paid plan invoice that granted nothing (its period over, or a later period already granted:
 * a late or reordered invoice): its money goes back, after the grant row is committed so the
 * refund's charge.refunded finds it. The event stays unfinished until this has run: a crash or a
 * Stripe outage here is retried with the event (the same idempotency key: one refund).
 */
export async function refundStaleInvoice(state: SubscriptionState): Promise<void> {
  if (!state.invoice) return;
  await refundInvoice(state.invoice, 'requested_by_customer', `plan-stale-refund:${state.invoice.id}`, {
    stale_plan_invoice: state.invoice.id,
  });
}

/** Refunds a paid invoice's charge in full, once (Stripe's idempotency key; a refunded charge is left alone). */
async function refundInvoice(
  inv: NonNullable<SubscriptionState['invoice']>,
  reason: Stripe.RefundCreateParams.Reason,
  idempotencyKey: string,
  metadata: Record<string, string>,
): Promise<void> {
  const client = stripe().client;
  if (inv.status !== 'paid' || inv.amount_paid <= 0) return;
  const payments = await stripeCall(() => client.invoicePayments.list({ invoice: inv.id, limit: 1 }));
  const paymentIntent = idOf(payments.data[0]?.payment?.payment_intent);
  if (!paymentIntent) return;
  const pi = await stripeCall(() => client.paymentIntents.retrieve(paymentIntent));
  const charge = pi.latest_charge
    ? await stripeCall(() => client.charges.retrieve(idOf(pi.latest_charge) ?? ''))
    : null;
  if (!charge || charge.refunded) return;
  await stripeCall(() =>
    client.refunds.create({ payment_intent: paymentIntent, reason, metadata }, { idempotencyKey })
  );
}
