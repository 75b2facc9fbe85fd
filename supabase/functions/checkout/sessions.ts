// Creating a hosted Checkout Session for a purchase. Card data never touches this service.
import type { CheckoutSession } from '../_shared/contract/index.ts';
import { sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import type { Effect } from '../_shared/http/idempotency.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { automaticTax, sessionExpiresAt, stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { checkVelocity } from '../_shared/domain/velocity.ts';
import { newGiftCode } from '../_shared/domain/code-secrets.ts';
import type { CreateSession } from '../_shared/contract/checkout.ts';
import type { CheckoutEnv } from './schemas.ts';

type CheckoutRow = {
  purchase_id: string;
  status: string;
  reused: boolean;
  package_id: string;
  package_name: string;
  price_cents: number;
  currency: string;
  credits: string;
  bonus_credits: string;
  session_id: string | null;
  session_url: string | null;
  session_expires_at: Date | null;
  client_temp_id: string | null;
  created_at: Date;
};

export const checkoutJson = (r: CheckoutRow): CheckoutSession => ({
  purchase_id: r.purchase_id,
  status: r.status,
  package_id: r.package_id,
  session_id: r.session_id,
  url: r.session_url,
  expires_at: r.session_expires_at?.toISOString() ?? null,
  client_temp_id: r.client_temp_id,
  price_cents: r.price_cents,
  currency: r.currency,
  credits: formatCredits(r.credits),
  bonus_credits: formatCredits(r.bonus_credits),
});

/** A redirect URL from the caller must be on the allowlist; otherwise the configured default. */
export function redirectUrl(given: string | undefined, fallback: string, env: CheckoutEnv, field: string): string {
  if (!given) return fallback;
  if (!env.CHECKOUT_REDIRECT_ORIGINS.includes(new URL(given).origin)) {
    throw new AppError('validation', 'REDIRECT_NOT_ALLOWED', `${field} must be on this service's redirect allowlist.`, {
      field,
    });
  }
  return given;
}

/**
 * Session lifetime from the purchase's creation: near Stripe's 30-minute minimum, so an abandoned
 * session soon stops blocking a new one, with five minutes for the requests of its first minutes
 * to agree on it (sessionExpiresAt).
 */
const sessionTtlSeconds = 35 * 60;

export async function createCheckout(
  userId: string,
  ip: string | null,
  body: CreateSession,
  requestKey: string,
  env: CheckoutEnv,
): Promise<Effect> {
  const successUrl = redirectUrl(body.success_url, env.CHECKOUT_SUCCESS_URL, env, 'success_url');
  const cancelUrl = redirectUrl(body.cancel_url, env.CHECKOUT_CANCEL_URL, env, 'cancel_url');
  const [pkg] = await sql<{ price_cents: number }[]>`
    select price_cents from billing.list_credit_packages() where id = ${body.package_id}`;
  if (pkg) await checkVelocity(userId, ip, pkg.price_cents);
  const gift = body.gift ? newGiftCode() : null; // a retry finds the gift its key made, not this one
  const [co] = gift
    ? await sql<CheckoutRow[]>`select * from billing.begin_gift_checkout(${userId}, ${body.package_id}, ${requestKey},
        ${gift.id}, ${gift.hash})`
    : await sql<CheckoutRow[]>`select * from billing.begin_checkout(${userId}, ${body.package_id}, ${requestKey},
        ${body.client_temp_id ?? null}, ${body.save_card}, ${body.org_id ?? null})`;
  if (co.session_id) return { status: co.reused ? 200 : 201, data: checkoutJson(co) };

  const metadata = {
    purchase_id: co.purchase_id,
    user_id: userId,
    package_id: co.package_id,
    ...(body.org_id ? { org_id: body.org_id } : {}),
    ...(body.gift ? { gift: 'true' } : {}),
  };
  const separator = successUrl.includes('?') ? '&' : '?';
  // The Stripe Price of the package version the purchase sold (an admin-made version has one),
  // else the price from the purchase itself: either way the amount sync_purchase expects.
  const [{ price }] = await sql<
    { price: string | null }[]
  >`select billing.get_purchase_stripe_price(${co.purchase_id}) as price`;
  // Stripe's idempotency key is the purchase's: a retry of this request reaches the same
  // purchase (by request key) and so the same session, never a second one.
  const session = await stripeCall(() =>
    stripe().client.checkout.sessions.create({
      mode: 'payment',
      line_items: [{
        quantity: 1,
        ...price ? { price } : {
          price_data: {
            currency: co.currency,
            unit_amount: co.price_cents,
            product_data: { name: `${co.package_name}: ${formatCredits(co.credits)} credits` },
          },
        },
      }],
      client_reference_id: co.purchase_id,
      metadata,
      payment_intent_data: { metadata, ...(body.save_card ? { setup_future_usage: 'off_session' as const } : {}) },
      ...(body.save_card ? { customer_creation: 'always' as const } : {}),
      ...automaticTax(),
      success_url: `${successUrl}${separator}session_id={CHECKOUT_SESSION_ID}`,
      cancel_url: cancelUrl,
      expires_at: sessionExpiresAt(co.created_at, sessionTtlSeconds),
    }, { idempotencyKey: `checkout-session:${co.purchase_id}` })
  );
  failpoint('checkout.after_session');
  if (!session.url) {
    throw new AppError('server', 'STRIPE_ERROR', 'Stripe returned a session without a URL.', { status: 502 });
  }
  const [attached] = await sql<
    CheckoutRow[]
  >`select * from billing.attach_checkout_session(${co.purchase_id}, ${session.id}, ${session.url},
      ${new Date(session.expires_at * 1000)})`;
  return { status: 201, data: checkoutJson(attached) };
}
