// Checkout Sessions (the hosted payment page) and the test control that pays one.
import type Stripe from 'stripe';
import { chargeEvent, emit, paymentIntentEvent, sessionEvent } from './events.ts';
import { type FormObject, obj, str } from './form.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import { checkDestination, settleDestinationCharge } from './connect.ts';
import { checkoutSession, paymentIntent, type SessionInput } from './objects.ts';
import { succeed } from './charges.ts';
import { saveCard } from './off-session.ts';
import { prepareSubscription, priceOf, startSubscription } from './subscriptions.ts';
import { config, now, store } from './state.ts';
import { automaticTaxRequested } from './tax.ts';

/** Stripe Tax's part of a session request, refused as Stripe refuses it. */
function taxOptions(body: FormObject): Pick<SessionInput, 'automaticTax' | 'billingAddressCollection'> {
  const automaticTax = automaticTaxRequested(body);
  // Stripe needs the address Checkout collects saved on a customer passed in (its own may have none).
  if (automaticTax && str(body.customer) && str(obj(body.customer_update).address) !== 'auto') {
    throw invalid(
      'Automatic tax calculation in Checkout requires a valid address on the Customer: set customer_update[address] to auto.',
      'customer_update',
    );
  }
  const collection = str(body.billing_address_collection);
  const billingAddressCollection = collection === 'auto' || collection === 'required' ? collection : null;
  return { automaticTax, billingAddressCollection };
}

function createSession(body: FormObject): Stripe.Checkout.Session {
  if (body.mode === 'subscription') return createSubscriptionSession(body);
  if (body.mode !== 'payment') throw invalid('Only mode=payment and mode=subscription are emulated.', 'mode');
  const items = Array.isArray(body.line_items) ? body.line_items.map(obj) : [];
  if (items.length === 0) throw invalid('line_items is required.', 'line_items');
  let amount = 0;
  let currency = '';
  let name = '';
  for (const item of items) {
    // An existing one-time price, or one made for this session from price_data.
    const id = str(item.price);
    const existing = id ? priceOf(id, false) : null;
    const price = obj(item.price_data);
    const unit = existing ? existing.unit_amount ?? 0 : Number(str(price.unit_amount));
    const quantity = Number(str(item.quantity) ?? '1');
    if (!Number.isInteger(unit) || unit <= 0) throw invalid('unit_amount must be a positive integer.', 'line_items');
    amount += unit * quantity;
    currency = existing ? existing.currency : str(price.currency) ?? '';
    name = existing
      ? store.productNames.get(existing.product as string) ?? ''
      : str(obj(price.product_data).name) ?? '';
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
    ...taxOptions(body),
  });
  const intentData = obj(body.payment_intent_data);
  const fee = str(intentData.application_fee_amount);
  const payment = {
    applicationFeeAmount: fee === null ? null : Number(fee),
    destination: str(obj(intentData.transfer_data).destination),
    metadata: Object.fromEntries(Object.entries(obj(intentData.metadata)).map(([k, v]) => [k, String(v)])),
    saveCard: str(intentData.setup_future_usage) === 'off_session',
  };
  checkDestination(payment.destination, payment.applicationFeeAmount, amount);
  store.sessions.set(session.id, session);
  store.sessionPayments.set(session.id, payment);
  return session;
}

function createSubscriptionSession(body: FormObject): Stripe.Checkout.Session {
  const prepared = prepareSubscription(body);
  const session = checkoutSession({
    amount: prepared.price.unit_amount ?? 0,
    currency: prepared.price.currency,
    name: prepared.name,
    clientReferenceId: str(body.client_reference_id),
    metadata: Object.fromEntries(Object.entries(obj(body.metadata)).map(([k, v]) => [k, String(v)])),
    successUrl: str(body.success_url),
    cancelUrl: str(body.cancel_url),
    customerEmail: str(body.customer_email),
    expiresAt: Number(str(body.expires_at) ?? now() + 24 * 3600),
    baseUrl: `http://127.0.0.1:${config.port}`,
    mode: 'subscription',
    ...taxOptions(body),
  });
  store.sessions.set(session.id, session);
  store.sessionSubscriptions.set(session.id, { price: prepared.price, metadata: prepared.metadata });
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
  if (session.mode === 'subscription' && outcome === 'succeeded') {
    return [...startSubscription(session), sessionEvent('checkout.session.completed', session)];
  }
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
  if (intended?.saveCard) saveCard(session, pi);
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
  const ch = succeed(pi);
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

const escape = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch] as string,
  );

/** The hosted payment page a session's `url` points at: Pay or Decline, as a customer would. */
function hostedPage(session: Stripe.Checkout.Session): Response {
  const amount = ((session.amount_total ?? 0) / 100).toFixed(2);
  const open = session.status === 'open';
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Checkout (Stripe emulator)</title>
<style>body{font:16px system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}
button{font-size:1rem;padding:.6rem 1.2rem;margin-right:.5rem}</style></head>
<body><p>Local Stripe emulator: no real payment is made.</p>
<h1>Pay ${escape(session.currency?.toUpperCase() ?? '')} <span id="amount">${amount}</span></h1>
${
    open
      ? `<form method="post"><button name="outcome" value="succeeded" id="pay">Pay</button>
<button name="outcome" value="failed" id="decline">Decline</button></form>`
      : `<p id="closed">This checkout is ${escape(session.status ?? '')}.</p>`
  }
</body></html>`;
  return new Response(html, { headers: { 'content-type': 'text/html; charset=utf-8' } });
}

/** The customer pressed Pay or Decline: the events are delivered, then the browser goes back. */
async function submitHostedPage(session: Stripe.Checkout.Session, outcome: string | null): Promise<Response> {
  if (outcome !== 'succeeded' && outcome !== 'failed') throw invalid('outcome must be succeeded or failed.', 'outcome');
  await emit(pay(session, outcome), true);
  const back = outcome === 'succeeded'
    ? session.success_url?.replace('{CHECKOUT_SESSION_ID}', session.id)
    : session.cancel_url;
  return back ? Response.redirect(back, 303) : hostedPage(session);
}

export const checkoutRoutes = [
  route('GET', '/_emulator/checkout/:id', ({ params }) => hostedPage(getSession(params.id))),
  route(
    'POST',
    '/_emulator/checkout/:id',
    ({ params, body }) => submitHostedPage(getSession(params.id), str(body.outcome)),
  ),
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
