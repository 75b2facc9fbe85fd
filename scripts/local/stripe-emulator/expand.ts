// Stripe's `expand[]`: ids in a response replaced by the objects they name, along dotted paths
// (`payment_intent.latest_charge.balance_transaction`; `data.` for each item of a list).
import { store } from './state.ts';

const byPrefix: [string, Map<string, unknown>][] = [
  ['cs_', store.sessions],
  ['pi_', store.paymentIntents],
  ['ch_', store.charges],
  ['txn_', store.balanceTransactions],
  ['re_', store.refunds],
  ['dp_', store.disputes],
  ['fee_', store.applicationFees],
  ['tr_', store.transfers],
  ['acct_', store.accounts],
  ['sub_', store.subscriptions],
  ['in_', store.invoices],
  ['price_', store.prices],
];

const lookup = (id: string) => byPrefix.find(([p]) => id.startsWith(p))?.[1].get(id);

function expandPath(node: unknown, path: string[]): unknown {
  if (!node || typeof node !== 'object' || path.length === 0) return node;
  const [head, ...rest] = path;
  const o = node as Record<string, unknown>;
  if (head === 'data' && Array.isArray(o.data)) {
    return { ...o, data: o.data.map((item) => expandPath(item, rest)) };
  }
  let value = o[head];
  if (typeof value === 'string') value = structuredClone(lookup(value)) ?? value;
  return { ...o, [head]: expandPath(value, rest) };
}

/** The `expand[]` paths of a query (`expand[]=a`, `expand[0]=a`). */
export const expandPaths = (query: URLSearchParams) =>
  [...query.entries()].filter(([k]) => /^expand(\[\d*\])?$/.test(k)).map(([, v]) => v);

export const expand = (result: unknown, paths: string[]) =>
  paths.reduce((node, p) => expandPath(node, p.split('.')), result);
