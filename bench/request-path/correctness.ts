// Step 4: the ledger after the load: one debit per answered usage request (and at most one per
// connection more, served after wrk stopped reading), every balance the sum of its entries, none negative.
import type postgres from 'postgres';
import type { UsageCount } from './measure.ts';
import { connections } from './settings.ts';

/** What the ledger holds for the bench's accounts, and whether it adds up. */
export async function ledgerAfter(db: postgres.Sql, users: string[], usage: UsageCount) {
  const [inv] = await db`
    with acct as (select id, balance from billing.accounts where user_id = any(${users}::uuid[])),
         sums as (select e.account_id, sum(e.amount) as total from billing.entries e join acct a on a.id = e.account_id
                  group by e.account_id)
    select (select count(*) from billing.transfers t join acct a on t.from_account_id = a.id where t.kind = 'usage')::int
             as debits,
           (select count(*) from acct a left join sums s on s.account_id = a.id
              where a.balance <> coalesce(s.total, 0))::int as mismatched,
           (select count(*) from acct where balance < 0)::int as negative`;
  // wrk counts only answers it read: up to one request per connection may be served after it stops.
  const debitsOk = inv.debits >= usage.answered && inv.debits <= usage.answered + connections * usage.runs;
  const okAfter = debitsOk && inv.mismatched === 0 && inv.negative === 0;
  return { inv, okAfter };
}
export type LedgerAfter = Awaited<ReturnType<typeof ledgerAfter>>;
