// Stripe Connect state, re-fetched from Stripe for the webhook pipeline: a provider's Express
// account (account.updated) and a payout on its connected account (payout.*). SQL converges
// on what these return (billing.sync_provider_account / billing.sync_provider_payout).
import type Stripe from 'stripe';
import { stripe, stripeCall } from './stripe.ts';

export type AccountState = {
  kind: 'account';
  account_id: string;
  charges_enabled: boolean;
  payouts_enabled: boolean;
  details_submitted: boolean;
  requirements_due: string[];
};

export type PayoutState = {
  kind: 'payout';
  payout_id: string;
  account_id: string;
  amount: number;
  currency: string;
  status: string;
  failure_code: string | null;
  arrival_date: number;
  created: number;
};

export const accountState = (a: Stripe.Account): AccountState => ({
  kind: 'account',
  account_id: a.id,
  charges_enabled: a.charges_enabled ?? false,
  payouts_enabled: a.payouts_enabled ?? false,
  details_submitted: a.details_submitted ?? false,
  requirements_due: a.requirements?.currently_due ?? [],
});

export async function fetchAccountState(accountId: string): Promise<AccountState> {
  return accountState(await stripeCall(() => stripe().client.accounts.retrieve(accountId)));
}

export async function fetchPayoutState(payoutId: string, accountId: string): Promise<PayoutState> {
  const po = await stripeCall(() => stripe().client.payouts.retrieve(payoutId, {}, { stripeAccount: accountId }));
  return {
    kind: 'payout',
    payout_id: po.id,
    account_id: accountId,
    amount: po.amount,
    currency: po.currency,
    status: po.status,
    failure_code: po.failure_code,
    arrival_date: po.arrival_date,
    created: po.created,
  };
}
