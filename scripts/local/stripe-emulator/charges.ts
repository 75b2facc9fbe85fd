// Payment intents, charges, refunds and disputes, and the test control that opens or
// closes a dispute.
import type Stripe from 'stripe';
import { chargeEvent, disputeEvent, emit, refundEvent } from './events.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import { refundDestinationCharge } from './connect.ts';
import { balanceTransaction, charge, dispute, refund } from './objects.ts';
import { invoicePayment } from './billing-objects.ts';
import { newId, now, store } from './state.ts';

/** A payment intent's payment succeeds: its charge and balance transaction are stored; the charge. */
export function succeed(pi: Stripe.PaymentIntent): Stripe.Charge {
  const chargeId = newId('ch');
  const txn = balanceTransaction(pi.amount, pi.currency, chargeId, 'charge');
  store.balanceTransactions.set(txn.id, txn);
  const ch = charge(pi, txn.id, chargeId);
  store.charges.set(ch.id, ch);
  pi.status = 'succeeded';
  pi.amount_received = pi.amount;
  pi.latest_charge = ch.id;
  return ch;
}

/** An invoice is paid by a payment intent: its charge, the invoice paid, and how (invoice payments). */
export function payInvoice(inv: Stripe.Invoice, pi: Stripe.PaymentIntent): Stripe.Charge {
  const ch = succeed(pi);
  store.paymentIntents.set(pi.id, pi);
  inv.status = 'paid';
  inv.amount_paid = inv.amount_due;
  inv.amount_remaining = 0;
  inv.next_payment_attempt = null;
  inv.status_transitions.paid_at = now();
  const payment = invoicePayment(inv, pi.id);
  store.invoicePayments.set(payment.id, payment);
  return ch;
}

function get<T>(map: Map<string, T>, what: string, id: string): T {
  const o = map.get(id);
  if (!o) throw missing(what, id);
  return o;
}

function createRefund(body: Record<string, unknown>): { refund: Stripe.Refund; events: Stripe.Event[] } {
  let chargeId = typeof body.charge === 'string' ? body.charge : null;
  if (!chargeId && typeof body.payment_intent === 'string') {
    const pi = get(store.paymentIntents, 'payment_intent', body.payment_intent);
    chargeId = typeof pi.latest_charge === 'string' ? pi.latest_charge : null;
  }
  if (!chargeId) throw invalid('One of charge or payment_intent is required.', 'charge');
  const ch = get(store.charges, 'charge', chargeId);
  const remaining = ch.amount - ch.amount_refunded;
  const amount = body.amount === undefined ? remaining : Number(body.amount);
  if (!Number.isInteger(amount) || amount <= 0) throw invalid('amount must be a positive integer.', 'amount');
  if (amount > remaining) {
    throw new StripeApiError(
      400,
      'invalid_request_error',
      `Refund amount (${amount}) is greater than unrefunded amount on charge (${remaining})`,
      'amount_too_large',
      'amount',
    );
  }
  const txn = balanceTransaction(-amount, ch.currency, chargeId, 'refund');
  store.balanceTransactions.set(txn.id, txn);
  const re = refund(ch, amount, txn.id);
  store.refunds.set(re.id, re);
  ch.amount_refunded += amount;
  ch.refunded = ch.amount_refunded === ch.amount;
  // Refunding a destination charge takes the money back from the connected account; with
  // refund_application_fee the platform's fee goes back pro rata (this service always asks).
  const feeEvents = refundDestinationCharge(ch, amount, body.refund_application_fee === 'true');
  return { refund: re, events: [refundEvent(re), chargeEvent('charge.refunded', ch), ...feeEvents] };
}

type DisputeOutcome = 'open' | 'won' | 'lost';

function disputeCharge(ch: Stripe.Charge, outcome: DisputeOutcome): Stripe.Event[] {
  let dp = [...store.disputes.values()].find((d) => d.charge === ch.id);
  const events: Stripe.Event[] = [];
  if (!dp) {
    dp = dispute(ch);
    store.disputes.set(dp.id, dp);
    ch.disputed = true;
    events.push(disputeEvent('charge.dispute.created', dp));
  }
  if (outcome !== 'open') {
    if (dp.status === 'won' || dp.status === 'lost') throw invalid(`The dispute is already ${dp.status}.`);
    dp.status = outcome;
    events.push(disputeEvent('charge.dispute.closed', dp));
  }
  return events;
}

/**
 * The platform's balance: the net of every balance transaction, all of it still pending (the
 * platform never pays out here). With Stripe-Account, that connected account's balance.
 */
function balance(stripeAccount: string | null): Stripe.Balance {
  const net = stripeAccount
    ? store.connectedBalances.get(stripeAccount) ?? 0
    : [...store.balanceTransactions.values()].reduce((n, t) => n + t.net, 0);
  return {
    object: 'balance',
    available: [{ amount: stripeAccount ? net : 0, currency: 'usd' }],
    pending: [{ amount: stripeAccount ? 0 : net, currency: 'usd' }],
    livemode: false,
  };
}

export const chargeRoutes = [
  route('GET', '/v1/balance', ({ stripeAccount }) => balance(stripeAccount)),
  route('GET', '/v1/payment_intents/:id', ({ params }) => get(store.paymentIntents, 'payment_intent', params.id)),
  route('GET', '/v1/charges/:id', ({ params }) => get(store.charges, 'charge', params.id)),
  route(
    'GET',
    '/v1/balance_transactions/:id',
    ({ params }) => get(store.balanceTransactions, 'balance_transaction', params.id),
  ),
  route('GET', '/v1/refunds/:id', ({ params }) => get(store.refunds, 'refund', params.id)),
  route('GET', '/v1/disputes/:id', ({ params }) => get(store.disputes, 'dispute', params.id)),
  route('GET', '/v1/disputes', ({ query }): Stripe.ApiList<Stripe.Dispute> => {
    const charge = query.get('charge');
    const data = [...store.disputes.values()].filter((d) => !charge || d.charge === charge);
    return { object: 'list', data, has_more: false, url: '/v1/disputes' };
  }),
  route('POST', '/v1/refunds', async ({ body }) => {
    const { refund, events } = createRefund(body);
    await emit(events, true);
    return refund;
  }),
  // Like POST /v1/refunds, but returns the events and delivers them only when asked.
  route('POST', '/_emulator/charges/:id/refund', ({ params, json }) => {
    const { amount, deliver = true, refund_application_fee = true } = json() as {
      amount?: number;
      deliver?: boolean;
      refund_application_fee?: boolean;
    };
    return emit(
      createRefund({ charge: params.id, amount, refund_application_fee: String(refund_application_fee) }).events,
      deliver,
    );
  }),
  route('POST', '/_emulator/charges/:id/dispute', ({ params, json }) => {
    const { outcome = 'open', deliver = true } = json() as { outcome?: DisputeOutcome; deliver?: boolean };
    if (!['open', 'won', 'lost'].includes(outcome)) {
      throw new StripeApiError(400, 'invalid_request_error', `Unknown outcome ${outcome}.`);
    }
    return emit(disputeCharge(get(store.charges, 'charge', params.id), outcome), deliver);
  }),
];
