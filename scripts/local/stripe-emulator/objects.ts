// Builders for the Stripe objects the emulator serves, typed with the SDK's own types so a
// missing or misspelt field fails the type check. Field values follow Stripe's fixtures.
import type Stripe from 'stripe';
import { newId, now } from './state.ts';
import { automaticTaxBlock, taxOn } from './tax.ts';

export interface SessionInput {
  amount: number;
  currency: string;
  name: string;
  clientReferenceId: string | null;
  metadata: Record<string, string>;
  successUrl: string | null;
  cancelUrl: string | null;
  customerEmail: string | null;
  expiresAt: number;
  baseUrl: string;
  /** 'subscription': Checkout starts a subscription (subscriptions.ts) instead of one payment. */
  mode?: 'payment' | 'subscription';
  /** `automatic_tax[enabled]`: Stripe Tax adds its tax on top of `amount` (tax.ts). */
  automaticTax?: boolean;
  billingAddressCollection?: 'auto' | 'required' | null;
}

export function checkoutSession(input: SessionInput): Stripe.Checkout.Session {
  const id = newId('cs_test');
  const tax = taxOn(input.amount, input.automaticTax ?? false);
  return {
    id,
    object: 'checkout.session',
    adaptive_pricing: null,
    after_expiration: null,
    allow_promotion_codes: null,
    allowed_payment_method_types: null,
    amount_subtotal: input.amount,
    amount_total: input.amount + tax,
    automatic_tax: automaticTaxBlock(input.automaticTax ?? false),
    billing_address_collection: input.billingAddressCollection ?? null,
    cancel_url: input.cancelUrl,
    client_reference_id: input.clientReferenceId,
    client_secret: null,
    collected_information: null,
    consent: null,
    consent_collection: null,
    created: now(),
    currency: input.currency,
    currency_conversion: null,
    custom_fields: [],
    custom_text: { after_submit: null, shipping_address: null, submit: null, terms_of_service_acceptance: null },
    customer: null,
    customer_account: null,
    customer_creation: 'if_required',
    customer_details: null,
    customer_email: input.customerEmail,
    discounts: [],
    expires_at: input.expiresAt,
    integration_identifier: null,
    invoice: null,
    invoice_creation: null,
    livemode: false,
    locale: null,
    managed_payments: null,
    metadata: input.metadata,
    mode: input.mode ?? 'payment',
    origin_context: null,
    payment_intent: null,
    payment_link: null,
    payment_method_collection: 'if_required',
    payment_method_configuration_details: null,
    payment_method_options: null,
    payment_method_types: ['card'],
    payment_status: 'unpaid',
    permissions: null,
    recovered_from: null,
    saved_payment_method_options: null,
    setup_intent: null,
    shipping_address_collection: null,
    shipping_cost: null,
    shipping_options: [],
    status: 'open',
    submit_type: null,
    subscription: null,
    success_url: input.successUrl,
    total_details: { amount_discount: 0, amount_shipping: 0, amount_tax: tax },
    ui_mode: 'hosted',
    url: `${input.baseUrl}/_emulator/checkout/${id}`,
    wallet_options: null,
  };
}

/** A payment intent: a Checkout Session's, or one created through the API (off-session charges). */
export function paymentIntent(
  source: Stripe.Checkout.Session | { amount: number; currency: string; metadata: Record<string, string> },
): Stripe.PaymentIntent {
  const { amount, currency, metadata } = 'object' in source
    ? { amount: source.amount_total ?? 0, currency: source.currency ?? 'usd', metadata: source.metadata ?? {} }
    : source;
  return {
    id: newId('pi'),
    object: 'payment_intent',
    allowed_payment_method_types: null,
    amount,
    amount_capturable: 0,
    amount_received: 0,
    application: null,
    application_fee_amount: null,
    automatic_payment_methods: null,
    canceled_at: null,
    cancellation_reason: null,
    capture_method: 'automatic',
    client_secret: null,
    confirmation_method: 'automatic',
    created: now(),
    currency,
    customer: null,
    customer_account: null,
    description: null,
    excluded_payment_method_types: null,
    last_payment_error: null,
    latest_charge: null,
    livemode: false,
    managed_payments: null,
    metadata: { ...metadata },
    next_action: null,
    on_behalf_of: null,
    payment_method: newId('pm'),
    payment_method_configuration_details: null,
    payment_method_options: null,
    payment_method_types: ['card'],
    payment_record: null,
    processing: null,
    receipt_email: null,
    review: null,
    setup_future_usage: null,
    shipping: null,
    source: null,
    statement_descriptor: null,
    statement_descriptor_suffix: null,
    status: 'requires_payment_method',
    transfer_group: null,
  };
}

/** Stripe's standard US card fee: 2.9% + 30¢, rounded to the cent. */
export const stripeFee = (amount: number) => Math.round(amount * 0.029) + 30;

export function balanceTransaction(
  amount: number,
  currency: string,
  source: string,
  type: 'charge' | 'refund' | 'application_fee',
): Stripe.BalanceTransaction {
  const fee = type === 'charge' ? stripeFee(amount) : 0;
  return {
    id: newId('txn'),
    object: 'balance_transaction',
    amount,
    available_on: now() + 2 * 86400,
    balance_type: 'payments',
    created: now(),
    currency,
    description: null,
    exchange_rate: null,
    fee,
    fee_details: fee
      ? [{ amount: fee, application: null, currency, description: 'Stripe processing fees', type: 'stripe_fee' }]
      : [],
    net: amount - fee,
    reporting_category: type === 'application_fee' ? 'platform_earning' : type,
    source,
    status: 'pending',
    type,
  };
}

export function charge(pi: Stripe.PaymentIntent, balanceTransactionId: string, chargeId: string): Stripe.Charge {
  return {
    id: chargeId,
    object: 'charge',
    amount: pi.amount,
    amount_captured: pi.amount,
    amount_refunded: 0,
    application: null,
    application_fee: null,
    application_fee_amount: null,
    balance_transaction: balanceTransactionId,
    billing_details: { address: null, email: null, name: null, phone: null, tax_id: null },
    calculated_statement_descriptor: 'SCHOLARLINK',
    captured: true,
    created: now(),
    currency: pi.currency,
    customer: null,
    description: null,
    disputed: false,
    failure_balance_transaction: null,
    failure_code: null,
    failure_message: null,
    fraud_details: {},
    livemode: false,
    metadata: { ...pi.metadata },
    on_behalf_of: null,
    outcome: {
      advice_code: null,
      network_advice_code: null,
      network_decline_code: null,
      network_status: 'approved_by_network',
      reason: null,
      seller_message: 'Payment complete.',
      type: 'authorized',
    },
    paid: true,
    payment_intent: pi.id,
    payment_method: typeof pi.payment_method === 'string' ? pi.payment_method : null,
    payment_method_details: { type: 'card' },
    receipt_email: null,
    receipt_number: null,
    receipt_url: null,
    refunded: false,
    review: null,
    shipping: null,
    source: null,
    source_transfer: null,
    statement_descriptor: null,
    statement_descriptor_suffix: null,
    status: 'succeeded',
    transfer_data: null,
    transfer_group: null,
  };
}

export function refund(ch: Stripe.Charge, amount: number, balanceTransactionId: string): Stripe.Refund {
  return {
    id: newId('re'),
    object: 'refund',
    amount,
    balance_transaction: balanceTransactionId,
    charge: ch.id,
    created: now(),
    currency: ch.currency,
    customer: null,
    customer_account: null,
    metadata: {},
    payment_intent: typeof ch.payment_intent === 'string' ? ch.payment_intent : null,
    payment_method: null,
    reason: 'requested_by_customer',
    receipt_number: null,
    source_transfer_reversal: null,
    status: 'succeeded',
    transfer_reversal: null,
  };
}

export function dispute(ch: Stripe.Charge): Stripe.Dispute {
  return {
    id: newId('dp'),
    object: 'dispute',
    amount: ch.amount,
    balance_transactions: [],
    charge: ch.id,
    created: now(),
    currency: ch.currency,
    enhanced_eligibility_types: [],
    evidence: {
      access_activity_log: null,
      billing_address: null,
      cancellation_policy: null,
      cancellation_policy_disclosure: null,
      cancellation_rebuttal: null,
      customer_communication: null,
      customer_email_address: null,
      customer_name: null,
      customer_purchase_ip: null,
      customer_signature: null,
      duplicate_charge_documentation: null,
      duplicate_charge_explanation: null,
      duplicate_charge_id: null,
      enhanced_evidence: {},
      product_description: null,
      receipt: null,
      refund_policy: null,
      refund_policy_disclosure: null,
      refund_refusal_explanation: null,
      service_date: null,
      service_documentation: null,
      shipping_address: null,
      shipping_carrier: null,
      shipping_date: null,
      shipping_documentation: null,
      shipping_tracking_number: null,
      uncategorized_file: null,
      uncategorized_text: null,
    },
    evidence_details: {
      due_by: now() + 7 * 86400,
      enhanced_eligibility: {},
      has_evidence: false,
      past_due: false,
      submission_count: 0,
      submission_method: 'not_submitted',
    },
    intended_submission_method: null,
    is_charge_refundable: false,
    livemode: false,
    metadata: {},
    payment_intent: typeof ch.payment_intent === 'string' ? ch.payment_intent : null,
    reason: 'fraudulent',
    status: 'needs_response',
  };
}
