// What the rules of issue #77 promise of reservations and frozen lots, read from the ledger:
// holds reserve credits of lots (billing.hold_lots, lots.reserved), a dispute freezes its
// purchase's lots wherever they are, and only free credits (remaining − reserved, 0 while frozen)
// may be drawn, reserved or moved.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, holdsLapse, key, sweepExpiredHolds, testDb } from './helpers.ts';

/** The lots a purchase granted, wherever they are now: owner, remaining, reserved, frozen. */
export const lotsOfPurchase = async (session: string) =>
  (await testDb`select l.id::text as id, a.user_id::text as user_id, a.org_id::text as org_id,
      a.member_id::text as member_id, trim_scale(l.remaining)::text as remaining,
      trim_scale(l.reserved)::text as reserved, l.frozen
    from billing.lots l join billing.accounts a on a.id = l.account_id
    join billing.purchases p on p.id = l.purchase_id
    where p.stripe_session_id = ${session} and l.open order by l.id`).map((l) => ({ ...l })) as {
    id: string;
    user_id: string | null;
    org_id: string | null;
    member_id: string | null;
    remaining: string;
    reserved: string;
    frozen: boolean;
  }[];

/** A student's own balance and held, from the ledger. */
export const ownAccount = async (userId: string) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.user_id = ${userId} and a.org_id is null`)[0] as { balance: string; held: string };

/** POST /credits/holds of `amount` (any model). */
export const placeHold = (token: string, amount: string, ttl_seconds?: number) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ...(ttl_seconds ? { ttl_seconds } : {}) } });
export const holdIdOf = (r: { body: Record<string, unknown> }) => (r.body.data as { hold_id: string }).hold_id;
export const capture = (token: string, hold: string, amount?: string) =>
  api(`/credits/holds/${hold}/capture`, { token, headers: key(), body: amount ? { amount } : {} });
export const release = (token: string, hold: string) =>
  api(`/credits/holds/${hold}/release`, { token, headers: key(), body: {} });

/** A hold passes its TTL, and the minute's sweeps end it and take back its claims (pg_cron's jobs, run now). */
export async function holdPassesTtl(hold: string) {
  await holdsLapse(testDb`h.id = ${hold}`);
  await sweepExpiredHolds();
}

/**
 * The ledger's invariants and the reservation rules: Σ entries = balance per account (the
 * ledger's own check), Σ reserved per lot = Σ of the active holds' hold_lots, a lot never
 * reserves more than it holds, held = Σ active holds, no hold of purpose 'dispute' (in `users`' own
 * accounts), and no
 * negative balance except debt a reversal left.
 */
export async function reservationInvariants(users: string[] = []) {
  await assertLedgerInvariants();
  const [r] = await testDb`
    select
      (select count(*)::int from billing.lots l
        where l.reserved <> coalesce((select sum(x.amount) from billing.hold_lots x join billing.holds h on h.id = x.hold_id
                                      where x.lot_id = l.id and h.status = 'active'), 0)) as reserved_mismatch,
      (select count(*)::int from billing.lots l where l.reserved < 0 or l.reserved > l.remaining) as reserved_out_of_range,
      (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
        where a.user_id = any(${users}::uuid[]) and h.purpose not in ('user', 'job', 'ai', 'claims')) as other_hold_purposes,
      (select count(*)::int from billing.accounts a where a.balance < 0 and a.code is null
        and not exists (select 1 from billing.transfers t where t.from_account_id = a.id
                        and (t.kind in ('refund_reversal', 'dispute_reversal')
                             or (t.kind = 'usage' and t.metadata ? 'reserved')))) as negative_without_reversal`;
  assert.deepEqual({ ...r }, {
    reserved_mismatch: 0,
    reserved_out_of_range: 0,
    other_hold_purposes: 0,
    negative_without_reversal: 0,
  });
}
