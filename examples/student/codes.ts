// Codes on the student page: redeeming a promo, gift or sponsor code, and buying a gift (a
// package through Checkout whose credits wait behind a code for someone else).
/// <reference lib="dom" />
import type { BillingClient, CodeRedemption, PurchaseStatus } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { got } from './messages.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/** What a redemption gave, in a student's words. */
export function redeemedText(r: CodeRedemption): string {
  const from = r.kind === 'gift' ? 'a gift' : r.kind === 'sponsor' ? 'your organisation' : 'a promotion';
  const until = r.expires_at ? ` They expire on ${new Date(r.expires_at).toLocaleDateString()}.` : '';
  return `${roundedCredits(r.credits)} credits from ${from} were added.${until}`;
}

/** A paid gift's code, for its buyer to pass on. */
export function giftText(p: PurchaseStatus): string | null {
  if (!p.gift?.code) return null;
  return `Your gift code: ${p.gift.code} (${roundedCredits(p.gift.credits)} credits). ` +
    'Give it to whoever you like: they redeem it once on their own page. We also emailed it to you.';
}

/** Wires the "Redeem a code" form; `done` refreshes what a redemption changed. */
export function wireRedeem(
  billing: BillingClient,
  notice: (text: string) => void,
  fail: (err: unknown, retry?: () => void, near?: HTMLElement) => void,
  done: () => Promise<void>,
) {
  const button = $<HTMLButtonElement>('redeem');
  $('redeem-form').onsubmit = async (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>('code');
    button.disabled = true;
    try {
      const r = await got(billing.redeemCode(input.value));
      input.value = '';
      notice(redeemedText(r));
      await done();
    } catch (err) {
      fail(err, undefined, button);
    } finally {
      button.disabled = false;
    }
  };
}

/** Opens Checkout for a gift of `packageId`; back from it, the page shows the code (giftText). */
export async function buyGift(billing: BillingClient, packageId: string) {
  const here = `${location.origin}${location.pathname}`;
  const session = await got(
    billing.buyGift({ package_id: packageId, success_url: here, cancel_url: `${here}?cancelled=1` }),
  );
  if (session.url) location.assign(session.url);
}
