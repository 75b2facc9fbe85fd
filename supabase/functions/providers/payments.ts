// Rows and JSON of providers and their payments, and creating a payment: a hosted Checkout
// Session as a destination charge, the platform's fee as its application fee.
import { sql } from '../_shared/adapters/db.ts';
import type { Effect } from '../_shared/http/idempotency.ts';
import { sessionExpiresAt, stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import type { CreatePayment, ProvidersEnv } from './schemas.ts';

export type ProviderRow = {
  id: string;
  owner_user_id: string;
  name: string;
  email: string;
  country: string;
  stripe_account_id: string | null;
  charges_enabled: boolean;
  payouts_enabled: boolean;
  details_submitted: boolean;
  requirements_due: string[];
  created_at: Date;
};

export type PaymentRow = {
  id: string;
  provider_id: string;
  status: string;
  amount_cents: string;
  currency: string;
  fee_bps: number;
  platform_fee_cents: string;
  fee_collected_cents: string;
  amount_refunded_cents: string;
  fee_refunded_cents: string;
  description: string;
  payer_reference: string | null;
  stripe_session_id: string | null;
  stripe_charge_id: string | null;
  session_url: string | null;
  session_expires_at: Date | null;
  created_at: Date;
  paid_at: Date | null;
};

/** onboarding → pending_verification (details in, Stripe checking) → ready; restricted when Stripe wants more. */
function providerStatus(p: ProviderRow): string {
  if (p.charges_enabled && p.payouts_enabled) return 'ready';
  if (p.details_submitted && p.requirements_due.length === 0) return 'pending_verification';
  return p.details_submitted ? 'restricted' : 'onboarding';
}

export const providerJson = (p: ProviderRow) => ({
  provider_id: p.id,
  owner_user_id: p.owner_user_id,
  name: p.name,
  country: p.country,
  stripe_account_id: p.stripe_account_id,
  status: providerStatus(p),
  charges_enabled: p.charges_enabled,
  payouts_enabled: p.payouts_enabled,
  requirements_due: p.requirements_due,
  created_at: p.created_at.toISOString(),
});

// bigint columns arrive as strings; cents stay far below 2^53, so JSON numbers are exact.
export const paymentJson = (p: PaymentRow) => ({
  payment_id: p.id,
  provider_id: p.provider_id,
  status: p.status,
  amount_cents: Number(p.amount_cents),
  currency: p.currency,
  fee_bps: p.fee_bps,
  platform_fee_cents: Number(p.platform_fee_cents),
  fee_collected_cents: Number(p.fee_collected_cents),
  amount_refunded_cents: Number(p.amount_refunded_cents),
  fee_refunded_cents: Number(p.fee_refunded_cents),
  description: p.description,
  payer_reference: p.payer_reference,
  session_id: p.stripe_session_id,
  url: p.status === 'pending' ? p.session_url : null,
  expires_at: p.session_expires_at?.toISOString() ?? null,
  created_at: p.created_at.toISOString(),
  paid_at: p.paid_at?.toISOString() ?? null,
});

// A day from the payment's creation, less what keeps its first minutes' requests inside Stripe's
// 24 hours from now (sessionExpiresAt).
const sessionTtlSeconds = 24 * 3600 - 10 * 60;

export async function createPayment(
  provider: ProviderRow,
  userId: string,
  body: CreatePayment,
  requestKey: string,
  env: ProvidersEnv,
): Promise<Effect> {
  let [pay] = await sql<
    PaymentRow[]
  >`select * from billing.begin_provider_payment(${provider.id}, ${userId}, ${requestKey},
      ${body.amount_cents}, ${body.currency}, ${body.description}, ${
    body.payer_reference ?? null
  }, ${env.PLATFORM_FEE_BPS})`;
  if (!pay.stripe_session_id) {
    const p = pay;
    const fee = Number(p.platform_fee_cents);
    const metadata = { kind: 'provider_payment', payment_id: p.id, provider_id: provider.id };
    // Stripe's idempotency key is the payment's: a retry reaches the same session.
    const session = await stripeCall(() =>
      stripe().client.checkout.sessions.create({
        mode: 'payment',
        line_items: [{
          quantity: 1,
          price_data: {
            currency: p.currency,
            unit_amount: Number(p.amount_cents),
            product_data: { name: p.description },
          },
        }],
        client_reference_id: p.id,
        metadata,
        payment_intent_data: {
          ...(fee > 0 ? { application_fee_amount: fee } : {}),
          transfer_data: { destination: provider.stripe_account_id as string },
          metadata,
        },
        success_url: env.CHECKOUT_SUCCESS_URL,
        cancel_url: env.CHECKOUT_CANCEL_URL,
        expires_at: sessionExpiresAt(p.created_at, sessionTtlSeconds),
      }, { idempotencyKey: `provider-payment:${p.id}` })
    );
    [pay] = await sql<
      PaymentRow[]
    >`select * from billing.attach_provider_payment_session(${p.id}, ${session.id}, ${session.url},
        ${new Date(session.expires_at * 1000)})`;
  }
  return { status: 201, data: paymentJson(pay) };
}
