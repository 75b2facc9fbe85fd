// Stripe Billing: subscriptions started by Checkout (mode=subscription), their invoices, price
// changes with proration, cancellation at period end, and billing portal sessions. Test
// controls move a subscription to its next period (the renewal invoice paid or failed), retry
// or void an open invoice, and end a period for a subscription set to cancel. Each change
// emits the events Stripe sends (customer.subscription.*, invoice.paid/payment_failed/voided).
import type Stripe from 'stripe';
import { chargeEvent, emit, invoiceEvent, subscriptionEvent } from './events.ts';
import { type FormObject, obj, str } from './form.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import {
  type Interval,
  invoice,
  type InvoiceInput,
  periodEnd,
  portalSession,
  price,
  setItemPrice,
  subscription,
} from './billing-objects.ts';
import { paymentIntent } from './objects.ts';
import { payInvoice } from './charges.ts';
import { payStandaloneInvoice } from './invoices.ts';
import { saveCard } from './off-session.ts';
import { config, newId, now, store } from './state.ts';
import { automaticTaxRequested } from './tax.ts';

const meta = (v: unknown) => Object.fromEntries(Object.entries(obj(v)).map(([k, x]) => [k, String(x)]));

/** A recurring price from `price_data` (Checkout's product_data, or an existing product). */
function priceFrom(data: FormObject, product: string | null): Stripe.Price {
  const unitAmount = Number(str(data.unit_amount));
  const interval = str(obj(data.recurring).interval);
  if (!Number.isInteger(unitAmount) || unitAmount <= 0) throw invalid('unit_amount must be a positive integer.');
  if (interval !== 'month' && interval !== 'year') throw invalid('recurring[interval] must be month or year.');
  const p = price({
    currency: str(data.currency) ?? 'usd',
    unitAmount,
    interval: interval as Interval,
    product: product ?? str(data.product) ?? newId('prod'),
  });
  store.prices.set(p.id, p);
  return p;
}

/** POST /v1/prices: one-time, or recurring with `recurring[interval]`; `product` or `product_data[name]`. */
function createPrice(body: FormObject): Stripe.Price {
  const unitAmount = Number(str(body.unit_amount));
  const currency = str(body.currency);
  const interval = str(obj(body.recurring).interval);
  if (!Number.isInteger(unitAmount) || unitAmount < 0) throw invalid('unit_amount must be an integer.', 'unit_amount');
  if (!currency || !/^[a-z]{3}$/.test(currency)) throw invalid('currency must be a three-letter code.', 'currency');
  if (interval !== null && interval !== 'month' && interval !== 'year') {
    throw invalid('recurring[interval] must be month or year.', 'recurring');
  }
  const name = str(obj(body.product_data).name);
  const product = str(body.product) ?? (name ? newId('prod') : null);
  if (!product) throw invalid('product or product_data[name] is required.', 'product');
  if (name) store.productNames.set(product, name);
  const p = price({
    currency,
    unitAmount,
    interval: interval as Interval | null,
    product,
    metadata: meta(body.metadata),
    nickname: str(body.nickname),
  });
  store.prices.set(p.id, p);
  return p;
}

/** A line item's existing price (`price`), refused unless it is active and of the kind wanted. */
export function priceOf(id: string, recurring: boolean): Stripe.Price {
  const p = store.prices.get(id);
  if (!p) throw missing('price', id);
  if (!p.active) throw invalid(`The price ${id} is not active.`, 'price');
  if ((p.type === 'recurring') !== recurring) {
    throw invalid(`The price ${id} is ${p.type}; this needs a ${recurring ? 'recurring' : 'one_time'} price.`, 'price');
  }
  return p;
}

/** Checkout with mode=subscription: the price the session will subscribe to once paid. */
export function prepareSubscription(
  body: FormObject,
): { price: Stripe.Price; metadata: Record<string, string>; name: string } {
  const items = Array.isArray(body.line_items) ? body.line_items.map(obj) : [];
  if (items.length !== 1) throw invalid('Exactly one line item is emulated for subscriptions.', 'line_items');
  const id = str(items[0].price);
  const data = obj(items[0].price_data);
  const p = id ? priceOf(id, true) : priceFrom(data, null);
  return {
    price: p,
    metadata: meta(obj(body.subscription_data).metadata),
    name: id ? store.productNames.get(p.product as string) ?? '' : str(obj(data.product_data).name) ?? '',
  };
}

const itemOf = (sub: Stripe.Subscription) => sub.items.data[0];

/** Charges an invoice on the subscription's card; returns the events. */
function collect(inv: Stripe.Invoice, sub: Stripe.Subscription, outcome: 'paid' | 'failed'): Stripe.Event[] {
  inv.attempted = true;
  inv.attempt_count += 1;
  if (outcome === 'failed') {
    inv.next_payment_attempt = now() + 3 * 86400;
    return [invoiceEvent('invoice.payment_failed', inv)];
  }
  const pi = paymentIntent({ amount: inv.amount_due, currency: inv.currency, metadata: {} });
  pi.customer = sub.customer as string;
  pi.payment_method = sub.default_payment_method as string;
  const ch = payInvoice(inv, pi);
  return [chargeEvent('charge.succeeded', ch), invoiceEvent('invoice.paid', inv)];
}

function newInvoice(input: InvoiceInput): Stripe.Invoice {
  const inv = invoice(input);
  inv.number = `EMU-${store.invoices.size + 1}`;
  store.invoices.set(inv.id, inv);
  input.sub.latest_invoice = inv.id;
  return inv;
}

/** A subscription-mode session paid: the customer, the subscription and its first invoice, paid. */
export function startSubscription(session: Stripe.Checkout.Session): Stripe.Event[] {
  const prepared = store.sessionSubscriptions.get(session.id);
  if (!prepared) throw invalid('The session has no subscription to start.');
  const pi = paymentIntent(session);
  saveCard(session, pi); // the card Checkout collected stays on the customer, for renewals
  const sub = subscription({
    customer: session.customer as string,
    currency: prepared.price.currency,
    price: prepared.price,
    paymentMethod: pi.payment_method as string,
    metadata: prepared.metadata,
    automaticTax: session.automatic_tax.enabled, // the session's automatic tax carries over
  });
  store.subscriptions.set(sub.id, sub);
  const item = itemOf(sub);
  const inv = newInvoice({
    sub,
    amount: prepared.price.unit_amount ?? 0,
    reason: 'subscription_create',
    periodStart: item.current_period_start,
    periodEnd: item.current_period_end,
    description: 'Subscription',
  });
  const events: Stripe.Event[] = [subscriptionEvent('customer.subscription.created', sub)];
  events.push(...collect(inv, sub, 'paid'));
  sub.status = 'active';
  session.status = 'complete';
  session.payment_status = 'paid';
  session.subscription = sub.id;
  session.invoice = inv.id;
  session.payment_intent = null;
  events.push(subscriptionEvent('customer.subscription.updated', sub));
  return events;
}

function getSub(id: string): Stripe.Subscription {
  const s = store.subscriptions.get(id);
  if (!s) throw missing('subscription', id);
  return s;
}

function getInvoice(id: string): Stripe.Invoice {
  const i = store.invoices.get(id);
  if (!i) throw missing('invoice', id);
  return i;
}

/** Time reaches the period's end: the subscription renews (or ends, if set to cancel). */
function renew(
  sub: Stripe.Subscription,
  outcome: 'paid' | 'failed',
): { events: Stripe.Event[]; invoice: string | null } {
  if (sub.status === 'canceled') throw invalid('The subscription is canceled.');
  const item = itemOf(sub);
  if (sub.cancel_at_period_end) {
    const at = now();
    item.current_period_end = at;
    sub.status = 'canceled';
    sub.ended_at = at;
    sub.canceled_at ??= at;
    return { events: [subscriptionEvent('customer.subscription.deleted', sub)], invoice: null };
  }
  // The next period starts where this one ends: the emulator's clock jumps there for the
  // subscription (nothing waits a month), so each period has its own end, as on Stripe.
  item.current_period_start = item.current_period_end;
  item.current_period_end = periodEnd(
    item.current_period_start,
    item.price.recurring?.interval === 'year' ? 'year' : 'month',
  );
  const inv = newInvoice({
    sub,
    amount: item.price.unit_amount ?? 0,
    reason: 'subscription_cycle',
    periodStart: item.current_period_start,
    periodEnd: item.current_period_end,
    description: 'Subscription renewal',
  });
  const events = collect(inv, sub, outcome);
  sub.status = outcome === 'paid' ? 'active' : 'past_due';
  events.push(subscriptionEvent('customer.subscription.updated', sub));
  return { events, invoice: inv.id };
}

/** POST /v1/subscriptions/:id: a new price (prorated or from the next period), cancel at period end, metadata. */
function update(sub: Stripe.Subscription, body: FormObject): { sub: Stripe.Subscription; events: Stripe.Event[] } {
  if (sub.status === 'canceled') throw invalid('A canceled subscription cannot be updated.');
  const events: Stripe.Event[] = [];
  const item = itemOf(sub);
  // Applied once the update goes through: a declined pending_if_incomplete update changes
  // nothing on the subscription (Stripe keeps it pending), metadata included.
  const applyMetadata = () => {
    if (body.metadata !== undefined) sub.metadata = { ...sub.metadata, ...meta(body.metadata) };
    if (str(obj(body.automatic_tax).enabled) !== null) sub.automatic_tax.enabled = automaticTaxRequested(body);
  };
  const cancel = str(body.cancel_at_period_end);
  if (cancel !== null) {
    sub.cancel_at_period_end = cancel === 'true';
    sub.cancel_at = sub.cancel_at_period_end ? item.current_period_end : null;
    sub.canceled_at = sub.cancel_at_period_end ? now() : null;
  }
  const items = Array.isArray(body.items) ? body.items.map(obj) : [];
  if (items.length) {
    if (str(items[0].id) !== item.id) throw invalid('items[0][id] must name the subscription item.', 'items');
    const id = str(items[0].price);
    const next = id ? priceOf(id, true) : priceFrom(obj(items[0].price_data), item.price.product as string);
    const proration = str(body.proration_behavior) ?? 'create_prorations';
    const at = Math.max(now(), item.current_period_start); // a renewed period may start ahead of the clock
    const share = (item.current_period_end - at) / Math.max(item.current_period_end - item.current_period_start, 1);
    const owed = Math.round(((next.unit_amount ?? 0) - (item.price.unit_amount ?? 0)) * share);
    if (proration === 'always_invoice' && owed > 0) {
      const outcome = store.offSessionOutcomes.get(String(sub.default_payment_method)) ?? 'succeeded';
      if (outcome !== 'succeeded' && str(body.payment_behavior) === 'pending_if_incomplete') {
        throw new StripeApiError(402, 'card_error', 'Your card was declined.', 'card_declined');
      }
      applyMetadata();
      setItemPrice(item, next);
      const inv = newInvoice({
        sub,
        amount: owed,
        reason: 'subscription_update',
        periodStart: at,
        periodEnd: item.current_period_end,
        description: 'Remaining time on the new plan',
      });
      events.push(subscriptionEvent('customer.subscription.updated', sub));
      events.push(...collect(inv, sub, outcome === 'succeeded' ? 'paid' : 'failed'));
      return { sub, events };
    }
    setItemPrice(item, next);
  }
  applyMetadata();
  events.push(subscriptionEvent('customer.subscription.updated', sub));
  return { sub, events };
}

export const subscriptionRoutes = [
  route('GET', '/v1/subscriptions/:id', ({ params }) => getSub(params.id)),
  route('POST', '/v1/subscriptions/:id', async ({ params, body }) => {
    const { sub, events } = update(getSub(params.id), body);
    await emit(events, true);
    return sub;
  }),
  route('DELETE', '/v1/subscriptions/:id', async ({ params }) => {
    const sub = getSub(params.id);
    sub.status = 'canceled';
    sub.ended_at = now();
    sub.canceled_at ??= now();
    await emit([subscriptionEvent('customer.subscription.deleted', sub)], true);
    return sub;
  }),
  route('POST', '/v1/prices', ({ body }) => createPrice(body)),
  route('GET', '/v1/prices/:id', ({ params }) => {
    const p = store.prices.get(params.id);
    if (!p) throw missing('price', params.id);
    return p;
  }),
  route('GET', '/v1/invoices/:id', ({ params }) => getInvoice(params.id)),
  route('GET', '/v1/invoices', ({ query }): Stripe.ApiList<Stripe.Invoice> => {
    const sub = query.get('subscription');
    const data = [...store.invoices.values()].filter((i) =>
      !sub || i.parent?.subscription_details?.subscription === sub
    )
      .reverse();
    return { object: 'list', data: data.slice(0, 100), has_more: data.length > 100, url: '/v1/invoices' };
  }),
  route('GET', '/v1/invoice_payments', ({ query }): Stripe.ApiList<Stripe.InvoicePayment> => {
    const pi = query.get('payment[payment_intent]');
    const inv = query.get('invoice');
    const data = [...store.invoicePayments.values()].filter((p) =>
      (!pi || p.payment.payment_intent === pi) && (!inv || p.invoice === inv)
    ).reverse();
    return { object: 'list', data: data.slice(0, 100), has_more: data.length > 100, url: '/v1/invoice_payments' };
  }),
  route('POST', '/v1/billing_portal/sessions', ({ body }) => {
    const customer = str(body.customer) ?? '';
    if (!store.customers.has(customer)) throw missing('customer', customer);
    const s = portalSession(customer, str(body.return_url), `http://127.0.0.1:${config.port}`);
    store.portalSessions.set(s.id, s);
    return s;
  }),
  route('GET', '/_emulator/billing_portal/:id', ({ params }) => {
    const s = store.portalSessions.get(params.id);
    if (!s) throw missing('billing_portal.session', params.id);
    return new Response(
      `<!doctype html><meta charset="utf-8"><title>Billing portal (Stripe emulator)</title>` +
        `<p>Local Stripe emulator: the customer portal for ${s.customer} (update the card, cancel).</p>`,
      { headers: { 'content-type': 'text/html; charset=utf-8' } },
    );
  }),
  // Test controls.
  route('POST', '/_emulator/subscriptions/:id/renew', async ({ params, json }) => {
    const { outcome = 'paid', deliver = true } = json() as { outcome?: 'paid' | 'failed'; deliver?: boolean };
    if (outcome !== 'paid' && outcome !== 'failed') throw invalid('outcome must be paid or failed.', 'outcome');
    const { events, invoice } = renew(getSub(params.id), outcome);
    return { invoice, ...await emit(events, deliver) };
  }),
  route('POST', '/_emulator/invoices/:id/pay', ({ params, json }) => {
    const { outcome = 'paid', deliver = true } = json() as { outcome?: 'paid' | 'failed'; deliver?: boolean };
    const inv = getInvoice(params.id);
    if (!inv.parent?.subscription_details) return emit(payStandaloneInvoice(inv, json()), deliver);
    if (inv.status !== 'open') throw invalid(`The invoice is ${inv.status}.`);
    const sub = getSub(String(inv.parent.subscription_details.subscription));
    const events = collect(inv, sub, outcome === 'failed' ? 'failed' : 'paid');
    if (outcome !== 'failed' && sub.status === 'past_due') {
      sub.status = 'active';
      events.push(subscriptionEvent('customer.subscription.updated', sub));
    }
    return emit(events, deliver);
  }),
  route('POST', '/_emulator/invoices/:id/void', ({ params, json }) => {
    const { deliver = true } = json() as { deliver?: boolean };
    const inv = getInvoice(params.id);
    if (inv.status !== 'open') throw invalid(`The invoice is ${inv.status}; only open invoices can be voided.`);
    inv.status = 'void';
    inv.status_transitions.voided_at = now();
    return emit([invoiceEvent('invoice.voided', inv)], deliver);
  }),
];
