// A gift purchase's code, as its buyer reads it: derived from the code's id (CODE_SECRET), never
// stored, shown once the purchase is paid.
import { giftCode } from '../_shared/http/code-secrets.ts';
import type { GiftStatus } from '../_shared/contract/index.ts';
import { call } from '../_shared/adapters/db.ts';
import { formatCredits } from '../_shared/values/money.ts';

/** `purchaseStatus`: a gift whose payment failed or expired has a code that will never work ('void'). */
export async function giftOf(purchaseId: string, purchaseStatus: string): Promise<GiftStatus | undefined> {
  const [g] = await call((sql) =>
    sql<{ id: string; code_hash: string; status: string; credits: string }[]>`
      select * from billing.get_purchase_gift(${purchaseId})`
  );
  if (!g) return undefined;
  const unpaid = g.status === 'pending' && purchaseStatus !== 'pending';
  const status = !unpaid && (g.status === 'pending' || g.status === 'active' || g.status === 'redeemed')
    ? g.status
    : 'void';
  return {
    code_id: g.id,
    code: g.status === 'pending' ? null : giftCode(g.id, g.code_hash),
    status,
    credits: formatCredits(g.credits),
  };
}
