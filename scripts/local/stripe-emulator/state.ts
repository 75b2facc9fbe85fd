// The emulator's in-memory world: Stripe objects by type and id, the event log, and config.
import type Stripe from 'stripe';
import type { Endpoint } from './endpoints.ts';

export const config = {
  port: Number(Deno.env.get('STRIPE_EMULATOR_PORT') ?? 12111),
  secretKey: Deno.env.get('STRIPE_SECRET_KEY') ?? '',
  webhookSecret: (Deno.env.get('STRIPE_WEBHOOK_SECRET') ?? '').split(',')[0].trim(),
  /** Connect events (those carrying `account`) are signed with this one when it is set. */
  connectWebhookSecret: (Deno.env.get('STRIPE_CONNECT_WEBHOOK_SECRET') ?? '').split(',')[0].trim(),
  /** Where the default endpoints deliver (the local gateway's stripe-webhook); none when unset. */
  webhookUrl: Deno.env.get('STRIPE_WEBHOOK_URL') ?? '',
  deliveryAttempts: Number(Deno.env.get('STRIPE_EMULATOR_DELIVERY_ATTEMPTS') ?? 5),
  deliveryBackoffMs: Number(Deno.env.get('STRIPE_EMULATOR_BACKOFF_MS') ?? 200),
  /** Stripe Tax's rate for every address here, in basis points (test control: POST /_emulator/tax). */
  taxBps: Number(Deno.env.get('STRIPE_EMULATOR_TAX_BPS') ?? 1000),
  /** Test control: delay every /v1 answer by this many ms (simulates a slow Stripe). */
  latencyMs: 0,
  /** Test control: answer every /v1 request with 500 (simulates Stripe being down). */
  down: false,
};

export interface SessionPayment {
  applicationFeeAmount: number | null;
  destination: string | null;
  metadata: Record<string, string>;
  /** payment_intent_data.setup_future_usage = off_session: keep the card on a customer. */
  saveCard?: boolean;
}

/** What charging a saved card off-session does (a test control sets it per payment method). */
export type OffSessionOutcome = 'succeeded' | 'card_declined' | 'authentication_required';

export const store = {
  sessions: new Map<string, Stripe.Checkout.Session>(),
  paymentIntents: new Map<string, Stripe.PaymentIntent>(),
  charges: new Map<string, Stripe.Charge>(),
  balanceTransactions: new Map<string, Stripe.BalanceTransaction>(),
  refunds: new Map<string, Stripe.Refund>(),
  disputes: new Map<string, Stripe.Dispute>(),
  accounts: new Map<string, Stripe.Account>(),
  applicationFees: new Map<string, Stripe.ApplicationFee>(),
  transfers: new Map<string, Stripe.Transfer>(),
  payouts: new Map<string, Stripe.Payout>(),
  /** The connected account each payout belongs to. */
  payoutAccounts: new Map<string, string>(),
  /** Each connected account's balance in cents (one currency per account here). */
  connectedBalances: new Map<string, number>(),
  customers: new Map<string, Stripe.Customer>(),
  paymentMethods: new Map<string, Stripe.PaymentMethod>(),
  offSessionOutcomes: new Map<string, OffSessionOutcome>(),
  /** What a Checkout Session's `payment_intent_data` asked for (Stripe keeps it off the session). */
  sessionPayments: new Map<string, SessionPayment>(),
  /** Stripe Billing (subscriptions.ts): prices, subscriptions, invoices, portal sessions. */
  prices: new Map<string, Stripe.Price>(),
  /** The name of each product a price was made with (`product_data[name]`), for Checkout's page. */
  productNames: new Map<string, string>(),
  subscriptions: new Map<string, Stripe.Subscription>(),
  invoices: new Map<string, Stripe.Invoice>(),
  /** A send_invoice invoice's net terms until it is finalized (Stripe keeps them off the object). */
  invoiceDays: new Map<string, number | null>(),
  portalSessions: new Map<string, Stripe.BillingPortal.Session>(),
  /** How each invoice was paid (the way from a charge's payment intent back to its invoice). */
  invoicePayments: new Map<string, Stripe.InvoicePayment>(),
  /** What a subscription-mode Checkout Session will subscribe to (its price and metadata). */
  sessionSubscriptions: new Map<string, { price: Stripe.Price; metadata: Record<string, string> }>(),
  events: [] as Stripe.Event[],
  webhookEndpoints: new Map<string, Endpoint>(),
};

const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** An id with Stripe's prefix for the object type, e.g. `cs_test_…`, `pi_…`, `evt_…`. */
export function newId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `${prefix}_${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')}`;
}

export const now = () => Math.floor(Date.now() / 1000);
