// What each kind of ledger entry means, in a student's words: every kind the ledger has
// (billing.transfer_kind, 10-ledger.sql; tests/unit/student-words.test.ts holds the two equal),
// a charge with the model it paid for.
import type { LedgerEntry } from '../../client/mod.ts';

export const transferKinds = [
  'purchase',
  'promo_grant',
  'adjustment',
  'usage',
  'hold_capture',
  'refund_reversal',
  'dispute_reversal',
  'expiry',
  'allowance',
  'allowance_sweep',
  'code_escrow',
  'code_redemption',
  'code_return',
  'plan_grant',
  'plan_rollover',
  'void',
] as const;
export type TransferKind = typeof transferKinds[number];

type Entry = Pick<LedgerEntry, 'kind' | 'amount' | 'reference' | 'model'>;
const credit = (e: Entry) => !e.amount.startsWith('-');

/** Words per kind; an entry's direction or reference picks between two where one kind means two things. */
const words: Record<TransferKind, (e: Entry) => string> = {
  purchase: () => 'Bought credits',
  // A package's bonus is granted beside its purchase, with the Checkout Session as reference; a
  // promo code or a grant from support carries none.
  promo_grant: (e) => (e.reference?.startsWith('cs_') ? 'Bonus with your purchase' : 'Promotional credits'),
  adjustment: () => 'Correction by support',
  usage: () => 'AI usage',
  hold_capture: () => 'AI answer',
  refund_reversal: () => 'Refunded payment: its credits taken back',
  dispute_reversal: () => 'Disputed payment: its credits taken back',
  expiry: (e) => (credit(e) ? 'Expired credits given back' : 'Credits expired'),
  allowance: (e) => (credit(e) ? 'Allowance from your organisation' : 'Allowance given to a member'),
  allowance_sweep: () => "Allowance returned at the term's end",
  code_escrow: () => 'Set aside for a sponsor code',
  code_redemption: () => 'Gift or sponsor code redeemed',
  code_return: () => 'Sponsor code credits returned',
  plan_grant: () => "Your plan's credits for this period",
  plan_rollover: (
    e,
  ) => (credit(e) ? 'Unused plan credits carried into this period' : 'Unused plan credits carried over'),
  void: () => 'Charge given back',
};

const isKind = (k: string): k is TransferKind => (transferKinds as readonly string[]).includes(k);

/**
 * An entry in words, with the model a charge paid for.
 * @example entryWords({ kind: 'usage', amount: '-2', reference: null, model: 'gpt-4o-mini' }) // 'AI usage (gpt-4o-mini)'
 */
export function entryWords(e: Entry): string {
  const text = isKind(e.kind) ? words[e.kind](e) : 'Other change';
  return e.model ? `${text} (${e.model})` : text;
}
