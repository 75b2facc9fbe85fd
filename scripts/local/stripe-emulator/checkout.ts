// Checkout Sessions (the hosted payment page) and the test control that pays one.
import type Stripe from 'stripe';
import { chargeEvent, emit, paymentIntentEvent, sessionEvent } from './events.ts';
import type { FormObject } from './form.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import { checkDestination, settleDestinationCharge } from './connect.ts';
import { balanceTransaction, charge, checkoutSession, paymentIntent } from './objects.ts';
import { config, newId, now, store } from './state.ts';

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const obj = (v: unknown): FormObject => (v && typeof v === 'object' && !Array.isArray(v) ? v as FormObject : {});

function createSession(body: FormObject): Stripe.Checkout.Session {
  if (body.mode !== 'payment') throw invalid('Only mode=payment is emulated.', 'mode');
  const items = Array.isArray(body.line_items) ? body.line_items.map(obj) : [];
  if (items.length === 0) throw invalid('line_items is required.', 'line_items');
  let amount = 0;
  let currency = '';
  let name = '';
  for (const item of items) {
    const price = obj(item.price_data);
    const unit = Number(str(price.unit_amount));
    const quantity = Number(str(item.quantity) ?? '1');
    if (!Number.isInteger(unit) || unit <= 0) throw invalid('unit_amount must be a positive integer.', 'line_items');
    amount += unit * quantity;
    currency = str(price.currency) ?? '';
    name = str(obj(price.product_data).name) ?? '';
  }
  const metadata = Object.fromEntries(Object.entries(obj(body.metadata)).map(([k, v]) => [k, String(v)]));
  const expiresAt = Number(str(body.expires_at) ?? now() + 24 * 3600);
  const session = checkoutSession({
    amount,
    currency,
    name,
    clientReferenceId: str(body.client_reference_id),
    metadata,
    successUrl: str(body.success_url),
    cancelUrl: str(body.cancel_url),
    customerEmail: str(body.customer_email),
    expiresAt,
    baseUrl: `http://127.0.0.1:${config.port}`,
  });
  const intentData = obj(body.payment_intent_data);
  const fee = str(intentData.application_fee_amount);
  const payment = {
    applicationFeeAmount: fee === null ? null : Number(fee),
    destination: str(obj(intentData.transfer_data).destination),
    metadata: Object.fromEntries(Object.entries(obj(intentData.metadata)).map(([k, v]) => [k, String(v)])),
  };
  checkDestination(payment.destination, payment.applicationFeeAmount, amount);
  store.sessions.set(session.id, session);
  store.sessionPayments.set(session.id, payment);
  return session;
}

function getSession(id: string): Stripe.Checkout.Session {
  const s = store.sessions.get(id);
  if (!s) throw missing('checkout.session', id);
  return s;
}

type Outcome = 'succeeded' | 'failed' | 'async_succeeded' | 'async_failed';

/** Completes a session as a customer would, creating the payment intent, charge and fee. */
function pay(session: Stripe.Checkout.Session, outcome: Outcome): Stripe.Event[] {
  if (session.status !== 'open') throw invalid(`The session is ${session.status}.`);
  const intended = store.sessionPayments.get(session.id);
  const pi = paymentIntent(session);
  if (intended && Object.keys(intended.metadata).length) pi.metadata = { ...intended.metadata };
  store.paymentIntents.set(pi.id, pi);
  session.payment_intent = pi.id;
  if (outcome === 'failed') {
    pi.last_payment_error = { type: 'card_error', code: 'card_declined', message: 'Your card was declined.' };
    return [paymentIntentEvent('payment_intent.payment_failed', pi)];
  }
  const events: Stripe.Event[] = [];
  session.status = 'complete';
  if (outcome === 'async_succeeded' || outcome === 'async_failed') {
    pi.status = 'processing';
    events.push(sessionEvent('checkout.session.completed', session));
    if (outcome === 'async_failed') {
      pi.status = 'requires_payment_method';
      pi.last_payment_error = {
        type: 'card_error',
        code: 'payment_method_customer_decline',
        message: 'The bank debit failed.',
      };
      events.push(paymentIntentEvent('payment_intent.payment_failed', pi));
      events.push(sessionEvent('checkout.session.async_payment_failed', session));
      return events;
    }
  }
  const chargeId = newId('ch');
  const txn = balanceTransaction(pi.amount, pi.currency, chargeId, 'charge');
  store.balanceTransactions.set(txn.id, txn);
  const ch = charge(pi, txn.id, chargeId);
  store.charges.set(ch.id, ch);
  pi.status = 'succeeded';
  pi.amount_received = pi.amount;
  pi.latest_charge = ch.id;
  session.payment_status = 'paid';
  const feeEvents = intended?.destination
    ? settleDestinationCharge(ch, pi, intended.destination, intended.applicationFeeAmount)
    : [];
  events.push(chargeEvent('charge.succeeded', ch), paymentIntentEvent('payment_intent.succeeded', pi), ...feeEvents);
  events.push(
    sessionEvent(
      outcome === 'async_succeeded' ? 'checkout.session.async_payment_succeeded' : 'checkout.session.completed',
      session,
    ),
  );
  return events;
}

function expire(session: Stripe.Checkout.Session): Stripe.Event[] {
  if (session.status !== 'open') throw invalid(`The session is ${session.status}; only open sessions can expire.`);
  session.status = 'expired';
  return [sessionEvent('checkout.session.expired', session)];
}

export const checkoutRoutes = [
  route('POST', '/v1/checkout/sessions', ({ body }) => createSession(body)),
  route('GET', '/v1/checkout/sessions/:id', ({ params }) => getSession(params.id)),
  route('GET', '/v1/checkout/sessions', ({ query }): Stripe.ApiList<Stripe.Checkout.Session> => {
    const pi = query.get('payment_intent');
    const data = [...store.sessions.values()].filter((s) => !pi || s.payment_intent === pi).reverse();
    return { object: 'list', data: data.slice(0, 100), has_more: data.length > 100, url: '/v1/checkout/sessions' };
  }),
  route('POST', '/v1/checkout/sessions/:id/expire', async ({ params }) => {
    const session = getSession(params.id);
    await emit(expire(session), true);
    return session;
  }),
  route('POST', '/_emulator/checkout/sessions/:id/pay', ({ params, json }) => {
    const { outcome = 'succeeded', deliver = true } = json() as { outcome?: Outcome; deliver?: boolean };
    if (!['succeeded', 'failed', 'async_succeeded', 'async_failed'].includes(outcome)) {
      throw new StripeApiError(400, 'invalid_request_error', `Unknown outcome ${outcome}.`);
    }
    return emit(pay(getSession(params.id), outcome), deliver);
  }),
  route('POST', '/_emulator/checkout/sessions/:id/expire', ({ params, json }) => {
    const { deliver = true } = json() as { deliver?: boolean };
    return emit(expire(getSession(params.id)), deliver);
  }),
];
