// The alerts and auto-recharge postings set off (billing.run_account_watch), run by each tick
// before what it sends or charges: in small batches, each its own transaction, so an account it
// looks at is locked for one batch, not the whole run.
import { sql } from '../adapters/db.ts';

const batch = 50;

/** Looks at up to `most` queued accounts; returns how many it looked at. */
export async function runAccountWatch(most = 500): Promise<number> {
  let done = 0;
  while (done < most) {
    const [{ n }] = await sql<{ n: number }[]>`select billing.run_account_watch(${batch}) as n`;
    done += n;
    if (n < batch) break;
  }
  return done;
}
