// What a verified event leads to: the current state to converge on, re-fetched from Stripe
// (an event's payload only says where to look), and the user whose payment failed.
import type Stripe from 'stripe';
import { fetchAccountState, fetchPayoutState } from '../_shared/adapters/connect.ts';
import { fetchPurchaseState } from '../_shared/domain/purchases.ts';
import { fetchOrgInvoiceState } from '../_shared/domain/org-invoices.ts';
import { isUuid } from '../_shared/values/query.ts';
import type { EventRef } from './events.ts';
import { fetchPlanChargeState, fetchSubscriptionState } from './plans.ts';

/** The state SQL converges on (billing.process_stripe_event dispatches on its `kind`). */
export function fetchState(ref: EventRef) {
  if ('payout' in ref) return fetchPayoutState(ref.payout, ref.account);
  if ('account' in ref) return fetchAccountState(ref.account);
  if ('orgInvoice' in ref) return fetchOrgInvoiceState(ref.orgInvoice);
  if ('subscription' in ref || 'invoice' in ref) return fetchSubscriptionState(ref);
  if ('charge' in ref) return fetchChargeState(ref.charge);
  return fetchPurchaseState(ref);
}

/** A refunded or disputed charge: a package purchase's, else an invoice's (an organisation's or a plan's). */
async function fetchChargeState(charge: string) {
  const purchase = await fetchPurchaseState({ charge });
  if (purchase) return purchase;
  const invoiceCharge = await fetchPlanChargeState(charge);
  return invoiceCharge && (await fetchOrgInvoiceState(invoiceCharge.invoice_id) ?? invoiceCharge);
}

/** The user whose payment failed (from our own metadata on the intent or session), if any. */
export function failedPaymentUser(event: Stripe.Event): string | null {
  const metadata =
    event.type === 'payment_intent.payment_failed' || event.type === 'checkout.session.async_payment_failed'
      ? event.data.object.metadata
      : null;
  const user = metadata?.user_id;
  return user && isUuid(user) ? user : null;
}
