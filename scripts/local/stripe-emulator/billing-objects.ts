// Builders for Stripe Billing's objects (prices, subscriptions, invoices, billing portal
// sessions), typed with the SDK's own types so a missing or misspelt field fails the type check.
// Shapes follow the current API: periods live on subscription items and invoice lines, an
// invoice names its subscription under parent.subscription_details (with a snapshot of the
// subscription's metadata), and Stripe Tax's fields are present: a subscription with automatic
// tax (started by a Checkout Session that had it) has every invoice taxed on top (tax.ts).
import type Stripe from 'stripe';
import { newId, now } from './state.ts';
import { automaticTaxBlock, invoiceTaxes, taxOn } from './tax.ts';

export type Interval = 'month' | 'year';

/** A price; without an interval, a one-time price (Checkout in payment mode). */
export function price(
  input: {
    currency: string;
    unitAmount: number;
    interval: Interval | null;
    product: string;
    metadata?: Record<string, string>;
    nickname?: string | null;
  },
): Stripe.Price {
  return {
    id: newId('price'),
    object: 'price',
    active: true,
    billing_scheme: 'per_unit',
    created: now(),
    currency: input.currency,
    custom_unit_amount: null,
    livemode: false,
    lookup_key: null,
    metadata: input.metadata ?? {},
    nickname: input.nickname ?? null,
    product: input.product,
    recurring: input.interval
      ? {
        interval: input.interval,
        interval_count: 1,
        meter: null,
        trial_period_days: null,
        usage_type: 'licensed',
      }
      : null,
    tax_behavior: 'unspecified',
    tiers_mode: null,
    transform_quantity: null,
    type: input.interval ? 'recurring' : 'one_time',
    unit_amount: input.unitAmount,
    unit_amount_decimal: null, // a Decimal object in the SDK's types; Stripe sends a string
  };
}

/** The legacy `plan` Stripe still puts on every subscription item, mirroring its price. */
function legacyPlan(p: Stripe.Price): Stripe.Plan {
  return {
    id: p.id,
    object: 'plan',
    active: true,
    amount: p.unit_amount,
    amount_decimal: p.unit_amount_decimal,
    billing_scheme: 'per_unit',
    created: p.created,
    currency: p.currency,
    interval: p.recurring?.interval ?? 'month',
    interval_count: 1,
    livemode: false,
    metadata: {},
    meter: null,
    nickname: null,
    product: p.product as string,
    tiers_mode: null,
    transform_usage: null,
    trial_period_days: null,
    usage_type: 'licensed',
  };
}

/** The end of a period of `interval` starting at `start` (unix seconds, calendar months as Stripe). */
export function periodEnd(start: number, interval: Interval): number {
  const d = new Date(start * 1000);
  if (interval === 'year') d.setUTCFullYear(d.getUTCFullYear() + 1);
  else d.setUTCMonth(d.getUTCMonth() + 1);
  return Math.floor(d.getTime() / 1000);
}

export function subscriptionItem(sub: string, p: Stripe.Price, start: number): Stripe.SubscriptionItem {
  return {
    id: newId('si'),
    object: 'subscription_item',
    billing_thresholds: null,
    created: now(),
    current_period_end: periodEnd(start, p.recurring?.interval === 'year' ? 'year' : 'month'),
    current_period_start: start,
    current_trial: null,
    discounts: [],
    metadata: {},
    plan: legacyPlan(p),
    price: p,
    quantity: 1,
    subscription: sub,
    tax_rates: [],
  };
}

/** The item's price changes (its legacy plan with it). */
export function setItemPrice(item: Stripe.SubscriptionItem, p: Stripe.Price): void {
  item.price = p;
  item.plan = legacyPlan(p);
}

export function subscription(input: {
  customer: string;
  currency: string;
  price: Stripe.Price;
  paymentMethod: string;
  metadata: Record<string, string>;
  automaticTax: boolean;
}): Stripe.Subscription {
  const id = newId('sub');
  const start = now();
  const item = subscriptionItem(id, input.price, start);
  return {
    id,
    object: 'subscription',
    application: null,
    application_fee_percent: null,
    automatic_tax: {
      disabled_reason: null,
      enabled: input.automaticTax,
      liability: automaticTaxBlock(input.automaticTax).liability,
    },
    billing_cycle_anchor: start,
    billing_cycle_anchor_config: null,
    billing_mode: { flexible: null, type: 'classic' },
    billing_schedules: [],
    billing_thresholds: null,
    cancel_at: null,
    cancel_at_period_end: false,
    canceled_at: null,
    cancellation_details: { comment: null, feedback: null, feedback_option: null, reason: null },
    collection_method: 'charge_automatically',
    created: start,
    currency: input.currency,
    customer: input.customer,
    customer_account: null,
    days_until_due: null,
    default_payment_method: input.paymentMethod,
    default_source: null,
    description: null,
    discounts: [],
    ended_at: null,
    invoice_settings: {
      account_tax_ids: null,
      custom_fields: null,
      description: null,
      footer: null,
      issuer: { type: 'self' },
    },
    items: { object: 'list', data: [item], has_more: false, url: `/v1/subscription_items?subscription=${id}` },
    latest_invoice: null,
    livemode: false,
    managed_payments: null,
    metadata: { ...input.metadata },
    next_pending_invoice_item_invoice: null,
    on_behalf_of: null,
    pause_collection: null,
    payment_settings: null,
    pending_invoice_item_interval: null,
    pending_setup_intent: null,
    pending_update: null,
    schedule: null,
    start_date: start,
    status: 'incomplete',
    test_clock: null,
    transfer_data: null,
    trial_end: null,
    trial_settings: null,
    trial_start: null,
  };
}

export interface InvoiceInput {
  sub: Stripe.Subscription;
  amount: number;
  reason: 'subscription_create' | 'subscription_cycle' | 'subscription_update';
  periodStart: number;
  periodEnd: number;
  description: string;
}

export function invoice(input: InvoiceInput): Stripe.Invoice {
  const { sub, amount } = input;
  const inv = invoiceBase(sub.customer as string, sub.currency, input.reason);
  // A subscription with automatic tax makes every invoice taxed (Stripe Tax's one rate here).
  inv.automatic_tax = { disabled_reason: null, ...automaticTaxBlock(sub.automatic_tax.enabled) };
  const item = sub.items.data[0];
  const line: Stripe.InvoiceLineItem = {
    ...lineBase(inv, amount, input.description),
    parent: {
      invoice_item_details: null,
      subscription_item_details: {
        invoice_item: null,
        proration: input.reason === 'subscription_update',
        proration_details: null,
        subscription: sub.id,
        subscription_item: item.id,
      },
      type: 'subscription_item_details',
    },
    period: { start: input.periodStart, end: input.periodEnd },
    pricing: {
      price_details: { price: item.price.id, product: item.price.product as string },
      type: 'price_details',
      unit_amount_decimal: null,
    },
    subscription: sub.id,
  };
  inv.lines.data.push(line);
  setAmounts(inv, amount, taxOn(amount, sub.automatic_tax.enabled));
  inv.parent = {
    quote_details: null,
    subscription_details: { metadata: { ...sub.metadata }, subscription: sub.id },
    type: 'subscription_details',
  };
  // Stripe's invoice-level period is the one before the line's (the period just billed for
  // usage); the service reads the line's.
  inv.period_end = input.periodStart;
  inv.period_start = input.periodStart;
  inv.status = 'open';
  inv.status_transitions.finalized_at = now();
  inv.effective_at = now();
  inv.ending_balance = 0;
  return inv;
}

/** A line of `amount` on `inv`, billed for now; the caller says what it is for (parent, pricing). */
export function lineBase(inv: Stripe.Invoice, amount: number, description: string): Stripe.InvoiceLineItem {
  return {
    id: newId('il'),
    object: 'line_item',
    amount,
    currency: inv.currency,
    description,
    discount_amounts: [],
    discountable: true,
    discounts: [],
    invoice: inv.id,
    livemode: false,
    metadata: {},
    parent: null,
    period: { start: now(), end: now() },
    pretax_credit_amounts: [],
    pricing: null,
    quantity: 1,
    quantity_decimal: null,
    subscription: null,
    subtotal: amount,
    taxes: [],
  };
}

/** A draft invoice of `customer`'s with nothing on it yet; Stripe Tax off. */
export function invoiceBase(customer: string, currency: string, reason: Stripe.Invoice.BillingReason): Stripe.Invoice {
  const id = newId('in');
  return {
    id,
    object: 'invoice',
    account_country: 'US',
    account_name: 'ScholarLink',
    account_tax_ids: null,
    amount_due: 0,
    amount_overpaid: 0,
    amount_paid: 0,
    amount_remaining: 0,
    amount_shipping: 0,
    application: null,
    attempt_count: 0,
    attempted: false,
    automatic_tax: { disabled_reason: null, enabled: false, liability: null, provider: null, status: null },
    automatically_finalizes_at: null,
    billing_reason: reason,
    collection_method: 'charge_automatically',
    created: now(),
    currency,
    custom_fields: null,
    customer,
    customer_account: null,
    customer_address: null,
    customer_email: null,
    customer_name: null,
    customer_phone: null,
    customer_shipping: null,
    customer_tax_exempt: 'none',
    default_payment_method: null,
    default_source: null,
    default_tax_rates: [],
    description: null,
    discounts: [],
    due_date: null,
    effective_at: null,
    ending_balance: null,
    footer: null,
    from_invoice: null,
    hosted_invoice_url: null,
    issuer: { type: 'self' },
    last_finalization_error: null,
    latest_revision: null,
    lines: { object: 'list', data: [], has_more: false, url: `/v1/invoices/${id}/lines` },
    livemode: false,
    metadata: {},
    next_payment_attempt: null,
    number: null,
    on_behalf_of: null,
    parent: null,
    payment_settings: { default_mandate: null, payment_method_options: null, payment_method_types: null },
    period_end: now(),
    period_start: now(),
    post_payment_credit_notes_amount: 0,
    pre_payment_credit_notes_amount: 0,
    receipt_number: null,
    rendering: null,
    shipping_cost: null,
    shipping_details: null,
    starting_balance: 0,
    statement_descriptor: null,
    status: 'draft',
    status_transitions: { finalized_at: null, marked_uncollectible_at: null, paid_at: null, voided_at: null },
    subtotal: 0,
    subtotal_excluding_tax: 0,
    test_clock: null,
    total: 0,
    total_discount_amounts: [],
    total_excluding_tax: 0,
    total_pretax_credit_amounts: [],
    total_taxes: [],
    webhooks_delivered_at: null,
  };
}

/** An invoice's amounts: `subtotal` of lines, `tax` on top (Stripe Tax, exclusive), nothing paid yet. */
export function setAmounts(inv: Stripe.Invoice, subtotal: number, tax: number): void {
  const total = subtotal + tax;
  const taxes = invoiceTaxes(tax, subtotal);
  Object.assign(
    inv,
    {
      amount_due: total,
      amount_remaining: total,
      subtotal,
      subtotal_excluding_tax: subtotal,
      total,
      total_excluding_tax: subtotal,
      total_taxes: taxes,
    } satisfies Partial<Stripe.Invoice>,
  );
  // One line here: it carries the whole tax, as Stripe lists it per line.
  if (inv.lines.data.length === 1) inv.lines.data[0].taxes = taxes;
}

export function portalSession(
  customer: string,
  returnUrl: string | null,
  baseUrl: string,
): Stripe.BillingPortal.Session {
  const id = newId('bps');
  return {
    id,
    object: 'billing_portal.session',
    configuration: 'bpc_emulator',
    created: now(),
    customer,
    customer_account: null,
    flow: null,
    livemode: false,
    locale: null,
    on_behalf_of: null,
    return_url: returnUrl,
    url: `${baseUrl}/_emulator/billing_portal/${id}`,
  };
}

export function invoicePayment(inv: Stripe.Invoice, paymentIntent: string): Stripe.InvoicePayment {
  return {
    id: newId('inpay'),
    object: 'invoice_payment',
    amount_paid: inv.amount_due,
    amount_requested: inv.amount_due,
    created: now(),
    currency: inv.currency,
    invoice: inv.id,
    is_default: true,
    livemode: false,
    payment: { payment_intent: paymentIntent, type: 'payment_intent' },
    status: 'paid',
    status_transitions: { canceled_at: null, paid_at: now() },
  };
}
