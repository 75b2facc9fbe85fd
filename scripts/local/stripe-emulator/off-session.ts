// Saved cards and off-session payments: a Checkout Session with setup_future_usage=off_session
// keeps its card on a new customer; POST /v1/payment_intents with off_session and confirm
// charges it later. A test control makes a saved card decline (card_declined) or ask for
// authentication (authentication_required), answered as Stripe answers: a 402 card_error with
// the failed payment intent, and a payment_intent.payment_failed event.
import type Stripe from 'stripe';
import { chargeEvent, emit, paymentIntentEvent } from './events.ts';
import { type FormObject, obj, str } from './form.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import { paymentIntent } from './objects.ts';
import { succeed } from './charges.ts';
import { newId, now, type OffSessionOutcome, store } from './state.ts';

export function customer(email: string | null): Stripe.Customer {
  return {
    id: newId('cus'),
    object: 'customer',
    balance: 0,
    created: now(),
    default_source: null,
    description: null,
    email,
    invoice_settings: { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null },
    livemode: false,
    metadata: {},
    shipping: null,
  };
}

function card(customerId: string): Stripe.PaymentMethod {
  return {
    id: newId('pm'),
    object: 'payment_method',
    allow_redisplay: 'unspecified',
    billing_details: { address: null, email: null, name: null, phone: null, tax_id: null },
    card: {
      brand: 'visa',
      checks: null,
      country: 'US',
      display_brand: 'visa',
      exp_month: 12,
      exp_year: new Date().getUTCFullYear() + 3,
      fingerprint: newId('fp'),
      funding: 'credit',
      generated_from: null,
      last4: '4242',
      networks: null,
      regulated_status: null,
      three_d_secure_usage: null,
      wallet: null,
    },
    created: now(),
    customer: customerId,
    customer_account: null,
    livemode: false,
    metadata: {},
    type: 'card',
  };
}

/** Checkout kept the card: a customer with the payment method attached, on the session and its intent. */
export function saveCard(session: Stripe.Checkout.Session, pi: Stripe.PaymentIntent): void {
  const cus = customer(session.customer_email);
  const pm = card(cus.id);
  store.customers.set(cus.id, cus);
  store.paymentMethods.set(pm.id, pm);
  store.offSessionOutcomes.set(pm.id, 'succeeded');
  session.customer = cus.id;
  pi.customer = cus.id;
  pi.payment_method = pm.id;
  pi.setup_future_usage = 'off_session';
}

const messages: Record<Exclude<OffSessionOutcome, 'succeeded'>, string> = {
  card_declined: 'Your card was declined.',
  authentication_required: 'Your card was declined. This transaction requires authentication.',
};

/** Charges a saved card now, off-session (the only kind of direct payment intent emulated). */
async function createPaymentIntent(body: FormObject): Promise<Stripe.PaymentIntent> {
  if (str(body.confirm) !== 'true' || str(body.off_session) !== 'true') {
    throw invalid('Only confirm=true with off_session=true is emulated.', 'off_session');
  }
  const amount = Number(str(body.amount));
  if (!Number.isInteger(amount) || amount <= 0) throw invalid('amount must be a positive integer.', 'amount');
  const customerId = str(body.customer) ?? '';
  const pmId = str(body.payment_method) ?? '';
  if (!store.customers.has(customerId)) throw missing('customer', customerId);
  const pm = store.paymentMethods.get(pmId);
  if (!pm) throw missing('payment_method', pmId);
  if (pm.customer !== customerId) {
    throw invalid('The payment method does not belong to the customer.', 'payment_method');
  }

  const metadata = Object.fromEntries(Object.entries(obj(body.metadata)).map(([k, v]) => [k, String(v)]));
  const pi = paymentIntent({ amount, currency: str(body.currency) ?? 'usd', metadata });
  pi.customer = customerId;
  pi.payment_method = pmId;
  store.paymentIntents.set(pi.id, pi);
  const outcome = store.offSessionOutcomes.get(pmId) ?? 'succeeded';
  if (outcome !== 'succeeded') {
    pi.status = outcome === 'authentication_required' ? 'requires_action' : 'requires_payment_method';
    pi.last_payment_error = { type: 'card_error', code: outcome, message: messages[outcome] };
    await emit([paymentIntentEvent('payment_intent.payment_failed', pi)], true);
    throw new StripeApiError(402, 'card_error', messages[outcome], outcome, undefined, {
      decline_code: outcome === 'card_declined' ? 'generic_decline' : undefined,
      payment_intent: pi,
    });
  }
  const ch = succeed(pi);
  await emit([chargeEvent('charge.succeeded', ch), paymentIntentEvent('payment_intent.succeeded', pi)], true);
  return pi;
}

export const offSessionRoutes = [
  route('POST', '/v1/payment_intents', ({ body }) => createPaymentIntent(body)),
  route('GET', '/v1/payment_methods/:id', ({ params }) => {
    const pm = store.paymentMethods.get(params.id);
    if (!pm) throw missing('payment_method', params.id);
    return pm;
  }),
  // Test control: what charging this saved card off-session does from now on.
  route('POST', '/_emulator/payment_methods/:id/outcome', ({ params, json }) => {
    const { outcome } = json() as { outcome?: OffSessionOutcome };
    if (!store.paymentMethods.has(params.id)) throw missing('payment_method', params.id);
    if (!outcome || !['succeeded', 'card_declined', 'authentication_required'].includes(outcome)) {
      throw invalid('outcome must be succeeded, card_declined or authentication_required.', 'outcome');
    }
    store.offSessionOutcomes.set(params.id, outcome);
    return { payment_method: params.id, outcome };
  }),
];
