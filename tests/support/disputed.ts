// What the dispute tests share (disputes-*.test.ts, refunds-holds.test.ts):
// a student's figures, usage and gateway calls as they send them, and the core's invariants.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  functionsUrl,
  holdsLapse,
  key,
  reportUsage,
  spend,
  student,
  sweepExpiredHolds,
  testDb,
  until,
} from './helpers.ts';
import { buyGift, redeem } from './codes.ts';
import { chargeOfInvoice } from './plans.ts';
import { balanceOf, chargeOf, emulator, stripeApi } from './purchases.ts';

/** POST /credits/usage of `credits` of a 1-credit-a-token model (creditPerToken), as the product's server reports it. */
export const chargeTokens = (token: string, model: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: credits, output_tokens: 0 },
  });

/** A gateway chat call for `model` (the stand-in steered by `directives`). */
export const chat = (
  token: string,
  model: string,
  directives: string,
  max_tokens = 40,
  headers: Record<string, string> = key(),
) =>
  api('/ai/v1/chat/completions', {
    token,
    headers,
    body: { model, messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

/** The student's own account: balance, held, and what its lots hold for any model and for some. */
export async function figures(userId: string) {
  const [r] =
    await testDb`select a.id::text as id, trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                           and l.applies_to is null), 0))::text as for_any,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                           and l.applies_to is not null), 0))::text as for_some,
      billing.in_debt(a) as in_debt
    from billing.accounts a where a.user_id = ${userId} and a.org_id is null`;
  return r as { id: string; balance: string; held: string; for_any: string; for_some: string; in_debt: boolean };
}

/**
 * The core's invariants over the ledger, and over `users`' accounts: every charge drawn only from
 * lots that may pay for its model, a reversal only from its purchase's lots and lots for any
 * model, held equal to the live holds.
 */
export async function coreInvariants(users: string[]) {
  await assertLedgerInvariants();
  const [r] = await testDb`
    with acc as (select a.id from billing.accounts a where a.user_id = any(${users}::uuid[]))
    select
      (select count(*)::int from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.transfers t on t.id = x.transfer_id
        where l.account_id in (select id from acc) and x.amount > 0 and t.kind in ('usage', 'hold_capture')
          and not billing.lot_pays_for(l.applies_to, coalesce(t.metadata ->> 'model',
            (select c.model from billing.rate_cards c where c.id = t.rate_card_id)))) as restricted_paid_other_model,
      (select count(*)::int from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.transfers t on t.id = x.transfer_id
        where l.account_id in (select id from acc) and x.amount > 0 and t.kind in ('refund_reversal', 'dispute_reversal')
          and l.applies_to is not null and l.purchase_id is null
          -- a plan's dispute takes back its own plan lot whatever it pays for
          and not exists (select 1 from billing.plan_lots pl where pl.lot_id = l.id)) as reversal_took_restricted,
      (select count(*)::int from billing.accounts a where a.id in (select id from acc)
        and a.held <> coalesce((select sum(h.amount) from billing.holds h where h.account_id = a.id and h.status = 'active'), 0))
        as held_mismatch`;
  assert.deepEqual({ ...r }, { restricted_paid_other_model: 0, reversal_took_restricted: 0, held_mismatch: 0 });
}

export const dispute = async (session: string, outcome: 'open' | 'lost' | 'won') =>
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome });

/** What the calls' captures drew, by kind of lot. */
export const drawnBy = async (transfers: string[]) =>
  (await testDb`select case when l.applies_to is not null then 'for_m' when l.purchase_id is not null then 'paid'
        else 'promo' end as from, trim_scale(sum(x.amount))::text as amount
      from billing.lot_allocations x join billing.lots l on l.id = x.lot_id where x.transfer_id = any(${transfers}::bigint[])
      group by 1 order by 1`).map((d) => ({ ...d }));

/** The charge that paid a subscription's latest invoice (its first, before any renewal). */
export const planCharge = async (sub: string) =>
  await chargeOfInvoice(String((await stripeApi(`/v1/subscriptions/${sub}`)).latest_invoice));

/** A plan invoice's charge disputed (or its dispute closed), as Stripe reports it. */
export const disputePlan = (charge: string, outcome: 'open' | 'lost' | 'won') =>
  emulator(`/_emulator/charges/${charge}/dispute`, { outcome });

export const planDisputeStatus = async (charge: string) =>
  (await testDb`select g.dispute_status from billing.plan_grants g where g.stripe_charge_id = ${charge}`)[0]
    ?.dispute_status as string | null;

export const purchaseDisputeStatus = async (session: string) =>
  (await testDb`select p.dispute_status from billing.purchases p where p.stripe_session_id = ${session}`)[0]
    ?.dispute_status as string | null;

/** Spends `credits` (any model); whether it went through. */
export async function spendTry(token: string, credits: number) {
  try {
    await spend(token, credits);
    return true;
  } catch {
    return false;
  }
}

/** A metered job of `userId` holding `reserve`, claimed by worker `w` (as claim_jobs leaves it). */
export async function claimedJob(userId: string, w: string, reserve: number, leaseSeconds = 60) {
  return await testDb.begin(async (sql) => {
    const [j] = await sql`select id from billing.enqueue_job(${userId}, 'ai_completion',
      ${JSON.stringify({ model: 'gpt-4o', prompt: 'one two', max_tokens: 100 })}::text::jsonb, ${crypto.randomUUID()},
      null, ${reserve})`;
    await sql`update billing.jobs set status = 'processing', locked_by = ${w}, attempts = 1, started_at = now(),
      locked_until = now() + make_interval(secs => ${leaseSeconds}), run_after = now() + interval '1 hour' where id = ${j.id}`;
    return j.id as string;
  });
}
/** A job's usage report of `credits` of gpt-4o. */
export const jobUsage = (credits: number) =>
  JSON.stringify({ model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 });
/** Worker `w` reports job `job` done, `credits` of work. */
export const completeJob = (job: string, w: string, credits: number) =>
  testDb`select status from billing.complete_job(${job}, ${w}, '{"text":"x"}'::jsonb, ${
    jobUsage(credits)
  }::text::jsonb)`;

/** Spends everything `token` may, in one charge; what it spent. */
export async function spendAll(token: string) {
  const a = Math.floor(Number((await balanceOf(token)).available));
  if (a > 0) await spend(token, a);
  return a;
}

/** Two students: S buys a gift of 5,000 (G) that T (S's second account) redeems. */
export async function giftRedeemed() {
  const s = await student();
  const t = await student();
  const g = await buyGift(s.token, 'mini');
  assert.equal((await redeem(t.token, g.code)).status, 200);
  await until('T has the gift', async () => (await balanceOf(t.token)).balance === '5000');
  return { s, t, g };
}

/** What `userId`'s own holds of `purpose` hold now. */
export const heldFor = async (userId: string, purpose: 'ai' | 'job' | 'user') =>
  (await testDb`select trim_scale(coalesce(sum(h.amount), 0))::text as n from billing.holds h
    join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.purpose = ${purpose} and h.status = 'active'`)[0].n as string;
/** What `userId`'s gateway calls hold now. */
export const aiHolds = (userId: string) => heldFor(userId, 'ai');

/** A streamed gateway call of `token` for `model`, read to its end in the background. */
export function streamCall(token: string, model: string, directives: string, max_tokens: number) {
  return (async () => {
    const res = await fetch(`${functionsUrl}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({
        model,
        messages: [{ role: 'user', content: `#standin ${directives}` }],
        max_tokens,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const text = await res.text();
    return { status: res.status, text };
  })();
}

/** A purchase's dispute opened at the bank, once the product has seen it. */
export async function openDispute(session: string) {
  await dispute(session, 'open');
  await until('disputed', async () => (await purchaseDisputeStatus(session)) === 'open');
}

/** A purchase's dispute lost, once the product has taken the credits back. */
export async function loseDispute(session: string) {
  await dispute(session, 'lost');
  await until('lost', async () => (await purchaseDisputeStatus(session)) === 'lost');
}

/** The job's hold passes its TTL (an hour: the clock moved on), and pg_cron's sweeps end it. */
export async function jobHoldPassesTtl(job: string) {
  await holdsLapse(testDb`h.id = (select hold_id from billing.jobs where id = ${job})`);
  await sweepExpiredHolds();
}
