// The browser's side: the student's own client (their Supabase session's token goes with every
// call), buying credits through hosted Stripe Checkout, and confirming the purchase on the way
// back. Nothing here holds a secret.
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { type BillingClient, createBillingClient } from '@scholarlink/billing-client';

/** The signed-in student's Supabase client (any Supabase Auth sign-in) and billing client. */
export function browserClients(
  url: string,
  anonKey: string,
): { supabase: SupabaseClient; billing: BillingClient } {
  const supabase = createClient(url, anonKey);
  return { supabase, billing: createBillingClient(supabase) };
}

/**
 * Opens Stripe Checkout for a package: Stripe sends the student back to `returnTo` with
 * `?session_id=cs_…` (the billing service appends it), where confirmPurchase waits for the
 * credits (they arrive with Stripe's webhook to the billing service, never with the redirect).
 */
export async function buyCredits(
  billing: BillingClient,
  packageId: string,
  returnTo: string,
): Promise<string> {
  const { data, error } = await billing.startCheckout({
    package_id: packageId,
    success_url: returnTo,
    cancel_url: returnTo,
  }).done;
  if (error) return error.message;
  if (data.url) location.assign(data.url);
  return 'Opening Checkout…';
}

/** Back from Checkout: polls the purchase (about 30 s at most) until Stripe's answer is in. */
export async function confirmPurchase(
  billing: BillingClient,
  sessionId: string,
): Promise<string> {
  for (let i = 0; i < 30; i++) {
    const { data, error } = await billing.purchase(sessionId);
    if (error) return error.message;
    if (data.status === 'paid') {
      const bonus = Number(data.bonus_credits) > 0 ? ` and ${data.bonus_credits} bonus` : '';
      return `Payment received: ${data.credits}${bonus} credits added.`;
    }
    if (data.status !== 'pending') {
      return 'The payment did not go through: nothing was charged.';
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return 'Your payment is still being confirmed; the balance will update shortly.';
}
