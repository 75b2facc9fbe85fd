// What Stripe reports for one UTC day, for the providers' reconciliation, one list page at a
// time: destination charges, application fees, and each connected account's payouts and
// balance. A reader returns at most one page (100 objects) and where the next one starts, so a
// run holds one page in memory and can stop and resume between any two.
import type Stripe from 'stripe';
import { idOf, stripe, stripeCall } from '../_shared/adapters/stripe.ts';

/** One Stripe record as billing.record_reconciliation_page saves it. */
export interface StripeItem {
  kind: 'charge' | 'fee' | 'payout' | 'balance';
  stripe_id: string;
  account: string | null;
  charge_id?: string | null;
  payment_ref?: string | null;
  amount_cents: number;
  currency: string;
  status?: string | null;
}

/** A page of records, and the `starting_after` of the next page (null: this was the last). */
export interface StripePage {
  items: StripeItem[];
  next: string | null;
}

const pageSize = 100; // Stripe's largest

const createdOn = (day: string) => {
  const gte = Date.parse(`${day}T00:00:00Z`) / 1000;
  return { gte, lt: gte + 86_400 };
};

const pageOf = <T extends { id: string }>(list: Stripe.ApiList<T>, items: StripeItem[]): StripePage => ({
  items,
  next: list.has_more && list.data.length ? list.data[list.data.length - 1].id : null,
});

const listParams = (day: string, after: string | null) => ({
  created: createdOn(day),
  limit: pageSize,
  ...(after ? { starting_after: after } : {}),
});

/** Paid destination charges created on `day` (the database keeps those of its own providers). */
export async function chargesPage(day: string, after: string | null): Promise<StripePage> {
  const list = await stripeCall(() => stripe().client.charges.list(listParams(day, after)));
  return pageOf(
    list,
    list.data
      .filter((c) => c.paid && idOf(c.transfer_data?.destination))
      .map((c) => ({
        kind: 'charge',
        stripe_id: c.id,
        account: idOf(c.transfer_data?.destination),
        payment_ref: c.metadata?.payment_id ?? null,
        amount_cents: c.amount,
        currency: c.currency,
      })),
  );
}

/** Application fees created on `day`, each with its charge. */
export async function feesPage(day: string, after: string | null): Promise<StripePage> {
  const list = await stripeCall(() => stripe().client.applicationFees.list(listParams(day, after)));
  return pageOf(
    list,
    list.data.map((f) => ({
      kind: 'fee',
      stripe_id: f.id,
      account: idOf(f.account),
      charge_id: idOf(f.charge),
      amount_cents: f.amount,
      currency: f.currency,
    })),
  );
}

/** Payouts a connected account made on `day`. */
export async function payoutsPage(day: string, account: string, after: string | null): Promise<StripePage> {
  const list = await stripeCall(() => stripe().client.payouts.list(listParams(day, after), { stripeAccount: account }));
  return pageOf(
    list,
    list.data.map((p) => ({
      kind: 'payout',
      stripe_id: p.id,
      account,
      amount_cents: p.amount,
      currency: p.currency,
      status: p.status,
    })),
  );
}

/** What Stripe holds for a connected account now, per currency (available + pending). */
export async function balanceItems(account: string): Promise<StripeItem[]> {
  const balance = await stripeCall(() => stripe().client.balance.retrieve({}, { stripeAccount: account }));
  const byCurrency = new Map<string, number>();
  for (const b of [...balance.available, ...balance.pending]) {
    byCurrency.set(b.currency, (byCurrency.get(b.currency) ?? 0) + b.amount);
  }
  return [...byCurrency].map(([currency, amount]) => ({
    kind: 'balance',
    stripe_id: `${account}:${currency}`,
    account,
    amount_cents: amount,
    currency,
  }));
}
