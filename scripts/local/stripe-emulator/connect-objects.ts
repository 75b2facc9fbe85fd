// Builders for the Connect objects the emulator serves (Express accounts, account links,
// application fees and their refunds, transfers, payouts), typed with the SDK's own types.
import type Stripe from 'stripe';
import { newId, now } from './state.ts';

/** Everything Stripe asks an Express account for before it can take charges. */
export const onboardingRequirements = [
  'business_profile.url',
  'external_account',
  'individual.dob.day',
  'tos_acceptance.date',
];

const requirements = (due: string[]): Stripe.Account.Requirements => ({
  alternatives: [],
  current_deadline: null,
  currently_due: due,
  disabled_reason: due.length ? 'requirements.past_due' : null,
  errors: [],
  eventually_due: due,
  past_due: due,
  pending_verification: [],
});

export function account(
  input: { country: string; email: string | null; metadata: Record<string, string> },
): Stripe.Account {
  return {
    id: newId('acct'),
    object: 'account',
    business_profile: null,
    business_type: null,
    capabilities: { card_payments: 'inactive', transfers: 'inactive' },
    charges_enabled: false,
    controller: { is_controller: true, type: 'application' },
    country: input.country,
    created: now(),
    default_currency: 'usd',
    details_submitted: false,
    email: input.email,
    external_accounts: { object: 'list', data: [], has_more: false, url: '/v1/accounts/external_accounts' },
    future_requirements: requirements([]),
    metadata: input.metadata,
    payouts_enabled: false,
    requirements: requirements(onboardingRequirements),
    settings: null,
    tos_acceptance: { date: null, ip: null, user_agent: null },
    type: 'express',
  };
}

/** Onboarding finished (`complete`), or Stripe still verifying / restricting the account. */
export type OnboardingOutcome = 'complete' | 'pending_verification' | 'restricted';

export function applyOnboarding(acct: Stripe.Account, outcome: OnboardingOutcome): void {
  const enabled = outcome === 'complete';
  acct.details_submitted = outcome !== 'restricted';
  acct.charges_enabled = enabled;
  acct.payouts_enabled = enabled;
  acct.capabilities = { card_payments: enabled ? 'active' : 'pending', transfers: enabled ? 'active' : 'pending' };
  acct.requirements = requirements(outcome === 'restricted' ? ['external_account'] : []);
  if (outcome === 'pending_verification' && acct.requirements) {
    acct.requirements.pending_verification = ['individual.verification.document'];
    acct.requirements.disabled_reason = 'requirements.pending_verification';
  }
}

export const accountLink = (url: string): Stripe.AccountLink => ({
  object: 'account_link',
  created: now(),
  expires_at: now() + 300,
  url,
});

export function applicationFee(
  input: { amount: number; currency: string; account: string; charge: string },
): Stripe.ApplicationFee {
  const id = newId('fee');
  return {
    id,
    object: 'application_fee',
    account: input.account,
    amount: input.amount,
    amount_refunded: 0,
    application: 'ca_scholarlink_local',
    balance_transaction: null, // the caller attaches it once it exists
    charge: input.charge,
    created: now(),
    currency: input.currency,
    fee_source: { charge: input.charge, type: 'charge' },
    livemode: false,
    originating_transaction: null,
    refunded: false,
    refunds: { object: 'list', data: [], has_more: false, url: `/v1/application_fees/${id}/refunds` },
  };
}

export const feeRefund = (fee: Stripe.ApplicationFee, amount: number): Stripe.FeeRefund => ({
  id: newId('fr'),
  object: 'fee_refund',
  amount,
  balance_transaction: null,
  created: now(),
  currency: fee.currency,
  fee: fee.id,
  metadata: {},
});

export const transfer = (
  input: { amount: number; currency: string; destination: string; charge: string },
): Stripe.Transfer => ({
  id: newId('tr'),
  object: 'transfer',
  amount: input.amount,
  amount_reversed: 0,
  balance_transaction: null,
  created: now(),
  currency: input.currency,
  description: null,
  destination: input.destination,
  destination_payment: newId('py'),
  livemode: false,
  metadata: {},
  reversals: { object: 'list', data: [], has_more: false, url: '/v1/transfers/reversals' },
  reversed: false,
  source_transaction: input.charge,
  source_type: 'card',
  transfer_group: null,
});

export function payout(amount: number, currency: string, outcome: 'paid' | 'failed'): Stripe.Payout {
  return {
    id: newId('po'),
    object: 'payout',
    amount,
    application_fee: null,
    application_fee_amount: null,
    arrival_date: now() + 86400,
    automatic: true,
    balance_transaction: newId('txn'),
    created: now(),
    currency,
    description: 'STRIPE PAYOUT',
    destination: newId('ba'),
    failure_balance_transaction: outcome === 'failed' ? newId('txn') : null,
    failure_code: outcome === 'failed' ? 'account_closed' : null,
    failure_message: outcome === 'failed' ? 'The bank account has been closed.' : null,
    livemode: false,
    metadata: {},
    method: 'standard',
    original_payout: null,
    payout_method: null,
    reconciliation_status: 'completed',
    reversed_by: null,
    source_type: 'card',
    statement_descriptor: null,
    status: outcome,
    trace_id: null,
    type: 'bank_account',
  };
}
