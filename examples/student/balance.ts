// The balance card: what the student can spend, led by the total (their own available credits
// and every allowance a school gave them), what each part is, then every upcoming expiry with
// its amount: plan credits ending with the period and what the plan's rule carries over,
// bought and promotional credits, and allowances going back at the term's end.
/// <reference lib="dom" />
import type { Balance, BillingClient, Expiry, Org, Plan } from '../../client/mod.ts';
import { roundedCredits, sumCredits } from './credits.ts';
import { got } from './messages.ts';
import { rolloverText } from './plans.ts';

const day = (iso: string) =>
  new Date(iso).toLocaleDateString(undefined, { day: 'numeric', month: 'short', year: 'numeric' });

/** What the student can spend in all, and its parts in words ("50 from Lakeside School's allowance"). */
export function spendable(own: Balance, orgs: Org[]): { total: string; parts: string[] } {
  const allowances = orgs.flatMap((
    o,
  ) => (o.funding === 'allowance' && o.allowance ? [{ ...o.allowance, org: o }] : []));
  const total = sumCredits(own.available, ...allowances.map((a) => a.available));
  const parts = allowances.map((a) => `${roundedCredits(a.available)} from ${a.org.name}'s allowance`);
  const pools = orgs.filter((o) => o.funding === 'pool' && o.role === 'member');
  if (parts.length || pools.length) parts.push(`${roundedCredits(own.available)} of your own`);
  for (const o of pools) parts.push(`and what ${o.name} pays from its shared pool, within the limits it sets`);
  return { total, parts };
}

/** One upcoming expiry in words; `plan` is the plan a plan row belongs to (its rollover rule). */
export function expiryText(e: Expiry, plan?: Plan): string {
  const credits = roundedCredits(e.credits);
  if (e.source !== 'plan') {
    return `${day(e.ends_at)}: ${credits} ${e.source === 'paid' ? 'bought' : 'promotional'} credits expire.`;
  }
  const lead = `${day(e.ends_at)}: ${credits} plan credits end with this period`;
  if (!e.plan_renews) return `${lead}. Your plan ends then, so all of them expire.`;
  const rule = plan ? ` (${plan.name}: ${rolloverText(plan)})` : '';
  if (e.rolls_over === '0') return `${lead}; unused plan credits do not carry over${rule}.`;
  if (e.expires === '0') return `${lead}; all of them carry over into the next one${rule}.`;
  return `${lead}: ${roundedCredits(e.rolls_over)} carry over into the next one${rule}, ` +
    `${roundedCredits(e.expires)} expire.`;
}

/** An allowance going back to its school at the term's end, in words; null when the term has no end. */
export function allowanceText(o: Org): { at: string; text: string } | null {
  if (!o.allowance || !o.term_ends_at || !/[1-9]/.test(o.allowance.available)) return null;
  return {
    at: o.term_ends_at,
    text: `${day(o.term_ends_at)}: what is left of your ${o.name} allowance ` +
      `(${roundedCredits(o.allowance.available)} credits now) goes back to ${o.name} at the term's end.`,
  };
}

const $ = (id: string) => document.getElementById(id) as HTMLElement;

/** Loads and draws the balance card. */
export async function refreshBalance(billing: BillingClient) {
  const [b, { items: expiries }, { items: summaries }] = await Promise.all([
    got(billing.balance()),
    got(billing.expiries()),
    got(billing.orgs()),
  ]);
  // The allowance (or a pool's terms) of every organisation the student belongs to.
  const orgs = await Promise.all(summaries.map((o) => got(billing.org(o.id))));
  const plans = expiries.some((e) => e.plan_id) ? (await got(billing.plans())).items : [];
  const { total, parts } = spendable(b, orgs);
  $('spendable').textContent = roundedCredits(total);
  $('spend-parts').textContent = parts.join(' · ');
  $('spend-parts').hidden = parts.length === 0;
  $('balance').textContent = roundedCredits(b.balance);
  $('available').textContent = roundedCredits(b.available);
  $('held').textContent = roundedCredits(b.held);
  const lines = [
    ...expiries.map((e) => ({ at: e.ends_at, text: expiryText(e, plans.find((p) => p.id === e.plan_id)) })),
    ...orgs.flatMap((o) => allowanceText(o) ?? []),
  ].sort((x, y) => x.at.localeCompare(y.at));
  $('expiries').replaceChildren(
    ...lines.map((l) => Object.assign(document.createElement('li'), { textContent: l.text })),
  );
  $('expiries-part').hidden = lines.length === 0;
  return b;
}
