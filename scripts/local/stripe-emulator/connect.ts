// Stripe Connect: Express accounts and onboarding links, destination charges with an
// application fee (the fee, its balance transaction and the transfer), fee refunds on a
// refund, payouts on connected accounts, and the test controls that drive them.
import type Stripe from 'stripe';
import {
  account as newAccount,
  accountLink,
  applicationFee,
  applyOnboarding,
  feeRefund,
  type OnboardingOutcome,
  payout,
  transfer,
} from './connect-objects.ts';
import { accountEvent, applicationFeeEvent, emit, payoutEvent } from './events.ts';
import { type FormObject, idOf, str } from './form.ts';
import { invalid, missing, route, StripeApiError } from './http.ts';
import { balanceTransaction, charge as newCharge, paymentIntent } from './objects.ts';
import { config, newId, store } from './state.ts';

export function getAccount(id: string): Stripe.Account {
  const a = store.accounts.get(id);
  if (!a) throw missing('account', id);
  return a;
}

const addToBalance = (account: string, cents: number) =>
  store.connectedBalances.set(account, (store.connectedBalances.get(account) ?? 0) + cents);

/** Checks a session's `transfer_data[destination]` as Stripe does when the session is created. */
export function checkDestination(destination: string | null, fee: number | null, amount: number): void {
  if (fee !== null && (!Number.isInteger(fee) || fee < 0 || fee > amount)) {
    throw invalid('application_fee_amount must be an integer between 0 and the amount.', 'application_fee_amount');
  }
  if (fee !== null && !destination) {
    throw invalid('application_fee_amount needs transfer_data[destination].', 'application_fee_amount');
  }
  if (destination && !getAccount(destination).charges_enabled) {
    throw invalid(
      `Your destination account needs to have at least one of the following capabilities enabled: transfers.`,
      'payment_intent_data[transfer_data][destination]',
    );
  }
}

/**
 * Makes `ch` a destination charge: the whole amount is transferred to the connected account
 * and the application fee comes back to the platform. Returns the events this causes.
 */
export function settleDestinationCharge(
  ch: Stripe.Charge,
  pi: Stripe.PaymentIntent,
  destination: string,
  feeAmount: number | null,
): Stripe.Event[] {
  const tr = transfer({ amount: ch.amount, currency: ch.currency, destination, charge: ch.id });
  store.transfers.set(tr.id, tr);
  ch.transfer = tr.id;
  ch.transfer_data = { amount: null, destination };
  pi.transfer_data = { destination };
  pi.application_fee_amount = feeAmount;
  addToBalance(destination, ch.amount - (feeAmount ?? 0));
  if (feeAmount === null) return [];
  const fee = applicationFee({ amount: feeAmount, currency: ch.currency, account: destination, charge: ch.id });
  const txn = balanceTransaction(feeAmount, ch.currency, fee.id, 'application_fee');
  store.balanceTransactions.set(txn.id, txn);
  fee.balance_transaction = txn.id;
  store.applicationFees.set(fee.id, fee);
  ch.application_fee = fee.id;
  ch.application_fee_amount = feeAmount;
  return [applicationFeeEvent('application_fee.created', fee)];
}

/**
 * A refund of a destination charge with `refund_application_fee` and `reverse_transfer`: the
 * fee is refunded pro rata and the rest of the refund is taken back from the connected account.
 */
export function refundDestinationCharge(ch: Stripe.Charge, amount: number, refundFee: boolean): Stripe.Event[] {
  const destination = ch.transfer_data?.destination;
  if (!destination) return [];
  const feeId = idOf(ch.application_fee);
  const fee = feeId ? store.applicationFees.get(feeId) : undefined;
  const feeBack = fee && refundFee
    ? Math.min(Math.round((fee.amount * amount) / ch.amount), fee.amount - fee.amount_refunded)
    : 0;
  addToBalance(idOf(destination) as string, -(amount - feeBack));
  if (!fee || feeBack === 0) return [];
  fee.refunds.data.push(feeRefund(fee, feeBack));
  fee.amount_refunded += feeBack;
  fee.refunded = fee.amount_refunded === fee.amount;
  return [applicationFeeEvent('application_fee.refunded', fee)];
}

function createAccount(body: FormObject): Stripe.Account {
  if (body.type !== 'express' && !(body.controller && typeof body.controller === 'object')) {
    throw invalid('Only Express accounts (type=express) are emulated.', 'type');
  }
  const metadata = Object.fromEntries(
    Object.entries((body.metadata ?? {}) as FormObject).map(([k, v]) => [k, String(v)]),
  );
  const acct = newAccount({ country: str(body.country) ?? 'US', email: str(body.email), metadata });
  store.accounts.set(acct.id, acct);
  store.connectedBalances.set(acct.id, 0);
  return acct;
}

function createPayout(accountId: string, outcome: 'paid' | 'failed', amount?: number): Stripe.Event[] {
  const acct = getAccount(accountId);
  if (!acct.payouts_enabled) throw invalid('Payouts are not enabled on this account.');
  const available = store.connectedBalances.get(acct.id) ?? 0;
  const cents = amount ?? available;
  if (!Number.isInteger(cents) || cents <= 0 || cents > available) {
    throw new StripeApiError(
      400,
      'invalid_request_error',
      `The account's balance (${available}) cannot pay out ${cents}.`,
      'balance_insufficient',
    );
  }
  const po = payout(cents, acct.default_currency ?? 'usd', outcome);
  store.payouts.set(po.id, po);
  store.payoutAccounts.set(po.id, acct.id);
  if (outcome === 'paid') addToBalance(acct.id, -cents);
  const created = { ...structuredClone(po), status: 'pending' as const, failure_code: null, failure_message: null };
  return [payoutEvent('payout.created', acct.id, created), payoutEvent(`payout.${outcome}`, acct.id, po)];
}

/** A second charge for the same payment, made out of band (a double charge for reconciliation to find). */
function duplicateCharge(original: Stripe.Charge): Stripe.Charge {
  const destination = idOf(original.transfer_data?.destination ?? null);
  const pi = paymentIntent({ amount: original.amount, currency: original.currency, metadata: original.metadata });
  store.paymentIntents.set(pi.id, pi);
  const chargeId = newId('ch');
  const txn = balanceTransaction(pi.amount, pi.currency, chargeId, 'charge');
  store.balanceTransactions.set(txn.id, txn);
  const ch = newCharge(pi, txn.id, chargeId);
  store.charges.set(ch.id, ch);
  pi.status = 'succeeded';
  pi.latest_charge = ch.id;
  if (destination) settleDestinationCharge(ch, pi, destination, original.application_fee_amount);
  return ch;
}

/** Test control: Stripe's record of a charge's fee is changed (or removed) with no event. */
function tamperFee(ch: Stripe.Charge, amount: number | null): Stripe.Charge {
  const feeId = idOf(ch.application_fee);
  if (feeId) store.applicationFees.delete(feeId);
  ch.application_fee = null;
  ch.application_fee_amount = null;
  const destination = idOf(ch.transfer_data?.destination ?? null);
  if (amount !== null && destination) {
    const fee = applicationFee({
      amount,
      currency: ch.currency,
      account: destination,
      charge: ch.id,
    });
    store.applicationFees.set(fee.id, fee);
    ch.application_fee = fee.id;
    ch.application_fee_amount = amount;
  }
  return ch;
}

const inRange = (created: number, query: URLSearchParams) => {
  const gte = query.get('created[gte]');
  const lt = query.get('created[lt]');
  return (!gte || created >= Number(gte)) && (!lt || created < Number(lt));
};

/** Newest first, filtered by `created[gte|lt]`, paged with `starting_after` as Stripe does. */
function list<T extends { id: string; created: number }>(
  items: Iterable<T>,
  query: URLSearchParams,
  url: string,
): Stripe.ApiList<T> {
  let data = [...items].filter((o) => inRange(o.created, query)).reverse();
  const after = query.get('starting_after');
  if (after) data = data.slice(data.findIndex((o) => o.id === after) + 1);
  return { object: 'list', data: data.slice(0, 100), has_more: data.length > 100, url };
}

function charge(id: string): Stripe.Charge {
  const ch = store.charges.get(id);
  if (!ch) throw missing('charge', id);
  return ch;
}

export const connectRoutes = [
  route('POST', '/v1/accounts', ({ body }) => createAccount(body)),
  route('GET', '/v1/accounts/:id', ({ params }) => getAccount(params.id)),
  route('POST', '/v1/account_links', ({ body }) => {
    const acct = getAccount(str(body.account) ?? '');
    if (body.type !== 'account_onboarding') throw invalid('Only type=account_onboarding is emulated.', 'type');
    if (!str(body.return_url) || !str(body.refresh_url)) throw invalid('return_url and refresh_url are required.');
    return accountLink(`http://127.0.0.1:${config.port}/_emulator/connect/onboard/${acct.id}`);
  }),
  route('GET', '/v1/application_fees/:id', ({ params }) => {
    const fee = store.applicationFees.get(params.id);
    if (!fee) throw missing('application_fee', params.id);
    return fee;
  }),
  route(
    'GET',
    '/v1/application_fees',
    ({ query }) => list(store.applicationFees.values(), query, '/v1/application_fees'),
  ),
  route('GET', '/v1/charges', ({ query }) => list(store.charges.values(), query, '/v1/charges')),
  route('GET', '/v1/payouts/:id', ({ params, stripeAccount }) => {
    const po = store.payouts.get(params.id);
    if (!po || store.payoutAccounts.get(po.id) !== stripeAccount) throw missing('payout', params.id);
    return po;
  }),
  route('GET', '/v1/payouts', ({ query, stripeAccount }) => {
    if (!stripeAccount) throw invalid('Emulated payouts live on connected accounts: send Stripe-Account.');
    const mine = [...store.payouts.values()].filter((p) => store.payoutAccounts.get(p.id) === stripeAccount);
    return list(mine, query, '/v1/payouts');
  }),
  route('GET', '/_emulator/connect/onboard/:id', ({ params }) => {
    const acct = getAccount(params.id);
    return new Response(
      `<!doctype html><meta name="viewport" content="width=device-width"><title>Stripe Express onboarding (emulator)</title>
<h1>Onboarding ${acct.id}</h1><form method="post" action="/_emulator/accounts/${acct.id}/onboard?form=1">
<button name="outcome" value="complete">Complete onboarding</button></form>`,
      { headers: { 'content-type': 'text/html; charset=utf-8' } },
    );
  }),
  route('POST', '/_emulator/accounts/:id/onboard', ({ params, json, query, body }) => {
    const input = query.get('form')
      ? { outcome: str(body.outcome) }
      : json() as { outcome?: string; deliver?: boolean };
    const outcome = (input.outcome ?? 'complete') as OnboardingOutcome;
    if (!['complete', 'pending_verification', 'restricted'].includes(outcome)) {
      throw invalid(`Unknown outcome ${outcome}.`, 'outcome');
    }
    const acct = getAccount(params.id);
    applyOnboarding(acct, outcome);
    return emit([accountEvent(acct)], (input as { deliver?: boolean }).deliver ?? true);
  }),
  route('POST', '/_emulator/accounts/:id/payouts', ({ params, json }) => {
    const { outcome = 'paid', amount, deliver = true } = json() as {
      outcome?: 'paid' | 'failed';
      amount?: number;
      deliver?: boolean;
    };
    if (!['paid', 'failed'].includes(outcome)) throw invalid(`Unknown outcome ${outcome}.`, 'outcome');
    return emit(createPayout(params.id, outcome, amount), deliver);
  }),
  route('POST', '/_emulator/charges/:id/duplicate', ({ params }) => duplicateCharge(charge(params.id))),
  route('POST', '/_emulator/charges/:id/tamper', ({ params, json }) => {
    const { application_fee_amount = null } = json() as { application_fee_amount?: number | null };
    return tamperFee(charge(params.id), application_fee_amount);
  }),
];
