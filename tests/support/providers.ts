// Helpers for provider-payment tests: a provider taken through Stripe Connect onboarding, a
// payment made and paid through the emulator, and the money ledger's invariants.
import { api, newUser, testDb, userToken } from './helpers.ts';
import { chargeOf, emulator } from './purchases.ts';

export interface Provider {
  id: string;
  account: string;
  owner: string;
  token: string;
}

/** A provider owned by a new user; `ready` completes Stripe onboarding (account.updated delivered). */
export async function newProvider(ready = true): Promise<Provider> {
  const owner = await newUser();
  const token = await userToken(owner);
  const r = await api('/providers', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { name: 'Ada Lovelace Scholarship Fund', email: 'fund@example.org', country: 'US' },
  });
  if (r.status !== 201) throw new Error(`provider create failed: ${r.status} ${r.text}`);
  const p = r.body.data as { provider_id: string; stripe_account_id: string };
  if (ready) await emulator(`/_emulator/accounts/${p.stripe_account_id}/onboard`, { outcome: 'complete' });
  return { id: p.provider_id, account: p.stripe_account_id, owner, token };
}

export interface Payment {
  payment_id: string;
  session_id: string;
  url: string;
  platform_fee_cents: number;
  amount_cents: number;
  status: string;
}

export async function createPayment(p: Provider, amountCents: number, key = crypto.randomUUID()) {
  return await api(`/providers/${p.id}/payments`, {
    token: p.token,
    headers: { 'idempotency-key': key },
    body: { amount_cents: amountCents, currency: 'usd', description: 'Tuition award, autumn term' },
  });
}

/** Creates a payment and pays it through the emulator (webhooks delivered unless told not to). */
export async function paidPayment(p: Provider, amountCents: number, deliver = true) {
  const r = await createPayment(p, amountCents);
  if (r.status !== 201) throw new Error(`payment failed: ${r.status} ${r.text}`);
  const pay = r.body.data as Payment;
  const { events } = await emulator(`/_emulator/checkout/sessions/${pay.session_id}/pay`, {
    outcome: 'succeeded',
    deliver,
  });
  return { pay, events, charge: await chargeOf(pay.session_id) };
}

/** The money ledger of one provider: its balance and the platform's fees from its payments. */
export async function moneyOf(providerId: string) {
  const [r] = await testDb<{ provider: string; fees: string; payouts: string; transfers: number }[]>`
    select coalesce(sum(e.amount_cents) filter (where e.account = 'provider:' || ${providerId}), 0)::text as provider,
           coalesce(sum(e.amount_cents) filter (where e.account = 'platform_fees'), 0)::text as fees,
           coalesce(sum(e.amount_cents) filter (where e.account = 'provider_payouts'), 0)::text as payouts,
           count(distinct t.id)::int as transfers
    from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
    where t.provider_id = ${providerId}`;
  return { provider: Number(r.provider), fees: Number(r.fees), payouts: Number(r.payouts), transfers: r.transfers };
}

/**
 * The money ledger's invariants over the whole database: every transfer balances, each paid
 * payment was posted exactly once, and the platform's fees per payment equal what Stripe kept.
 */
export async function assertMoneyInvariants(): Promise<void> {
  const [r] = await testDb`
    select
      (select count(*) from (select transfer_id from billing.money_entries group by transfer_id
                             having sum(amount_cents) <> 0) t)::int as unbalanced,
      (select count(*) from billing.provider_payments p
        where p.status = 'paid' and (select count(*) from billing.money_transfers t
                                     where t.payment_id = p.id and t.kind = 'provider_payment') <> 1)::int as posted_wrong,
      (select count(*) from billing.provider_payments p
        where coalesce((select sum(e.amount_cents) from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
                        where t.payment_id = p.id and e.account = 'platform_fees'), 0)
              <> case when p.status = 'paid' then p.fee_collected_cents - p.fee_refunded_cents else 0 end)::int as fee_wrong`;
  if (r.unbalanced || r.posted_wrong || r.fee_wrong) throw new Error(`money invariants broken: ${JSON.stringify(r)}`);
}
