// A user's balance and lots as they stood at a past instant, read from the ledger
// (supabase/schemas/36-balance-history.sql; docs/credit-lots.md § As of): for the student's own
// account (GET /credits/balance?at=, /credits/lots?at=) and any user's, for an admin.
import { sql } from '../adapters/db.ts';
import { pageOf } from '../values/page.ts';
import type { BalanceAsOf, Lot, LotPage } from '../contract/index.ts';

// The instant goes as text: typed timestamptz, the driver would pass it through a JavaScript Date
// and cut it to the millisecond, and an instant is exact to the microsecond, as the ledger dates rows.

/**
 * The user's balance, held, available and next expiry at `at` (zeros before the account existed).
 * @example ok(c, await balanceAsOf(currentUser(c).id, q.at))
 */
export async function balanceAsOf(userId: string, at: string): Promise<BalanceAsOf> {
  const [{ balance }] = await sql<
    { balance: BalanceAsOf }[]
  >`select billing.user_balance_as_of(${userId}, ${at}::text::timestamptz) as balance`;
  return balance;
}

/**
 * A page of the user's lots at `at`, newest first: those granted by then, with what remained of
 * each then (its expiry and frozen flag then too).
 * @example ok(c, await lotsAsOf(currentUser(c).id, q.at, q))
 */
export async function lotsAsOf(
  userId: string,
  at: string,
  page: { cursor?: string; limit: number },
): Promise<LotPage> {
  const [{ lots }] = await sql<{ lots: Lot[] }[]>`
      select billing.user_lots_as_of(${userId}, ${at}::text::timestamptz, ${page.cursor ?? null}, ${
    page.limit + 1
  }) as lots`;
  return pageOf(lots, page.limit, (l) => l.id);
}
