// What Stripe reports for one UTC day, for the providers' reconciliation: destination charges
// with their application fees, each connected account's payouts, and each account's balance.
import type Stripe from 'stripe';
import { idOf, stripe, stripeCall } from '../_shared/stripe.ts';

const most = { limit: 10_000 };

export interface StripeDay {
  charges: {
    id: string;
    amount: number;
    currency: string;
    destination: string;
    payment_id: string | null;
    created: number;
    application_fee_amount: number | null;
  }[];
  payouts: { id: string; account: string; amount: number; currency: string; status: string; created: number }[];
  balances: { account: string; currency: string; amount: number }[];
}

/** Stripe's records of `day` (YYYY-MM-DD, UTC) for the given connected accounts. */
export async function fetchStripeDay(day: string, accounts: string[]): Promise<StripeDay> {
  const client = stripe().client;
  const gte = Date.parse(`${day}T00:00:00Z`) / 1000;
  const created = { gte, lt: gte + 86_400 };
  const charges = await stripeCall(() => client.charges.list({ created, limit: 100 }).autoPagingToArray(most));
  const fees = await stripeCall(() => client.applicationFees.list({ created, limit: 100 }).autoPagingToArray(most));
  const feeOf = new Map(fees.map((f) => [idOf(f.charge), f.amount]));
  const ours = new Set(accounts);

  const payouts: StripeDay['payouts'] = [];
  const balances: StripeDay['balances'] = [];
  for (const account of accounts) {
    const opts = { stripeAccount: account };
    const list = await stripeCall(() => client.payouts.list({ created, limit: 100 }, opts).autoPagingToArray(most));
    payouts.push(
      ...list.map((p: Stripe.Payout) => ({
        id: p.id,
        account,
        amount: p.amount,
        currency: p.currency,
        status: p.status,
        created: p.created,
      })),
    );
    const balance = await stripeCall(() => client.balance.retrieve({}, opts));
    const byCurrency = new Map<string, number>();
    for (const b of [...balance.available, ...balance.pending]) {
      byCurrency.set(b.currency, (byCurrency.get(b.currency) ?? 0) + b.amount);
    }
    balances.push(...[...byCurrency].map(([currency, amount]) => ({ account, currency, amount })));
  }

  return {
    charges: charges
      .filter((c) => c.paid && ours.has(idOf(c.transfer_data?.destination) ?? ''))
      .map((c) => ({
        id: c.id,
        amount: c.amount,
        currency: c.currency,
        destination: idOf(c.transfer_data?.destination) as string,
        payment_id: c.metadata?.payment_id ?? null,
        created: c.created,
        application_fee_amount: feeOf.get(c.id) ?? null,
      })),
    payouts,
    balances,
  };
}
